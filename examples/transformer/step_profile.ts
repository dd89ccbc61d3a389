/**
 * Where one training step's time goes (imported by profile_step.ts once the backend is prepared):
 * wall time per step as compare.ts measures it (trainOnBatch, which reads the loss back every
 * step) and as a loop that reads it back only at the end; the CPU's share (time to enqueue a
 * step, uploads and readbacks counted at the WebGPU backend); and GPU time per kernel from
 * tf.profile (on WebGPU tfjs times each kernel with timestamp queries in its own pass), split into
 * forward + backward and the optimizer (Adam), grouped by kernel name.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import '../../src/index';
import { activateBackend } from './backend';
import { CharCorpus, seededRandom } from './data';
import { buildTransformer, compileTransformer, trainingLoss } from './model';

export interface StepProfileOptions {
  backend: 'webgpu' | 'cpu'; backendDetail: string;
  seq: number; batch: number; layers: number; dim: number; heads: number;
  steps: number; attentions: Array<'flash' | 'stock'>; out: string; seed: number;
}

interface KernelFamily { kernel: string; count: number; gpuMs: number }

interface PhaseProfile {
  kernels: number;
  /** Sum of the kernels' own GPU times (null off WebGPU: tfjs-cpu's times include its reads). */
  gpuMs: number;
  families: KernelFamily[];
}

export interface StepProfile {
  attention: 'flash' | 'stock';
  /** Median wall ms of a trainOnBatch step (compare.ts's measure: reads the loss every step). */
  trainOnBatchMs: number;
  /** Median wall ms of optimizer.minimize + reading the loss back, every step. */
  syncedStepMs: number;
  /** Wall ms per step of `steps` minimize calls with one readback at the end. */
  pipelinedStepMs: number;
  /** CPU ms to enqueue one minimize step (until it returns, nothing awaited). */
  enqueueMs: number;
  /** What one step moves between CPU and GPU, counted at the WebGPU backend. */
  uploads: { count: number; bytes: number; byShape: Record<string, number> };
  readbacks: { count: number; bytes: number };
  forwardBackward: PhaseProfile;
  optimizer: PhaseProfile;
  /** tfjs-backend-webgpu submits its command buffer every this many dispatches (its default 15). */
  submitBatch?: { size: number; trainOnBatchMs: number; pipelinedStepMs: number };
}

/** The alternative WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE tried (fewer queue submits per step). */
const SUBMIT_BATCH = 128;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** Counts uploadToGPU calls that copy host data and read()s of the WebGPU backend, while on. */
class TransferCounter {
  uploads = { count: 0, bytes: 0, byShape: {} as Record<string, number> };
  readbacks = { count: 0, bytes: 0 };
  on = false;

  constructor() {
    if (tf.getBackend() !== 'webgpu') return;
    const backend = tf.backend() as unknown as {
      tensorMap: { get(id: object): { values?: ArrayLike<number> | null; resource?: unknown; shape: number[] } };
      uploadToGPU(id: object): void; read(id: object): Promise<unknown>;
    };
    const upload = backend.uploadToGPU.bind(backend), read = backend.read.bind(backend);
    backend.uploadToGPU = (id: object) => {
      const d = backend.tensorMap.get(id);
      if (this.on && d.resource == null && d.values) {
        this.uploads.count++;
        this.uploads.bytes += 4 * d.values.length;
        const shape = `[${d.shape.join(',')}]`;
        this.uploads.byShape[shape] = (this.uploads.byShape[shape] ?? 0) + 1;
      }
      upload(id);
    };
    backend.read = (id: object) => {
      if (this.on) {
        this.readbacks.count++;
        this.readbacks.bytes += 4 * backend.tensorMap.get(id).shape.reduce((a, b) => a * b, 1);
      }
      return read(id);
    };
  }

  reset(): void {
    this.uploads = { count: 0, bytes: 0, byShape: {} };
    this.readbacks = { count: 0, bytes: 0 };
  }
}

