/**
 * FlashMultiHeadAttention: a drop-in for tfjs-layers' (Keras's) MultiHeadAttention whose attention
 * runs through flashAttention, so no [batch, heads, seqQ, seqK] tensor is built on the kernel
 * backends. Same constructor arguments, call signature, weights (order and shapes) and outputs;
 * beyond Keras it adds grouped-query attention, sliding windows, ALiBi and soft-capping.
 */
import {
  add, broadcastTo, cast, concat, getBackend, linalg, logicalAnd, matMul, max, mul, ones, range, reshape,
  serialization, slice, sum, Tensor, Tensor4D, tidy, transpose, where, zerosLike,
} from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { Constraint, ConstraintIdentifier } from '@tensorflow/tfjs-layers/dist/constraints';
import type { LayerArgs } from '@tensorflow/tfjs-layers/dist/engine/topology';
import type { Initializer, InitializerIdentifier } from '@tensorflow/tfjs-layers/dist/initializers';
import type { Shape } from '@tensorflow/tfjs-layers/dist/keras_format/common';
import type { Regularizer, RegularizerIdentifier } from '@tensorflow/tfjs-layers/dist/regularizers';
import type { Kwargs } from '@tensorflow/tfjs-layers/dist/types';
import { attachToTf } from './attach';
import { flashAttention } from './flash_attention';
import { alibiSlopesFor, plainAttention } from './layer_plain_attention';
import { FlashAttentionOptions, MAX_HEAD_DIM } from './contract';

/** flashAttention's options as the layer passes them (always the plain output). */
export type AttentionOptions = Omit<FlashAttentionOptions, 'returnLogSumExp'>;

type InitializerArg = InitializerIdentifier | Initializer;
type RegularizerArg = RegularizerIdentifier | Regularizer;
type ConstraintArg = ConstraintIdentifier | Constraint;

export interface FlashMultiHeadAttentionArgs extends LayerArgs {
  /** Number of query heads. */
  numHeads: number;
  /** Size of each query and key head, at most MAX_HEAD_DIM (256). */
  keyDim: number;
  /** Size of each value head, at most MAX_HEAD_DIM (256); default keyDim. */
  valueDim?: number;
  /** Dropout rate on the attention probabilities, applied in training only. */
  dropout?: number;
  /** Whether the four projections have biases; default true. */
  useBias?: boolean;
  /** Feature shape of the output; default the query's last dimension. */
  outputShape?: number | number[];
  /**
   * Axes attention runs over, counted on the inputs (negative: from the end); the other axes but
   * the features are batch-like. Default: every axis between the batch and the features (the
   * sequence axis of [batch, seq, features]). Several axes attend as one flattened sequence,
   * as in Keras; causal masks, windows and ALiBi need a single attention axis.
   */
  attentionAxes?: number | number[] | null;
  kernelInitializer?: InitializerArg;
  biasInitializer?: InitializerArg;
  kernelRegularizer?: RegularizerArg;
  biasRegularizer?: RegularizerArg;
  activityRegularizer?: RegularizerArg;
  kernelConstraint?: ConstraintArg;
  biasConstraint?: ConstraintArg;
  /** Key/value heads for grouped-query attention (numHeads must be a multiple); default numHeads. */
  numKeyValueHeads?: number;
  /** Default of the call's useCausalMask (Keras semantics: key j is kept for query j' >= j). */
  causal?: boolean;
  /** [left, right] keys kept around flashAttention's bottom-right aligned diagonal; -1 = unbounded. */
  windowSize?: [number, number] | null;
  /** ALiBi position bias: true for the standard slopes of numHeads heads, or one slope per head. */
  alibi?: boolean | number[];
  /** Soft-capping of the scores, softcap * tanh(s / softcap); 0 = off. */
  softcap?: number;
}

/** The call's keyword arguments, as tfjs-layers' MultiHeadAttention (and Keras) take them. */
export interface FlashMultiHeadAttentionCallArgs {
  value: Tensor | tfl.SymbolicTensor;
  /** Default: value. */
  key?: Tensor | tfl.SymbolicTensor;
  /**
   * [batch, seqQ, seqK], or [batch, heads, seqQ, seqK], or broadcastable to them; true (non-zero)
   * = attend. With several attention axes or batch-like axes, Keras's layout
   * [batch, ...batch-like, heads?, ...query axes, ...key axes].
   */
  attentionMask?: Tensor | tfl.SymbolicTensor;
  /** Lower-triangular mask on [seqQ, seqK], top-left aligned as in Keras. */
  useCausalMask?: boolean;
  /**
   * Also return the attention probabilities [batch, heads, seqQ, seqK] (before dropout): the call
   * then returns [output, scores], as Keras does. They are computed the plain way, so this costs
   * O(T·S) memory per head: for inspection, not for long sequences.
   */
  returnAttentionScores?: boolean;
  training?: boolean;
  /**
   * A key/value cache for generation (as keras_hub's CachedMultiHeadAttention): float32
   * [batch, 2, maxLength, numKeyValueHeads, keyDim], the projected keys then the projected values
   * of earlier positions. With it the call returns [output, newCache]: this call's keys and values
   * (from key and value, which hold the new positions only, as many as the query) written at
   * cacheUpdateIndex, and the output of the queries at positions cacheUpdateIndex,
   * cacheUpdateIndex + 1, ... attending to the cache's positions up to their own: causal within
   * the new tokens whatever the layer's `causal` (useCausalMask: false lets the new tokens see each
   * other), window and ALiBi at those positions. Nothing past cacheUpdateIndex + query length is
   * read, so a cache can start as tf.zeros. Eager calls only (inside tf.tidy or not); needs
   * valueDim == keyDim and [batch, seq, features] inputs; Keras (padding) masks are not taken
   * (attentionMask [batch, seqQ, maxLength] is), nor returnAttentionScores.
   */
  cache?: Tensor;
  /** Where this call's keys and values go in the cache: an integer, 0 <= cacheUpdateIndex <= maxLength - seqQ. */
  cacheUpdateIndex?: number;
}

const LAYER = 'flashMultiHeadAttention';

function check(cond: boolean, msg: () => string): asserts cond {
  if (!cond) throw new Error(`Error in ${LAYER}: ${msg()}`);
}

const isPositiveInt = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x > 0;
const shapeStr = (s: readonly (number | null)[]) => `[${s.join(', ')}]`;
const product = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

/** What tfjs-layers' Layer takes besides our own arguments. */
const LAYER_ARGS = ['inputShape', 'batchInputShape', 'batchSize', 'dtype', 'name', 'trainable', 'weights', 'inputDType'];
const OWN_ARGS = ['numHeads', 'keyDim', 'valueDim', 'dropout', 'useBias', 'outputShape', 'attentionAxes',
                  'kernelInitializer', 'biasInitializer', 'kernelRegularizer', 'biasRegularizer',
                  'activityRegularizer', 'kernelConstraint', 'biasConstraint',
                  'numKeyValueHeads', 'causal', 'windowSize', 'alibi', 'softcap'];
const CALL_ARGS = ['value', 'key', 'attentionMask', 'useCausalMask', 'returnAttentionScores', 'training', 'cache',
                   'cacheUpdateIndex'];
/**
 * Call arguments tfjs passes itself: the graph executor's `mask` (the first input's Keras mask)
 * and our `inputLayout` (see InputLayout), which a functional model saves with each call.
 */
const INTERNAL_CALL_ARGS = ['mask', 'inputLayout'];

/** Levenshtein distance, for "did you mean" on a misspelt argument. */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    row = next;
  }
  return row[b.length];
}

/** Arguments given to the constructor that belong to the call, and the reverse. */
const MISPLACED: Record<string, string> = {
  'argument useCausalMask': 'a call argument; the constructor\'s default for it is causal',
  'argument returnAttentionScores': 'a call argument',
  'argument training': 'a call argument',
  'call argument causal': 'a constructor argument; the call takes useCausalMask',
};

