/**
 * onnxruntime's WebGPU attention as a forward peer: onnxruntime-node's WebGPU execution provider
 * (its own Dawn, on the same GPU) running one com.microsoft MultiHeadAttention node, float32 or
 * float16, causal through `unidirectional`. Its GPU time is what its profiler reports for the
 * attention program itself (the `FlashAttention` kernel events), not session.run's wall clock,
 * which includes uploading q, k, v from the host and reading the output back.
 *
 * onnxruntime-node is not a dependency: it is loaded when present (bash bench/install-peers.sh
 * puts it in bench/peers/node_modules; on the GPU machine NODE_PATH points at the carried copy),
 * and the benchmark leaves the peer out otherwise.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { checkedRows, referenceRow, relativeError } from './reference_rows';
import { median } from './measure';
import { multiHeadAttentionModel, OnnxFloat, toFloat16Bits } from './onnx_model';
import type { Shape } from './cases';

/** The parts of onnxruntime-node's API the peer uses. */
export interface OrtTensor { data: ArrayLike<number>; dims: readonly number[] }
export interface OrtSession {
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  endProfiling(): void;
  release(): Promise<void>;
}
export interface Ort {
  version: string;
  Tensor: new (type: string, data: Float32Array | Uint16Array | Int32Array, dims: number[]) => OrtTensor;
  InferenceSession: { create(model: Uint8Array, options: Record<string, unknown>): Promise<OrtSession> };
}

/** Where bench/install-peers.sh installs the peer, relative to the repository root. */
export const PEER_MODULES = join('bench', 'peers', 'node_modules');

/** onnxruntime-node from NODE_PATH / node_modules, else from bench/peers; null when neither has it. */
export function loadOnnxruntime(): { ort: Ort | null; why: string } {
  const name = 'onnxruntime-node';   // a variable, so that esbuild leaves the native addon to Node
  const tries: Array<() => Ort> = [
    () => createRequire(join(process.cwd(), 'package.json'))(name) as Ort,
    () => createRequire(resolve(PEER_MODULES, '..', 'package.json'))(name) as Ort,
  ];
  let why = '';
  for (const load of tries) {
    try {
      const ort = load();
      const version = (ort as unknown as { env?: { versions?: { node?: string } } }).env?.versions?.node;
      return { ort: { ...ort, version: version ?? 'unknown' } as Ort, why: '' };
    } catch (e) {
      why = e instanceof Error ? e.message.split('\n')[0] : String(e);
    }
  }
  return { ort: null, why };
}

/** Host inputs of one shape: q, k, v [B, N, H·d], a prime-period pattern (filled in O(period)). */
interface HostInputs { q: Float32Array; k: Float32Array; v: Float32Array }
const PERIODS = { q: 10007, k: 10009, v: 10037 };

/** Repeats out's first `period` elements to its end (doubling copies: O(size) memcpy, no JS loop). */
function tile<T extends Float32Array | Uint16Array>(out: T, period: number): T {
  for (let filled = period; filled < out.length; filled *= 2) out.copyWithin(filled, 0, Math.min(filled, out.length - filled));
  return out;
}

/** `size` pseudo-random values in [-1, 1) repeating with `period` (seeded: the same inputs every run). */
export function patterned(size: number, period: number, seed: number): Float32Array {
  const out = new Float32Array(size);
  let a = seed >>> 0;
  for (let i = 0; i < Math.min(period, size); i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out[i] = (a / 2 ** 32) * 2 - 1;
  }
  return tile(out, period);
}

/** Half-precision bits of a patterned input: its period converted, then tiled. */
function patternedHalf(x: Float32Array, period: number): Uint16Array {
  const out = new Uint16Array(x.length);
  out.set(toFloat16Bits(x.subarray(0, Math.min(period, x.length))));
  return tile(out, period);
}

function hostInputs(s: Shape): HostInputs {
  const size = s.batch * s.seq * s.heads * s.headDim;
  return { q: patterned(size, PERIODS.q, 11), k: patterned(size, PERIODS.k, 23), v: patterned(size, PERIODS.v, 37) };
}

/** One head's [N, d] slice of a [B, N, H·d] tensor (batch 0), as the float64 reference reads it. */
function headOf(x: ArrayLike<number>, s: Shape, head: number): Float64Array {
  const out = new Float64Array(s.seq * s.headDim);
  for (let n = 0; n < s.seq; n++) {
    for (let c = 0; c < s.headDim; c++) out[n * s.headDim + c] = x[(n * s.heads + head) * s.headDim + c];
  }
  return out;
}

function float16ToFloat32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1, exp = (bits >> 10) & 0x1f, mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export interface PeerTiming {
  /** Median session.run wall time: includes host-to-GPU copies of q, k, v and the readback. */
  wallMs: number;
  wallAllMs: number[];
  /** Median per run of the FlashAttention programs' GPU time (onnxruntime's profiler). */
  gpuMs: number | null;
  /** The other programs of the node per run (CopyKVCache: k and v to head-major), GPU ms. */
  otherGpuMs: Record<string, number>;
  relErr?: number;
  warmupCalls: number;
}

export interface PeerPlan { minReps: number; maxReps: number; targetMs: number; warmupMs: number; check: boolean }

interface ProfileEvent { cat?: string; name?: string; dur?: number; ts?: number }

