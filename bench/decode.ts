/**
 * The decode sweep (`npm run bench -- --decode`): one query row over a long key/value cache, the
 * split-KV forward (kernels/webgpu/flash_decode_webgpu.ts) against the one-pass forward (the
 * decode path switched off) and the stock composite, in one process. Reported: GPU time, the
 * bytes of K and V read once over that time (GB/s), and three yardsticks for the time to read K
 * and V once, all timed as the kernels are (tf.time's per-program timestamps):
 *  - peak: K+V bytes at the peak read bandwidth of a dedicated WGSL read probe (vec4 loads, many
 *    in flight, values reduced and written) over a large buffer: the strict floor, the issue's
 *    "memory bandwidth you measure";
 *  - read-once: the measured time of that probe reading exactly this row's K and V tensors once,
 *    so one dispatch's fixed cost under this timing method is included (what small calls pay);
 *  - copy: K+V bytes at tfjs's `neg` copy bandwidth (read + write), the earlier, weaker yardstick,
 *    kept for continuity.
 * Target (issue 13): at seqK >= 8192, decode within 2x of the time to read K and V once.
 *
 * --decode-targets=128,256,... also times the split-KV forward at those split-pass workgroup
 * targets, --decode-threads at those thread counts, --decode-variants at any DecodeOverride
 * (vec4, prefetch, fused, mintiles, target, threads, cols); --decode-baselines=0 leaves out the one-pass
 * forward and the composite (tuning runs).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type * as tfc from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { flashAttention as FlashAttentionFn } from '../src/flash_attention';
import type { DecodeOverride } from '../kernels/webgpu/flash_decode_webgpu';
import { FlashProgram } from '../kernels/webgpu/program';
import { deviceRandom, TF } from './attention';
import { ErrorScopes, timeCall, TimingPlan } from './measure';
import { decodePeerMarkdown, DecodePeer } from './onnxruntime_decode';

type Tensor = tfc.Tensor;

export interface DecodeSweep {
  seqKs: number[]; batches: number[]; heads: number; kvHeads: number[]; headDims: number[];
  /** Split-pass workgroup targets to tune over (empty: the default only). */
  targets: number[];
  /** Split-pass thread counts to try besides the default (tuning). */
  threads: number[];
  /** Split-pass variants besides the default (bench --decode-variants: key=value joined by '+'). */
  variants: string[];
  /** Time the one-pass forward and the composite too. */
  baselines: boolean;
  /** Size of the copy kernel's buffer (the read probe's peak is measured on twice this). */
  copyBytes: number;
  /** GPU warm-up (ms of matMuls) before every timing (warmClocks). */
  warmMs: number;
}

export const DECODE_GPU_SWEEP: DecodeSweep = {
  seqKs: [1024, 2048, 4096, 8192, 16384, 32768, 65536], batches: [1, 8], heads: 16, kvHeads: [16, 2],
  headDims: [64, 128], targets: [], threads: [], variants: [], baselines: true, copyBytes: 512 * 2 ** 20, warmMs: 30,
};
/** SwiftShader / no GPU: tiny, a minute at most. */
export const DECODE_SMALL_SWEEP: DecodeSweep = {
  seqKs: [512, 2048], batches: [1], heads: 4, kvHeads: [4, 1], headDims: [32], targets: [], threads: [], variants: [],
  baselines: true, copyBytes: 16 * 2 ** 20, warmMs: 0,
};

export interface DecodeRow {
  seqK: number; batch: number; heads: number; kvHeads: number; headDim: number;
  impl: string; gpuMs: number | null; wallMs: number | null; kvBytes: number;
  gbPerS: number | null; splits?: number;
  /** Copy yardstick: K+V bytes at the `neg` copy bandwidth, and GPU time over it. */
  floorMs: number | null; vsFloor: number | null;
  /** Peak yardstick: K+V bytes at the read probe's peak bandwidth, and GPU time over it. */
  peakFloorMs?: number | null; vsPeak?: number | null;
  /** Read-once yardstick: the probe's measured time reading this row's K and V, and GPU time over it. */
  readOnceMs?: number | null; vsReadOnce?: number | null;
  /** GPU ms per program of one timed call (tf.time's profile), e.g. 'DecodeSplitProgram: 0.05, ...'. */
  passes?: string;
  status: string; note?: string;
  /** The onnxruntime peer's rows: its CopyKVCache GPU ms (apart from gpuMs) and relative error vs float64. */
  kvCopyMs?: number | null; relErr?: number;
}