/** Rejects keys of `given` outside `known`, naming the argument (and the nearest known one). */
function rejectUnknown(given: object, known: readonly string[], what: string, shown = known): void {
  for (const name of Object.keys(given)) {
    if (known.includes(name)) continue;
    const nearest = shown.reduce((best, k) => (editDistance(name, k) < editDistance(name, best) ? k : best), shown[0]);
    const misplaced = MISPLACED[`${what} ${name}`];
    const hint = misplaced ? ` (${misplaced})` : editDistance(name, nearest) <= 3 ? ` (did you mean '${nearest}'?)` : '';
    check(false, () => `unknown ${what} '${name}'${hint}; known ${what}s: ${shown.join(', ')}`);
  }
}

/**
 * Where each role (query, value, key, attentionMask?) sits in the input list the layer hands to
 * tfjs-layers: every distinct tensor once, query first. tfjs's graph executor counts a tensor's
 * consumers once per consuming layer call but releases it once per input slot, so a tensor given
 * to one call twice (query = value = key in self-attention) was freed while later layers (the
 * residual add of a post-LN block, a second cross-attention) still needed it.
 */
type InputLayout = number[];
type Roles<T> = [query: T, value: T, key: T, attentionMask?: T];

function distinctInputs<T>(roles: readonly T[]): { list: T[], layout: InputLayout } {
  const list: T[] = [];
  const layout = roles.map((x) => {
    const at = list.indexOf(x);
    return at >= 0 ? at : list.push(x) - 1;
  });
  return { list, layout };
}

function isLayout(x: unknown): x is InputLayout {
  return Array.isArray(x) && (x.length === 3 || x.length === 4) &&
      x.every((at, role) => Number.isInteger(at) && at >= 0 && at <= role);
}

/**
 * How the inputs map onto flashAttention's [batch, seq, features]: batch-like axes (the batch and
 * every non-attention axis) first, then the attention axes, each group flattened into one axis.
 * For [batch, seq, features] inputs with the default axes it is the identity. D is number | null
 * for symbolic shapes.
 */
interface Geometry<D> {
  /** Attention axes of the inputs, ascending. */
  axes: number[];
  /** Non-feature axes, batch-like first then attention axes; null when already in that order. */
  perm: number[] | null;
  batchDims: D[];
  queryDims: D[];
  keyDims: D[];
}

/**
 * broadcastTo, one axis at a time as a rank-3 tile: tfjs-webgpu tiles tensors of rank 5 or more
 * on the CPU, reading them back synchronously, which Node cannot do.
 */
function broadcastAxes(x: Tensor, shape: number[]): Tensor {
  const current = [...x.shape];
  let y = x;
  shape.forEach((size, axis) => {
    if (current[axis] === size) return;
    const [before, after] = [product(current.slice(0, axis)), product(current.slice(axis + 1))];
    y = broadcastTo(reshape(y, [before, 1, after]), [before, size, after]);
    current[axis] = size;
  });
  return y === x ? x : reshape(y, shape);
}

function geometryOf(queryShape: Shape, valueShape: Shape, axes: number[]): Geometry<number | null> {
  const batchAxes = Array.from({ length: queryShape.length - 1 }, (_, i) => i).filter(a => !axes.includes(a));
  const order = [...batchAxes, ...axes];
  return {
    axes,
    perm: order.every((a, i) => a === i) ? null : order,
    batchDims: batchAxes.map(a => queryShape[a]),
    queryDims: axes.map(a => queryShape[a]),
    keyDims: axes.map(a => valueShape[a]),
  };
}

/** Initializers, regularizers and constraints resolved from identifiers, configs or instances. */
interface WeightArgs {
  kernelInitializer: Initializer; biasInitializer: Initializer;
  kernelRegularizer?: Regularizer; biasRegularizer?: Regularizer; activityRegularizer?: Regularizer;
  kernelConstraint?: Constraint; biasConstraint?: Constraint;
}

/**
 * tfjs-layers does not export its getInitializer/getRegularizer/getConstraint, but every Dense
 * layer runs them on its arguments: a throwaway Dense resolves ours exactly as tfjs does
 * (identifier strings, {className, config} dicts and instances alike). Naming it keeps the
 * global layer-name counter, and so the user's own layer names, unchanged.
 */
function resolveWeightArgs(args: FlashMultiHeadAttentionArgs): WeightArgs {
  // tfjs's deserialization writes into {className, config} dicts: give it copies, not the caller's.
  const copy = <T>(x: T): T =>
      (x != null && typeof x === 'object' && !(x instanceof serialization.Serializable) ? JSON.parse(JSON.stringify(x)) : x);
  const dense = tfl.layers.dense({
    units: 1, name: `${LAYER}_argument_resolver`,
    kernelInitializer: copy(args.kernelInitializer) ?? 'glorotUniform',
    biasInitializer: copy(args.biasInitializer) ?? 'zeros',
    kernelRegularizer: copy(args.kernelRegularizer), biasRegularizer: copy(args.biasRegularizer),
    activityRegularizer: copy(args.activityRegularizer),
    kernelConstraint: copy(args.kernelConstraint), biasConstraint: copy(args.biasConstraint),
  });
  return dense as unknown as WeightArgs;
}

/** What tfjs-layers' serializeKerasObject writes for an initializer, regularizer or constraint. */
function serializeObject(x: serialization.Serializable | undefined): serialization.ConfigDict | null {
  return x == null ? null : { className: x.getClassName(), config: x.getConfig() };
}


/**
 * The masks of one call on flattened sequences: the Keras masks of the query [B', T'] and of the
 * value [B', S'] (bool), and the attentionMask [B' or 1, heads or 1, T', S'].
 */
interface CallMasks { query: Tensor | null; key: Tensor | null; attention: Tensor | null }

/** Where the Keras masks of a call end: see paddingExtents. */
interface PaddingExtents {
  /** One past each sequence's last kept query / key (0 for none); null without that mask. */
  lastQ: number[] | null;
  lastK: number[] | null;
  /** Whether every row of the mask is a prefix (right padding): its length then says it all. */
  queriesArePrefixes: boolean;
  keysArePrefixes: boolean;
}

/**
 * Whether the active backend reads tensors synchronously: tfjs-webgpu does so through an
 * OffscreenCanvas, which browsers have and Node does not.
 */
function canReadSync(): boolean {
  return getBackend() !== 'webgpu' || typeof OffscreenCanvas !== 'undefined';
}

/**
 * The extents of the query's and the value's Keras masks (bool [B, T], [B, S]): per row, one
 * past the last kept position and whether the row is a prefix, computed on the device and read
 * back at once (4 x batch int32: the one synchronous read of a padded call, as flashAttention would
 * make for tensor lengths). Null where that read cannot be made (WebGPU in Node): the masks are
 * then applied as they are, without lengths.
 */
function paddingExtents(queryMask: Tensor | null, keyMask: Tensor | null): PaddingExtents | null {
  if (!canReadSync()) return null;
  const masks = [queryMask, keyMask].filter((m): m is Tensor => m != null);
  const values = tidy(() => concat(masks.flatMap(m => {
    const kept = cast(m, 'int32');
    const past = max(mul(kept, range(1, m.shape[1]! + 1, 1, 'int32')), 1);
    return [past, sum(kept, 1)];
  }))).dataSync();
  const batch = masks[0].shape[0]!;
  const read = (at: number) => {
    const past = Array.from(values.subarray(2 * at * batch, (2 * at + 1) * batch));
    const counts = values.subarray((2 * at + 1) * batch, (2 * at + 2) * batch);
    return { past, prefix: past.every((p, b) => p === counts[b]) };
  };
  const q = queryMask ? read(0) : null;
  const k = keyMask ? read(queryMask ? 1 : 0) : null;
  return { lastQ: q?.past ?? null, lastK: k?.past ?? null,
           queriesArePrefixes: q?.prefix ?? true, keysArePrefixes: k?.prefix ?? true };
}

