/**
 * Trains the small decoder-only transformer of model.ts on the embedded corpus at long sequence
 * length (4096 by default) with FlashMultiHeadAttention doing the attention (trainSteps: Adam, the loss
 * read one step late so the GPU is never left waiting for it).
 *
 *   npm run train                                  # short default run: 2 steps at 4096, tiny model
 *   npm run train -- --steps=200 --layers=2 --dim=64 --heads=4   # a longer run
 *   npm run train -- --resume --steps=50           # continue from the checkpoint in --out
 *   npm run train -- --generate --sample=400 --uncached   # generate from the checkpoint, cache vs none
 *
 * Prints a progress bar with loss and tokens/s, saves a checkpoint (and resumes from it with
 * --resume), writes the loss curve to <out>/loss.png and ends with a sample generated with the
 * key/value cache (generate.ts); --generate only generates, from the checkpoint.
 */
import { intFlag, numberFlag, parseFlags } from './args';
import { BackendChoice, prepareBackend } from './backend';

const FLAGS = {
  backend: 'auto', seq: '4096', batch: '1', steps: '2', layers: '1', dim: '32', heads: '2', lr: '0.003',
  attention: 'flash', out: 'runs/transformer', resume: false, 'save-every': '50', sample: '160',
  temperature: '0.8', seed: '1', generate: false, prompt: 'There was once ', uncached: false,
};

async function main() {
  const flags = parseFlags(process.argv.slice(2), FLAGS);
  // Dawn must be in place before tfjs is imported (see dawn.ts), hence the dynamic import below.
  const { backend, detail } = await prepareBackend(flags.backend as BackendChoice);
  const { runTraining } = await import('./training');
  await runTraining({
    backend, backendDetail: detail,
    seqLen: intFlag(flags, 'seq'), batch: intFlag(flags, 'batch'), steps: intFlag(flags, 'steps'),
    layers: intFlag(flags, 'layers'), dim: intFlag(flags, 'dim'), heads: intFlag(flags, 'heads'),
    learningRate: numberFlag(flags, 'lr'), attention: flags.attention === 'stock' ? 'stock' : 'flash',
    outDir: String(flags.out), resume: flags.resume === true, saveEvery: intFlag(flags, 'save-every'),
    sampleLength: intFlag(flags, 'sample'), temperature: numberFlag(flags, 'temperature'), seed: intFlag(flags, 'seed'),
    generateOnly: flags.generate === true, prompt: String(flags.prompt), uncached: flags.uncached === true,
  });
}

main().then(() => process.exit(0), (err) => {
  console.error(err instanceof Error ? err.stack ?? err.message : err);
  process.exit(1);
});
