/**
 * What the CPU forward and backward kernels share: the contract's problem plus its data read out
 * of the backend once, and the score tile (scale, softcap, ALiBi, window and mask applied), which
 * the backward pass recomputes instead of storing.
 */
import { backend_util, KernelBackend, TensorInfo, TypedArray } from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, denseRange, dropoutBits, dropoutRowKey, FlashAttentionAttrs, sequenceOffset,
} from '../../src/contract';
// Module-level aliases: a global lookup (Math, Infinity) in a hot loop is ~40x slower inside
// jest's vm sandbox, where the tests run these loops.
const { abs, floor, max, min, tanh } = Math;
const INF = Infinity;

/** Query rows per tile and keys per tile: extra memory is O(TILE_Q * TILE_K + TILE_Q * headDimV). */
export const TILE_Q = 32;
export const TILE_K = 64;

/**
 * One sequence (kernel_names.ts header): index b (mask and dropout), its query rows
 * startQ ... startQ + lenQ - 1 and key rows startK ... startK + lenK - 1, and its bottom-right
 * offset lenK - lenQ. Inside a sequence, i and j are local; rows are global (startQ + i).
 */
export interface Sequence { b: number; startQ: number; lenQ: number; startK: number; lenK: number; offset: number; }

export interface CPUProblem extends AttentionProblem {
  q: TypedArray; k: TypedArray; v: TypedArray;
  slopes: TypedArray;
  mask: TypedArray;
  /** Element strides of the rank-4 mask; 0 on broadcast (size-1) dimensions. */
  maskStrides: [number, number, number, number];
  /** Every sequence, from seqRangesQ/K, or the batch's full-length rows without them. */
  sequences: Sequence[];
}

export function readProblem(backend: KernelBackend, q: TensorInfo, k: TensorInfo, v: TensorInfo,
                            alibiSlopes: TensorInfo, mask: TensorInfo, seqRangesQ: TensorInfo, seqRangesK: TensorInfo,
                            attrs: FlashAttentionAttrs): CPUProblem {
  const read = (t: TensorInfo) => backend.readSync(t.dataId) as TypedArray;
  const ms = mask.shape;
  const dense = [ms[1] * ms[2] * ms[3], ms[2] * ms[3], ms[3], 1];
  const maskStrides = dense.map((s, d) => (ms[d] === 1 ? 0 : s)) as [number, number, number, number];
  const problem = attentionProblem(q.shape, k.shape, v.shape, attrs);
  const rangesQ = problem.flags.seqRanges ? read(seqRangesQ) : null;
  const rangesK = problem.flags.seqRanges ? read(seqRangesK) : null;
  const sequences: Sequence[] = [];
  for (let b = 0; b < problem.batch; b++) {
    const [startQ, lenQ] = rangesQ ? [rangesQ[2 * b], rangesQ[2 * b + 1]] : denseRange(b, problem.seqQ);
    const [startK, lenK] = rangesK ? [rangesK[2 * b], rangesK[2 * b + 1]] : denseRange(b, problem.seqK);
    sequences.push({ b, startQ, lenQ, startK, lenK, offset: sequenceOffset(lenQ, lenK) });
  }
  return {
    ...problem, q: read(q), k: read(k), v: read(v), slopes: read(alibiSlopes), mask: read(mask), maskStrides, sequences,
  };
}

/** Offsets of (global) row starts in the BSHD layout: row r of q [B, seqQ, H, D] is q[r / seqQ, r % seqQ]. */
export const qRow = (p: CPUProblem, row: number, h: number) => (row * p.heads + h) * p.headDim;
export const kRow = (p: CPUProblem, row: number, kvh: number) => (row * p.kvHeads + kvh) * p.headDim;
export const vRow = (p: CPUProblem, row: number, kvh: number) => (row * p.kvHeads + kvh) * p.headDimV;
export const oRow = (p: CPUProblem, row: number, h: number) => (row * p.heads + h) * p.headDimV;
/** Index of the logSumExp of sequence query i of head h, one formula for every layout. */
export const lseIndex = (p: CPUProblem, seq: Sequence, h: number, i: number) =>
  seq.startQ * p.lseStartStride + h * p.lseHeadStride + i;

/**
 * Fills s[r * TILE_K + c] for local queries [i0, i1) x keys [j0, j1) of sequence seq, head h,
 * with the final score, or -Infinity where the key is masked. When softcap is on, capGrad
 * receives d(softcapped)/d(raw) = 1 - tanh^2, which the backward pass needs.
 */
export function scoreTile(p: CPUProblem, seq: Sequence, h: number, i0: number, i1: number, j0: number, j1: number,
                          s: Float64Array, capGrad: Float64Array | null): void {
  // Locals, not property loads, in the hot loop: this is most of the CPU kernel's time.
  const { q, k, mask, headDim: d } = p;
  const { scale, softcap, windowLeft: wl, windowRight: wr, hasAlibi, hasMask } = p.attrs;
  const kvh = floor(h / p.group);
  const { b, offset: off } = seq;
  const slope = hasAlibi ? p.slopes[h] : 0;
  const [mb, mh, mi, mj] = p.maskStrides;
  const kStride = p.kvHeads * d;
  for (let i = i0; i < i1; i++) {
    const qo = qRow(p, seq.startQ + i, h);
    const r = (i - i0) * TILE_K - j0;
    const maskRow = b * mb + h * mh + i * mi;
    // Keys inside the window form one contiguous run [jFrom, jTo); outside it is -Infinity.
    const jFrom = wl < 0 ? j0 : min(j1, max(j0, i + off - wl));
    const jTo = wr < 0 ? j1 : max(jFrom, min(j1, i + off + wr + 1));
    for (let j = j0; j < jFrom; j++) s[r + j] = -INF;
    for (let j = jTo; j < j1; j++) s[r + j] = -INF;
    let ko = kRow(p, seq.startK + jFrom, kvh);
    for (let j = jFrom; j < jTo; j++, ko += kStride) {
      if (hasMask && !mask[maskRow + j * mj]) { s[r + j] = -INF; continue; }
      let dot = 0;
      for (let c = 0; c < d; c++) dot += q[qo + c] * k[ko + c];
      let x = scale * dot;
      if (softcap > 0) {
        const t = tanh(x / softcap);
        x = softcap * t;
        if (capGrad) capGrad[r + j] = 1 - t * t;
      }
      if (hasAlibi) x -= slope * abs(j - i - off);
      s[r + j] = x;
    }
  }
}

/** Dropout multipliers (0 or 1/(1-rate)) for sequence b's row i, keys [j0, j1), written to out[0..j1-j0). */
export function dropoutRow(p: CPUProblem, b: number, h: number, i: number, j0: number, j1: number, out: Float64Array): void {
  const key = dropoutRowKey(p.attrs.seed, b * p.heads + h, i);
  for (let j = j0; j < j1; j++) out[j - j0] = dropoutBits(key, j) >= p.dropoutThreshold ? p.dropoutScale : 0;
}

/** The cpu backend's constructor of output tensors (not on the KernelBackend interface). */
interface TensorMaker { makeTensorInfo(shape: number[], dtype: 'float32', values: backend_util.BackendValues): TensorInfo; }

export function makeOutput(backend: KernelBackend, shape: number[], values: Float32Array): TensorInfo {
  return (backend as unknown as TensorMaker).makeTensorInfo(shape, 'float32', values);
}