/** x [B, T, ...] with the rows where kept [B, T] (or [B, 1, T], ...) is false set to 0. */
function zeroRows<T extends Tensor>(x: T, kept: Tensor): T {
  const condition = reshape(kept, [...kept.shape, ...new Array(x.rank - kept.rank).fill(1)]);
  return where(broadcastAxes(condition, x.shape), x, zerosLike(x)) as T;
}

/** What graph execution must reproduce of a symbolic call, since tfjs's executor does not pass call arguments. */
interface LayerCall { layout: InputLayout; returnAttentionScores: boolean; cached?: boolean }

/** The Layer fields a failed build resets (tfjs-layers keeps them private). */
interface LayerWeightState {
  _trainableWeights: tfl.LayerVariable[]; _nonTrainableWeights: tfl.LayerVariable[];
  _addedWeightNames: string[]; _losses: unknown[];
}

export class FlashMultiHeadAttention extends tfl.layers.Layer {
  static className = 'FlashMultiHeadAttention';

  readonly numHeads: number;
  readonly keyDim: number;
  readonly valueDim: number;
  readonly dropout: number;
  readonly useBias: boolean;
  readonly numKeyValueHeads: number;
  /** Default of useCausalMask; a symbolic call's useCausalMask sets it (see apply). */
  causal: boolean;
  readonly windowSize: [number, number] | null;
  readonly alibi: boolean | number[];
  readonly softcap: number;
  private readonly outputShapeArg: number[] | null;
  private readonly attentionAxesArg: number[] | null;
  private readonly weightArgs: WeightArgs;
  /** Input layout and outputs of this layer's symbolic calls (one for all of them). */
  private symbolicCall: LayerCall | null = null;
  /** The call apply is running, for build, computeOutputShape and computeMask (tfjs calls them without it). */
  private activeCall: LayerCall | null = null;

  private queryKernel!: tfl.LayerVariable;
  private keyKernel!: tfl.LayerVariable;
  private valueKernel!: tfl.LayerVariable;
  private outputKernel!: tfl.LayerVariable;
  private queryBias: tfl.LayerVariable | null = null;
  private keyBias: tfl.LayerVariable | null = null;
  private valueBias: tfl.LayerVariable | null = null;
  private outputBias: tfl.LayerVariable | null = null;

  constructor(args: FlashMultiHeadAttentionArgs) {
    check(args != null && typeof args === 'object' && !Array.isArray(args), () => `args must be an object, but got ${args}`);
    // tfjs's deserialization adds customObjects to every config it constructs a layer from.
    rejectUnknown(args, [...OWN_ARGS, ...LAYER_ARGS, 'customObjects'], 'argument', [...OWN_ARGS, ...LAYER_ARGS]);
    check(args.dtype == null || args.dtype === 'float32', () =>
        `dtype must be 'float32' (flashAttention computes in float32), but got ${JSON.stringify(args.dtype)}`);
    super(args);
    this.supportsMasking = true;
    check(isPositiveInt(args.numHeads), () => `numHeads must be a positive integer, but got ${args.numHeads}`);
    const headSize = (name: string, x: unknown) => check(isPositiveInt(x) && x <= MAX_HEAD_DIM, () =>
        `${name} must be a positive integer <= ${MAX_HEAD_DIM} (flashAttention's largest head size), but got ${x}`);
    headSize('keyDim', args.keyDim);
    this.numHeads = args.numHeads;
    this.keyDim = args.keyDim;
    this.valueDim = args.valueDim ?? args.keyDim;
    headSize('valueDim', this.valueDim);
    this.dropout = args.dropout ?? 0;
    check(typeof this.dropout === 'number' && this.dropout >= 0 && this.dropout < 1,
          () => `dropout must be in [0, 1), but got ${args.dropout}`);
    this.useBias = args.useBias ?? true;
    check(typeof this.useBias === 'boolean', () => `useBias must be a boolean, but got ${args.useBias}`);

    if (args.outputShape == null) {
      this.outputShapeArg = null;
    } else {
      this.outputShapeArg = Array.isArray(args.outputShape) ? [...args.outputShape] : [args.outputShape];
      check(this.outputShapeArg.length > 0 && this.outputShapeArg.every(isPositiveInt),
            () => `outputShape must be a positive integer or an array of them, but got ${JSON.stringify(args.outputShape)}`);
    }

    this.numKeyValueHeads = args.numKeyValueHeads ?? args.numHeads;
    check(isPositiveInt(this.numKeyValueHeads) && this.numHeads % this.numKeyValueHeads === 0, () =>
        `numKeyValueHeads must be a positive integer dividing numHeads (${this.numHeads}), but got ${args.numKeyValueHeads}`);
    this.causal = args.causal ?? false;
    check(typeof this.causal === 'boolean', () => `causal must be a boolean, but got ${args.causal}`);
    this.windowSize = args.windowSize == null ? null : [...args.windowSize] as [number, number];
    check(this.windowSize == null || (this.windowSize.length === 2 &&
          this.windowSize.every(w => Number.isInteger(w) && w >= -1)), () =>
        `windowSize must be [left, right] with integers >= -1 (-1 = unbounded), but got ${JSON.stringify(args.windowSize)}`);
    this.alibi = args.alibi == null ? false : Array.isArray(args.alibi) ? [...args.alibi] : args.alibi;
    check(typeof this.alibi === 'boolean' || (this.alibi.length === this.numHeads &&
          this.alibi.every(s => typeof s === 'number' && Number.isFinite(s))), () =>
        `alibi must be a boolean or ${this.numHeads} finite slopes (one per head), but got ${JSON.stringify(args.alibi)}`);
    this.softcap = args.softcap ?? 0;
    check(typeof this.softcap === 'number' && Number.isFinite(this.softcap) && this.softcap >= 0,
          () => `softcap must be a finite number >= 0 (0 = off), but got ${args.softcap}`);

    if (args.attentionAxes == null) {
      this.attentionAxesArg = null;
    } else {
      const axes = Array.isArray(args.attentionAxes) ? [...args.attentionAxes] : [args.attentionAxes];
      check(axes.length > 0 && axes.every(a => Number.isInteger(a) && a !== 0 && a !== -1), () =>
          `attentionAxes must be axes between the batch axis (0) and the features (-1), but got ${JSON.stringify(args.attentionAxes)}`);
      this.attentionAxesArg = axes;
      this.checkSingleAxisOptions(axes, this.causal);
    }

    this.weightArgs = resolveWeightArgs(args);
    // Layer.apply refuses to run a layer with an activity regularizer, as it does for
    // tfjs-layers' MultiHeadAttention (whose sublayers get it); kept for config parity.
    if (this.weightArgs.activityRegularizer) this.activityRegularizer = this.weightArgs.activityRegularizer;
  }

  /** Causal masks, windows and ALiBi are defined along one sequence axis. */
  private checkSingleAxisOptions(axes: number[], useCausalMask: boolean): void {
    const used = [useCausalMask && 'useCausalMask', this.windowSize && 'windowSize', this.alibi !== false && 'alibi']
        .filter(o => o);
    check(axes.length === 1 || used.length === 0, () =>
        `${used.join(', ')} ${used.length > 1 ? 'need' : 'needs'} a single attention axis, but attention runs over axes ${JSON.stringify(axes)}`);
  }

