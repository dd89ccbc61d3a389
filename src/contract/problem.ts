/**
 * Everything a kernel needs, derived once from the input shapes and the normalised attributes:
 * every TypeScript backend (cpu, the blockwise fallback, tensorflow, webgpu) reads these values
 * instead of deriving its own, so an option or a derived quantity is added here, in one place.
 * (The CUDA kernels derive the same values in C++ from the same attributes: kernels/cuda/api.cu.)
 */
import { FlashAttentionAttrs } from './kernel_names';
import { dropoutThreshold } from './dropout';

/**
 * The problem's dimensions, read from q [B, seqQ, H, D], k [B, seqK, Hkv, D], v [B, seqK, Hkv, Dv].
 * With seqLayout 'packed' (kernel_names.ts), attentionProblem replaces batch by the number of
 * sequences and seqQ/seqK by the longest sequence's lengths (the grid extents).
 */
export interface AttentionDims {
  batch: number; seqQ: number; seqK: number; heads: number; kvHeads: number;
  headDim: number; headDimV: number;
}

/** Which options are on: kernels compile (or branch) on these, never on raw attribute values. */
export interface OptionFlags {
  window: boolean;
  alibi: boolean;
  softcap: boolean;
  mask: boolean;
  dropout: boolean;
  /** seqRangesQ/K are read (seqLayout 'padded' or 'packed'). */
  seqRanges: boolean;
  /** seqLayout 'packed': sequences packed back to back in q [1, totalQ, H, D]. */
  packed: boolean;
}

/** A WGSL scalar type; a uniform's value is converted to it exactly once, by its backend. */
export type UniformScalar = 'f32' | 'i32' | 'u32';

/** One per-call scalar of a GPU program: the table's order is the uniform struct's field order. */
export interface UniformField {
  name: string;
  type: UniformScalar;
  value: number;
}

export interface AttentionProblem extends AttentionDims {
  /**
   * seqK - seqQ: the causal mask, the window and ALiBi are aligned bottom-right. With seqRanges
   * the offset is per sequence, lenK - lenQ (sequenceOffset), and this value is unused.
   */
  offset: number;
  /** Rows of q (and out) / of k and v in memory: dimension 0 x dimension 1 (totalQ/totalK when packed). */
  rowsQ: number;
  rowsK: number;
  /** logSumExp index = startQ * lseStartStride + h * lseHeadStride + i (kernel_names.ts header). */
  lseStartStride: number;
  lseHeadStride: number;
  /** Shapes of the forward's outputs: out and logSumExp. */
  outShape: [number, number, number, number];
  logSumExpShape: [number, number, number];
  /** Query heads per kv head (GQA/MQA): query head h reads kv head floor(h / group). */
  group: number;
  /** attrs.computeLogSumExp (true where absent): false lets a kernel return NaNs for logSumExp. */
  computeLogSumExp: boolean;
  attrs: FlashAttentionAttrs;
  flags: OptionFlags;
  /** An element is kept by dropout when its hash is >= this (see dropout.ts); 0 without dropout. */
  dropoutThreshold: number;
  /** Kept probabilities are multiplied by 1 / (1 - dropoutRate); 1 without dropout. */
  dropoutScale: number;
  /** The per-call scalars of the GPU programs (WebGPU uniforms), in declaration order. */
  uniforms: readonly UniformField[];
}

export function attentionDims(qShape: readonly number[], kShape: readonly number[],
                              vShape: readonly number[]): AttentionDims {
  const [batch, seqQ, heads, headDim] = qShape;
  const [, seqK, kvHeads] = kShape;
  return { batch, seqQ, seqK, heads, kvHeads, headDim, headDimV: vShape[3] };
}

export function optionFlags(a: FlashAttentionAttrs): OptionFlags {
  return {
    window: a.windowLeft >= 0 || a.windowRight >= 0,
    alibi: a.hasAlibi,
    softcap: a.softcap > 0,
    mask: a.hasMask,
    dropout: a.dropoutRate > 0,
    seqRanges: a.seqLayout !== 'dense',
    packed: a.seqLayout === 'packed',
  };
}

/** Derives the problem of one kernel call from the shapes of q, k, v and the attributes. */
export function attentionProblem(qShape: readonly number[], kShape: readonly number[], vShape: readonly number[],
                                 attrs: FlashAttentionAttrs): AttentionProblem {
  const flags = optionFlags(attrs);
  const shapeDims = attentionDims(qShape, kShape, vShape);
  const dims = flags.packed
    ? { ...shapeDims, batch: attrs.numSeqs, seqQ: attrs.maxSeqLenQ, seqK: attrs.maxSeqLenK }
    : shapeDims;
  const rowsQ = qShape[0] * qShape[1];
  const rowsK = kShape[0] * kShape[1];
  const threshold = dropoutThreshold(attrs.dropoutRate);
  const dropoutScale = flags.dropout ? 1 / (1 - attrs.dropoutRate) : 1;
  return {
    ...dims,
    offset: dims.seqK - dims.seqQ,
    rowsQ,
    rowsK,
    // Padded/dense: startQ = b * seqQ, so startQ * heads = b * heads * seqQ ([B, H, seqQ]);
    // packed: [1, H, totalQ] indexed by the global row startQ + i.
    lseStartStride: flags.packed ? 1 : dims.heads,
    lseHeadStride: flags.packed ? rowsQ : dims.seqQ,
    outShape: [qShape[0], qShape[1], dims.heads, dims.headDimV],
    logSumExpShape: flags.packed ? [1, dims.heads, rowsQ] : [dims.batch, dims.heads, dims.seqQ],
    group: dims.heads / dims.kvHeads,
    computeLogSumExp: attrs.computeLogSumExp !== false,
    attrs,
    flags,
    dropoutThreshold: threshold,
    dropoutScale,
    // Field names are the WGSL programs' (uniforms.<name>).
    uniforms: [
      { name: 'scale', type: 'f32', value: attrs.scale },
      // A divisor in the softcap helper: 1 keeps the unused value finite when softcap is off.
      { name: 'softcap', type: 'f32', value: flags.softcap ? attrs.softcap : 1 },
      { name: 'windowLeft', type: 'i32', value: attrs.windowLeft },
      { name: 'windowRight', type: 'i32', value: attrs.windowRight },
      { name: 'seed', type: 'u32', value: attrs.seed >>> 0 },
      { name: 'dropThreshold', type: 'u32', value: threshold },
      { name: 'dropScale', type: 'f32', value: dropoutScale },
      { name: 'lseStartStride', type: 'i32', value: flags.packed ? 1 : dims.heads },
      { name: 'lseHeadStride', type: 'i32', value: flags.packed ? rowsQ : dims.seqQ },
    ],
  };
}

/**
 * (start row, length) of sequence b's queries or keys as a kernel sees them without ranges
 * ('dense'): rows b * seqLen ... (b + 1) * seqLen - 1. With ranges, read seqRangesQ/K[b] instead.
 */
export function denseRange(b: number, seqLen: number): [number, number] {
  return [b * seqLen, seqLen];
}

/** The bottom-right alignment offset of one sequence: lenK - lenQ (problem.offset when dense). */
export function sequenceOffset(lenQ: number, lenK: number): number {
  return lenK - lenQ;
}
