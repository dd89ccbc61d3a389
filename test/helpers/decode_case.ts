/**
 * Decode-shaped cases and checks shared by the split-KV suites (webgpu_decode.test.ts,
 * webgpu_decode_subgroups.test.ts): random decode cases, the float64 result of one sequence of a
 * batch, the kernel run with sequence ranges (padded and packed) against it.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashAttention, FlashAttentionAttrs, FlashAttentionInputs } from '../../src/contract';
import { DECODE_MAX_SEQ_Q } from '../../kernels/webgpu/flash_decode_webgpu';
import { CaseData, caseAttrs, CaseSpec, comboCase, F32_TOLERANCE, randInt, relError, rng } from './attention_case';
import { checkOutput, compositeFloat64 } from './nonfinite';
import { describeCase } from './attention_case';
import { referenceForward, RefInputs } from './reference';

const TOL = F32_TOLERANCE.forward;

export interface Forward { out: Float32Array; lse: Float32Array; }

/** A decode-shaped case: 1..16 query rows, up to maxSeqK keys, GQA groups. */
export function decodeCase(flags: ReadonlySet<string>, seed: number, maxSeqK = 200): CaseSpec {
  const c = comboCase(flags, seed);
  const r = rng(seed * 31 + 5);
  c.dims.seqQ = randInt(r, 1, DECODE_MAX_SEQ_Q);
  c.dims.seqK = randInt(r, 1, maxSeqK);
  if (c.maskShape) {
    const full = [c.dims.batch, c.dims.heads, c.dims.seqQ, c.dims.seqK];
    const rank = c.maskShape.length;
    c.maskShape = full.slice(4 - rank).map((x, i) => (c.maskShape![i] === 1 ? 1 : x));
  }
  c.dims.headDim = 8; c.dims.headDimV = 8;
  return c;
}

/** Every element of a rank-4 broadcast mask, as [B, H, seqQ, seqK] 0/1 values. */
export function fullMask(c: CaseSpec, d: CaseData): Uint8Array {
  const { batch: B, heads: H, seqQ: nq, seqK: nk } = c.dims;
  const out = new Uint8Array(B * H * nq * nk).fill(1);
  if (!d.mask) return out;
  const [mb, mh, mq, mk] = [...new Array(4 - c.maskShape!.length).fill(1), ...c.maskShape!];
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let i = 0; i < nq; i++) for (let j = 0; j < nk; j++) {
    out[((b * H + h) * nq + i) * nk + j] =
        d.mask[(((mb === 1 ? 0 : b) * mh + (mh === 1 ? 0 : h)) * mq + (mq === 1 ? 0 : i)) * mk + (mk === 1 ? 0 : j)];
  }
  return out;
}

/**
 * The float64 result of sequence b alone: its first lenQ query rows and lenK keys (the contract's
 * per-sequence rules: offsets, mask, dropout and ALiBi in local coordinates, sequence index b).
 * The reference runs on a batch of b + 1 whose last element is the sequence, so dropout sees b.
 */
export function sequenceReference(c: CaseSpec, d: CaseData, b: number, lenQ: number, lenK: number) {
  const { heads: H, kvHeads: Hk, headDim: D, headDimV: DV, seqQ, seqK } = c.dims;
  const out = new Float64Array(lenQ * H * DV), lse = new Float64Array(H * lenQ).fill(-Infinity);
  if (lenQ === 0 || lenK === 0) return { out, lse };
  const dims = { ...c.dims, batch: b + 1, seqQ: lenQ, seqK: lenK };
  const rows = (src: Float32Array, n: number, len: number, width: number) => {
    const x = new Float32Array((b + 1) * len * width);
    x.set(src.subarray(b * n * width, (b * n + len) * width), b * len * width);
    return x;
  };
  const x: RefInputs = {
    q: rows(d.q, seqQ, lenQ, H * D), k: rows(d.k, seqK, lenK, Hk * D), v: rows(d.v, seqK, lenK, Hk * DV),
    alibiSlopes: d.slopes,
  };
  if (d.mask) {
    const full = fullMask(c, d), values = new Uint8Array((b + 1) * H * lenQ * lenK);
    for (let h = 0; h < H; h++) for (let i = 0; i < lenQ; i++) for (let j = 0; j < lenK; j++) {
      values[((b * H + h) * lenQ + i) * lenK + j] = full[((b * H + h) * seqQ + i) * seqK + j];
    }
    x.mask = { values, shape: [b + 1, H, lenQ, lenK] };
  }
  const r = referenceForward(dims, x, caseAttrs(c, d));
  return { out: r.out.subarray(b * lenQ * H * DV), lse: r.lse.subarray(b * H * lenQ) };
}

/**
 * Runs the FlashAttention kernel with sequence ranges (padded: q as the case has it, lengths
 * lensQ/K; packed: each sequence's first lensQ/K rows packed back to back, no mask) and returns
 * its outputs with the float64 ones.
 */