  /**
   * Builds the four projections from [query, value, key(, attentionMask)] shapes, in tfjs-layers'
   * MultiHeadAttention's order and shapes, so weights move between the two with setWeights.
   * Shapes are checked before any weight exists, and a build that fails leaves the layer unbuilt.
   */
  override build(inputShape: Shape | Shape[]): void {
    const roles = this.roleShapes(inputShape);
    this.checkShapes(roles);
    const [queryDim, valueDim, keyDim] = roles.slice(0, 3).map(s => s![s!.length - 1] as number);
    const heads = this.numHeads, kvHeads = this.numKeyValueHeads;
    const outShape = this.outputShapeArg ?? [queryDim];
    const projection = (name: string, kernelShape: number[], biasShape: number[]) => {
      const w = this.weightArgs;
      const kernel = this.addWeight(`${name}/kernel`, kernelShape, 'float32', w.kernelInitializer,
                                    w.kernelRegularizer, true, w.kernelConstraint);
      const bias = this.useBias ? this.addWeight(`${name}/bias`, biasShape, 'float32', w.biasInitializer,
                                                 w.biasRegularizer, true, w.biasConstraint) : null;
      return [kernel, bias] as const;
    };
    try {
      [this.queryKernel, this.queryBias] = projection('query', [queryDim, heads, this.keyDim], [heads, this.keyDim]);
      [this.keyKernel, this.keyBias] = projection('key', [keyDim, kvHeads, this.keyDim], [kvHeads, this.keyDim]);
      [this.valueKernel, this.valueBias] =
          projection('value', [valueDim, kvHeads, this.valueDim], [kvHeads, this.valueDim]);
      [this.outputKernel, this.outputBias] =
          projection('attentionOutput', [heads, this.valueDim, ...outShape], outShape);
    } catch (e) {
      // An initializer can still fail (e.g. 'orthogonal' on a rank-3 kernel): drop what was added.
      const state = this as unknown as LayerWeightState;
      [...state._trainableWeights, ...state._nonTrainableWeights].forEach(w => w.dispose());
      Object.assign(state, { _trainableWeights: [], _nonTrainableWeights: [], _addedWeightNames: [], _losses: [] });
      throw e;
    }
    this.built = true;
  }

  /**
   * The role shapes [query, value, key, attentionMask?]: from the list apply hands to tfjs (while
   * it runs), or the public form [queryShape, valueShape, keyShape?] of tfjs-layers'
   * MultiHeadAttention, where a missing key means key = value.
   */
  private roleShapes(inputShape: Shape | Shape[]): Roles<Shape> {
    const list = Array.isArray(inputShape[0]) ? inputShape as Shape[] : [inputShape as Shape];
    if (this.activeCall) return this.activeCall.layout.map(at => list[at]) as Roles<Shape>;
    check(Array.isArray(inputShape[0]) && list.length >= 2, () =>
        `expects [queryShape, valueShape] or [queryShape, valueShape, keyShape], but got ${JSON.stringify(inputShape)}`);
    return [list[0], list[1], list[2] ?? list[1]];
  }

  /**
   * [queryShape, valueShape(, keyShape)] -> output shape, with tfjs-layers' MultiHeadAttention's
   * checks (query and value share their last dimension, value and key all but their last) and
   * the rest of the layer's; with returnAttentionScores also the scores' shape.
   */
  override computeOutputShape(inputShape: Shape | Shape[]): Shape | Shape[] {
    const roles = this.roleShapes(inputShape);
    const geometry = this.checkShapes(roles);
    const queryShape = roles[0];
    const output = this.outputShapeArg ? [...queryShape.slice(0, -1), ...this.outputShapeArg] : [...queryShape];
    if (!this.activeCall?.returnAttentionScores) return output;
    return [output, [...geometry.batchDims, this.numHeads, ...geometry.queryDims, ...geometry.keyDims]];
  }

  /**
   * Every check of the input shapes (dimensions may be unknown, as in a functional model). apply
   * runs it before tfjs builds the layer, so a call that fails leaves the layer as it was, and
   * eager and symbolic calls reject the same inputs.
   */
  private checkShapes(roles: Roles<Shape>, useCausalMask = false): Geometry<number | null> {
    const [queryShape, valueShape, keyShape, maskShape] = roles;
    const names = ['query', 'value', 'key'] as const;
    const rank = queryShape.length;
    [queryShape, valueShape, keyShape].forEach((shape, i) => {
      check(shape.length >= 3 && shape[shape.length - 1] != null, () =>
          `${names[i]} must be a rank-3 [batch, sequence, features] tensor (or of higher rank, see attentionAxes) ` +
          `with known features, but got shape ${shapeStr(shape)}`);
      check(shape.length === rank, () =>
          `query, value and key must have the same rank, but got ${shapeStr(queryShape)}, ${shapeStr(valueShape)}, ${shapeStr(keyShape)}`);
    });
    if (this.built) {
      const kernels = [this.queryKernel, this.valueKernel, this.keyKernel];
      [queryShape, valueShape, keyShape].forEach((shape, i) => check(shape[rank - 1] === kernels[i].shape[0], () =>
          `${names[i]} has ${shape[rank - 1]} features but the layer was built for ${kernels[i].shape[0]} (shape ${shapeStr(shape)})`));
    }
    check(queryShape[rank - 1] === valueShape[rank - 1], () =>
        `the last dimension of 'queryShape' and 'valueShape' must be equal, but are ` +
        `${queryShape[rank - 1]}, ${valueShape[rank - 1]}. ` +
        `Received: queryShape=${shapeStr(queryShape)}, valueShape=${shapeStr(valueShape)}`);
    const same = (a: number | null, b: number | null) => a == null || b == null || a === b;
    check(valueShape.every((d, i) => i === rank - 1 || same(d, keyShape[i])), () =>
        `all dimensions of 'value' and 'key', except the last one, must be equal (the same batch and ` +
        `sequence length). Received ${shapeStr(valueShape)} and ${shapeStr(keyShape)}`);
    const axes = this.attentionAxesFor(rank);
    this.checkSingleAxisOptions(axes, useCausalMask);
    check(queryShape.every((d, i) => i === rank - 1 || axes.includes(i) || same(d, valueShape[i])), () =>
        `query, value and key must have the same batch size${rank > 3 ? ' and batch-like dimensions' : ''}, ` +
        `but got ${shapeStr(queryShape)}, ${shapeStr(valueShape)}, ${shapeStr(keyShape)}`);
    const geometry = geometryOf(queryShape, valueShape, axes);
    // A cached call's mask spans the cache, not value: checkCachedCall checks it (apply does before
    // tfjs builds the layer and asks for its output shape).
    if (maskShape && !this.activeCall?.cached) this.expandedMaskShape(maskShape, geometry);
    return geometry;
  }

  /** Attention axes for rank-`rank` inputs, ascending (Keras's default: all but batch and features). */
  private attentionAxesFor(rank: number): number[] {
    const given = this.attentionAxesArg;
    const axes = given == null ? Array.from({ length: rank - 2 }, (_, i) => i + 1) : given.map(a => (a < 0 ? a + rank : a));
    check(axes.every(a => a >= 1 && a <= rank - 2) && new Set(axes).size === axes.length, () =>
        `attentionAxes ${JSON.stringify(given)} must name distinct axes between the batch axis and the features ` +
        `of rank-${rank} inputs (${rank > 3 ? `1 to ${rank - 2}, or ${2 - rank} to -2` : '1 or -2'})`);
    return axes.sort((a, b) => a - b);
  }