/** The WebGPU programs of each run, from the profile's 'Api' events `node&op&Program`. */
export function programTimes(events: ProfileEvent[], runs: number, lastRuns: number): ProgramTimes {
  const programs = events.filter(e => e.cat === 'Api' && typeof e.dur === 'number' && e.name?.includes('&'))
                         .sort((a, b) => (a.ts ?? 0) - (b.ts ?? 0));
  if (programs.length === 0 || programs.length % runs !== 0) {
    throw new Error(`onnxruntime's profile has ${programs.length} program events for ${runs} runs`);
  }
  const perRun = programs.length / runs;
  const attentionMs: number[] = [];
  const other = new Map<string, number[]>();
  for (let r = runs - lastRuns; r < runs; r++) {
    let attention = 0;
    const byName = new Map<string, number>();
    for (const e of programs.slice(r * perRun, (r + 1) * perRun)) {
      const program = e.name!.split('&').pop()!;
      if (program.startsWith('FlashAttention')) attention += e.dur! / 1000;
      else byName.set(program, (byName.get(program) ?? 0) + e.dur! / 1000);
    }
    attentionMs.push(attention);
    for (const [name, ms] of byName) other.set(name, [...(other.get(name) ?? []), ms]);
  }
  if (attentionMs.every(ms => ms === 0)) {
    throw new Error(`onnxruntime took no FlashAttention program (ran: ${[...other.keys()].join(', ')})`);
  }
  return { attentionMs, otherMs: Object.fromEntries([...other].map(([k, v]) => [k, +median(v).toFixed(4)])) };
}

/** The median per run of the attention programs and of the others, over the last runs of a profile. */
export interface ProgramTimes { attentionMs: number[]; otherMs: Record<string, number> }

/**
 * A session of `model` on onnxruntime's WebGPU EP with profiling on, given to `body` with a reader
 * of its profile (call it once, after the runs: it ends profiling), then released (its GPU memory
 * with it) and its profile deleted, whatever `body` does.
 */
export async function withProfiledSession<T>(
    ort: Ort, model: Uint8Array,
    body: (session: OrtSession, readPrograms: (runs: number, lastRuns: number) => ProgramTimes) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'ort-profile-'));
  try {
    const session = await ort.InferenceSession.create(model, {
      executionProviders: ['webgpu'], enableProfiling: true, profileFilePrefix: join(dir, 'profile'),
      logSeverityLevel: 3, graphOptimizationLevel: 'disabled',
    });
    const readPrograms = (runs: number, lastRuns: number) => {
      session.endProfiling();
      const file = readdirSync(dir).find(f => f.endsWith('.json'));
      if (!file) throw new Error('onnxruntime wrote no profile');
      return programTimes(JSON.parse(readFileSync(join(dir, file), 'utf8')), runs, lastRuns);
    };
    try {
      return await body(session, readPrograms);
    } finally {
      await session.release();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Warm-up runs (at least one, then while under plan.warmupMs, at most 10), then timed runs (as many
 * as plan.targetMs of the last warm-up's wall time asks, within minReps..maxReps).
 */
export async function timedRuns(session: OrtSession, feeds: Record<string, OrtTensor>, plan: PeerPlan):
    Promise<{ wallAllMs: number[]; runs: number; reps: number; warmupCalls: number; output: OrtTensor }> {
  let output: OrtTensor | null = null;
  const once = async () => {
    const t0 = performance.now();
    output = (await session.run(feeds)).output;
    return performance.now() - t0;
  };
  let runs = 0;
  const warmStart = performance.now();
  let lastMs = await once();
  runs++;
  while (performance.now() - warmStart < plan.warmupMs && runs < 10) { lastMs = await once(); runs++; }
  const warmupCalls = runs;
  const reps = Math.max(plan.minReps, Math.min(plan.maxReps, Math.ceil(plan.targetMs / Math.max(lastMs, 1e-3))));
  const wallAllMs: number[] = [];
  for (let i = 0; i < reps; i++) { wallAllMs.push(await once()); runs++; }
  return { wallAllMs, runs, reps, warmupCalls, output: output! };
}

/** Times one forward case on onnxruntime's WebGPU EP: warm-up runs, timed runs, then its profile. */
export async function timeOnnxruntime(ort: Ort, s: Shape, dtype: OnnxFloat, plan: PeerPlan): Promise<PeerTiming> {
  return withProfiledSession(ort, multiHeadAttentionModel({ ...s, dtype }), async (session, readPrograms) => {
    const x = hostInputs(s);
    const dims = [s.batch, s.seq, s.heads * s.headDim];
    const tensor = (name: keyof HostInputs) => dtype === 'float32' ? new ort.Tensor('float32', x[name], dims)
        : new ort.Tensor('float16', patternedHalf(x[name], PERIODS[name]), dims);
    const feeds = { query: tensor('q'), key: tensor('k'), value: tensor('v') };
    const { wallAllMs, runs, reps, warmupCalls, output } = await timedRuns(session, feeds, plan);
    const { attentionMs, otherMs } = readPrograms(runs, reps);

    let relErr: number | undefined;
    if (plan.check) {
      const got = output.data;
      const value = dtype === 'float32' ? (i: number) => got[i] : (i: number) => float16ToFloat32(got[i]);
      const pairs = [];
      const byHead = new Map<number, { k: Float64Array; v: Float64Array }>();
      for (const { head, row } of checkedRows(s)) {
        if (!byHead.has(head)) byHead.set(head, { k: headOf(x.k, s, head), v: headOf(x.v, s, head) });
        const { k, v } = byHead.get(head)!;
        const at = (row * s.heads + head) * s.headDim;
        const q = x.q.subarray(at, at + s.headDim);
        const ref = referenceRow(q, k, v, new Float64Array(s.headDim), s.seq, s.headDim, row, s.causal).out;
        pairs.push({ got: Float64Array.from({ length: s.headDim }, (_, c) => value(at + c)), ref });
      }
      relErr = relativeError(pairs);
    }
    return { wallMs: median(wallAllMs), wallAllMs, gpuMs: median(attentionMs), otherGpuMs: otherMs, relErr, warmupCalls };
  });
}
