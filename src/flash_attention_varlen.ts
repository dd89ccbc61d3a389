/**
 * flashAttentionVarlen: attention over sequences packed back to back, as FlashAttention's
 * flash_attn_varlen_func. q [totalQ, heads, headDim] holds sequence s's queries in rows
 * cuSeqLensQ[s] ... cuSeqLensQ[s + 1] - 1, and likewise k and v with cuSeqLensK; every sequence
 * attends only to its own keys (document masking for packed training text), with no padding and
 * no mask tensor: cost follows sum(lenQ * lenK).
 *
 * The kernels see one FlashAttention call on q/k/v viewed as [1, total, heads, headDim] with
 * seqLayout 'packed' (src/contract/kernel_names.ts); the registered gradient applies unchanged.
 */
import { op, reshape, Tensor, Tensor2D, Tensor3D, Tensor4D, TensorLike, ones, zeros, Tensor1D } from '@tensorflow/tfjs-core';
import {
  check, FlashAttentionOptions, FlashAttentionVarlenOptions, normalizeAttrs, shapeStr, validateCuSeqLens,
  validateOptionsObject, validateQKV,
} from './contract';
import { readSeqLens, runFlashAttention, sequenceRanges, toFloatTensor, toSlopes } from './flash_attention';

export interface FlashAttentionVarlenResult {
  output: Tensor3D;
  /** [heads, totalQ]; -Infinity for rows with no key (e.g. a sequence with no keys). */
  logSumExp: Tensor2D;
}

const reshapeTo = (t: Tensor, shape: number[]): Tensor => reshape(t, shape);

const PREFIX = 'Error in flashAttention: ';

/** The shared validation says "Error in flashAttention:"; this op's errors name this op. */
function renamed<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof Error && e.message.startsWith(PREFIX)) {
      e.message = `Error in flashAttentionVarlen: ${e.message.slice(PREFIX.length)}`;
    }
    throw e;
  }
}

/**
 * Packed variable-length attention. q [totalQ, heads, headDim], k [totalK, kvHeads, headDim],
 * v [totalK, kvHeads, headDimV] -> [totalQ, heads, headDimV]. cuSeqLensQ/K: int32 cumulative
 * offsets [numSeqs + 1] (0, ..., totalQ / totalK), the same numSeqs on both sides. Every option of
 * flashAttention except mask and seqLensQ/K applies per sequence: causal, window and ALiBi are
 * aligned bottom-right to each sequence's own lengths; returnLogSumExp adds [heads, totalQ].
 */
function flashAttentionVarlen_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                               options: FlashAttentionVarlenOptions & { returnLogSumExp?: false }): Tensor3D;
function flashAttentionVarlen_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                               options: FlashAttentionVarlenOptions & { returnLogSumExp: true }): FlashAttentionVarlenResult;
function flashAttentionVarlen_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                               options: FlashAttentionVarlenOptions): Tensor3D | FlashAttentionVarlenResult;
function flashAttentionVarlen_(q: Tensor | TensorLike, k: Tensor | TensorLike, v: Tensor | TensorLike,
                               options: FlashAttentionVarlenOptions): Tensor3D | FlashAttentionVarlenResult {
  return renamed(() => {
    validateOptionsObject(options);
    const { cuSeqLensQ, cuSeqLensK, ...rest } = options;
    const attention = rest as FlashAttentionOptions;
    check(attention.mask === undefined || attention.mask === null, () =>
        'mask is not supported with packed sequences: each sequence already attends only to its own keys; ' +
        'for other masking use flashAttention with seqLensQ/seqLensK and mask');
    for (const name of ['seqLensQ', 'seqLensK'] as const) {
      check(attention[name] === undefined, () => `${name} is not an option of packed sequences: give cuSeqLensQ and cuSeqLensK`);
    }
    const tensors = [['q', q, '[totalQ, heads, headDim]'], ['k', k, '[totalK, kvHeads, headDim]'],
                     ['v', v, '[totalK, kvHeads, headDimV]']] as const;
    const [$q, $k, $v] = tensors.map(([name, x, layout]) => {
      const t = toFloatTensor(x, name);
      check(t.rank === 3, () => `${name} must be rank 3 ${layout}, but got shape ${shapeStr(t.shape)}`);
      return t;
    });
    for (const name of ['cuSeqLensQ', 'cuSeqLensK'] as const) {
      check(options[name] !== undefined && options[name] !== null, () =>
          `${name} is required: int32 [numSeqs + 1] cumulative sequence offsets (0, ..., total)`);
    }
    const cuQ = readSeqLens(cuSeqLensQ, 'cuSeqLensQ'), cuK = readSeqLens(cuSeqLensK, 'cuSeqLensK');
    const [totalQ, totalK] = [$q.shape[0], $k.shape[0]];
    const lensQ = validateCuSeqLens(cuQ, 'cuSeqLensQ', totalQ, `totalQ (q's dimension 0)`);
    const lensK = validateCuSeqLens(cuK, 'cuSeqLensK', totalK, `totalK (k's dimension 0)`);
    check(lensQ.length === lensK.length, () =>
        `cuSeqLensQ and cuSeqLensK must describe the same number of sequences, but got ${lensQ.length} and ${lensK.length}`);

    const withLeadingOne = (t: Tensor) => reshapeTo(t, [1, ...t.shape]) as Tensor4D;
    const [q4, k4, v4] = [$q, $k, $v].map(withLeadingOne);
    const dims = validateQKV(q4, k4, v4);
    const hasAlibi = attention.alibiSlopes !== undefined && attention.alibiSlopes !== null;
    const alibiSlopes = hasAlibi ? toSlopes(attention.alibiSlopes, dims.heads) : zeros([1]) as Tensor1D;
    const mask = ones([1, 1, 1, 1], 'bool') as Tensor4D;
    const attrs = normalizeAttrs(dims, attention, hasAlibi, false, {
      seqLayout: 'packed', maxSeqLenQ: Math.max(...lensQ), maxSeqLenK: Math.max(...lensK), numSeqs: lensQ.length,
    });
    const ranges = { q: sequenceRanges(cuQ, lensQ), k: sequenceRanges(cuK, lensK) };
    const [out4, logSumExp3] = runFlashAttention(q4, k4, v4, alibiSlopes, mask, attrs, ranges);
    const output = reshapeTo(out4, out4.shape.slice(1)) as Tensor3D;   // [totalQ, heads, headDimV]
    if (!attention.returnLogSumExp) return output;
    return { output, logSumExp: reshapeTo(logSumExp3, logSumExp3.shape.slice(1)) as Tensor2D };   // [heads, totalQ]
  });
}

export const flashAttentionVarlen = op({ flashAttentionVarlen_ });