  /**
   * An attentionMask's shape in Keras's layout [batch, ...batch-like, heads, ...query axes,
   * ...key axes], with the axes Keras inserts (a heads axis, then leading ones), after checking it
   * broadcasts there.
   */
  private expandedMaskShape(maskShape: Shape, g: Geometry<number | null>): Shape {
    const n = g.axes.length;
    const target = [...g.batchDims, this.numHeads, ...g.queryDims, ...g.keyDims];
    const expanded = [...maskShape];
    while (expanded.length < target.length && expanded.length >= 2 * n) expanded.splice(expanded.length - 2 * n, 0, 1);
    const withoutHeads = target.filter((_, i) => i !== g.batchDims.length);
    check(expanded.length === target.length &&
          expanded.every((d, i) => d == null || d === 1 || target[i] == null || d === target[i]), () =>
        `attentionMask must be ${g.batchDims.length > 1 || n > 1 ? '[batch, ...batch-like axes, ...query axes, ...key axes]' : '[batch, seqQ, seqK]'} ` +
        `= ${shapeStr(withoutHeads)} (or broadcastable, optionally with a heads axis before the query axes), ` +
        `but got shape ${shapeStr(maskShape)}`);
    return expanded;
  }

  /**
   * layer.apply(query, {value, key?, attentionMask?, useCausalMask?, returnAttentionScores?,
   * training?}), eagerly or on SymbolicTensors. The inputs travel as one list of distinct tensors
   * (see InputLayout) so a functional model tracks and serialises all of them. tfjs's graph
   * executor does not hand call arguments back to call(), so a symbolic call's useCausalMask
   * becomes the layer's `causal` setting (and so is saved with the model), and its input layout
   * and returnAttentionScores are kept on the layer: one layer is used symbolically in one way.
   */
  override apply(inputs: Tensor | Tensor[] | tfl.SymbolicTensor | tfl.SymbolicTensor[],
                 kwargs?: Kwargs): Tensor | Tensor[] | tfl.SymbolicTensor | tfl.SymbolicTensor[] {
    const { roles, callArgs } = this.parseCall(inputs, kwargs);
    const symbolic = roles.map(x => x instanceof tfl.SymbolicTensor);
    check(symbolic.every(s => s === symbolic[0]), () =>
        'in a functional model, value, key and attentionMask must be SymbolicTensors too ' +
        '(e.g. tf.input({shape: [seqQ, seqK]}) for attentionMask), not concrete Tensors');
    roles.forEach((x, i) => check(x instanceof Tensor || x instanceof tfl.SymbolicTensor, () =>
        `${['query', 'value', 'key', 'attentionMask'][i]} must be a Tensor or SymbolicTensor, but got ${typeof x}`));
    const cached = callArgs['cache'] != null || callArgs['cacheUpdateIndex'] != null;
    check(!cached || !symbolic[0], () =>
        'a cached call (cache, cacheUpdateIndex) runs eagerly on Tensors, not in a functional model');
    const useCausalMask: boolean = callArgs['useCausalMask'] ?? (cached || this.causal);
    // Before tfjs builds the layer: a call that fails must leave it unbuilt.
    const shapes = roles.map(x => x!.shape) as Roles<Shape>;
    if (cached) this.checkCachedCall(shapes, callArgs, useCausalMask);
    else this.checkShapes(shapes, useCausalMask);
    const { list, layout } = distinctInputs(roles);
    const call: LayerCall = { layout, returnAttentionScores: callArgs['returnAttentionScores'] === true, cached };
    if (symbolic[0]) this.recordSymbolicCall(call, callArgs['useCausalMask']);
    const outer = this.activeCall;
    this.activeCall = call;
    try {
      return super.apply(list as Tensor[], { ...callArgs, inputLayout: layout });
    } finally {
      this.activeCall = outer;
    }
  }

  private recordSymbolicCall(call: LayerCall, useCausalMask: boolean | undefined): void {
    const earlier = this.inboundNodes.length > 0 ? this.symbolicCall : null;
    if (useCausalMask !== undefined && useCausalMask !== this.causal) {
      check(earlier == null, () =>
          `useCausalMask=${useCausalMask} differs from an earlier symbolic call of this layer ` +
          `(causal=${this.causal}); use one layer per setting`);
      this.causal = useCausalMask;
    }
    check(earlier == null || (JSON.stringify(earlier.layout) === JSON.stringify(call.layout) &&
                              earlier.returnAttentionScores === call.returnAttentionScores), () =>
        `this layer was applied symbolically with input layout ${JSON.stringify(earlier!.layout)} and ` +
        `returnAttentionScores=${earlier!.returnAttentionScores}, now with ${JSON.stringify(call.layout)} and ` +
        `${call.returnAttentionScores}; tfjs's graph executor cannot tell the calls apart: use one layer per way of calling it`);
    this.symbolicCall = call;
  }

  /**
   * Roles [query, value, key, attentionMask?] and the remaining call arguments, from
   * apply(query, {value, ...}) or from the list apply hands to tfjs (back from graph execution,
   * without call arguments, or from model loading, with them).
   */
  private parseCall<T>(inputs: T | T[], kwargs?: Kwargs): { roles: Roles<T>, callArgs: Kwargs } {
    check(kwargs == null || (typeof kwargs === 'object' && !Array.isArray(kwargs)), () =>
        `the call arguments must be an object {value, key?, ...}, but got ${kwargs}`);
    rejectUnknown(kwargs ?? {}, [...CALL_ARGS, ...INTERNAL_CALL_ARGS], 'call argument', CALL_ARGS);
    const { value, key, attentionMask, inputLayout, ...callArgs } = (kwargs ?? {}) as Kwargs;
    for (const name of ['useCausalMask', 'returnAttentionScores', 'training']) {
      check(callArgs[name] == null || typeof callArgs[name] === 'boolean', () =>
          `${name} must be a boolean, but got ${JSON.stringify(callArgs[name])}`);
    }
    if (!Array.isArray(inputs) && inputLayout == null) {
      check(value != null, () => 'must pass the `value` argument: layer.apply(query, {value})');
      const roles = [inputs, value, key ?? value, ...(attentionMask != null ? [attentionMask] : [])];
      return { roles: roles as Roles<T>, callArgs };
    }
    const list = Array.isArray(inputs) ? inputs : [inputs];
    check(value == null && key == null && attentionMask == null, () =>
        'pass value, key and attentionMask either in the input list or as call arguments, not both');
    let layout = inputLayout as InputLayout | undefined;
    if (layout == null) {
      const recorded = this.symbolicCall;
      if (recorded && Math.max(...recorded.layout) + 1 === list.length) {
        // Graph execution: the list from a symbolic call, without its arguments.
        layout = recorded.layout;
        callArgs['returnAttentionScores'] ??= recorded.returnAttentionScores;
      } else {
        // [query, value, key(, attentionMask)]: models saved before input layouts, and plain lists.
        check(list.length === 3 || list.length === 4, () =>
            `expects the inputs [query, value, key] or [query, value, key, attentionMask], but got ${list.length}`);
        layout = list.map((_, i) => i);
      }
    }
    check(isLayout(layout) && Math.max(...layout) === list.length - 1, () =>
        `inputLayout ${JSON.stringify(layout)} does not fit ${list.length} input(s)`);
    return { roles: layout.map(at => list[at]) as Roles<T>, callArgs };
  }

  /**
   * Runs on what apply hands it or, as tfjs-layers' MultiHeadAttention, on query with
   * {value, key?, attentionMask?, useCausalMask?, returnAttentionScores?, training?}; builds
   * the layer on a first call, as that class does. Returns [output, scores] with
   * returnAttentionScores.
   */
  override call(inputs: Tensor | Tensor[], kwargs: Kwargs): Tensor | Tensor[] {
    // Building inside apply gives the weights their layer-scoped names (what save/load matches).
    if (!this.built) return this.apply(inputs, kwargs) as Tensor | Tensor[];
    const { roles, callArgs } = this.parseCall(inputs, kwargs);
    if (callArgs['cache'] != null || callArgs['cacheUpdateIndex'] != null) {
      const { output, cache } = tidy(() => this.attendCached(roles, callArgs));
      return [output, cache];
    }
    const withScores = callArgs['returnAttentionScores'] === true;
    const { output, scores } = tidy(() => this.attend(roles, callArgs, withScores));
    return withScores ? [output, scores!] : output;
  }

