/**
 * The browser demo, written as a <script> user would: it only touches the global `tf` that
 * tf.min.js, tf-backend-webgpu.min.js and tfjs-flash-attention.min.js build up (see index.html).
 *
 * Query parameters (the browser test uses them to keep the run short):
 *   seqs=128,256,...   sequence lengths of the benchmark
 *   steps=N            training steps
 *   headDim=N          head size of the benchmark (default 64)
 *   backend=name       force a backend instead of webgpu -> webgl -> cpu
 */
import type * as tfTypes from '@tensorflow/tfjs';
import type { flashAttention as FlashAttentionFn } from '../../src/flash_attention';
import { LiveChart, mountChart } from './chart';
import {
  lossRows, lossSpec, LossOptions, SERIES_COLORS, SweepFailure, SweepOptions, SweepPoint, sweepRows, sweepSpec,
} from '../../charts/specs';

type Tensor = tfTypes.Tensor;
type Tensor4D = tfTypes.Tensor4D;
declare const tf: typeof tfTypes & { flashAttention: typeof FlashAttentionFn };

interface BenchPoint {
  seq: number;
  flashMs?: number; stockMs?: number;
  flashMiB?: number; stockMiB?: number;
  flashError?: string; stockError?: string;
}

/** What the page exposes for the browser test (and for anyone poking at it in devtools). */
interface DemoState {
  backend?: string;
  backendNote?: string;
  bench: BenchPoint[];
  losses: number[];
  trainedWith?: string;
  done: boolean;
  error?: string;
}

const state: DemoState = { bench: [], losses: [], done: false };
(window as unknown as { demoState: DemoState }).demoState = state;

const params = new URLSearchParams(location.search);
const SEQ_LENGTHS = (params.get('seqs') ?? '256,512,1024,2048,4096').split(',').map(Number).filter(n => n > 0);
const TRAIN_STEPS = Number(params.get('steps') ?? 200);
const BENCH = { batch: 1, heads: 4, headDim: Number(params.get('headDim') ?? 64), causal: true, repeats: 3 };
const SERIES = { flash: 'flashAttention', stock: 'stock attention' } as const;
const LOSS_SERIES = 'loss';

/** The page's three charts, mounted once by main() and fed as results come in. */
const charts: Partial<Record<'time' | 'memory' | 'loss', LiveChart>> = {};

const $ = (id: string) => document.getElementById(id)!;

// ---------------------------------------------------------------------------------------------
// Backend: WebGPU when the browser has it, else WebGL, else CPU; say which and why.

const BACKEND_LABEL: Record<string, string> = { webgpu: 'WebGPU', webgl: 'WebGL', cpu: 'CPU' };

function adapterDescription(name: string): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const backend = tf.backend() as any;
    if (name === 'webgpu') {
      const info = backend.adapterInfo ?? {};
      return [info.vendor, info.architecture].filter(Boolean).join(' / ');
    }
    if (name === 'webgl') {
      const gl = backend.gpgpu?.gl as WebGLRenderingContext | undefined;
      const ext = gl?.getExtension('WEBGL_debug_renderer_info');
      return gl ? String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER)) : '';
    }
  } catch { /* a description is a nicety */ }
  return '';
}

async function pickBackend(): Promise<void> {
  const forced = params.get('backend');
  const candidates = forced ? [forced] : ['webgpu', 'webgl', 'cpu'];
  const skipped: string[] = [];
  for (const name of candidates) {
    if (name === 'webgpu' && !('gpu' in navigator)) {
      skipped.push('WebGPU is not available in this browser (no navigator.gpu)');
      continue;
    }
    let ok = false;
    try { ok = tf.findBackendFactory(name) != null && await tf.setBackend(name); } catch { ok = false; }
    if (!ok) {
      skipped.push(`${BACKEND_LABEL[name] ?? name} failed to initialise`);
      continue;
    }
    await tf.ready();
    const adapter = adapterDescription(name);
    const path = tf.getKernel('FlashAttention', name) ? 'its fused kernel' : 'the blockwise fallback (no fused kernel for this backend)';
    state.backend = name;
    // A software adapter (SwiftShader: headless CI, GPU blocklists) runs correctly but slowly.
    const software = /swiftshader|llvmpipe|software/i.test(adapter);
    state.backendNote = [
      ...skipped.map(s => `${s}.`),
      `Running on ${BACKEND_LABEL[name] ?? name}${adapter ? ` (${adapter})` : ''}${forced ? ', as requested' : ''}: flashAttention uses ${path}.`,
      ...(software ? ['This is a software renderer: timings say nothing about a real GPU.'] : []),
    ].join(' ');
    $('backend').textContent = state.backendNote;
    $('backend').classList.toggle('warn', skipped.length > 0 || software);
    return;
  }
  throw new Error(`no usable backend: ${skipped.join('; ')}`);
}

