/**
 * Seeded random cases, their float64 reference results and the comparison of results with them.
 * Nothing here runs the op (attention_case.ts does), so the kernels' own tools (e.g.
 * kernels/webgpu/tune/) use these without importing the API layer.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashAttentionAttrs, FlashAttentionOptions, normalizeAttrs } from '../../src/contract';
import { referenceBackward, referenceForward, RefDims, RefInputs } from './reference';

/** Mulberry32: a tiny seeded generator so every case is reproducible from its seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const randInt = (r: () => number, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));

function normals(r: () => number, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  return out;
}

/** Options in plain data form (mask as a shape + seeded values) so a case can be printed. */
export interface CaseSpec {
  dims: RefDims;
  causal?: boolean;
  windowSize?: [number, number];
  softcap?: number;
  alibi?: boolean;
  /** Shape of a random bool mask, broadcastable to [B, H, Nq, Nk]. */
  maskShape?: number[];
  dropoutRate?: number;
  scale?: number;
  seed: number;
}

export interface CaseData {
  q: Float32Array; k: Float32Array; v: Float32Array; dy: Float32Array;
  slopes?: Float32Array; mask?: Uint8Array;
}

export function caseData(c: CaseSpec): CaseData {
  const r = rng(c.seed);
  const { batch: B, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  const data: CaseData = {
    q: normals(r, B * seqQ * heads * headDim), k: normals(r, B * seqK * kvHeads * headDim),
    v: normals(r, B * seqK * kvHeads * headDimV), dy: normals(r, B * seqQ * heads * headDimV),
  };
  if (c.alibi) data.slopes = Float32Array.from({ length: heads }, () => 0.05 + r() * 0.5);
  if (c.maskShape) data.mask = Uint8Array.from({ length: c.maskShape.reduce((a, b) => a * b, 1) }, () => (r() < 0.75 ? 1 : 0));
  return data;
}

/** The options object a user would pass for this case (creates the mask tensor, if any). */
export function caseOptions(c: CaseSpec, d: CaseData): FlashAttentionOptions {
  const o: FlashAttentionOptions = { seed: c.seed };
  if (c.causal) o.causal = true;
  if (c.windowSize) o.windowSize = c.windowSize;
  if (c.softcap) o.softcap = c.softcap;
  if (d.slopes) o.alibiSlopes = Array.from(d.slopes);
  if (d.mask) o.mask = tf.tensor(d.mask, c.maskShape, 'bool');
  if (c.dropoutRate) o.dropoutRate = c.dropoutRate;
  if (c.scale !== undefined) o.scale = c.scale;
  return o;
}

export function caseAttrs(c: CaseSpec, d: CaseData): FlashAttentionAttrs {
  const { mask: _ignored, alibiSlopes: _a, ...scalars } = caseOptions(c, { ...d, mask: undefined });
  return normalizeAttrs({ ...c.dims }, scalars, !!d.slopes, !!d.mask);
}

export function reference(c: CaseSpec, d: CaseData) {
  const attrs = caseAttrs(c, d);
  const x: RefInputs = { q: d.q, k: d.k, v: d.v, alibiSlopes: d.slopes };
  if (d.mask) x.mask = { values: d.mask, shape: [...new Array(4 - c.maskShape!.length).fill(1), ...c.maskShape!] };
  const fwd = referenceForward(c.dims, x, attrs);
  const grads = referenceBackward(c.dims, x, attrs, d.dy);
  return { ...fwd, ...grads };
}

export interface OpResult { out: Float32Array; lse: Float32Array; dq: Float32Array; dk: Float32Array; dv: Float32Array; }

/**
 * Norm-wise relative error max|got - want| / max|want| (element-wise ratios blow up near zero).
 * -Infinity entries (logsumexp of fully masked rows) must match exactly.
 */
export function relError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) return Infinity;
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    if (!Number.isFinite(want[i]) || !Number.isFinite(got[i])) {
      if (got[i] !== want[i]) return Infinity;
      continue;
    }
    num = Math.max(num, Math.abs(got[i] - want[i]));
    den = Math.max(den, Math.abs(want[i]));
  }
  return den === 0 ? num : num / den;
}

export interface Tolerances { forward: number; grads: number; }
export const F32_TOLERANCE: Tolerances = { forward: 1e-5, grads: 1e-4 };

/** Compares an op result with the reference; returns the worst errors for messages. */
export function compare(got: OpResult, want: ReturnType<typeof reference>, grads = true) {
  const e: Record<string, number> = { out: relError(got.out, want.out), lse: relError(got.lse, want.lse) };
  if (grads) Object.assign(e, { dq: relError(got.dq, want.dq), dk: relError(got.dk, want.dk), dv: relError(got.dv, want.dv) });
  return e;
}

export const describeCase = (c: CaseSpec) => {
  const { batch: B, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  const opts = [c.causal && 'causal', c.windowSize && `window=${c.windowSize}`, c.softcap && `softcap=${c.softcap}`,
    c.alibi && 'alibi', c.maskShape && `mask=[${c.maskShape}]`, c.dropoutRate && `dropout=${c.dropoutRate}`,
    c.scale !== undefined && `scale=${c.scale}`].filter(Boolean).join(' ');
  return `B${B} Nq${seqQ} Nk${seqK} H${heads}/${kvHeads} D${headDim}/${headDimV} ${opts || 'plain'} (seed ${c.seed})`;
};

/** The options every combination test walks: the full powerset of these is "every combination". */
export const OPTION_NAMES = ['causal', 'window', 'softcap', 'alibi', 'mask', 'dropout'] as const;

/** A random shape plus the given subset of options, reproducible from seed. */
export function comboCase(flags: ReadonlySet<string>, seed: number, maxSeq = 40): CaseSpec {
  const r = rng(seed * 7919 + 17);
  const kvHeads = randInt(r, 1, 2), group = randInt(r, 1, 3);
  const dims: RefDims = {
    batch: randInt(r, 1, 2), seqQ: randInt(r, 1, maxSeq), seqK: randInt(r, 1, maxSeq), heads: kvHeads * group, kvHeads,
    headDim: randInt(r, 1, 16), headDimV: randInt(r, 1, 16),
  };
  const c: CaseSpec = { dims, seed };
  if (flags.has('causal')) c.causal = true;
  if (flags.has('window')) c.windowSize = [randInt(r, 0, 12), r() < 0.5 ? -1 : randInt(r, 0, 6)];
  if (flags.has('softcap')) c.softcap = 0.5 + 4 * r();
  if (flags.has('alibi')) c.alibi = true;
  if (flags.has('mask')) {
    const full = [dims.batch, dims.heads, dims.seqQ, dims.seqK];
    c.maskShape = full.map(d => (r() < 0.4 ? 1 : d));
    if (r() < 0.3) c.maskShape = c.maskShape.slice(randInt(r, 1, 2));   // lower-rank masks broadcast too
  }
  if (flags.has('dropout')) c.dropoutRate = 0.1 + 0.4 * r();
  return c;
}

/** Every subset of OPTION_NAMES. */
export function optionPowerset(): Set<string>[] {
  const sets: Set<string>[] = [];
  for (let m = 0; m < 1 << OPTION_NAMES.length; m++) sets.push(new Set(OPTION_NAMES.filter((_, i) => m & (1 << i))));
  return sets;
}