  /**
   * The cached call (FlashMultiHeadAttentionCallArgs.cache): query [B, T, features] at positions
   * cacheUpdateIndex ... cacheUpdateIndex + T - 1. The keys and values are written into the
   * cache and attention runs over the whole cache with seqLensK = cacheUpdateIndex + T, so no copy
   * of the filled part is made and the op's short-query kernels see the cache as it is.
   */
  private attendCached(roles: Roles<Tensor>, kwargs: Kwargs): { output: Tensor, cache: Tensor } {
    const [query, value, key, attentionMask] = roles;
    roles.forEach((x, i) => check(x instanceof Tensor, () =>
        `${['query', 'value', 'key', 'attentionMask'][i]} must be a Tensor, but got ${typeof x}`));
    const passed = Array.isArray(kwargs['mask']) ? kwargs['mask'] : [kwargs['mask']];
    check(query.kerasMask == null && value.kerasMask == null && key.kerasMask == null && passed[0] == null, () =>
        'a cached call does not take Keras (padding) masks: the cache has no room for them; pass attentionMask ' +
        '[batch, seqQ, maxLength] instead');
    const useCausalMask: boolean = kwargs['useCausalMask'] ?? true;
    const { cacheGeometry, maxLength, index } = this.checkCachedCall(roles.map(t => t!.shape) as Roles<Shape>, kwargs, useCausalMask);
    const cache = kwargs['cache'] as Tensor;
    const [batch, seqQ] = query.shape;
    const [kvHeads, headDim] = [this.numKeyValueHeads, this.keyDim];

    const q = this.project(query, this.queryKernel, this.queryBias);
    const width = kvHeads * headDim;
    const end = index + seqQ;
    // The cache as [B, 2, maxLength * width]: keys and values each one contiguous run per batch
    // element (slices of whole runs are copies of memory on the cpu backend, not element loops),
    // and rank 3 keeps every op on the GPU.
    const stored = reshape(cache, [batch, 2, maxLength * width]);
    /** One half of the cache [B, maxLength, width] with this call's rows written at index. */
    const written = (half: number, fresh: Tensor) => {
      const old = reshape(slice(stored, [0, half, 0], [batch, 1, maxLength * width]), [batch, maxLength, width]);
      const parts = [
        ...(index > 0 ? [slice(old, [0, 0, 0], [batch, index, width])] : []),
        reshape(fresh, [batch, seqQ, width]),
        ...(end < maxLength ? [slice(old, [0, end, 0], [batch, maxLength - end, width])] : []),
      ];
      return parts.length === 1 ? parts[0] : concat(parts, 1);
    };
    const keys = written(0, this.project(key, this.keyKernel, this.keyBias));
    const values = written(1, this.project(value, this.valueKernel, this.valueBias));
    const k = reshape(keys, [batch, maxLength, kvHeads, headDim]) as Tensor4D;
    const v = reshape(values, [batch, maxLength, kvHeads, headDim]) as Tensor4D;
    const updated = concat([reshape(keys, [batch, 1, maxLength * width]), reshape(values, [batch, 1, maxLength * width])], 1);

    // Query i sits at position index + i: with lenK = index + seqQ the op's bottom-right diagonal
    // (j <= i + lenK - lenQ) is that position, for the causal mask, the window and ALiBi alike.
    const options: AttentionOptions = { seqLensK: new Int32Array(batch).fill(end) };
    const [left, right] = this.windowSize ?? [-1, -1];
    const causalRight = useCausalMask ? (right < 0 ? 0 : Math.min(right, 0)) : right;
    if (left >= 0 || causalRight >= 0) options.windowSize = [left, causalRight];
    if (attentionMask) {
      const m = this.attentionMaskToSequences(attentionMask, cacheGeometry);
      options.mask = broadcastAxes(m, [m.shape[0]!, m.shape[1]!, seqQ, maxLength]);
    }
    if (this.alibi !== false) options.alibiSlopes = this.alibi === true ? alibiSlopesFor(this.numHeads) : this.alibi;
    if (this.softcap > 0) options.softcap = this.softcap;
    if (kwargs['training'] === true && this.dropout > 0) options.dropoutRate = this.dropout;
    const attended = this.computeAttention(q, k, v, options);
    const { output } = this.finishOutput(attended, q, k, v, options, cacheGeometry, false, null);
    return { output, cache: reshape(updated, [batch, 2, maxLength, kvHeads, headDim]) };
  }

  /**
   * Every check of a cached call, before any work (apply runs it before tfjs builds the layer):
   * the role shapes, the cache and the update index, and the attentionMask against the cache's
   * length ([batch, seqQ, maxLength]). Returns the geometry of attention over the cache.
   */
  private checkCachedCall(roles: Roles<Shape>, kwargs: Kwargs, useCausalMask: boolean) {
    const g = this.checkShapes(roles.slice(0, 3) as Roles<Shape>, useCausalMask) as Geometry<number>;
    const { maxLength, index } = this.checkCache(roles, kwargs);
    const cacheGeometry: Geometry<number> = { ...g, keyDims: [maxLength] };
    if (roles[3]) this.expandedMaskShape(roles[3], cacheGeometry);
    return { cacheGeometry, maxLength, index };
  }

  /**
   * Checks a cached call's cache and update index against the role shapes: returns the cache's
   * maxLength and the update index.
   */
  private checkCache(roles: Roles<Shape>, kwargs: Kwargs): { maxLength: number, index: number } {
    const [queryShape, valueShape] = roles;
    const cache = kwargs['cache'], index = kwargs['cacheUpdateIndex'];
    const kvHeads = this.numKeyValueHeads, headDim = this.keyDim;
    const layout = `[batch, 2, maxLength, numKeyValueHeads, keyDim] = [${queryShape[0]}, 2, maxLength, ${kvHeads}, ${headDim}]`;
    check(cache != null, () => 'cacheUpdateIndex needs a cache: pass cache (float32 ' + layout + ') too');
    check(cache instanceof Tensor, () =>
        `cache must be a Tensor ${layout} (eager calls only), but got ${cache instanceof tfl.SymbolicTensor ? 'a SymbolicTensor' : typeof cache}`);
    check(cache.rank === 5 && cache.shape[0] === queryShape[0] && cache.shape[1] === 2 && cache.shape[3] === kvHeads &&
          cache.shape[4] === headDim, () => `cache must be ${layout}, but got shape ${shapeStr(cache.shape)}`);
    check(cache.dtype === 'float32', () => `cache must be float32, but got ${cache.dtype}`);
    check(kwargs['returnAttentionScores'] !== true, () => 'a cached call does not return attention scores');
    check(this.valueDim === this.keyDim, () =>
        `a cache holds keys and values of one size: it needs valueDim == keyDim, but they are ${this.valueDim} and ${this.keyDim}`);
    check(queryShape.length === 3 && this.attentionAxesFor(3).length === 1, () =>
        `a cached call takes [batch, seq, features] inputs, but got query ${shapeStr(queryShape)}`);
    const maxLength = cache.shape[2];
    check(typeof index === 'number' && Number.isInteger(index) && index >= 0 && index <= maxLength, () =>
        `cacheUpdateIndex must be an integer in [0, maxLength = ${maxLength}], but got ${JSON.stringify(index)}`);
    const seqQ = queryShape[1] as number;
    check(index + seqQ <= maxLength, () =>
        `the query's ${seqQ} positions from cacheUpdateIndex ${index} do not fit in the cache: ` +
        `cacheUpdateIndex + seqQ must be <= maxLength = ${maxLength}, but is ${index + seqQ}`);
    check(valueShape[1] === seqQ, () =>
        `in a cached call value and key hold the query's new positions: their sequence length must be ` +
        `seqQ = ${seqQ}, but got value ${shapeStr(valueShape)}`);
    return { maxLength, index };
  }

