/** The training run behind train.ts (imported once the backend is prepared). */
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import '../../src/index';
import { activateBackend } from './backend';
import { hasCheckpoint, loadCheckpoint, saveCheckpoint, TrainingState } from './checkpoint';
import { CharCorpus, seededRandom } from './data';
import { contextLength, Generation, generateCached, generateUncached, tokenProgress } from './generate';
import { buildTransformer, compileTransformer, trainSteps, TransformerConfig } from './model';
import { writeLossChart } from './plot';

export interface TrainingOptions {
  backend: 'webgpu' | 'cpu'; backendDetail: string;
  seqLen: number; batch: number; steps: number;
  layers: number; dim: number; heads: number; learningRate: number; attention: 'flash' | 'stock';
  outDir: string; resume: boolean; saveEvery: number;
  sampleLength: number; temperature: number; seed: number;
  /** Only generate, from the checkpoint in outDir (no training). */
  generateOnly: boolean;
  prompt: string;
  /** Also generate without the cache (full recomputation per token) and compare. */
  uncached: boolean;
}

/** One line, redrawn in place on a terminal and printed per step otherwise (CI logs). */
function progress(step: number, total: number, loss: number, tokensPerSecond: number, elapsedMs: number): void {
  const width = 24, filled = Math.round(width * step / total);
  const eta = step < total ? ` eta ${Math.round(elapsedMs / step * (total - step) / 1000)}s` : '';
  const line = `step ${step}/${total} [${'='.repeat(filled)}${' '.repeat(width - filled)}] ` +
      `loss ${loss.toFixed(4)}  ${Math.round(tokensPerSecond).toLocaleString('en-US')} tokens/s${eta}`;
  if (process.stdout.isTTY) process.stdout.write(`\r${line}${step === total ? '\n' : ''}`);
  else console.log(line);
}

export async function runTraining(o: TrainingOptions): Promise<void> {
  await activateBackend(tf, o.backend);
  console.log(`backend: ${o.backendDetail}`);
  const random = seededRandom(o.seed);
  const checkpointDir = path.join(o.outDir, 'checkpoint');

  let model: tf.LayersModel, state: TrainingState, corpus: CharCorpus;
  if (o.generateOnly) {
    if (!hasCheckpoint(checkpointDir)) throw new Error(`--generate: no checkpoint in ${checkpointDir} (train first, or pass --out)`);
    ({ model, state } = await loadCheckpoint(checkpointDir));
    corpus = CharCorpus.load(undefined, state.vocabulary);
    console.log(`checkpoint ${checkpointDir}: step ${state.step}, loss ${state.losses[state.losses.length - 1]?.toFixed(4)}, ` +
                `${model.countParams().toLocaleString('en-US')} parameters, ${JSON.stringify(state.config)}`);
    await generateText(model, corpus, o, random);
    return;
  }
  if (o.resume && hasCheckpoint(checkpointDir)) {
    ({ model, state } = await loadCheckpoint(checkpointDir));
    corpus = CharCorpus.load(undefined, state.vocabulary);
    console.log(`resumed from ${checkpointDir} at step ${state.step} (loss ${state.losses[state.losses.length - 1]?.toFixed(4)})`);
    // Skip the windows the earlier run drew, so a resumed run does not repeat them.
    for (let i = 0; i < state.step * o.batch; i++) random();
  } else {
    if (o.resume) console.log(`no checkpoint in ${checkpointDir}: starting a new run`);
    corpus = CharCorpus.load();
    const config: TransformerConfig = { vocabSize: corpus.vocabSize, seqLen: o.seqLen, dim: o.dim, heads: o.heads,
                                        layers: o.layers, attention: o.attention };
    model = buildTransformer(config);
    compileTransformer(model, o.learningRate);
    state = { step: 0, losses: [], vocabulary: corpus.vocabulary, config: { ...config } };
  }
  const seqLen = o.seqLen;
  const positions = (state.config.seqLen as number | undefined) ?? seqLen;
  if (seqLen > positions) throw new Error(`--seq ${seqLen} exceeds the checkpoint's position embedding (${positions})`);
  console.log(`corpus: ${corpus.text.length.toLocaleString('en-US')} characters, vocabulary ${corpus.vocabSize}; ` +
              `model: ${model.countParams().toLocaleString('en-US')} parameters, ${JSON.stringify(state.config)}`);
  console.log(`training ${o.steps} steps of ${o.batch} x ${seqLen} tokens (${o.attention} attention)`);

  const started = Date.now();
  const firstStep = state.step;
  const saveEvery = o.saveEvery > 0 ? o.saveEvery : o.steps;
  // Chunks of steps (one upload of their windows each), a checkpoint after each chunk. The steps
  // run through trainSteps, which reads each loss while the next step runs (model.fit would wait
  // for every loss with the GPU idle); the progress line therefore trails by one step.
  for (let done = 0; done < o.steps;) {
    const chunk = Math.min(saveEvery, o.steps - done);
    const { inputs, targets } = corpus.windows(chunk * o.batch, seqLen, random);
    const xs = tf.tensor2d(inputs, [chunk * o.batch, seqLen], 'int32');
    const ys = tf.tensor3d(Float32Array.from(targets), [chunk * o.batch, seqLen, 1]);
    const batches: tf.Tensor[] = [];
    await trainSteps(model, chunk, step => {
      const tokens = tf.slice(xs, [step * o.batch, 0], [o.batch, seqLen]);
      const stepTargets = tf.slice(ys, [step * o.batch, 0, 0], [o.batch, seqLen, 1]);
      batches.push(tokens, stepTargets);
      return { tokens, targets: stepTargets };
    }, (_step, loss) => {
      state.losses.push(loss);
      state.step++;
      // Steps overlap (the loss arrives one step late), so the rate is the run's so far.
      const done = state.step - firstStep, elapsed = Date.now() - started;
      progress(done, o.steps, loss, done * o.batch * seqLen / (elapsed / 1000), elapsed);
    });
    tf.dispose([xs, ys, ...batches]);
    done += chunk;
    await saveCheckpoint(checkpointDir, model, state);
  }
  const seconds = (Date.now() - started) / 1000;
  console.log(`trained ${o.steps} steps in ${seconds.toFixed(1)} s ` +
              `(${Math.round(o.steps * o.batch * seqLen / seconds).toLocaleString('en-US')} tokens/s overall); ` +
              `checkpoint: ${checkpointDir}`);
  const chart = await writeLossChart(path.join(o.outDir, 'loss'), state.losses);
  console.log(`loss curve (${state.losses.length} steps, ${state.losses[0]?.toFixed(3)} -> ` +
              `${state.losses[state.losses.length - 1]?.toFixed(3)}): ${chart.png ?? `${chart.svg} (${chart.reason})`}`);

  if (o.sampleLength > 0) await generateText(model, corpus, o, random);
}

