import {
  cast, engine, getKernel, maximum, minimum, mul, op, range, reshape, scalar, stack, tensor, Tensor, Tensor1D, Tensor2D,
  Tensor3D, Tensor4D, tensor1d, tensor2d, TensorLike, ones, zeros,
} from '@tensorflow/tfjs-core';
import {
  AttentionDims, check, FlashAttention, FlashAttentionAttrs, FlashAttentionInputs, FlashAttentionOptions, maskShape4D,
  isFiniteFloat32, normalizeAttrs, SeqLens, SequenceAttrs, shapeStr, validateOptionsObject, validateQKV,
  validateSeqLens,
} from './contract';
import { flashAttentionBlockwise } from '../kernels/fallback/blockwise';
import { ensureTensorflowKernels } from '../kernels/tensorflow/register';

export interface FlashAttentionResult {
  output: Tensor4D;
  logSumExp: Tensor3D;
}

/** Like tfjs's convertToTensor: tensors pass through (dtype checked later), arrays become float32. */
export function toFloatTensor(x: Tensor | TensorLike, name: string): Tensor {
  if (x instanceof Tensor) return x;
  check(x != null && typeof x === 'object', () => `${name} must be a Tensor or a nested array, but got ${x === null ? 'null' : typeof x}`);
  return tensor(x, undefined, 'float32');
}

/**
 * Slopes given as numbers are checked here (finite in float32); a tensor's values stay on its
 * device unread (a readback per call would stall GPU backends), so NaN slopes there give NaN out.
 */
export function toSlopes(slopes: FlashAttentionOptions['alibiSlopes'], heads: number): Tensor1D {
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
 * seqLensQ/seqLensK give each batch element's actual lengths (a padded batch): rows past them are
 * skipped, not masked, so the cost follows the lengths; flashAttentionVarlen takes packed sequences.
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
  // Lengths are read and checked before anything runs: bad ones throw with no work done.
  const padded = paddedSequences(options, dims);

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
  const attrs = normalizeAttrs(dims, options, hasAlibi, hasMask, padded?.attrs);
  const [output, logSumExp] = runFlashAttention($q, $k, $v, alibiSlopes, mask, attrs, padded?.ranges ?? null);
  return options.returnLogSumExp ? { output, logSumExp } : output;
}

/**
 * Runs the FlashAttention kernel of the current backend on checked inputs, or the blockwise
 * fallback where the backend has none. ranges: the sequences' (start row, length) pairs when
 * attrs.seqLayout is not 'dense' (the op read them from the user's lengths). Call inside an op
 * scope: the tensors made here are disposed by it.
 */
export function runFlashAttention(q: Tensor4D, k: Tensor4D, v: Tensor4D, alibiSlopes: Tensor1D, mask: Tensor4D,
                                  attrs: FlashAttentionAttrs, ranges: OpRanges | null): [Tensor4D, Tensor3D] {
  const backendName = engine().backendName;
  if (backendName === 'tensorflow') ensureTensorflowKernels();   // loads the CUDA op library once
  if (getKernel(FlashAttention, backendName) == null) {
    // Backends without a kernel read synchronously (device-resident ranges only arise on WebGPU).
    const onHost = (r: Int32Array | Tensor2D) => (r instanceof Tensor ? r.dataSync() as Int32Array : r);
    const hostRanges = ranges && { q: onHost(ranges.q), k: onHost(ranges.k) };
    const { output, logSumExp } = flashAttentionBlockwise(q, k, v, alibiSlopes, mask, attrs, hostRanges);
    return [output, logSumExp];
  }
  const rangesTensor = (r: Int32Array | Tensor2D | undefined) =>
    r instanceof Tensor ? r : r ? tensor2d(r, [r.length / 2, 2], 'int32') : zeros([1, 2], 'int32');
  const inputs: FlashAttentionInputs = {
    q, k, v, alibiSlopes, mask, seqRangesQ: rangesTensor(ranges?.q), seqRangesK: rangesTensor(ranges?.k),
  };
  return engine().runKernel(FlashAttention, inputs as {}, attrs as unknown as {}) as [Tensor4D, Tensor3D];
}

/** How a lengths value that is not a number[], Int32Array or Tensor is named in an error. */
function describeLens(x: unknown): string {
  if (x === null || typeof x !== 'object') return typeof x === 'string' ? JSON.stringify(x) : String(x);
  return `a ${(x as object).constructor?.name ?? 'null-prototype object'}`;
}