// ---------------------------------------------------------------------------------------------
// Flash vs stock attention over growing sequence lengths.

/** What one writes without this package: the full [batch, heads, seq, seq] score matrix. */
function stockAttention(q: Tensor4D, k: Tensor4D, v: Tensor4D, causal: boolean): Tensor4D {
  return tf.tidy(() => {
    const [qh, kh, vh] = [q, k, v].map(t => tf.transpose(t, [0, 2, 1, 3]));   // BSHD -> BHSD
    const seq = q.shape[1], seqK = k.shape[1];
    let scores = tf.mul(tf.matMul(qh, kh, false, true), 1 / Math.sqrt(q.shape[3]));
    if (causal) {
      const keep = tf.linalg.bandPart(tf.ones([seq, seqK]), -1, seqK - seq);
      scores = tf.add(scores, tf.mul(tf.sub(1, keep), -1e9));
    }
    return tf.transpose(tf.matMul(tf.softmax(scores), vh), [0, 2, 1, 3]) as Tensor4D;
  });
}

/** Median wall time of fn (output read back) after a warm-up call that compiles the shaders. */
async function timeMs(fn: () => Tensor): Promise<number> {
  const warm = fn();
  await warm.data();
  warm.dispose();
  const times: number[] = [];
  for (let r = 0; r < BENCH.repeats; r++) {
    const t0 = performance.now();
    const y = fn();
    await y.data();
    times.push(performance.now() - t0);
    y.dispose();
  }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)];
}

/** Peak tensor bytes allocated while fn runs (tfjs's own accounting, any backend), in MiB. */
async function peakMiB(fn: () => Tensor): Promise<number> {
  const before = tf.memory().numBytes;
  const info = await tf.profile(() => fn());
  (info.result as Tensor).dispose();
  return (info.peakBytes - before) / 2 ** 20;
}

/** Time and memory against sequence length: charts/specs.ts's length sweep, as in the bench's chart. */
function benchChartOptions(key: 'Ms' | 'MiB'): SweepOptions {
  return {
    title: key === 'Ms' ? 'Forward time (median, incl. readback)' : 'Peak tensor memory (tf.profile)',
    yTitle: key === 'Ms' ? 'ms (log scale)' : 'MiB (log scale)',
    logY: true,
    series: [SERIES.flash, SERIES.stock],
    colors: [SERIES_COLORS.flash, SERIES_COLORS.stock],
    seqs: SEQ_LENGTHS,
    width: 420,
    height: 220,
  };
}

function benchRows(key: 'Ms' | 'MiB'): Array<Record<string, unknown>> {
  const points: SweepPoint[] = [];
  const failures: SweepFailure[] = [];
  for (const p of state.bench) {
    for (const which of ['flash', 'stock'] as const) {
      const value = p[`${which}${key}`], error = p[`${which}Error`];
      if (error) failures.push({ seq: p.seq, series: SERIES[which], label: 'failed', detail: error.slice(0, 120) });
      else if (value !== undefined) points.push({ seq: p.seq, series: SERIES[which], value });
    }
  }
  return sweepRows(points, failures, benchChartOptions(key));
}

async function drawBench(): Promise<void> {
  await Promise.all([charts.time?.update(benchRows('Ms')), charts.memory?.update(benchRows('MiB'))]);
}

async function runBenchmark(): Promise<void> {
  const { batch, heads, headDim, causal } = BENCH;
  $('bench-config').textContent =
      `q, k, v: [${batch}, seq, ${heads} heads, ${headDim}], ${causal ? 'causal' : 'full'}; ` +
      `stock = matMul → softmax → matMul with the [batch, heads, seq, seq] matrix.`;
  await drawBench();
  const status: string[] = [];
  for (const seq of SEQ_LENGTHS) {
    const point: BenchPoint = { seq };
    const [q, k, v] = [0, 1, 2].map(() => tf.randomNormal([batch, seq, heads, headDim]) as Tensor4D);
    const variants = [
      ['flash', () => tf.flashAttention(q, k, v, { causal })],
      ['stock', () => stockAttention(q, k, v, causal)],
    ] as const;
    for (const [which, fn] of variants) {
      try {
        point[`${which}Ms`] = await timeMs(fn);
        point[`${which}MiB`] = await peakMiB(fn);
      } catch (err) {
        // The stock path runs out of memory first; the chart just stops there.
        point[`${which}Error`] = String((err as Error).message ?? err);
      }
    }
    tf.dispose([q, k, v]);
    state.bench.push(point);
    const fmt = (ms?: number, mib?: number, e?: string) => e ? `failed (${e.slice(0, 60)})` : `${ms!.toFixed(1)} ms, ${mib!.toPrecision(3)} MiB`;
    status.push(`seq ${String(seq).padStart(5)}: flash ${fmt(point.flashMs, point.flashMiB, point.flashError)}; ` +
                `stock ${fmt(point.stockMs, point.stockMiB, point.stockError)}`);
    $('bench-status').textContent = status.join('\n');
    await drawBench();
    await tf.nextFrame();
  }
}

