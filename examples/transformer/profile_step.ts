/**
 * Profiles one training step of the example's transformer by kernel: wall time per step (as
 * compare.ts measures it, and without a readback every step), the CPU's share, uploads and
 * readbacks, and GPU time per kernel for forward + backward and for Adam. Prints Markdown and
 * writes JSON (and the Markdown beside it) to --out.
 *
 *   node examples/run.js examples/transformer/profile_step.ts                  # CPU-sized defaults
 *   node examples/run.js examples/transformer/profile_step.ts --backend=webgpu --dim=256 --heads=4 \
 *        --layers=2 --seq=4096
 */
import { choicesFlag, intFlag, parseFlags } from './args';
import { BackendChoice, prepareBackend } from './backend';

const FLAGS = {
  backend: 'auto', seq: '256', batch: '1', layers: '1', dim: '32', heads: '2', steps: '3',
  attention: 'flash,stock', out: 'runs/profile.json', seed: '1',
};

async function main() {
  const flags = parseFlags(process.argv.slice(2), FLAGS);
  const { backend, detail } = await prepareBackend(flags.backend as BackendChoice);
  const { runStepProfile } = await import('./step_profile');
  await runStepProfile({
    backend, backendDetail: detail, seq: intFlag(flags, 'seq'), batch: intFlag(flags, 'batch'),
    layers: intFlag(flags, 'layers'), dim: intFlag(flags, 'dim'), heads: intFlag(flags, 'heads'),
    steps: Math.max(1, intFlag(flags, 'steps')), out: String(flags.out), seed: intFlag(flags, 'seed'),
    attentions: choicesFlag(flags, 'attention', ['flash', 'stock'] as const),
  });
}

main().then(() => process.exit(0), (err) => {
  console.error(err instanceof Error ? err.stack ?? err.message : err);
  process.exit(1);
});
