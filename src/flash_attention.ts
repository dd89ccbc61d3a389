import {
  engine, getKernel, op, reshape, tensor, Tensor, Tensor1D, Tensor3D, Tensor4D, tensor1d, TensorLike,
  ones, zeros,
} from '@tensorflow/tfjs-core';
import {
  check, FlashAttention, FlashAttentionAttrs, FlashAttentionInputs, FlashAttentionOptions, maskShape4D,
  isFiniteFloat32, normalizeAttrs, shapeStr, validateOptionsObject, validateQKV,
} from './contract';
import { flashAttentionBlockwise } from '../kernels/fallback/blockwise';
import { ensureTensorflowKernels } from '../kernels/tensorflow/register';

export interface FlashAttentionResult {
  output: Tensor4D;
  logSumExp: Tensor3D;
}

/** Like tfjs's convertToTensor: tensors pass through (dtype checked later), arrays become float32. */
function toFloatTensor(x: Tensor | TensorLike, name: string): Tensor {
  if (x instanceof Tensor) return x;
  check(x != null && typeof x === 'object', () => `${name} must be a Tensor or a nested array, but got ${x === null ? 'null' : typeof x}`);
  return tensor(x, undefined, 'float32');
}

/**
 * Slopes given as numbers are checked here (finite in float32); a tensor's values stay on its
 * device unread (a readback per call would stall GPU backends), so NaN slopes there give NaN out.
 */
function toSlopes(slopes: FlashAttentionOptions['alibiSlopes'], heads: number): Tensor1D {
  if (!(slopes instanceof Tensor)) {
    check(Array.isArray(slopes) || slopes instanceof Float32Array, () =>
        `alibiSlopes must be a number[], Float32Array or Tensor1D, but got ${typeof slopes}`);
    const bad = Array.from(slopes as ArrayLike<unknown>)
        .findIndex(x => typeof x !== 'number' || !isFiniteFloat32(x));
    check(bad < 0, () => `alibiSlopes must be finite float32 numbers, but alibiSlopes[${bad}] is ${
        typeof slopes[bad] === 'string' ? JSON.stringify(slopes[bad]) : String(slopes[bad])}`);
  }
  const t = slopes instanceof Tensor ? slopes as Tensor
                                     : tensor1d(Array.from(slopes as ArrayLike<number>), 'float32');
  check(t.rank === 1 && t.size === heads, () =>
      `alibiSlopes must have length heads = ${heads}, but got shape ${shapeStr(t.shape)}`);
  check(t.dtype === 'float32', () => `alibiSlopes must be float32, but got ${t.dtype}`);
  return t as Tensor1D;
}

/**
 * Exact attention computed FlashAttention-style: tiled, with an online softmax, never
 * materialising a [seqQ, seqK] matrix; its gradient recomputes the probabilities block by block
 * from q, k and the saved row log-sum-exp.
 *
 * q [batch, seqQ, heads, headDim], k [batch, seqK, kvHeads, headDim],
 * v [batch, seqK, kvHeads, headDimV] -> [batch, seqQ, heads, headDimV] (BSHD, as FlashAttention).
 * Any Tensor (or nested array) is accepted; the rank is checked when the op runs.
 * heads % kvHeads == 0 gives grouped-query / multi-query attention.
 */
function flashAttention_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                         options?: FlashAttentionOptions & { returnLogSumExp?: false }): Tensor4D;
function flashAttention_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                         options: FlashAttentionOptions & { returnLogSumExp: true }): FlashAttentionResult;
function flashAttention_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                         options?: FlashAttentionOptions): Tensor4D | FlashAttentionResult;
function flashAttention_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                         options: FlashAttentionOptions = {}): Tensor4D | FlashAttentionResult {
  validateOptionsObject(options);
  const $q = toFloatTensor(q, 'q') as Tensor4D;
  const $k = toFloatTensor(k, 'k') as Tensor4D;
  const $v = toFloatTensor(v, 'v') as Tensor4D;
  const dims = validateQKV($q, $k, $v);

  // Tensors made here are disposed by op()'s scope whether we return or throw.
  const hasAlibi = options.alibiSlopes !== undefined && options.alibiSlopes !== null;
  const alibiSlopes = hasAlibi ? toSlopes(options.alibiSlopes, dims.heads) : zeros([1]) as Tensor1D;
  const hasMask = options.mask !== undefined && options.mask !== null;
  let mask: Tensor4D;
  if (hasMask) {
    check(options.mask instanceof Tensor, () => `mask must be a bool Tensor, but got ${typeof options.mask}`);
    check(options.mask.dtype === 'bool', () => `mask must be a bool tensor (true = attend), but got ${options.mask!.dtype}`);
    mask = reshape(options.mask, maskShape4D(options.mask.shape, dims)) as Tensor4D;
  } else {
    mask = ones([1, 1, 1, 1], 'bool') as Tensor4D;
  }
  const attrs = normalizeAttrs(dims, options, hasAlibi, hasMask);

  let output: Tensor4D, logSumExp: Tensor3D;
  const backendName = engine().backendName;
  if (backendName === 'tensorflow') ensureTensorflowKernels();   // loads the CUDA op library once
  if (getKernel(FlashAttention, backendName) != null) {
    // Lengths arrive with issue 12's seqLensQ/K; until then the ranges are placeholders.
    const seqRangesQ = zeros([1, 2], 'int32'), seqRangesK = zeros([1, 2], 'int32');
    const inputs: FlashAttentionInputs = { q: $q, k: $k, v: $v, alibiSlopes, mask, seqRangesQ, seqRangesK };
    [output, logSumExp] = engine().runKernel(
        FlashAttention, inputs as {}, attrs as unknown as {}) as [Tensor4D, Tensor3D];
  } else {
    ({ output, logSumExp } = flashAttentionBlockwise($q, $k, $v, alibiSlopes, mask, attrs));
  }
  return options.returnLogSumExp ? { output, logSumExp } : output;
}

export const flashAttention = op({ flashAttention_ });
export type { FlashAttentionAttrs };