interface DecodeHooks {
  setDecodeOverride: (o: DecodeOverride) => void;
  decodeCalls: () => number;
}

/**
 * The read probe: sums two float buffers (K and V, or two halves of a large buffer) bound as vec4
 * arrays, LOADS vec4 loads per buffer and thread in flight per step, a grid-stride loop over at
 * most `workgroups` workgroups; each workgroup writes its sum, so no load can be dropped.
 */
class ReadProbeProgram extends FlashProgram {
  variableNames = ['a', 'b'];
  variableComponents = [4, 4];
  outputShape: number[];
  workgroupSize: [number, number, number] = [256, 1, 1];
  dispatch: [number, number, number];
  uniforms = 'n4a : i32, n4b : i32, stride : i32,';

  constructor(readonly n4a: number, readonly n4b: number, readonly loads: number, maxWorkgroups: number) {
    super();
    const n4 = Math.max(n4a, n4b);
    const workgroups = Math.max(1, Math.min(Math.ceil(n4 / (256 * loads)), maxWorkgroups, 65535));
    this.outputShape = [workgroups];
    this.dispatch = [workgroups, 1, 1];
    this.shaderKey = `decodeBenchReadProbe_${loads}`;
  }

  data() {
    return [this.n4a, this.n4b, this.dispatch[0] * 256 * this.loads].map(x => ({ type: 'int32' as const, data: [x] }));
  }

  getUserCode(): string {
    const u = Array.from({ length: this.loads }, (_, i) => i);
    return `
    var<workgroup> red : array<vec4<f32>, 256>;
    fn main() {
      let tid = i32(localIndex);
      ${u.map(i => `var acc${i} = vec4<f32>(0.0);`).join(' ')}
      for (var e0 = i32(workgroupId.x) * ${256 * this.loads} + tid; e0 < max(uniforms.n4a, uniforms.n4b); e0 += uniforms.stride) {
        ${u.map(i => `let ea${i} = e0 + ${i * 256}; let oa${i} = ea${i} < uniforms.n4a; let ob${i} = ea${i} < uniforms.n4b;`).join('\n        ')}
        ${u.map(i => `let xa${i} = a[select(0, ea${i}, oa${i})]; let xb${i} = b[select(0, ea${i}, ob${i})];`).join('\n        ')}
        ${u.map(i => `acc${i} += select(vec4<f32>(0.0), xa${i}, oa${i}) + select(vec4<f32>(0.0), xb${i}, ob${i});`).join('\n        ')}
      }
      red[tid] = ${u.map(i => `acc${i}`).join(' + ')};
      workgroupBarrier();
      for (var w = 128; w > 0; w /= 2) {
        if (tid < w) { red[tid] += red[tid + w]; }
        workgroupBarrier();
      }
      if (tid == 0) { result[i32(workgroupId.x)] = dot(red[0], vec4<f32>(1.0)); }
    }`;
  }
}

/** Probe configurations tried for the peak: loads in flight per buffer and thread, workgroup cap. */
const PROBE_CONFIGS = [
  { loads: 4, maxWorkgroups: 65535 }, { loads: 8, maxWorkgroups: 65535 }, { loads: 16, maxWorkgroups: 65535 },
  { loads: 8, maxWorkgroups: 132 * 16 }, { loads: 4, maxWorkgroups: 132 * 32 },
];

