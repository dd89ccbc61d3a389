/**
 * Public options of flashAttention, their validation and their normalisation into the kernels'
 * small attribute set (kernel_names.ts). Done once, in the op, as FlashAttention's C++ API does:
 * causal becomes windowRight = 0 and -1 means unbounded, so no backend ever sees `causal`.
 */
import { engine, Tensor, Tensor1D } from '@tensorflow/tfjs-core';
import { FlashAttentionAttrs, Precision, SeqLayout } from './kernel_names';
import { AttentionDims, attentionDims } from './problem';

export interface FlashAttentionOptions {
  /** Bottom-right aligned causal mask: key j is kept for query i when j <= i + seqK - seqQ. */
  causal?: boolean;
  /** s = scale * q.k; default 1 / sqrt(headDim). */
  scale?: number;
  /** s = softcap * tanh(s / softcap), after scaling; 0 (default) = off. */
  softcap?: number;
  /** Per-head ALiBi slopes (length = heads): s += -slope[h] * |i + seqK - seqQ - j|. */
  alibiSlopes?: number[] | Float32Array | Tensor1D;
  /** [left, right] keys kept around the (bottom-right aligned) diagonal; -1 = unbounded. */
  windowSize?: [number, number];
  /** bool, broadcastable to [batch, heads, seqQ, seqK]; true = attend. */
  mask?: Tensor;
  /** Dropout on the attention probabilities, in [0, 1). */
  dropoutRate?: number;
  /** Seed of the counter-based dropout mask: an integer in [0, 2^32); random when omitted. */
  seed?: number;
  /** Also return the row log-sum-exp [batch, heads, seqQ]. */
  returnLogSumExp?: boolean;
  /** 'fast' allows a faster lower-precision path where a backend has one (CUDA tensor cores). */
  precision?: Precision;
  /**
   * int32 per batch element, 0 <= seqLensQ[b] <= seqQ: queries i >= seqLensQ[b] do not exist
   * (output 0, logSumExp -Infinity, zero gradient). Causal, window and ALiBi align to the lengths.
   */
  seqLensQ?: SeqLens;
  /** int32 per batch element, 0 <= seqLensK[b] <= seqK: keys j >= seqLensK[b] do not exist. */
  seqLensK?: SeqLens;
}

/** Lengths per batch element (or cumulative offsets, for flashAttentionVarlen). */
export type SeqLens = number[] | Int32Array | Tensor1D;

/**
 * Options of flashAttentionVarlen (packed sequences, as FlashAttention's flash_attn_varlen_func):
 * every option of flashAttention except mask and seqLensQ/K applies per sequence.
 */
export interface FlashAttentionVarlenOptions extends Omit<FlashAttentionOptions, 'mask' | 'seqLensQ' | 'seqLensK'> {
  /** int32 [numSeqs + 1]: 0 = cuSeqLensQ[0] <= ... <= cuSeqLensQ[numSeqs] = totalQ. */
  cuSeqLensQ: SeqLens;
  /** int32 [numSeqs + 1]: 0 = cuSeqLensK[0] <= ... <= cuSeqLensK[numSeqs] = totalK. */
  cuSeqLensK: SeqLens;
}

/** How the sequences of one call lie in q/k/v: the attributes the op derives from the lengths. */
export type SequenceAttrs = Pick<FlashAttentionAttrs, 'seqLayout' | 'maxSeqLenQ' | 'maxSeqLenK' | 'numSeqs'>;

/** No lengths given: every sequence is the full seqQ x seqK. */
export function denseSequences(dims: AttentionDims): SequenceAttrs {
  return { seqLayout: 'dense', maxSeqLenQ: dims.seqQ, maxSeqLenK: dims.seqK, numSeqs: dims.batch };
}

/**
 * Checks lengths read from seqLensQ/seqLensK (name) against the batch and the sequence dimension:
 * integers in [0, maxLen], one per batch element.
 */
export function validateSeqLens(values: ArrayLike<number>, name: string, batch: number, maxLen: number,
                                dimName: string): void {
  check(values.length === batch, () => `${name} must have one length per batch element (${batch}), but got ${values.length}`);
  for (let b = 0; b < values.length; b++) {
    const x = values[b];
    check(Number.isInteger(x) && x >= 0 && x <= maxLen, () =>
        `${name}[${b}] must be an integer in [0, ${dimName} = ${maxLen}], but got ${x}`);
  }
}

/**
 * Checks cumulative offsets cuSeqLensQ/K (name): at least 2 integers, starting at 0,
 * non-decreasing, ending at total (rows of q, or of k and v). Returns the lengths.
 */