async function profilePhase(run: () => Promise<void>): Promise<PhaseProfile> {
  const info = await tf.profile(run);
  const byKernel = new Map<string, KernelFamily>();
  let gpuMs = 0;
  for (const k of info.kernels) {
    const ms = typeof k.kernelTimeMs === 'number' && Number.isFinite(k.kernelTimeMs) ? k.kernelTimeMs : 0;
    const f = byKernel.get(k.name) ?? { kernel: k.name, count: 0, gpuMs: 0 };
    f.count++;
    f.gpuMs += ms;
    gpuMs += ms;
    byKernel.set(k.name, f);
  }
  const families = [...byKernel.values()].sort((a, b) => b.gpuMs - a.gpuMs || b.count - a.count)
                                         .map(f => ({ ...f, gpuMs: +f.gpuMs.toFixed(3) }));
  return { kernels: info.kernels.length, gpuMs: +gpuMs.toFixed(3), families };
}

async function profileOne(o: StepProfileOptions, corpus: CharCorpus, attention: 'flash' | 'stock',
                          counter: TransferCounter): Promise<StepProfile> {
  const model = buildTransformer({ vocabSize: corpus.vocabSize, seqLen: o.seq, dim: o.dim, heads: o.heads,
                                   layers: o.layers, attention });
  compileTransformer(model, 1e-3);
  const { inputs, targets } = corpus.windows(o.batch, o.seq, seededRandom(o.seed));
  const x = tf.tensor2d(inputs, [o.batch, o.seq], 'int32');
  const y = tf.tensor3d(Float32Array.from(targets), [o.batch, o.seq, 1]);
  const optimizer = model.optimizer;
  const loss = () => trainingLoss(model, x, y);
  const minimize = () => optimizer.minimize(loss, true) as tf.Scalar;
  try {
    // Warm-up: shader compilation, buffer pool, clocks.
    for (let i = 0; i < 2; i++) await model.trainOnBatch(x, y);
    for (let i = 0; i < 2; i++) { const c = minimize(); await c.data(); c.dispose(); }

    const timed = async (step: () => Promise<void>) => {
      const ms: number[] = [];
      for (let i = 0; i < o.steps; i++) { const t0 = performance.now(); await step(); ms.push(performance.now() - t0); }
      return median(ms);
    };
    const trainOnBatchMs = await timed(async () => { await model.trainOnBatch(x, y); });
    const syncedStepMs = await timed(async () => { const c = minimize(); await c.data(); c.dispose(); });

    const pipelined = async () => {
      const enqueue: number[] = [];
      const costs: tf.Scalar[] = [];
      const t0 = performance.now();
      for (let i = 0; i < o.steps; i++) {
        const e0 = performance.now();
        costs.push(minimize());
        enqueue.push(performance.now() - e0);
      }
      await costs[costs.length - 1].data();
      const stepMs = (performance.now() - t0) / o.steps;
      tf.dispose(costs);
      return { stepMs, enqueueMs: median(enqueue) };
    };
    const { stepMs: pipelinedStepMs, enqueueMs } = await pipelined();
    let submitBatch: StepProfile['submitBatch'];
    if (tf.getBackend() === 'webgpu') {
      const flag = 'WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', before = tf.env().get(flag);
      tf.env().set(flag, SUBMIT_BATCH);
      submitBatch = { size: SUBMIT_BATCH, trainOnBatchMs: await timed(async () => { await model.trainOnBatch(x, y); }),
                      pipelinedStepMs: (await pipelined()).stepMs };
      tf.env().set(flag, before);
    }

    counter.reset();
    counter.on = true;
    const c = minimize();
    await c.data();
    c.dispose();
    counter.on = false;
    const transfers = { uploads: counter.uploads, readbacks: counter.readbacks };

    let grads: { value: tf.Scalar; grads: tf.NamedTensorMap } | null = null;
    const forwardBackward = await profilePhase(async () => {
      grads = tf.variableGrads(loss, model.trainableWeights.map(w => (w as unknown as { val: tf.Variable }).val));
      await grads.value.data();
    });
    const optimizer_ = await profilePhase(async () => {
      optimizer.applyGradients(grads!.grads);
      const first = Object.values(grads!.grads)[0];
      await tf.slice(tf.reshape(first, [-1]), 0, 1).data();
    });
    tf.dispose(grads!.value);
    tf.dispose(Object.values(grads!.grads));
    return {
      attention, trainOnBatchMs, syncedStepMs, pipelinedStepMs, enqueueMs, ...transfers,
      forwardBackward, optimizer: optimizer_, submitBatch,
    };
  } finally {
    tf.dispose([x, y]);
    optimizer?.dispose();
    model.dispose();
  }
}