const rate = (g: Generation) => `${g.tokens.length} tokens in ${g.seconds.toFixed(2)} s, ${(g.tokens.length / g.seconds).toFixed(1)} tokens/s`;

/**
 * Generates o.sampleLength characters after o.prompt with the key/value cache (and, with
 * o.uncached, again by full recomputation, reporting both rates and whether the tokens agree).
 */
async function generateText(model: tf.LayersModel, corpus: CharCorpus, o: TrainingOptions, random: () => number): Promise<void> {
  const prompt = Array.from(corpus.encode(o.prompt));
  const room = contextLength(model) - prompt.length;
  const length = Math.min(o.sampleLength, room);
  if (length < o.sampleLength) console.log(`note: the model has ${contextLength(model)} positions: generating ${length} tokens`);
  if (length <= 0) return;
  const seed = Math.floor(random() * 2 ** 32);
  const options = (label: string) => ({ length, temperature: o.temperature, random: seededRandom(seed), onToken: tokenProgress(label) });
  const cached = await generateCached(model, prompt, options('generating with the cache'));
  console.log(`sample (temperature ${o.temperature}; with the cache: ${rate(cached)}):\n${o.prompt}${corpus.decode(cached.tokens)}`);
  if (!o.uncached) return;
  const full = await generateUncached(model, prompt, options('generating by full recomputation'));
  const same = full.tokens.every((t, i) => t === cached.tokens[i]);
  console.log(`without the cache (full recomputation per token): ${rate(full)}; with the cache ` +
              `${(full.seconds / cached.seconds).toFixed(2)}x faster; tokens ${same ? 'identical' : 'differ'}` +
              (same || o.temperature === 0 ? '' : ' (sampling: rounding can tip a draw)'));
  if (!same && o.temperature === 0) throw new Error('greedy generation with the cache differs from full recomputation');
}