/** GPU ms of the read probe over tensors a and b (float32, sizes multiples of 4), tf.time like the kernels. */
async function timeReadProbe(tf: TF, plan: TimingPlan, a: Tensor, b: Tensor, config: { loads: number; maxWorkgroups: number }) {
  const backend = tf.backend() as unknown as WebGPUBackend;
  const run = () => {
    const p = new ReadProbeProgram(a.size / 4, b.size / 4, config.loads, config.maxWorkgroups);
    return tf.engine().makeTensorFromTensorInfo(backend.runWebGPUProgram(p, [a, b], 'float32', p.data()));
  };
  const t = await timeCall(tf, run, plan);
  return t.gpuMs ?? t.wallMs;
}

/**
 * The peak read bandwidth (GB/s of bytes read) of the probe over two buffers of `bytes` each, best
 * of PROBE_CONFIGS, and the config that reached it.
 */
async function peakReadBandwidth(tf: TF, plan: TimingPlan, bytes: number, warmMs: number) {
  const a = tf.ones([bytes / 4]), b = tf.ones([bytes / 4]);
  const tried: Array<{ loads: number; maxWorkgroups: number; ms: number; gbPerS: number }> = [];
  for (const c of PROBE_CONFIGS) {
    await warmClocks(tf, warmMs);
    const ms = await timeReadProbe(tf, plan, a, b, c);
    tried.push({ ...c, ms, gbPerS: 2 * bytes / ms / 1e6 });
    console.log(`# read probe, ${2 * bytes / 2 ** 20} MiB, ${c.loads} vec4 loads per buffer in flight, <= ${c.maxWorkgroups} workgroups: ` +
                `${ms.toFixed(3)} ms, ${(2 * bytes / ms / 1e6).toFixed(0)} GB/s read`);
  }
  tf.dispose([a, b]);
  const best = tried.reduce((x, y) => (y.gbPerS > x.gbPerS ? y : x));
  return { best, tried };
}

/** A --decode-variants entry ('vec4=0+prefetch=0') as a decode override. */
export function variantOverride(spec: string): DecodeOverride {
  const o: DecodeOverride = { mode: 'on' };
  for (const kv of spec.split('+')) {
    const [key, raw] = kv.split('=');
    const x = Number(raw);
    if (!Number.isFinite(x)) throw new Error(`--decode-variants: '${kv}' needs key=number`);
    switch (key) {
      case 'vec4': o.vec4 = x !== 0; break;
      case 'prefetch': o.prefetch = x !== 0; break;
      case 'fused': o.fused = x !== 0; break;
      case 'mintiles': o.minTilesPerSplit = x; break;
      case 'target': o.targetWorkgroups = x; break;
      case 'threads': o.tiles = { ...o.tiles, threads: x }; break;
      case 'cols': o.tiles = { ...o.tiles, cols: x }; break;
      default: throw new Error(`--decode-variants: unknown key '${key}' (vec4, prefetch, fused, mintiles, target, threads, cols)`);
    }
  }
  return o;
}

/**
 * Read + write bandwidth of a plain elementwise copy (tf.neg of `bytes`, vec4 loads and stores in
 * tfjs's WebGPU kernel): GB/s of bytes moved, the floor's yardstick.
 */
async function copyBandwidth(tf: TF, plan: TimingPlan, bytes: number): Promise<{ gbPerS: number; ms: number }> {
  const x = tf.ones([bytes / 4]);
  const t = await timeCall(tf, () => tf.neg(x), plan);
  x.dispose();
  const ms = t.gpuMs ?? t.wallMs;
  return { gbPerS: 2 * bytes / ms / 1e6, ms };
}

/**
 * Busy GPU work (2048² matMuls) for `ms` before a timing: the H200's clocks drop while the bench
 * prepares the next case on the CPU, and the first variants of a row then ran up to 2x slower than
 * the same kernel timed later in the row (2026-12-02 08:50 UTC, before this warm-up). A decode step
 * in a model runs between other layers' work, so warm clocks are the relevant state.
 */
