/**
 * The kernel contract: names, inputs and attributes shared by the op, the gradient and every
 * backend's kernels (cpu, webgpu, tensorflow/CUDA). Keep this file the single source of truth.
 *
 * Semantics every kernel implements (FlashAttention >= 2.1, bottom-right aligned):
 *   off = seqK - seqQ
 *   s_ij = scale * dot(q[b,i,h,:], k[b,j,kvh,:])              kvh = floor(h / (heads / kvHeads))
 *   if softcap > 0:   s_ij = softcap * tanh(s_ij / softcap)
 *   if hasAlibi:      s_ij += -alibiSlopes[h] * |i + off - j|
 *   key j is kept when (windowLeft  < 0 || j >= i + off - windowLeft)
 *                  and (windowRight < 0 || j <= i + off + windowRight)
 *                  and (!hasMask || mask[b,h,i,j])            (mask broadcast: size-1 dims repeat)
 *   P = softmax over kept keys; a row with no kept key gives out = 0, logSumExp = -Infinity and
 *       zero gradient.
 *   if dropoutRate > 0: P~_ij = P_ij * keep(seed, b*heads + h, i, j) / (1 - dropoutRate)
 *   out[b,i,h,:] = sum_j P~_ij v[b,j,kvh,:];   logSumExp[b,h,i] = log(sum_j exp(s_ij)) over kept j
 *
 * Variable lengths (attrs.seqLayout != 'dense'; FlashAttention's seqused_k / cu_seqlens). The
 * kernels see "sequences" b in [0, batch): sequence b's queries are q rows
 * seqRangesQ[b] = (startQ, lenQ), i.e. rows startQ + i for i < lenQ, where a q "row" is one index
 * of q's first two dimensions flattened (row r of q [B, seqQ, H, D] is q[floor(r/seqQ), r%seqQ]);
 * likewise keys/values from seqRangesK[b] = (startK, lenK). Inside sequence b every rule above
 * holds with seqQ := lenQ, seqK := lenK, i.e. off = lenK - lenQ (causal, window and ALiBi aligned
 * to the actual lengths, bottom-right), i, j local to the sequence (mask, dropout and ALiBi use
 * local i, j and sequence index b). Keys j >= lenK do not exist.
 *   'padded': q [B, seqQ, H, D] as usual; startQ = b * seqQ, startK = b * seqK; lenQ <= seqQ,
 *             lenK <= seqK. Query rows i >= lenQ output 0, logSumExp -Infinity, zero gradient;
 *             key rows j >= lenK get zero dk, dv.
 *   'packed': q [1, totalQ, H, D], k [1, totalK, Hkv, D] (flashAttentionVarlen's
 *             [total, H, D] with a leading 1); the ranges tile [0, totalQ) and [0, totalK) in
 *             order (from cuSeqLens); batch = number of sequences, seqQ/seqK = the longest
 *             sequence (attrs.maxSeqLenQ/K; the kernels' grid extent). logSumExp is
 *             [1, H, totalQ]. No mask (the op rejects it).
 * Kernels skip whole tiles past a sequence's length, so cost follows sum(lenQ * lenK).
 * problem.ts derives strides (lseStartStride, lseHeadStride) so one index formula serves all
 * three layouts:  logSumExp index = startQ * lseStartStride + h * lseHeadStride + i.
 */
import { TensorInfo } from '@tensorflow/tfjs-core';

export const FlashAttention = 'FlashAttention';
export const FlashAttentionGrad = 'FlashAttentionGrad';

/**
 * Inputs of `FlashAttention`. alibiSlopes and mask are always present so the registered gradient
 * can save them (tfjs's inputsToSave cannot name optional inputs); when hasAlibi/hasMask is false
 * they are 1-element placeholders that kernels must ignore.
 *  q [B, seqQ, H, D], k [B, seqK, Hkv, D], v [B, seqK, Hkv, Dv]    float32
 *  alibiSlopes [H] float32 (placeholder: [1])
 *  mask rank 4 bool, each dim 1 or [B, H, seqQ, seqK]'s (placeholder: [1, 1, 1, 1] true)
 */
export interface FlashAttentionInputs {
  q: TensorInfo; k: TensorInfo; v: TensorInfo; alibiSlopes: TensorInfo; mask: TensorInfo;
  /**
   * int32 [batch, 2]: (start row, length) of each sequence's queries / keys (see the header).
   * With seqLayout 'dense' they are [1, 2] placeholders that kernels must ignore.
   */
  seqRangesQ: TensorInfo; seqRangesK: TensorInfo;
}

/** Inputs of `FlashAttentionGrad`: the forward inputs, its outputs and dy = dL/dout. */
export interface FlashAttentionGradInputs extends FlashAttentionInputs {
  out: TensorInfo; logSumExp: TensorInfo; dy: TensorInfo;
}

export type Precision = 'highest' | 'fast';

/** How sequences lie in q/k/v (header): no lengths, lengths in a padded batch, or packed. */
export type SeqLayout = 'dense' | 'padded' | 'packed';

/**
 * Normalised attributes (see options.ts): causal is windowRight = 0; -1 means unbounded.
 * The same object is passed to `FlashAttention` and `FlashAttentionGrad`.
 */
export interface FlashAttentionAttrs {
  scale: number;
  /** 0 = off. */
  softcap: number;
  /** Keys left of the diagonal kept; -1 = unbounded. */
  windowLeft: number;
  /** Keys right of the diagonal kept; -1 = unbounded, 0 = causal. */
  windowRight: number;
  hasAlibi: boolean;
  hasMask: boolean;
  /** In [0, 1). */
  dropoutRate: number;
  /** uint32 seed of the counter-based dropout hash (dropout.ts). */
  seed: number;
  /** 'fast' lets a backend use a lower-precision path (e.g. tensor cores); others stay exact. */
  precision: Precision;
  /** 'dense' = seqRangesQ/K are placeholders; see the header for 'padded' and 'packed'. */
  seqLayout: SeqLayout;
  /**
   * The longest sequence's queries / keys: the kernels' grid extent. 'dense'/'padded': seqQ and
   * seqK (dimension 1 of q and k); 'packed': the maximum of the ranges' lengths.
   */
  maxSeqLenQ: number;
  maxSeqLenK: number;
  /** Sequences: q's batch for 'dense'/'padded'; the ranges' count (cuSeqLens length - 1) for 'packed'. */
  numSeqs: number;
  /**
   * Whether the logSumExp output must hold its values: the caller asked for it (returnLogSumExp)
   * or a gradient may be taken (the engine was recording when the op ran; the gradient reads it).
   * When false a kernel may leave it uncomputed and return NaNs of its shape (the WebGPU kernels
   * do: a forward then writes out with no unpack copies, a split-KV call is one dispatch fewer).
   * Absent (attributes made by hand): true.
   */
  computeLogSumExp?: boolean;
}

/**
 * Outputs of `FlashAttention`: [out [B, seqQ, H, Dv], logSumExp [B, H, seqQ]]
 * ('packed': out [1, totalQ, H, Dv], logSumExp [1, H, totalQ]; problem.ts has both shapes).
 */
export type FlashAttentionOutputs = [TensorInfo, TensorInfo];
/** Outputs of `FlashAttentionGrad`: [dq, dk, dv], shaped like q, k, v. */
export type FlashAttentionGradOutputs = [TensorInfo, TensorInfo, TensorInfo];