/**
 * The values of seqLensQ/K or cuSeqLensQ/K (name), read at once (one small read) so that bad
 * values throw before any work: a number[], an Int32Array or an int32 Tensor1D. When a tensor's
 * values cannot be read synchronously (GPU-resident data on WebGPU in Node) and allowDevice is
 * set, the tensor itself is returned: the caller keeps the lengths on the device.
 */
export function readSeqLens(x: SeqLens, name: string): number[];
export function readSeqLens(x: SeqLens, name: string, allowDevice: true): number[] | Tensor1D;
export function readSeqLens(x: SeqLens, name: string, allowDevice = false): number[] | Tensor1D {
  if (x instanceof Tensor) {
    check(x.dtype === 'int32', () => `${name} must be an int32 tensor, but got ${x.dtype}`);
    check(x.rank === 1, () => `${name} must be a Tensor1D, but got shape ${shapeStr(x.shape)}`);
    let values: ArrayLike<number>;
    try {
      values = x.dataSync() as Int32Array;
    } catch (e) {
      // WebGPU in Node cannot read a GPU-resident tensor synchronously (tfjs reads through an
      // OffscreenCanvas, which Node lacks).
      if (allowDevice) return x as Tensor1D;
      check(false, () => `${name}'s values could not be read synchronously on the '${engine().backendName}' ` +
          `backend (${(e as Error).message}): pass them as a number[] or Int32Array, e.g. ` +
          `Array.from(await ${name}.data())`);
    }
    return Array.from(values);
  }
  check(Array.isArray(x) || x instanceof Int32Array, () =>
      `${name} must be a number[], Int32Array or int32 Tensor1D, but got ${describeLens(x)}`);
  const values = Array.from(x as ArrayLike<unknown>);
  const bad = values.findIndex(e => typeof e !== 'number');
  check(bad < 0, () => `${name}[${bad}] must be a number, but got ${describeLens(values[bad])}`);
  return values as number[];
}

/**
 * seqLensQ/K of a padded batch: the sequence attributes and each batch element's ranges
 * (start b * seq, given length; the side not given is full length). null when neither is given.
 */
function paddedSequences(options: FlashAttentionOptions, dims: AttentionDims):
    { attrs: SequenceAttrs; ranges: OpRanges } | null {
  const given = (x: unknown) => x !== undefined && x !== null;
  if (!given(options.seqLensQ) && !given(options.seqLensK)) return null;
  const { batch, seqQ, seqK } = dims;
  const ranges = (x: SeqLens | undefined, name: string, seq: number, dimName: string): Int32Array | Tensor2D => {
    const starts = Array.from({ length: batch }, (_, b) => b * seq);
    if (!given(x)) return sequenceRanges(starts, new Array<number>(batch).fill(seq));
    const values = readSeqLens(x!, name, true);
    if (values instanceof Tensor) {
      // Lengths on the device (unreadable synchronously): shape checked here, values clamped to
      // [0, seq] on the device, so a bad length cannot reach memory outside its sequence.
      check(values.size === batch, () =>
          `${name} must have one length per batch element (${batch}), but got ${values.size}`);
      const lens = minimum(maximum(values, scalar(0, 'int32')), scalar(seq, 'int32'));
      return stack([cast(mul(range(0, batch, 1, 'int32'), scalar(seq, 'int32')), 'int32'), lens], 1) as Tensor2D;
    }
    validateSeqLens(values, name, batch, seq, dimName);
    return sequenceRanges(starts, values);
  };
  return {
    attrs: { seqLayout: 'padded', maxSeqLenQ: seqQ, maxSeqLenK: seqK, numSeqs: batch },
    ranges: { q: ranges(options.seqLensQ, 'seqLensQ', seqQ, 'seqQ'),
              k: ranges(options.seqLensK, 'seqLensK', seqK, 'seqK') },
  };
}

/** The sequences' (start, length) pairs: read on the host, or (lengths on the GPU) on the device. */
export interface OpRanges { q: Int32Array | Tensor2D; k: Int32Array | Tensor2D; }

/** (start, length) pairs, flat, as the kernels' seqRangesQ/K [numSeqs, 2]. */
export function sequenceRanges(starts: readonly number[], lens: readonly number[]): Int32Array {
  const r = new Int32Array(2 * lens.length);
  lens.forEach((l, s) => { r[2 * s] = starts[s]; r[2 * s + 1] = l; });
  return r;
}

export const flashAttention = op({ flashAttention_ });
export type { FlashAttentionAttrs };
