/**
 * The two contenders, built from the same inputs: flashAttention from this package, and the stock
 * composite a tfjs user writes today (matMul, softmax, matMul; an added mask for causal).
 */
import type * as tfc from '@tensorflow/tfjs-core';
import type { flashAttention as FlashAttentionFn } from '../src/flash_attention';
import { BenchCase, Shape } from './cases';

export type TF = typeof tfc;
type Tensor = tfc.Tensor;

/**
 * Deterministic inputs of unit variance made on the device itself: at N = 32768, d = 128 the four
 * BSHD tensors hold 268 M floats, which tf.randomNormal would draw one by one in JavaScript for
 * tens of seconds. sin(9973·r_n·c_hd + φ_nh) with uniform r, c, φ is irregular along every axis
 * (not low rank, unlike sin(a + b)), which is all a timing and a row check need.
 */
export function deviceRandom(tf: TF, shape: [number, number, number, number], seed: number): tfc.Tensor4D {
  const [b, n, h, d] = shape;
  return tf.tidy(() => {
    const rows = tf.randomUniform([b, n, 1, 1], 0, 1, 'float32', seed);
    const cols = tf.randomUniform([1, 1, h, d], 0, 1, 'float32', seed + 1);
    const phase = tf.randomUniform([b, n, h, 1], 0, 2 * Math.PI, 'float32', seed + 2);
    const angle = tf.add(tf.mul(tf.mul(rows, cols), 9973), phase);
    return tf.mul(tf.sin(angle), Math.SQRT2) as tfc.Tensor4D;
  });
}

/** q, k, v and the upstream gradient dOut of one shape, in flashAttention's [B, N, H, D] layout. */
export interface Inputs {
  q: tfc.Tensor4D; k: tfc.Tensor4D; v: tfc.Tensor4D; dOut: tfc.Tensor4D;
}

export function makeInputs(tf: TF, s: Shape): Inputs {
  const shape: [number, number, number, number] = [s.batch, s.seq, s.heads, s.headDim];
  return {
    q: deviceRandom(tf, shape, 11), k: deviceRandom(tf, shape, 23),
    v: deviceRandom(tf, shape, 37), dOut: deviceRandom(tf, shape, 41),
  };
}

/** [B, N, H, D] -> [B·H, N, D]: the layout in which the composite's batched matMuls need no copies. */
export function toHeadMajor(tf: TF, x: tfc.Tensor4D): tfc.Tensor3D {
  const [b, n, h, d] = x.shape;
  return tf.tidy(() => tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [b * h, n, d]) as tfc.Tensor3D);
}

/** 0 on and below the diagonal, -1e9 above: the additive mask a composite user writes. */
export function additiveCausalMask(tf: TF, seq: number): tfc.Tensor2D {
  return tf.tidy(() => {
    const r = tf.range(0, seq, 1, 'int32');
    const above = tf.greater(tf.reshape(r, [1, seq]), tf.reshape(r, [seq, 1]));
    return tf.mul(tf.cast(above, 'float32'), -1e9) as tfc.Tensor2D;
  });
}

/**
 * softmax(q kᵀ · scale + mask) v on [B·H, N, D] tensors, headsPerChunk heads at a time. Chunking
 * is what a tfjs user must do once one [heads, N, N] score tensor passes the 2 GiB storage binding
 * limit; each chunk's tidy frees its temporaries, keeping only what backprop saved.
 */
export function compositeAttention(tf: TF, q: tfc.Tensor3D, k: tfc.Tensor3D, v: tfc.Tensor3D,
                                   mask: tfc.Tensor2D | null, scale: number, headsPerChunk: number): tfc.Tensor3D {
  const attend = (qc: Tensor, kc: Tensor, vc: Tensor) => {
    let scores = tf.mul(tf.matMul(qc, kc, false, true), scale);
    if (mask) scores = tf.add(scores, mask);
    return tf.matMul(tf.softmax(scores), vc) as tfc.Tensor3D;
  };
  const [bh, n, d] = q.shape;
  if (headsPerChunk >= bh) return attend(q, k, v);
  const chunks: tfc.Tensor3D[] = [];
  for (let h = 0; h < bh; h += headsPerChunk) {
    chunks.push(tf.tidy(() => attend(tf.slice(q, [h, 0, 0], [headsPerChunk, n, d]),
                                     tf.slice(k, [h, 0, 0], [headsPerChunk, n, d]),
                                     tf.slice(v, [h, 0, 0], [headsPerChunk, n, d]))));
  }
  const out = tf.concat(chunks, 0) as tfc.Tensor3D;
  tf.dispose(chunks);
  return out;
}

/**
 * One case made runnable: `run` returns what the timed call produces (out for fwd, [dq, dk, dv]
 * for fwd+bwd) and the caller disposes it; `rowOf` reads row i of head h of the first result
 * (out or dq) in batch 0 so it can be checked against float64.
 */
export interface Runnable {
  run: () => Tensor | Tensor[];
  rowOf: (result: Tensor, head: number, row: number) => Promise<Float32Array>;
  dispose: () => void;
}

async function readRow(tf: TF, t: Tensor, begin: number[], size: number[]): Promise<Float32Array> {
  const row = tf.slice(t, begin, size);
  const data = await row.data() as Float32Array;
  row.dispose();
  return data;
}

export function flashRunnable(tf: TF, flash: typeof FlashAttentionFn, c: BenchCase, x: Inputs): Runnable {
  const attend = (q: tfc.Tensor4D, k: tfc.Tensor4D, v: tfc.Tensor4D) => flash(q, k, v, { causal: c.causal });
  const grads = tf.grads((q: Tensor, k: Tensor, v: Tensor) =>
      attend(q as tfc.Tensor4D, k as tfc.Tensor4D, v as tfc.Tensor4D));
  return {
    run: c.pass === 'fwd' ? () => attend(x.q, x.k, x.v) : () => grads([x.q, x.k, x.v], x.dOut),
    rowOf: (t, h, i) => readRow(tf, t, [0, i, h, 0], [1, 1, 1, c.headDim]),
    dispose: () => {},
  };
}

export function compositeRunnable(tf: TF, c: BenchCase, x: Inputs, headsPerChunk: number): Runnable {
  const [q, k, v] = [x.q, x.k, x.v].map(t => toHeadMajor(tf, t));
  const dOut = c.pass === 'fwd' ? null : toHeadMajor(tf, x.dOut);
  const mask = c.causal ? additiveCausalMask(tf, c.seq) : null;
  const scale = 1 / Math.sqrt(c.headDim);
  const attend = (qh: Tensor, kh: Tensor, vh: Tensor) => compositeAttention(
      tf, qh as tfc.Tensor3D, kh as tfc.Tensor3D, vh as tfc.Tensor3D, mask, scale, headsPerChunk);
  const grads = tf.grads(attend);
  return {
    run: dOut ? () => grads([q, k, v], dOut) : () => tf.tidy(() => attend(q, k, v)),
    rowOf: (t, h, i) => readRow(tf, t, [h, i, 0], [1, 1, c.headDim]),   // batch 0: index h is b·H + h
    dispose: () => tf.dispose([q, k, v, ...(dOut ? [dOut] : []), ...(mask ? [mask] : [])]),
  };
}