async function warmClocks(tf: TF, ms: number): Promise<void> {
  if (ms <= 0) return;
  const a = tf.randomUniform([2048, 2048]);
  const start = performance.now();
  while (performance.now() - start < ms) {
    const one = tf.tidy(() => tf.slice(tf.reshape(tf.matMul(a, a), [-1]), 0, 1));
    await one.data();
    one.dispose();
  }
  a.dispose();
}

/** softmax(q kᵀ scale) v with grouped heads as a tfjs user writes it: q [B, Hkv, G, D] against k [B, Hkv, N, D]. */
function compositeDecode(tf: TF, q: Tensor, kh: Tensor, vh: Tensor, scale: number): Tensor {
  return tf.tidy(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, kh, false, true), scale)), vh));
}

export async function runDecodeBench(tf: TF, flash: typeof FlashAttentionFn, hooks: DecodeHooks, sw: DecodeSweep,
                                     plan: TimingPlan, device: GPUDevice | null, outDir: string,
                                     meta: Record<string, unknown>, deadlineS: number,
                                     peer: DecodePeer | null = null): Promise<DecodeRow[]> {
  const start = performance.now();
  const scopes = new ErrorScopes(device);
  await warmClocks(tf, sw.warmMs);
  const copy = await copyBandwidth(tf, plan, sw.copyBytes);
  console.log(`# copy kernel (tf.neg of ${sw.copyBytes / 2 ** 20} MiB): ${copy.ms.toFixed(3)} ms, ${copy.gbPerS.toFixed(0)} GB/s read + write`);
  const peak = await peakReadBandwidth(tf, plan, sw.copyBytes, sw.warmMs);
  console.log(`# read probe peak: ${peak.best.gbPerS.toFixed(0)} GB/s read (${peak.best.loads} loads, <= ${peak.best.maxWorkgroups} workgroups)`);
  const rows: DecodeRow[] = [];
  const yardsticks = { copyGbPerS: copy.gbPerS, peakReadGbPerS: peak.best.gbPerS, probe: peak.best, probeTried: peak.tried };
  const save = () => writeDecodeRecord({ meta: { ...meta, ...yardsticks, peakStartGbPerS: peak.best.gbPerS, sweep: sw }, rows }, outDir);
  for (const headDim of sw.headDims) for (const kvHeads of sw.kvHeads) for (const batch of sw.batches) for (const seqK of sw.seqKs) {
    const heads = sw.heads;
    const kvBytes = batch * seqK * kvHeads * headDim * 2 * 4;
    const floorMs = kvBytes / (copy.gbPerS * 1e6);
    const peakFloorMs = kvBytes / (peak.best.gbPerS * 1e6);
    const base = { seqK, batch, heads, kvHeads, headDim, kvBytes, floorMs, peakFloorMs, readOnceMs: null as number | null };
    if ((performance.now() - start) / 1000 > deadlineS) {
      rows.push({ ...base, impl: 'all', gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null, status: 'skipped', note: 'deadline' });
      continue;
    }
    if (kvBytes / 2 > 2 ** 31 - 4) {
      rows.push({ ...base, impl: 'all', gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null, status: 'too large',
                  note: 'K over the 2 GiB storage binding limit' });
      continue;
    }
    const q = deviceRandom(tf, [batch, 1, heads, headDim], 11);
    const k = deviceRandom(tf, [batch, seqK, kvHeads, headDim], 23);
    const v = deviceRandom(tf, [batch, seqK, kvHeads, headDim], 37);
    const group = heads / kvHeads;
    const qg = tf.reshape(q, [batch, kvHeads, group, headDim]);   // seqQ = 1: [B, 1, H, D] is [B, Hkv, G, D]
    const kh = tf.transpose(k, [0, 2, 1, 3]), vh = tf.transpose(v, [0, 2, 1, 3]);
    await warmClocks(tf, sw.warmMs);
    const probe = await scopes.run(() => timeReadProbe(tf, plan, k, v, peak.best));
    base.readOnceMs = probe.value ?? null;
    const readOnce = base.readOnceMs;
    const decodeRun = () => flash(q, k, v);
    const variants: Array<{ impl: string; run: () => Tensor; override: DecodeOverride }> = [
      { impl: 'decode', run: decodeRun, override: { mode: 'on' } },
      ...sw.targets.map(target => ({ impl: `decode@${target}`, run: decodeRun, override: { mode: 'on' as const, targetWorkgroups: target } })),
      ...sw.threads.map(threads => ({ impl: `decode/t${threads}`, run: decodeRun, override: { mode: 'on' as const, tiles: { threads } } })),
      ...sw.variants.map(spec => ({ impl: `decode[${spec}]`, run: decodeRun, override: variantOverride(spec) })),
      ...(sw.baselines ? [
        { impl: 'one-pass', run: decodeRun, override: { mode: 'off' as const } },
        { impl: 'composite', run: () => compositeDecode(tf, qg, kh, vh, 1 / Math.sqrt(headDim)), override: {} },
      ] : []),
    ];
    let reference: Float32Array | null = null;
    for (const x of variants) {
      hooks.setDecodeOverride(x.override);
      const callsBefore = hooks.decodeCalls();
      const r = await scopes.run(async () => {
        await warmClocks(tf, sw.warmMs);
        const t = await timeCall(tf, x.run, plan);
        // Per-program GPU ms of one more timed call (split, combine, the unpacks): where the time goes.
        const profile = await tf.time(() => { tf.dispose(x.run()); }) as { getExtraProfileInfo?: () => string };
        const passes = profile.getExtraProfileInfo?.();
        const out = x.run();
        const data = await out.data() as Float32Array;
        out.dispose();
        return { t, data, passes };
      });
      hooks.setDecodeOverride({});
      if (r.failure) {
        rows.push({ ...base, impl: x.impl, gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null, status: r.failure.kind, note: r.failure.message });
        console.log(`${label(base)} ${x.impl}: ${r.failure.kind} ${r.failure.message}`);
        continue;
      }
      const { t, data, passes } = r.value!;
      // The composite's output is [B, Hkv, G, D], flash's [B, 1, H, D]: the same order when seqQ = 1.
      const err = reference ? maxRelDiff(data, reference) : 0;
      if (!reference) reference = data;
      const ms = t.gpuMs ?? t.wallMs;
      const row: DecodeRow = {
        ...base, impl: x.impl, gpuMs: t.gpuMs, wallMs: t.wallMs, gbPerS: kvBytes / ms / 1e6, vsFloor: ms / floorMs,
        vsPeak: ms / peakFloorMs, vsReadOnce: readOnce ? ms / readOnce : null, passes,
        status: err < 1e-4 ? 'ok' : 'wrong', note: err ? `max rel diff vs decode ${err.toExponential(1)}` : undefined,
      };
      if (x.impl.startsWith('decode') && hooks.decodeCalls() === callsBefore) row.status = 'decode path not taken';
      rows.push(row);
      console.log(`${label(base)} ${x.impl.padEnd(12)} gpu ${ms.toFixed(3)} ms  ${row.gbPerS!.toFixed(0)} GB/s  ` +
                  `${row.vsPeak!.toFixed(2)}x peak  ${row.vsReadOnce?.toFixed(2) ?? '-'}x read-once (${readOnce?.toFixed(3) ?? '-'} ms)  ` +
                  `${row.vsFloor!.toFixed(2)}x copy  ${row.status}${row.note ? ` (${row.note})` : ''}` +
                  (x.impl.startsWith('decode') && passes ? `\n    passes: ${passes}` : ''));
    }
    tf.dispose([q, k, v, qg, kh, vh]);
    if (peer) {   // onnxruntime's decode (bench/onnxruntime_decode.ts): its own inputs, device and check
      const row = await peer.row(base);
      rows.push(row);
      console.log(`${label(base)} ${row.impl.padEnd(12)} gpu ${row.gpuMs?.toFixed(3) ?? '-'} ms  ${row.status}  (${row.note})`);
    }
    save();
  }
  save();
  return rows;
}