  /**
   * The call with returnAttentionScores (tfjs-layers' MultiHeadAttention's method): the output
   * and the attention probabilities (see FlashMultiHeadAttentionCallArgs.returnAttentionScores).
   */
  callAndReturnAttentionScores(query: Tensor, kwargs: FlashMultiHeadAttentionCallArgs): [Tensor, Tensor] {
    return this.call(query, { ...kwargs, returnAttentionScores: true } as unknown as Kwargs) as [Tensor, Tensor];
  }

  /**
   * The cached call (FlashMultiHeadAttentionCallArgs.cache), typed: [output, newCache]. The same
   * as call(query, {value, cache, cacheUpdateIndex, ...}).
   */
  callWithCache(query: Tensor, kwargs: FlashMultiHeadAttentionCallArgs & { cache: Tensor; cacheUpdateIndex: number }):
      [Tensor, Tensor] {
    return this.call(query, kwargs as unknown as Kwargs) as [Tensor, Tensor];
  }

  /** The output carries the query's mask, as in Keras; the scores and the cache none. */
  override computeMask(inputs: Tensor | Tensor[], mask?: Tensor | Tensor[]): Tensor | Tensor[] {
    const query = Array.isArray(inputs) ? inputs[0] : inputs;
    // A clone: tfjs disposes a tensor's kerasMask with the tensor, and the query keeps its own.
    const queryMask = ((Array.isArray(mask) ? mask[0] : mask) ?? query?.kerasMask)?.clone() ?? null;
    const twoOutputs = this.activeCall?.returnAttentionScores || this.activeCall?.cached;
    return (twoOutputs ? [queryMask, null] : queryMask) as Tensor | Tensor[];
  }

  /**
   * The attention itself on projected q [B, T, H, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv].
   * A subclass may override it (the training example's stock comparison does, with plain
   * attention); options follow flashAttention's.
   */
  protected computeAttention(q: Tensor4D, k: Tensor4D, v: Tensor4D, options: AttentionOptions): Tensor4D {
    return flashAttention(q, k, v, options);
  }

  private attend(roles: Roles<Tensor>, kwargs: Kwargs, withScores: boolean): { output: Tensor, scores?: Tensor } {
    const [query, value, key, attentionMask] = roles;
    roles.forEach((x, i) => check(x instanceof Tensor, () =>
        `${['query', 'value', 'key', 'attentionMask'][i]} must be a Tensor, but got ${typeof x}`));
    const useCausalMask: boolean = kwargs['useCausalMask'] ?? this.causal;
    const g = this.checkShapes(roles.map(t => t!.shape) as Roles<Shape>, useCausalMask) as Geometry<number>;
    const [batch, seqQ, seqK] = [product(g.batchDims), product(g.queryDims), product(g.keyDims)];
    // [batch, ..., features] -> [batch', seq', features] (a no-op for [batch, seq, features] inputs).
    const toSequences = (x: Tensor, seqDims: number[]) =>
        reshape(g.perm ? transpose(x, [...g.perm, x.rank - 1]) : x, [batch, product(seqDims), x.shape[x.rank - 1]]);
    // A Keras mask [batch, ...] (the input's shape without features) -> [batch', seq'].
    const kerasMaskToSequences = (m: Tensor, seqDims: number[]) =>
        reshape(toSequences(reshape(cast(m, 'bool'), [...m.shape, 1]), seqDims), [batch, product(seqDims)]);

    const passed = Array.isArray(kwargs['mask']) ? kwargs['mask'] : [kwargs['mask']];
    const queryMask: Tensor | null = query.kerasMask ?? passed[0] ?? null;
    // The executor passes only the first input's mask; in self-attention it is the value's too.
    const valueMask: Tensor | null = value.kerasMask ?? (value === query ? queryMask : null);
    const masks: CallMasks = {
      query: queryMask == null ? null : kerasMaskToSequences(queryMask, g.queryDims),
      key: valueMask == null ? null : kerasMaskToSequences(valueMask, g.keyDims),
      attention: attentionMask == null ? null : this.attentionMaskToSequences(attentionMask, g),
    };
    const { options, keptQueries } = this.attentionOptions(batch, seqQ, seqK, useCausalMask, masks,
                                                           kwargs['training'] === true);

    let q = this.project(toSequences(query, g.queryDims), this.queryKernel, this.queryBias);
    const k = this.project(toSequences(key, g.keyDims), this.keyKernel, this.keyBias);
    const v = this.project(toSequences(value, g.keyDims), this.valueKernel, this.valueBias);
    // Padding queries inside a sequence (a query mask that is not a prefix) are zeroed before and
    // after attention: their output is 0 as on the mask path, and a NaN there reaches no gradient.
    if (keptQueries) q = zeroRows(q, keptQueries);
    let attended = this.computeAttention(q, k, v, options);
    if (keptQueries) attended = zeroRows(attended, keptQueries);
    return this.finishOutput(attended, q, k, v, options, g, withScores, keptQueries);
  }

  /**
   * The output projection of attended [B', T', H, Dv], back to the inputs' layout, and (with
   * returnAttentionScores) the probabilities computed the plain way with the same options.
   */
  private finishOutput(attended: Tensor4D, q: Tensor4D, k: Tensor4D, v: Tensor4D, options: AttentionOptions,
                       g: Geometry<number>, withScores: boolean, keptQueries: Tensor | null): { output: Tensor, scores?: Tensor } {
    const [batch, seqQ] = attended.shape;
    // [B', T', H, Dv] x [H, Dv, ...out] -> [B', T', ...out], as one matMul.
    const outShape = this.outputKernel.shape.slice(2) as number[];
    const outSize = product(outShape);
    let output = matMul(reshape(attended, [batch * seqQ, this.numHeads * this.valueDim]),
                        reshape(this.outputKernel.read(), [this.numHeads * this.valueDim, outSize]));
    if (this.outputBias) output = add(output, reshape(this.outputBias.read(), [outSize]));
    output = reshape(output, [...g.batchDims, ...g.queryDims, ...outShape]);
    if (g.perm) {
      const inverse: number[] = [];
      g.perm.forEach((axis, i) => { inverse[axis] = i; });
      output = transpose(output, [...inverse, ...outShape.map((_, i) => g.perm!.length + i)]);
    }
    if (!withScores) return { output };
    let { probabilities } = plainAttention(q, k, v, { ...options, dropoutRate: 0 });
    if (keptQueries) probabilities = zeroRows(probabilities, reshape(keptQueries, [batch, 1, seqQ]));
    return { output, scores: reshape(probabilities, [...g.batchDims, this.numHeads, ...g.queryDims, ...g.keyDims]) };
  }

  /** attentionMask in Keras's layout -> bool [batch' or 1, heads or 1, seqQ', seqK']; non-zero = attend. */
  private attentionMaskToSequences(attentionMask: Tensor, g: Geometry<number>): Tensor {
    const expanded = this.expandedMaskShape(attentionMask.shape, g) as number[];
    const nb = g.batchDims.length;
    const perBatch = expanded.slice(0, nb).some(d => d !== 1);
    const heads = expanded[nb];
    const full = [...(perBatch ? g.batchDims : g.batchDims.map(() => 1)), heads, ...g.queryDims, ...g.keyDims];
    const m = reshape(cast(attentionMask, 'bool'), expanded);
    return reshape(broadcastAxes(m, full), [perBatch ? product(g.batchDims) : 1, heads, product(g.queryDims), product(g.keyDims)]);
  }

