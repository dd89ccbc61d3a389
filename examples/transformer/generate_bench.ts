/**
 * Generation speed of the training example's model: tokens/s with the key/value cache
 * (FlashMultiHeadAttention's cached call; a prefill, then one token per step) against full
 * recomputation (the whole sequence through model.predict per token), at growing prompt length.
 * Greedy decoding, so both must give the same tokens (checked). Weights are the checkpoint's
 * with --checkpoint, else random (speed does not depend on them). Prints a Markdown table and
 * writes JSON to --out.
 *
 *   node examples/run.js examples/transformer/generate_bench.ts                   # CPU-sized defaults
 *   node examples/run.js examples/transformer/generate_bench.ts --backend=webgpu --dim=256 --heads=4 \
 *        --layers=2 --contexts=256,1024,4096,16384 --tokens=64
 */
import { intFlag, numberFlag, parseFlags } from './args';
import { BackendChoice, prepareBackend } from './backend';

const FLAGS = {
  backend: 'auto', contexts: '64,256,1024', tokens: '32', layers: '1', dim: '32', heads: '2',
  attention: 'flash', checkpoint: '', 'max-seconds': '60', out: 'runs/generation.json', seed: '1',
};

async function main() {
  const flags = parseFlags(process.argv.slice(2), FLAGS);
  const { backend, detail } = await prepareBackend(flags.backend as BackendChoice);
  const { runGenerationBench } = await import('./generation_bench');
  const attention = String(flags.attention);
  if (attention !== 'flash' && attention !== 'stock') throw new Error(`--attention takes flash or stock, got ${attention}`);
  await runGenerationBench({
    backend, backendDetail: detail,
    contexts: String(flags.contexts).split(',').map(s => Number(s.trim())),
    tokens: intFlag(flags, 'tokens'), layers: intFlag(flags, 'layers'), dim: intFlag(flags, 'dim'),
    heads: intFlag(flags, 'heads'), attention, checkpoint: String(flags.checkpoint),
    maxSeconds: numberFlag(flags, 'max-seconds'), out: String(flags.out), seed: intFlag(flags, 'seed'),
  });
}

main().then(() => process.exit(0), (err) => {
  console.error(err instanceof Error ? err.stack ?? err.message : err);
  process.exit(1);
});