const label = (s: { seqK: number; batch: number; heads: number; kvHeads: number; headDim: number }) =>
    `N ${String(s.seqK).padStart(5)} B ${s.batch} H ${s.heads}/${s.kvHeads} d ${s.headDim}`;

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) { num = Math.max(num, Math.abs(a[i] - b[i])); den = Math.max(den, Math.abs(b[i])); }
  return a.length === b.length ? num / Math.max(den, 1e-30) : Infinity;
}

interface DecodeRecord {
  meta: Record<string, unknown> & { copyGbPerS: number; peakReadGbPerS: number; peakStartGbPerS?: number };
  rows: DecodeRow[];
}

/**
 * The peak yardstick is the best read bandwidth the probe reached anywhere in the run: the start's
 * large-buffer configurations or any row's read-once (itself a lower bound: one dispatch's fixed
 * cost included). On 2026-12-02 the start measured 1.87 TB/s while rows later read 1 GiB at
 * 4.42 TB/s (the GPU was in a slow state at the start); a floor from the slow reading would have
 * flattered every row.
 */
export function finishYardsticks(record: DecodeRecord): DecodeRecord {
  const start = record.meta.peakStartGbPerS ?? record.meta.peakReadGbPerS;
  const peak = Math.max(start, ...record.rows.map(r => (r.readOnceMs ? r.kvBytes / r.readOnceMs / 1e6 : 0)));
  const rows = record.rows.map(r => {
    const peakFloorMs = r.kvBytes / (peak * 1e6), ms = r.gpuMs ?? r.wallMs;
    return { ...r, peakFloorMs, vsPeak: ms == null ? null : ms / peakFloorMs };
  });
  return { meta: { ...record.meta, peakStartGbPerS: start, peakReadGbPerS: peak }, rows };
}