export async function rangedRun(c: CaseSpec, d: CaseData, lensQ: number[], lensK: number[], layout: 'padded' | 'packed') {
  const { batch: B, seqQ, seqK, heads: H, kvHeads: Hk, headDim: D, headDimV: DV } = c.dims;
  const totalQ = lensQ.reduce((a, x) => a + x, 0), totalK = lensK.reduce((a, x) => a + x, 0);
  const pack = (src: Float32Array, n: number, lens: number[], width: number) => {
    const x = new Float32Array(lens.reduce((a, l) => a + l, 0) * width);
    let at = 0;
    lens.forEach((l, b) => { x.set(src.subarray(b * n * width, (b * n + l) * width), at); at += l * width; });
    return x;
  };
  const ranges = (lens: number[], n: number) => {
    let at = 0;
    return lens.flatMap((l, b) => { const start = layout === 'packed' ? at : b * n; at += l; return [start, l]; });
  };
  const packed = layout === 'packed';
  const tensors = packed
    ? [tf.tensor4d(pack(d.q, seqQ, lensQ, H * D), [1, totalQ, H, D]), tf.tensor4d(pack(d.k, seqK, lensK, Hk * D), [1, totalK, Hk, D]),
       tf.tensor4d(pack(d.v, seqK, lensK, Hk * DV), [1, totalK, Hk, DV])]
    : [tf.tensor4d(d.q, [B, seqQ, H, D]), tf.tensor4d(d.k, [B, seqK, Hk, D]), tf.tensor4d(d.v, [B, seqK, Hk, DV])];
  const [q, k, v] = tensors;
  const alibiSlopes = d.slopes ? tf.tensor1d(d.slopes) : tf.zeros([1]);
  const mask = d.mask ? tf.tensor4d(fullMask(c, d), [B, H, seqQ, seqK], 'bool') : tf.ones([1, 1, 1, 1], 'bool');
  const seqRangesQ = tf.tensor2d(ranges(lensQ, seqQ), [B, 2], 'int32');
  const seqRangesK = tf.tensor2d(ranges(lensK, seqK), [B, 2], 'int32');
  const attrs: FlashAttentionAttrs = {
    ...caseAttrs(c, d), seqLayout: layout, numSeqs: B,
    maxSeqLenQ: packed ? Math.max(...lensQ) : seqQ, maxSeqLenK: packed ? Math.max(...lensK) : seqK,
    computeLogSumExp: true,   // compared below (the kernel is called directly, outside any gradient)
  };
  const inputs: FlashAttentionInputs = { q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK };
  const [out, lse] = tf.engine().runKernel(FlashAttention, inputs as {}, attrs as unknown as {}) as tf.Tensor[];
  const got = { out: await out.data() as Float32Array, lse: await lse.data() as Float32Array };
  tf.dispose([q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, out, lse]);

  // Expected: padded rows i >= lenQ are 0 / -Infinity; packed rows sit at their sequence's start.
  const wantOut = new Float64Array(got.out.length), wantLse = new Float64Array(got.lse.length).fill(-Infinity);
  let at = 0;
  for (let b = 0; b < B; b++) {
    const r = sequenceReference(c, d, b, lensQ[b], lensK[b]);
    const start = packed ? at : b * seqQ;
    wantOut.set(r.out, start * H * DV);
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < lensQ[b]; i++) {
        wantLse[packed ? h * totalQ + start + i : (b * H + h) * seqQ + i] = r.lse[h * lensQ[b] + i];
      }
    }
    at += lensQ[b];
  }
  return { got, want: { out: wantOut, lse: wantLse } };
}

export function expectClose(label: string, got: Forward, want: { out: ArrayLike<number>; lse: ArrayLike<number> }) {
  const errs = { out: relError(got.out, want.out), lse: relError(got.lse, want.lse) };
  if (!(errs.out < TOL && errs.lse < TOL)) throw new Error(`${label}: relative errors ${JSON.stringify(errs)}`);
}

/** Lengths for a batch: random, with 0, 1 and full among them when the batch allows. */
export function lengths(r: () => number, batch: number, max: number): number[] {
  const special = [max, 1, 0];
  return Array.from({ length: batch }, (_, b) => (b < special.length && r() < 0.5 ? Math.min(special[b], max) : randInt(r, 0, max)));
}

/**
 * A decode call's outputs on data d (finite with non-finite values put in `where`) against the
 * float64 composite, which either propagates them (strict) or skips them, at the scale of the
 * finite data's outputs: the problems found (empty: as the one-pass kernel would be).
 */
export function nonFiniteProblems(c: CaseSpec, finite: CaseData, d: CaseData, got: Forward, where: string): string[] {
  const strict = compositeFloat64(c, d, true), skipping = compositeFloat64(c, d, false), scale = compositeFloat64(c, finite, false);
  const found: string[] = [];
  for (const name of ['out', 'lse'] as const) {
    const mag = scale[name].reduce((m, x) => (Number.isFinite(x) ? Math.max(m, Math.abs(x)) : m), 0);
    const p = checkOutput(name, got[name], strict[name], skipping[name], TOL, mag);
    if (p.length) found.push(`${where}: ${describeCase(c)}: ${p.join('; ')}`);
  }
  return found;
}
