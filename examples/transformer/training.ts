/** The training run behind train.ts (imported once the backend is prepared). */
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import '../../src/index';
import { activateBackend } from './backend';
import { hasCheckpoint, loadCheckpoint, saveCheckpoint, TrainingState } from './checkpoint';
import { CharCorpus, seededRandom } from './data';
import { buildTransformer, compileTransformer, sampleText, trainSteps, TransformerConfig } from './model';
import { writeLossChart } from './plot';

export interface TrainingOptions {
  backend: 'webgpu' | 'cpu'; backendDetail: string;
  seqLen: number; batch: number; steps: number;
  layers: number; dim: number; heads: number; learningRate: number; attention: 'flash' | 'stock';
  outDir: string; resume: boolean; saveEvery: number;
  sampleLength: number; sampleContext: number; temperature: number; seed: number;
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

  if (o.sampleLength > 0) {
    const prompt = 'There was once ';
    const text = await sampleText(model, s => corpus.encode(s), ids => corpus.decode(ids), prompt, o.sampleLength,
                            Math.min(o.sampleContext, seqLen), o.temperature, random);
    console.log(`sample (temperature ${o.temperature}):\n${prompt}${text}`);
  }
}