  /** x [B, T, features] with kernel [features, h, d] and bias [h, d] -> [B, T, h, d] (BSHD). */
  private project(x: Tensor, kernel: tfl.LayerVariable, bias: tfl.LayerVariable | null): Tensor4D {
    const [features, heads, depth] = kernel.shape as number[];
    const [batch, seq] = x.shape;
    let y = matMul(reshape(x, [batch * seq, features]), reshape(kernel.read(), [features, heads * depth]));
    if (bias) y = add(y, reshape(bias.read(), [heads * depth]));
    return reshape(y, [batch, seq, heads, depth]);
  }

  /**
   * flashAttention's options for a call, and the queries whose output is kept (null: all).
   *
   * Keras padding masks (the query's [B, T], the value's [B, S]; no attentionMask) never become
   * a [B, T, S] tensor. Their extents are read back (paddingExtents: one read of 4 x batch int32
   * per call) and passed as seqLensQ/seqLensK, so the kernels skip the padding and the cost
   * follows the lengths. A mask that is a prefix in every row (right padding) is said by its
   * lengths alone; one with holes is applied too, the value's as a [B, 1, 1, S] mask, the query's
   * by zeroing those rows. Where no synchronous read is possible (WebGPU in Node) the masks are
   * applied that way without lengths: linear memory still, but no skipped work.
   * Causal masks, windows and ALiBi keep the padded shape's alignment: when they are on, the
   * lengths are widened so that lenK - lenQ = seqK - seqQ in every sequence. An explicit
   * attentionMask takes the mask path: every mask ANDed into one [B, heads, T, S] mask.
   */
  private attentionOptions(batch: number, seqQ: number, seqK: number, useCausalMask: boolean, masks: CallMasks,
                           training: boolean): { options: AttentionOptions, keptQueries: Tensor | null } {
    const [left, unboundedOrRight]: [number, number] = this.windowSize ?? [-1, -1];
    let right = unboundedOrRight;
    const aligned = this.windowSize != null && (left >= 0 || unboundedOrRight >= 0) || this.alibi !== false;
    let causalMask: Tensor | null = null;
    // Keras's causal mask keeps key j for query i when j <= i (top-left aligned); flashAttention's
    // is bottom-right aligned (j <= i + lenK - lenQ + right).
    const causalByLengths = useCausalMask && seqQ < seqK && !aligned;
    if (useCausalMask) {
      // seqQ >= seqK: the right window seqQ - seqK.
      if (seqQ >= seqK) right = right < 0 ? seqQ - seqK : Math.min(right, seqQ - seqK);
      // seqQ < seqK: no query reaches a key j >= seqQ, so lenK = lenQ (offset 0) with right 0.
      else if (causalByLengths) right = 0;
      // Unless a window or ALiBi needs the padded offset: then a [T, S] lower-triangular mask.
      else causalMask = reshape(linalg.bandPart(ones([seqQ, seqK], 'bool'), -1, 0), [1, 1, seqQ, seqK]);
    }
    const padding = masks.attention == null && (masks.query != null || masks.key != null);
    // The Keras masks' extents and whether they are prefixes, read once (see paddingExtents).
    const extents = padding ? paddingExtents(masks.query, masks.key) : null;
    const options: AttentionOptions = {};
    if (left >= 0 || right >= 0) options.windowSize = [left, right];
    const lastQ = extents?.lastQ ?? new Array<number>(batch).fill(seqQ);
    const lastK = extents?.lastK ?? new Array<number>(batch).fill(seqK);
    if (causalByLengths) {
      Object.assign(options, { seqLensQ: lastQ, seqLensK: lastQ });
    } else if (extents) {
      // Lengths only where some sequence is shorter: a batch without padding stays dense.
      const short = (lens: number[], seq: number) => lens.some(len => len < seq);
      if (!useCausalMask && !aligned) {
        if (short(lastQ, seqQ)) options.seqLensQ = lastQ;
        if (short(lastK, seqK)) options.seqLensK = lastK;
      } else {
        // lenQ >= every kept query, lenK = lenQ + seqK - seqQ >= every kept key (and <= seqK).
        const offset = seqK - seqQ;
        const lenQ = lastQ.map((len, b) => Math.max(len, lastK[b] - offset));
        if (short(lenQ, seqQ)) Object.assign(options, { seqLensQ: lenQ, seqLensK: lenQ.map(len => len + offset) });
      }
    }

    let mask: Tensor | null;
    let keptQueries: Tensor | null = null;
    if (padding) {
      // A prefix mask is said by its length alone, unless the lengths had to be widened past
      // it (alignment); a mask with holes, or unread, is applied too.
      const widened = (lens: ArrayLike<number> | undefined, last: number[], seq: number) =>
        last.some((l, b) => l < (lens ? lens[b] : seq));
      const keysNeedMask = !extents || !extents.keysArePrefixes ||
          widened(options.seqLensK as number[] | undefined, lastK, seqK);
      const queriesNeedMask = !extents || !extents.queriesArePrefixes ||
          widened(options.seqLensQ as number[] | undefined, lastQ, seqQ);
      mask = masks.key && keysNeedMask ? reshape(masks.key, [batch, 1, 1, seqK]) : null;
      keptQueries = masks.query && queriesNeedMask ? masks.query : null;
    } else {
      const parts: Tensor[] = [];
      if (masks.query) parts.push(reshape(masks.query, [batch, 1, seqQ, 1]));
      if (masks.key) parts.push(reshape(masks.key, [batch, 1, 1, seqK]));
      if (masks.attention) parts.push(masks.attention);
      mask = parts.length > 0 ? parts.reduce((x, y) => logicalAnd(x, y)) : null;
    }
    if (causalMask) mask = mask ? logicalAnd(mask, causalMask) : causalMask;
    if (mask) {
      const [b, h, t, sk] = mask.shape;
      // A [B, 1, 1, S] key padding mask stays that small; anything else spans the query and key axes.
      options.mask = t === 1 && sk === seqK && padding ? mask : broadcastAxes(mask, [b, h, seqQ, seqK]);
    }
    if (this.alibi !== false) options.alibiSlopes = this.alibi === true ? alibiSlopesFor(this.numHeads) : this.alibi;
    if (this.softcap > 0) options.softcap = this.softcap;
    // No seed: flashAttention draws a fresh one per call, which its gradient then reuses.
    if (training && this.dropout > 0) options.dropoutRate = this.dropout;
    return { options, keptQueries };
  }

  override getConfig(): serialization.ConfigDict {
    const w = this.weightArgs;
    const config: serialization.ConfigDict = {
      numHeads: this.numHeads,
      keyDim: this.keyDim,
      valueDim: this.valueDim,
      dropout: this.dropout,
      useBias: this.useBias,
      outputShape: this.outputShapeArg,
      attentionAxes: this.attentionAxesArg,
      kernelInitializer: serializeObject(w.kernelInitializer),
      biasInitializer: serializeObject(w.biasInitializer),
      kernelRegularizer: serializeObject(w.kernelRegularizer),
      biasRegularizer: serializeObject(w.biasRegularizer),
      activityRegularizer: serializeObject(w.activityRegularizer),
      kernelConstraint: serializeObject(w.kernelConstraint),
      biasConstraint: serializeObject(w.biasConstraint),
      numKeyValueHeads: this.numKeyValueHeads,
      causal: this.causal,
      windowSize: this.windowSize,
      alibi: this.alibi,
      softcap: this.softcap,
    };
    return { ...super.getConfig(), ...config };
  }
}
serialization.registerClass(FlashMultiHeadAttention);

/**
 * Multi-head attention through flashAttention, with tfjs-layers' MultiHeadAttention's arguments
 * and weights (see FlashMultiHeadAttention). Also available as tf.layers.flashMultiHeadAttention.
 */
export function flashMultiHeadAttention(args: FlashMultiHeadAttentionArgs): FlashMultiHeadAttention {
  return new FlashMultiHeadAttention(args);
}

attachToTf({ flashMultiHeadAttention }, 'layers');
