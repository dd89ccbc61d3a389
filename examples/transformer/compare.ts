/**
 * The training example side by side: the same transformer with FlashMultiHeadAttention and with
 * stock (materialised) attention, one training step at growing sequence length, until stock can
 * no longer run (out of memory, a WebGPU error, a non-finite loss, or slower than
 * --max-step-seconds). Prints a Markdown table and writes JSON to --out.
 *
 *   node examples/run.js examples/transformer/compare.ts                       # CPU-sized defaults
 *   node examples/run.js examples/transformer/compare.ts --backend=webgpu --dim=256 --heads=4 \
 *        --layers=2 --seqs=1024,2048,4096,8192,16384,32768
 */
import { choicesFlag, intFlag, numberFlag, parseFlags } from './args';
import { BackendChoice, prepareBackend } from './backend';

const FLAGS = {
  backend: 'auto', seqs: '128,256,512,1024,2048,4096', batch: '1', layers: '1', dim: '32', heads: '2',
  steps: '2', 'max-step-seconds': '60', out: 'runs/compare.json', seed: '1', attention: 'flash,stock',
  loop: 'pipelined',
};

async function main() {
  const flags = parseFlags(process.argv.slice(2), FLAGS);
  const { backend, detail } = await prepareBackend(flags.backend as BackendChoice);
  const { runComparison } = await import('./side_by_side');
  await runComparison({
    backend, backendDetail: detail,
    seqs: String(flags.seqs).split(',').map(s => Number(s.trim())),
    batch: intFlag(flags, 'batch'), layers: intFlag(flags, 'layers'), dim: intFlag(flags, 'dim'),
    heads: intFlag(flags, 'heads'), steps: intFlag(flags, 'steps'),
    maxStepSeconds: numberFlag(flags, 'max-step-seconds'), out: String(flags.out), seed: intFlag(flags, 'seed'),
    loop: ((l: string) => {
      if (l !== 'pipelined' && l !== 'trainOnBatch') throw new Error(`--loop takes pipelined or trainOnBatch, got ${l}`);
      return l;
    })(String(flags.loop)),
    attentions: choicesFlag(flags, 'attention', ['flash', 'stock'] as const),
  });
}

main().then(() => process.exit(0), (err) => {
  console.error(err instanceof Error ? err.stack ?? err.message : err);
  process.exit(1);
});