const f = (x: number, digits = 1) => x.toFixed(digits);

/** Markdown: the step's wall/CPU/GPU summary, then one table per phase by kernel family. */
export function profileMarkdown(o: StepProfileOptions, rows: StepProfile[]): string {
  const tokens = o.batch * o.seq;
  const lines = [
    `Backend ${o.backendDetail}; model dim ${o.dim}, ${o.heads} heads, ${o.layers} layers, seq ${o.seq}, batch ${o.batch}; ` +
    `medians of ${o.steps} steps; ${new Date().toISOString()}.`, '',
    '| attention | trainOnBatch ms (tokens/s) | minimize + loss read ms | pipelined ms/step (tokens/s) | CPU enqueue ms/step | ' +
    'GPU ms fwd+bwd (kernels) | GPU ms Adam (kernels) | uploads/step | readbacks/step |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(r => `| ${r.attention} | ${f(r.trainOnBatchMs)} (${Math.round(tokens / r.trainOnBatchMs * 1000).toLocaleString('en-US')}) | ` +
        `${f(r.syncedStepMs)} | ${f(r.pipelinedStepMs)} (${Math.round(tokens / r.pipelinedStepMs * 1000).toLocaleString('en-US')}) | ` +
        `${f(r.enqueueMs)} | ${f(r.forwardBackward.gpuMs)} (${r.forwardBackward.kernels}) | ${f(r.optimizer.gpuMs)} (${r.optimizer.kernels}) | ` +
        `${r.uploads.count} (${f(r.uploads.bytes / 1024)} KiB) | ${r.readbacks.count} (${r.readbacks.bytes} B) |`),
  ];
  for (const r of rows) {
    const shapes = Object.entries(r.uploads.byShape).sort((a, b) => b[1] - a[1]).slice(0, 6)
                         .map(([shape, n]) => `${n} × ${shape}`).join(', ');
    lines.push('', `${r.attention}: uploads per step by shape: ${shapes || 'none'}.` +
               (r.submitBatch ? ` With WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE = ${r.submitBatch.size} (tfjs's default 15): ` +
                                `trainOnBatch ${f(r.submitBatch.trainOnBatchMs)} ms, pipelined ${f(r.submitBatch.pipelinedStepMs)} ms/step.` : ''));
  }
  for (const r of rows) {
    for (const [phase, p] of [['forward + backward', r.forwardBackward], ['Adam', r.optimizer]] as const) {
      lines.push('', `${r.attention}, ${phase}: ${p.kernels} kernels, ${f(p.gpuMs, 2)} GPU ms`, '',
                 '| kernel | count | GPU ms | share |', '|---|---:|---:|---:|');
      for (const k of p.families) {
        lines.push(`| ${k.kernel} | ${k.count} | ${f(k.gpuMs, 3)} | ${p.gpuMs ? f(100 * k.gpuMs / p.gpuMs) : '–'} % |`);
      }
    }
  }
  return lines.join('\n') + '\n';
}

export async function runStepProfile(o: StepProfileOptions): Promise<void> {
  await activateBackend(tf, o.backend);
  const corpus = CharCorpus.load();
  const counter = new TransferCounter();
  console.log(`backend: ${o.backendDetail}; model dim ${o.dim}, ${o.heads} heads, ${o.layers} layers, seq ${o.seq}`);
  const rows: StepProfile[] = [];
  for (const attention of o.attentions) {
    const r = await profileOne(o, corpus, attention, counter);
    rows.push(r);
    console.log(`${attention}: trainOnBatch ${f(r.trainOnBatchMs)} ms, pipelined ${f(r.pipelinedStepMs)} ms/step, ` +
                `enqueue ${f(r.enqueueMs)} ms, GPU fwd+bwd ${f(r.forwardBackward.gpuMs)} ms (${r.forwardBackward.kernels} kernels), ` +
                `Adam ${f(r.optimizer.gpuMs)} ms (${r.optimizer.kernels} kernels)`);
  }
  const md = profileMarkdown(o, rows);
  console.log(`\n${md}`);
  fs.mkdirSync(path.dirname(o.out), { recursive: true });
  fs.writeFileSync(o.out, JSON.stringify({ options: o, rows }, null, 1));
  fs.writeFileSync(o.out.replace(/\.json$/, '') + '.md', md);
  console.log(`written: ${o.out} and .md`);
}