// ---------------------------------------------------------------------------------------------
// Training: a causal self-attention model learns the running mean of its input sequence, a task
// attention solves exactly (equal scores over the visible keys, values passed through).

const TRAIN = { batch: 16, seq: 24, features: 8, heads: 2, keyDim: 8, learningRate: 0.01 };

function runningMeanBatch(): { x: Tensor; y: Tensor } {
  return tf.tidy(() => {
    const x = tf.randomNormal([TRAIN.batch, TRAIN.seq, TRAIN.features]);
    const counts = tf.reshape(tf.range(1, TRAIN.seq + 1), [1, TRAIN.seq, 1]);
    return { x, y: tf.div(tf.cumsum(x, 1), counts) };
  });
}

/** The live loss: charts/specs.ts's loss curve, as in the training example's loss.png. */
const LOSS_CHART: LossOptions = {
  title: 'Training loss, live', yTitle: 'loss (MSE, log scale)', logY: true, series: LOSS_SERIES,
  points: TRAIN_STEPS <= 64, width: 420, height: 220,
};

async function drawLoss(): Promise<void> {
  await charts.loss?.update(lossRows(state.losses, LOSS_SERIES));
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type LayerFactory = (args: Record<string, unknown>) => any;

function buildModel(factory: LayerFactory): tfTypes.LayersModel {
  const input = tf.input({ shape: [TRAIN.seq, TRAIN.features] });
  const attention = factory({ numHeads: TRAIN.heads, keyDim: TRAIN.keyDim, causal: true });
  // Self-attention: the layer takes the query positionally and value as a keyword, as Keras does.
  const attended = attention.apply(input, { value: input }) as tfTypes.SymbolicTensor;
  const output = tf.layers.dense({ units: TRAIN.features }).apply(attended) as tfTypes.SymbolicTensor;
  return tf.model({ inputs: input, outputs: output });
}

async function runTraining(): Promise<void> {
  const factory = (tf.layers as unknown as Record<string, LayerFactory | undefined>).flashMultiHeadAttention;
  if (typeof factory !== 'function') {
    throw new Error('tf.layers.flashMultiHeadAttention is missing: the package bundle did not attach the layer');
  }
  $('train-config').textContent =
      `tf.layers.flashMultiHeadAttention({numHeads: ${TRAIN.heads}, keyDim: ${TRAIN.keyDim}, causal: true}) → dense; ` +
      `learns the running mean of ${TRAIN.seq} random ${TRAIN.features}-vectors; Adam, lr ${TRAIN.learningRate}, batch ${TRAIN.batch}.`;
  state.trainedWith = 'tf.layers.flashMultiHeadAttention';
  const model = buildModel(factory);
  model.compile({ optimizer: tf.train.adam(TRAIN.learningRate), loss: 'meanSquaredError' });
  await drawLoss();
  for (let step = 0; step < TRAIN_STEPS; step++) {
    const { x, y } = runningMeanBatch();
    const loss = await model.trainOnBatch(x, y) as number;
    tf.dispose([x, y]);
    state.losses.push(loss);
    $('train-status').textContent = `step ${step + 1} / ${TRAIN_STEPS}: loss ${loss.toExponential(3)}`;
    if (step % 5 === 4 || step === TRAIN_STEPS - 1) {
      await drawLoss();
      await tf.nextFrame();
    }
  }
  model.dispose();
}

async function main(): Promise<void> {
  try {
    [charts.time, charts.memory, charts.loss] = await Promise.all([
      mountChart($('time-chart'), sweepSpec([], [], benchChartOptions('Ms'))),
      mountChart($('memory-chart'), sweepSpec([], [], benchChartOptions('MiB'))),
      mountChart($('loss-chart'), lossSpec([], LOSS_CHART)),
    ]);
    await pickBackend();
    await runBenchmark();
    await runTraining();
  } catch (err) {
    state.error = String((err as Error).stack ?? err);
    const box = document.createElement('pre');
    box.className = 'status error';
    box.textContent = `Error: ${state.error}`;
    document.querySelector('main')!.prepend(box);
  } finally {
    state.done = true;
  }
}

main();