export function validateCuSeqLens(values: ArrayLike<number>, name: string, total: number,
                                  totalName: string): number[] {
  check(values.length >= 2, () => `${name} must have numSeqs + 1 >= 2 offsets, but got ${values.length}`);
  check(values[0] === 0, () => `${name} must start at 0, but ${name}[0] is ${values[0]}`);
  const lens: number[] = [];
  for (let s = 1; s < values.length; s++) {
    const x = values[s];
    check(Number.isInteger(x), () => `${name}[${s}] must be an integer, but got ${x}`);
    check(x >= values[s - 1], () =>
        `${name} must be non-decreasing, but ${name}[${s}] = ${x} < ${name}[${s - 1}] = ${values[s - 1]}`);
    lens.push(x - values[s - 1]);
  }
  const last = values[values.length - 1];
  check(last === total, () => `${name} must end at ${totalName} = ${total}, but ends at ${last}`);
  return lens;
}

export const MAX_HEAD_DIM = 256;

/** Throws "Error in flashAttention: <msg>" when cond is false; msg is built only on failure. */
export function check(cond: boolean, msg: () => string): asserts cond {
  if (!cond) throw new Error(`Error in flashAttention: ${msg()}`);
}

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

function isIntegerAtLeast(x: unknown, min: number): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= min;
}

/** Validates the shapes of q, k, v against each other and returns their dimensions. */
export function validateQKV(q: Tensor, k: Tensor, v: Tensor): AttentionDims {
  for (const [name, t, layout] of [['q', q, '[batch, seqQ, heads, headDim]'],
                                   ['k', k, '[batch, seqK, kvHeads, headDim]'],
                                   ['v', v, '[batch, seqK, kvHeads, headDimV]']] as const) {
    check(t.rank === 4, () => `${name} must be rank 4 ${layout}, but got shape ${shapeStr(t.shape)}`);
    check(t.dtype === 'float32', () => `${name} must be float32, but got ${t.dtype}`);
    check(t.shape.every(d => d > 0), () => `${name} must have no empty dimension, but got shape ${shapeStr(t.shape)}`);
  }
  const dims = attentionDims(q.shape, k.shape, v.shape);
  const { batch, seqK, heads, kvHeads, headDim, headDimV } = dims;
  const [kb, , , kd] = k.shape;
  const [vb, vs, vh] = v.shape;
  check(kb === batch && vb === batch, () =>
      `batch sizes differ: q ${shapeStr(q.shape)}, k ${shapeStr(k.shape)}, v ${shapeStr(v.shape)} (dimension 0 must match)`);
  check(kd === headDim, () =>
      `k's headDim must equal q's: q ${shapeStr(q.shape)} has headDim ${headDim}, k ${shapeStr(k.shape)} has ${kd}`);
  check(vs === seqK && vh === kvHeads, () =>
      `v must be [batch, seqK, kvHeads, headDimV] = [${batch}, ${seqK}, ${kvHeads}, headDimV] to match k ${shapeStr(k.shape)}, but got ${shapeStr(v.shape)}`);
  check(heads % kvHeads === 0, () =>
      `heads (${heads}, from q ${shapeStr(q.shape)}) must be divisible by kvHeads (${kvHeads}, from k ${shapeStr(k.shape)})`);
  check(headDim <= MAX_HEAD_DIM && headDimV <= MAX_HEAD_DIM, () =>
      `headDim and headDimV must be in [1, ${MAX_HEAD_DIM}], but got headDim ${headDim}, headDimV ${headDimV}`);
  return dims;
}

/** The largest finite float32: kernels read scale, softcap and ALiBi slopes as float32. */
export const FLOAT32_MAX = 3.4028234663852886e38;

function describeValue(x: unknown): string {
  if (x === null || typeof x !== 'object') return typeof x === 'string' ? JSON.stringify(x) : String(x);
  const name = (x as object).constructor?.name ?? 'null-prototype object';
  return `${/^[aeiou]/i.test(name) ? 'an' : 'a'} ${name}`;
}

/**
 * Options must be a plain object: anything else (a Map, an array, a tensor passed in the wrong
 * place) would have its settings silently ignored.
 */
export function validateOptionsObject(options: unknown): asserts options is FlashAttentionOptions {
  check(options !== null && typeof options === 'object' && Object.prototype.toString.call(options) === '[object Object]'
        && !(options instanceof Tensor),
        () => `options must be a plain object such as { causal: true }, but got ${describeValue(options)}`);
}

/** A number that is finite as float32 (what the kernels compute with). */
export const isFiniteFloat32 = (x: number) => Math.abs(x) <= FLOAT32_MAX;

/**
 * Validates the scalar options and normalises them. Tensor options (mask, alibiSlopes) are
 * validated by the op, which owns their conversion to tensors.
 */
