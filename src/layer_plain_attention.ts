/**
 * Attention the plain way: the full [batch, heads, seqQ, seqK] score matrix from matMul, masked,
 * softmax, matMul. It follows the same contract as flashAttention (src/contract/) so the
 * two are interchangeable, and it exists for what only a materialised matrix can give:
 * FlashMultiHeadAttention.callAndReturnAttentionScores, and the stock side of the training
 * example's side-by-side comparison. Memory grows as batch * heads * seqQ * seqK floats (several
 * times over when differentiated), which is what flashAttention avoids.
 */
import {
  add, cast, abs, dropout as tfDropout, gather, greaterEqual, less, lessEqual, logicalAnd, matMul,
  mul, neg, ones, range, reshape, scalar, softmax, sub, tanh, Tensor, Tensor4D, tensor1d, tidy,
  transpose,
} from '@tensorflow/tfjs-core';
import { FlashAttentionOptions, maskShape4D, normalizeAttrs, SeqLens, validateQKV } from './contract';

/** seqLensQ/K as int32 [batch, 1, 1, 1] (the full length when not given). */
function lengthsOf(lens: SeqLens | undefined, batch: number, full: number): Tensor {
  if (lens == null) return reshape(tensor1d(new Array(batch).fill(full), 'int32'), [batch, 1, 1, 1]);
  const t = lens instanceof Tensor ? cast(lens, 'int32') : tensor1d(Array.from(lens), 'int32');
  return reshape(t, [batch, 1, 1, 1]);
}

export interface PlainAttentionResult {
  /** [batch, seqQ, heads, headDimV], like flashAttention. */
  output: Tensor4D;
  /** Attention probabilities [batch, heads, seqQ, seqK] before dropout; rows with no kept key are 0. */
  probabilities: Tensor4D;
}

/**
 * Masked-out scores get this added instead of -Infinity, so a row with no kept key stays finite
 * (softmax of -Infinity everywhere is NaN); such rows are zeroed afterwards, as the contract says.
 */
const MASKED_SCORE = -1e9;

/**
 * The same inputs and options as flashAttention, computed with a materialised score matrix.
 * Dropout (training only) uses tf.dropout, so its mask differs from flashAttention's
 * counter-based one for the same seed: same distribution, different draws.
 */
export function plainAttention(q: Tensor4D, k: Tensor4D, v: Tensor4D,
                               options: FlashAttentionOptions = {}): PlainAttentionResult {
  return tidy(() => {
    const dims = validateQKV(q, k, v);
    const hasAlibi = options.alibiSlopes != null;
    const hasMask = options.mask != null;
    const attrs = normalizeAttrs(dims, { ...options, returnLogSumExp: undefined }, hasAlibi, hasMask);
    const { batch, seqQ, seqK, heads, kvHeads } = dims;
    const hasLengths = options.seqLensQ != null || options.seqLensK != null;
    // [batch, 1, 1, 1] lengths; each sequence's causal/window/ALiBi diagonal is lenK - lenQ.
    const lenQ = hasLengths ? lengthsOf(options.seqLensQ, batch, seqQ) : null;
    const lenK = hasLengths ? lengthsOf(options.seqLensK, batch, seqK) : null;
    const off: Tensor | number = hasLengths ? sub(lenK!, lenQ!) : seqK - seqQ;

    // [B, S, Hkv, D] -> [B, H, S, D]; query head h reads key/value head floor(h / group).
    const group = heads / kvHeads;
    const toHeads = (x: Tensor4D) => {
      const perHead = group === 1 ? x
          : gather(x, Array.from({ length: heads }, (_, h) => Math.floor(h / group)), 2) as Tensor4D;
      return transpose(perHead, [0, 2, 1, 3]);
    };
    let scores: Tensor = mul(matMul(transpose(q, [0, 2, 1, 3]), toHeads(k), false, true),
                             scalar(attrs.scale));
    if (attrs.softcap > 0) scores = mul(tanh(mul(scores, 1 / attrs.softcap)), attrs.softcap);

    // Signed distance j - (i + off) from each query's (bottom-right aligned) diagonal: [T, S]
    // ([B, 1, T, S] with lengths).
    const rows = reshape(range(0, seqQ, 1, 'int32'), [seqQ, 1]);
    const cols = reshape(range(0, seqK, 1, 'int32'), [1, seqK]);
    const distance = cast(sub(sub(cols, rows), off), 'float32');
    if (hasAlibi) {
      const slopes = options.alibiSlopes instanceof Tensor ? options.alibiSlopes
                                                           : tensor1d(Array.from(options.alibiSlopes!));
      scores = add(scores, mul(reshape(neg(slopes), [1, heads, 1, 1]), abs(distance)));
    }
    let kept: Tensor = ones([1, 1, seqQ, seqK], 'bool');
    if (attrs.windowLeft >= 0) kept = logicalAnd(kept, greaterEqual(distance, -attrs.windowLeft));
    if (attrs.windowRight >= 0) kept = logicalAnd(kept, lessEqual(distance, attrs.windowRight));
    if (hasMask) kept = logicalAnd(kept, reshape(options.mask!, maskShape4D(options.mask!.shape, dims)));
    // Queries i >= lenQ and keys j >= lenK do not exist.
    if (hasLengths) kept = logicalAnd(kept, logicalAnd(less(rows, lenQ!), less(cols, lenK!)));
    const keptFloat = cast(kept, 'float32');
    scores = add(scores, mul(sub(1, keptFloat), MASKED_SCORE));

    // Multiplying by the kept indicator zeroes rows with no kept key (their softmax is uniform).
    const probabilities = mul(softmax(scores), keptFloat) as Tensor4D;
    const dropped = attrs.dropoutRate > 0 ? tfDropout(probabilities, attrs.dropoutRate) : probabilities;
    const output = transpose(matMul(dropped, toHeads(v)), [0, 2, 1, 3]) as Tensor4D;
    return { output, probabilities };
  });
}

/**
 * The ALiBi slopes of Press et al. (2022) for numHeads heads: the geometric sequence
 * 2^(-8/n), 2^(-16/n), ... for a power of two n, interleaved from the next power of two otherwise
 * (as the paper's reference code does).
 */
export function alibiSlopesFor(numHeads: number): number[] {
  const powerOfTwo = (n: number) => Array.from({ length: n }, (_, i) => Math.pow(2, -8 * (i + 1) / n));
  const closest = Math.pow(2, Math.floor(Math.log2(numHeads)));
  if (closest === numHeads) return powerOfTwo(numHeads);
  const extra = powerOfTwo(2 * closest).filter((_, i) => i % 2 === 0).slice(0, numHeads - closest);
  return [...powerOfTwo(closest), ...extra];
}
