/** The comparison behind compare.ts (imported once the backend is prepared). */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import '../../src/index';
import { activateBackend } from './backend';
import { CharCorpus, seededRandom } from './data';
import { buildTransformer, compileTransformer, trainSteps } from './model';

export interface ComparisonOptions {
  backend: 'webgpu' | 'cpu'; backendDetail: string;
  seqs: number[]; batch: number; layers: number; dim: number; heads: number;
  steps: number; maxStepSeconds: number; out: string; seed: number;
  attentions: Array<'flash' | 'stock'>;
  /**
   * 'pipelined': the example's training loop (trainSteps: optimizer.minimize, each loss read while
   * the next step runs); 'trainOnBatch': tfjs-layers' trainOnBatch, which waits for every loss.
   */
  loop: 'pipelined' | 'trainOnBatch';
}

interface Measurement {
  seq: number; attention: 'flash' | 'stock';
  /** trainOnBatch: median over the timed steps; pipelined: the timed steps' wall time ÷ steps. */
  msPerStep?: number; tokensPerSecond?: number;
  /** Peak bytes of live tfjs tensors during one training step (tf.profile). */
  peakMB?: number;
  loss?: number;
  /** Why this configuration could not run (it then stops for longer sequences too). */
  failure?: string;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** Runs fn under WebGPU out-of-memory and validation error scopes; throws what they caught. */
async function withGpuErrorScopes<T>(fn: () => Promise<T>): Promise<T> {
  if (tf.getBackend() !== 'webgpu') return fn();
  const device = (tf.backend() as unknown as { device: GPUDevice }).device;
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  let result: T | undefined, thrown: unknown;
  try { result = await fn(); } catch (e) { thrown = e; }
  const validation = await device.popErrorScope();
  const oom = await device.popErrorScope();
  if (thrown) throw thrown;
  // tfjs does not check WebGPU limits: an oversized binding shows up only here, with garbage results.
  if (oom || validation) throw new Error(`WebGPU ${oom ? 'out of memory' : 'validation error'}: ${(oom ?? validation)!.message.split('\n')[0]}`);
  return result!;
}

/** WebGPU's limit on one storage binding; tfjs does not check it (2 GiB - 4 on the H100). */
function maxBindingBytes(): number {
  if (tf.getBackend() !== 'webgpu') return Infinity;
  return (tf.backend() as unknown as { device: GPUDevice }).device.limits.maxStorageBufferBindingSize;
}

async function measure(o: ComparisonOptions, corpus: CharCorpus, seq: number, attention: 'flash' | 'stock'): Promise<Measurement> {
  const scoresBytes = 4 * o.batch * o.heads * seq * seq;
  if (attention === 'stock' && scoresBytes > maxBindingBytes()) {
    // Stock attention binds the whole [batch, heads, T, T] score tensor in one shader: it cannot run.
    return { seq, attention, failure: `too large: the ${(scoresBytes / 2 ** 30).toFixed(1)} GiB score tensor exceeds ` +
                                     `the ${(maxBindingBytes() / 2 ** 30).toFixed(1)} GiB WebGPU binding limit` };
  }
  const model = buildTransformer({ vocabSize: corpus.vocabSize, seqLen: seq, dim: o.dim, heads: o.heads,
                                   layers: o.layers, attention });
  compileTransformer(model, 1e-3);
  const { inputs, targets } = corpus.windows(o.batch, seq, seededRandom(o.seed + seq));
  const x = tf.tensor2d(inputs, [o.batch, seq], 'int32');
  const y = tf.tensor3d(Float32Array.from(targets), [o.batch, seq, 1]);
  const result: Measurement = { seq, attention };
  const step = async () => {
    const loss = Number(await withGpuErrorScopes(() => model.trainOnBatch(x, y)));
    if (!Number.isFinite(loss)) throw new Error(`non-finite loss ${loss}`);
    return loss;
  };
  try {
    // The first (profiled) step also compiles shaders / warms up, so it is not timed.
    const started = Date.now();
    const bytesBefore = tf.memory().numBytes;
    const profile = await tf.profile(async () => { await step(); });
    result.peakMB = (profile.peakBytes - bytesBefore) / 2 ** 20;
    const warmupSeconds = (Date.now() - started) / 1000;
    // The first step also compiles every shader (WebGPU), so it gets three times the limit.
    if (warmupSeconds > 3 * o.maxStepSeconds) {
      result.failure = `first step took ${warmupSeconds.toFixed(0)} s (> 3 x --max-step-seconds=${o.maxStepSeconds})`;
    } else {
      if (o.loop === 'trainOnBatch') {
        const times: number[] = [];
        for (let i = 0; i < o.steps; i++) {
          const t0 = performance.now();
          result.loss = await step();
          times.push(performance.now() - t0);
        }
        result.msPerStep = median(times);
      } else {
        // One untimed pipelined step first: minimize's path compiles shaders trainOnBatch did not.
        await withGpuErrorScopes(() => trainSteps(model, 1, () => ({ tokens: x, targets: y }), () => {}));
        const t0 = performance.now();
        await withGpuErrorScopes(() => trainSteps(model, o.steps, () => ({ tokens: x, targets: y }), (_, loss) => {
          if (!Number.isFinite(loss)) throw new Error(`non-finite loss ${loss}`);
          result.loss = loss;
        }));
        result.msPerStep = (performance.now() - t0) / o.steps;
      }
      result.tokensPerSecond = o.batch * seq / (result.msPerStep / 1000);
      if (result.msPerStep / 1000 > o.maxStepSeconds) result.failure = `step took ${(result.msPerStep / 1000).toFixed(0)} s`;
    }
  } catch (e) {
    result.failure = (e instanceof Error ? e.message : String(e)).split('\n')[0].slice(0, 160);
  } finally {
    tf.dispose([x, y]);
    model.optimizer?.dispose();
    model.dispose();
  }
  return result;
}

function cell(m: Measurement | undefined): [string, string, string] {
  if (!m) return ['not run', '', ''];
  const fmt = (n: number | undefined, digits: number) => (n === undefined ? '' : n.toFixed(digits));
  const peak = fmt(m.peakMB, 1);
  if (m.msPerStep === undefined) return [`stopped: ${m.failure}`, '', peak];
  return [`${fmt(m.msPerStep, 0)}${m.failure ? ` (${m.failure})` : ''}`, Math.round(m.tokensPerSecond!).toLocaleString('en-US'), peak];
}

export async function runComparison(o: ComparisonOptions): Promise<void> {
  await activateBackend(tf, o.backend);
  const corpus = CharCorpus.load();
  const loop = o.loop === 'trainOnBatch' ? `median of ${o.steps} timed trainOnBatch steps`
             : `${o.steps} timed steps of the example's pipelined loop (optimizer.minimize, loss read one step behind)`;
  console.log(`backend: ${o.backendDetail}; model: dim ${o.dim}, ${o.heads} heads, ${o.layers} layer(s), batch ${o.batch}, ` +
              `causal; ${loop} after one profiled trainOnBatch warm-up step`);
  const rows: Measurement[] = [];
  const stopped = { flash: false, stock: false };
  for (const seq of o.seqs) {
    for (const attention of o.attentions) {
      if (stopped[attention]) continue;
      const m = await measure(o, corpus, seq, attention);
      rows.push(m);
      console.log(JSON.stringify(m));
      if (m.failure) stopped[attention] = true;
    }
    if (o.attentions.every(a => stopped[a])) break;
  }
  const lines = [
    `| seq | flash ms/step | flash tokens/s | flash peak MB | stock ms/step | stock tokens/s | stock peak MB |`,
    `|---|---|---|---|---|---|---|`,
    ...o.seqs.filter(seq => rows.some(r => r.seq === seq)).map(seq => {
      const [flash, stock] = (['flash', 'stock'] as const).map(a => cell(rows.find(r => r.seq === seq && r.attention === a)));
      return `| ${seq} | ${flash.join(' | ')} | ${stock.join(' | ')} |`;
    }),
  ];
  console.log(`\n${lines.join('\n')}`);
  fs.mkdirSync(path.dirname(o.out), { recursive: true });
  fs.writeFileSync(o.out, JSON.stringify({ options: o, rows, table: lines.join('\n') }, null, 2));
  console.log(`\nwritten: ${o.out}`);
}