export function normalizeAttrs(dims: AttentionDims, options: FlashAttentionOptions,
                               hasAlibi: boolean, hasMask: boolean,
                               sequences: SequenceAttrs = denseSequences(dims)): FlashAttentionAttrs {
  validateOptionsObject(options);
  const known = new Set(['causal', 'scale', 'softcap', 'alibiSlopes', 'windowSize', 'mask',
                         'dropoutRate', 'seed', 'returnLogSumExp', 'precision', 'seqLensQ', 'seqLensK']);
  for (const key of Object.keys(options)) {
    check(known.has(key), () => `unknown option '${key}'; known options: ${[...known].join(', ')}`);
  }
  const scale = options.scale ?? 1 / Math.sqrt(dims.headDim);
  check(typeof scale === 'number' && Number.isFinite(scale), () => `scale must be a finite number, but got ${options.scale}`);
  check(isFiniteFloat32(scale), () => `scale must fit in float32 (|scale| <= ${FLOAT32_MAX}), but got ${scale}`);
  const softcap = options.softcap ?? 0;
  check(typeof softcap === 'number' && Number.isFinite(softcap) && softcap >= 0,
        () => `softcap must be a finite number >= 0 (0 = off), but got ${options.softcap}`);
  check(isFiniteFloat32(softcap), () => `softcap must fit in float32 (softcap <= ${FLOAT32_MAX}), but got ${softcap}`);
  const dropoutRate = options.dropoutRate ?? 0;
  check(typeof dropoutRate === 'number' && dropoutRate >= 0 && dropoutRate < 1,
        () => `dropoutRate must be in [0, 1), but got ${options.dropoutRate}`);
  check(options.seed === undefined || (isIntegerAtLeast(options.seed, 0) && options.seed < 2 ** 32),
        () => `seed must be an integer in [0, 2^32), but got ${describeValue(options.seed)}`);
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  check(options.returnLogSumExp === undefined || typeof options.returnLogSumExp === 'boolean',
        () => `returnLogSumExp must be a boolean, but got ${describeValue(options.returnLogSumExp)}`);
  const precision = options.precision ?? 'highest';
  check(precision === 'highest' || precision === 'fast',
        () => `precision must be 'highest' or 'fast', but got ${JSON.stringify(options.precision)}`);
  check(options.causal === undefined || typeof options.causal === 'boolean',
        () => `causal must be a boolean, but got ${JSON.stringify(options.causal)}`);

  let [windowLeft, windowRight] = [-1, -1];
  if (options.windowSize !== undefined) {
    const w = options.windowSize;
    check(Array.isArray(w) && w.length === 2 && w.every(x => isIntegerAtLeast(x, -1)),
          () => `windowSize must be [left, right] with integers >= -1 (-1 = unbounded), but got ${JSON.stringify(w)}`);
    // A window wider than seqQ + seqK keeps every key: it is unbounded, so no backend ever sees a
    // value beyond int32 (WGSL i32, the CUDA ABI's int).
    [windowLeft, windowRight] = w.map(x => (x >= dims.seqQ + dims.seqK ? -1 : x));
  }
  if (options.causal) windowRight = windowRight < 0 ? 0 : Math.min(windowRight, 0);

  const computeLogSumExp = options.returnLogSumExp === true || gradientMayBeTaken();
  return { scale, softcap, windowLeft, windowRight, hasAlibi, hasMask, dropoutRate, seed, precision, ...sequences, computeLogSumExp };
}

/**
 * Whether the engine is inside a gradient computation (tf.grad(s), variableGrads, an optimizer's
 * minimize, model.fit): only then can the op land on the tape and its gradient read logSumExp.
 * Wider than the engine's own test (it also counts ops run inside another kernel, which the tape
 * skips), so logSumExp is never left out where a gradient needs it.
 */
const gradientMayBeTaken = () => engine().state.gradientDepth > 0;

/** Broadcasts a mask shape (rank <= 4) to rank 4 against [batch, heads, seqQ, seqK]. */
export function maskShape4D(maskShape: readonly number[], dims: AttentionDims): [number, number, number, number] {
  const target = [dims.batch, dims.heads, dims.seqQ, dims.seqK];
  const bad = () => `mask of shape ${shapeStr(maskShape)} is not broadcastable to [batch, heads, seqQ, seqK] = ${shapeStr(target)}`;
  check(maskShape.length <= 4, bad);
  const padded = [...new Array(4 - maskShape.length).fill(1), ...maskShape];
  check(padded.every((d, i) => d === 1 || d === target[i]), bad);
  return padded as [number, number, number, number];
}

export { shapeStr };
