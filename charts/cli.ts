/**
 * `npm run chart -- <file.json> [...]`: draws the chart of a saved run here, where the PNG
 * renderer loads (the GPU kit writes only the SVG). A bench results.json gives chart.svg and
 * chart.png beside it; a training state.json (examples/transformer) gives loss.svg and loss.png.
 */
import { readFileSync } from 'fs';
import { dirname, join } from 'path';
import { benchChartSpec } from '../bench/chart';
import { lossChartSpec } from '../examples/transformer/plot';
import { writeChart } from './render';

async function main(files: string[]): Promise<number> {
  if (files.length === 0 || files.some(f => f.startsWith('-'))) {
    console.error('usage: npm run chart -- <results.json | state.json> [...]');
    return 2;
  }
  for (const file of files) {
    const json = JSON.parse(readFileSync(file, 'utf8'));
    const [spec, name] = Array.isArray(json.results) && json.meta ? [benchChartSpec(json), 'chart']
        : Array.isArray(json.losses) ? [lossChartSpec(json.losses), 'loss'] : [null, ''];
    if (!spec) {
      console.error(`${file}: neither a bench results.json (meta, results) nor a training state.json (losses)`);
      return 1;
    }
    const out = await writeChart(spec, join(dirname(file), name));
    if (!out.png) {
      console.error(`${file}: wrote ${out.svg} only: ${out.reason}`);
      return 1;
    }
    console.log(`${file}: ${out.svg}, ${out.png}`);
  }
  return 0;
}

main(process.argv.slice(2)).then(code => { process.exitCode = code; }, err => {
  console.error(err instanceof Error ? err.stack : err);
  process.exitCode = 1;
});
