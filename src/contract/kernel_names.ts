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
}

/** Inputs of `FlashAttentionGrad`: the forward inputs, its outputs and dy = dL/dout. */
export interface FlashAttentionGradInputs extends FlashAttentionInputs {
  out: TensorInfo; logSumExp: TensorInfo; dy: TensorInfo;
}

export type Precision = 'highest' | 'fast';

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
}

/** Outputs of `FlashAttention`: [out [B, seqQ, H, Dv], logSumExp [B, H, seqQ]]. */
export type FlashAttentionOutputs = [TensorInfo, TensorInfo];
/** Outputs of `FlashAttentionGrad`: [dq, dk, dv], shaped like q, k, v. */
export type FlashAttentionGradOutputs = [TensorInfo, TensorInfo, TensorInfo];