function writeDecodeRecord(raw: DecodeRecord, outDir: string): void {
  const record = finishYardsticks(raw);
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'decode.json'), JSON.stringify(record, null, 1) + '\n');
  writeFileSync(join(outDir, 'decode.md'), decodeMarkdown(record.rows, record.meta));
}

/** `--decode --render=DIR/decode.json`: recomputes the yardsticks and rewrites DIR/decode.json and decode.md. */
export function renderDecode(path: string): void {
  writeDecodeRecord(JSON.parse(readFileSync(path, 'utf8')) as DecodeRecord, dirname(path));
}

export function decodeMarkdown(rows: DecodeRow[], y: { copyGbPerS: number; peakReadGbPerS: number; peakStartGbPerS?: number }): string {
  const lines = [
    `Read probe peak: ${y.peakReadGbPerS.toFixed(0)} GB/s read (best of the run; the start's large-buffer probe: ` +
    `${(y.peakStartGbPerS ?? y.peakReadGbPerS).toFixed(0)}); copy kernel (tf.neg, read + write): ${y.copyGbPerS.toFixed(0)} GB/s.`,
    'x peak = GPU time / (K+V bytes at the probe peak); x read-once = GPU time / the probe\'s measured time reading this',
    'row\'s K and V once (one dispatch\'s fixed cost included); x copy = GPU time / (K+V bytes at the copy bandwidth).',
    '',
    '| seqK | B | H/Hkv | d | impl | GPU ms | GB/s (K+V once) | read-once ms | x peak | x read-once | x copy | status |',
    '|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const r of rows) {
    const f = (x: number | null | undefined, d: number) => (x == null ? '' : x.toFixed(x < 10 ? Math.max(d, 2) : d));
    lines.push(`| ${r.seqK} | ${r.batch} | ${r.heads}/${r.kvHeads} | ${r.headDim} | ${r.impl} | ${f(r.gpuMs ?? r.wallMs, 3)} | ` +
               `${f(r.gbPerS, 0)} | ${f(r.readOnceMs, 3)} | ${f(r.vsPeak, 2)} | ${f(r.vsReadOnce, 2)} | ${f(r.vsFloor, 2)} | ` +
               `${r.status}${r.note && r.status !== 'ok' ? `: ${r.note}` : ''} |`);
  }
  return lines.join('\n') + '\n' + decodePeerMarkdown(rows);
}
