/**
 * FlashMultiHeadAttention: a drop-in for tfjs-layers' (Keras's) MultiHeadAttention whose attention
 * runs through flashAttention, so no [batch, heads, seqQ, seqK] tensor is built on the kernel
 * backends. Same constructor arguments, call signature, weights (order and shapes) and outputs;
 * beyond Keras it adds grouped-query attention, sliding windows, ALiBi and soft-capping.
 */
import {
  add, cast, linalg, logicalAnd, matMul, ones, reshape, serialization, Tensor, Tensor4D, tidy,
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
import { FlashAttentionOptions } from './contract';

/** flashAttention's options as the layer passes them (always the plain output). */
export type AttentionOptions = Omit<FlashAttentionOptions, 'returnLogSumExp'>;

type InitializerArg = InitializerIdentifier | Initializer;
type RegularizerArg = RegularizerIdentifier | Regularizer;
type ConstraintArg = ConstraintIdentifier | Constraint;

export interface FlashMultiHeadAttentionArgs extends LayerArgs {
  /** Number of query heads. */
  numHeads: number;
  /** Size of each query and key head. */
  keyDim: number;
  /** Size of each value head; default keyDim. */
  valueDim?: number;
  /** Dropout rate on the attention probabilities, applied in training only. */
  dropout?: number;
  /** Whether the four projections have biases; default true. */
  useBias?: boolean;
  /** Feature shape of the output; default the query's last dimension. */
  outputShape?: number | number[];
  /** Only the default (attention over the sequence axis) is supported. */
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

/** The call's keyword arguments, as tfjs-layers' MultiHeadAttention takes them. */
export interface FlashMultiHeadAttentionCallArgs {
  value: Tensor | tfl.SymbolicTensor;
  /** Default: value. */
  key?: Tensor | tfl.SymbolicTensor;
  /** [batch, seqQ, seqK] (or broadcastable), true = attend; cast to bool. */
  attentionMask?: Tensor | tfl.SymbolicTensor;
  /** Lower-triangular mask on [seqQ, seqK], top-left aligned as in Keras. */
  useCausalMask?: boolean;
  training?: boolean;
}

const LAYER = 'flashMultiHeadAttention';

function check(cond: boolean, msg: () => string): asserts cond {
  if (!cond) throw new Error(`Error in ${LAYER}: ${msg()}`);
}

const isPositiveInt = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x > 0;
const shapeStr = (s: readonly (number | null)[]) => `[${s.join(', ')}]`;

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
  private readonly weightArgs: WeightArgs;

  private queryKernel!: tfl.LayerVariable;
  private keyKernel!: tfl.LayerVariable;
  private valueKernel!: tfl.LayerVariable;
  private outputKernel!: tfl.LayerVariable;
  private queryBias: tfl.LayerVariable | null = null;
  private keyBias: tfl.LayerVariable | null = null;
  private valueBias: tfl.LayerVariable | null = null;
  private outputBias: tfl.LayerVariable | null = null;

  constructor(args: FlashMultiHeadAttentionArgs) {
    check(args != null && typeof args === 'object', () => `args must be an object, but got ${args}`);
    super(args);
    this.supportsMasking = true;
    check(isPositiveInt(args.numHeads), () => `numHeads must be a positive integer, but got ${args.numHeads}`);
    check(isPositiveInt(args.keyDim), () => `keyDim must be a positive integer, but got ${args.keyDim}`);
    this.numHeads = args.numHeads;
    this.keyDim = args.keyDim;
    this.valueDim = args.valueDim ?? args.keyDim;
    check(isPositiveInt(this.valueDim), () => `valueDim must be a positive integer, but got ${args.valueDim}`);
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
    if (args.attentionAxes != null) {
      const axes = Array.isArray(args.attentionAxes) ? args.attentionAxes : [args.attentionAxes];
      // For [batch, seq, features] inputs Keras's default is attention over axis 1 (= -2).
      check(axes.length === 1 && (axes[0] === 1 || axes[0] === -2), () =>
          `attentionAxes ${JSON.stringify(args.attentionAxes)} is not supported: attention runs over ` +
          `the sequence axis of [batch, seq, features] inputs only (leave attentionAxes unset)`);
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

    this.weightArgs = resolveWeightArgs(args);
    // Layer.apply refuses to run a layer with an activity regularizer, as it does for
    // tfjs-layers' MultiHeadAttention (whose sublayers get it); kept for config parity.
    if (this.weightArgs.activityRegularizer) this.activityRegularizer = this.weightArgs.activityRegularizer;
  }

  /**
   * Builds the four projections from [query, value, key(, attentionMask)] shapes, in tfjs-layers'
   * MultiHeadAttention's order and shapes, so weights move between the two with setWeights.
   */
  override build(inputShape: Shape | Shape[]): void {
    const [queryShape, valueShape, keyShape] = this.splitShapes(inputShape);
    const featureDim = (shape: Shape, name: string) => {
      check(shape.length === 3 && shape[2] != null, () =>
          `${name} must be rank 3 [batch, sequence, features] with known features, but got shape ${shapeStr(shape)}`);
      return shape[2] as number;
    };
    const [queryDim, valueDim, keyDim] =
        [featureDim(queryShape, 'query'), featureDim(valueShape, 'value'), featureDim(keyShape, 'key')];
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
    [this.queryKernel, this.queryBias] = projection('query', [queryDim, heads, this.keyDim], [heads, this.keyDim]);
    [this.keyKernel, this.keyBias] = projection('key', [keyDim, kvHeads, this.keyDim], [kvHeads, this.keyDim]);
    [this.valueKernel, this.valueBias] =
        projection('value', [valueDim, kvHeads, this.valueDim], [kvHeads, this.valueDim]);
    [this.outputKernel, this.outputBias] =
        projection('attentionOutput', [heads, this.valueDim, ...outShape], outShape);
    this.built = true;
  }

  /** [query, value, key?, attentionMask?] shapes; a missing key means key = value (as in Keras). */
  private splitShapes(inputShape: Shape | Shape[]): [Shape, Shape, Shape] {
    check(Array.isArray(inputShape[0]), () =>
        `expects [query, value] or [query, value, key] shapes, but got ${JSON.stringify(inputShape)}`);
    const shapes = inputShape as Shape[];
    check(shapes.length >= 2, () => `expects [query, value] or [query, value, key] shapes, but got ${shapes.length} shape(s)`);
    return [shapes[0], shapes[1], shapes[2] ?? shapes[1]];
  }

  /**
   * [queryShape, valueShape(, keyShape)] -> output shape, with tfjs-layers' MultiHeadAttention's
   * checks: query and value must share their last dimension, value and key all but their last.
   */
  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    const [queryShape, valueShape, keyShape] = this.splitShapes(inputShape);
    check(queryShape[queryShape.length - 1] === valueShape[valueShape.length - 1], () =>
        `the last dimension of 'queryShape' and 'valueShape' must be equal, but are ` +
        `${queryShape[queryShape.length - 1]}, ${valueShape[valueShape.length - 1]}. ` +
        `Received: queryShape=${shapeStr(queryShape)}, valueShape=${shapeStr(valueShape)}`);
    const middle = (s: Shape) => s.slice(1, -1);
    check(middle(valueShape).length === middle(keyShape).length &&
          middle(valueShape).every((d, i) => d === middle(keyShape)[i]), () =>
        `all dimensions of 'value' and 'key', except the last one, must be equal. ` +
        `Received ${shapeStr(valueShape)} and ${shapeStr(keyShape)}`);
    return this.outputShapeArg ? [...queryShape.slice(0, -1), ...this.outputShapeArg] : [...queryShape];
  }

  /**
   * layer.apply(query, {value, key?, attentionMask?, useCausalMask?, training?}), eagerly or on
   * SymbolicTensors. Inputs travel as one list [query, value, key, attentionMask?] so a functional
   * model tracks (and serialises) all of them. tfjs's graph executor does not hand call arguments
   * back to call(), so a symbolic call's useCausalMask becomes the layer's `causal` setting (and so
   * is saved with the model); one layer cannot be used symbolically with both settings.
   */
  override apply(inputs: Tensor | Tensor[] | tfl.SymbolicTensor | tfl.SymbolicTensor[],
                 kwargs?: Kwargs): Tensor | Tensor[] | tfl.SymbolicTensor | tfl.SymbolicTensor[] {
    let list: Array<Tensor | tfl.SymbolicTensor>;
    const callArgs: Kwargs = {};
    if (Array.isArray(inputs)) {
      // Graph execution and model loading pass the list this method built, with plain kwargs.
      list = inputs;
      Object.assign(callArgs, kwargs);
    } else {
      check(kwargs != null && kwargs['value'] != null, () => 'must pass the `value` argument: layer.apply(query, {value})');
      const { value, key, attentionMask, ...rest } = kwargs as FlashMultiHeadAttentionCallArgs & Kwargs;
      list = [inputs, value, key ?? value, ...(attentionMask != null ? [attentionMask] : [])];
      Object.assign(callArgs, rest);
    }
    check(list.length === 3 || list.length === 4, () =>
        `expects the inputs [query, value, key] or [query, value, key, attentionMask], but got ${list.length}`);
    const symbolic = list.map(x => x instanceof tfl.SymbolicTensor);
    if (symbolic.some(s => s)) {
      check(symbolic.every(s => s), () =>
          'in a functional model, value, key and attentionMask must be SymbolicTensors too ' +
          '(e.g. tf.input({shape: [seqQ, seqK]}) for attentionMask), not concrete Tensors');
      const useCausalMask = callArgs['useCausalMask'];
      if (useCausalMask !== undefined && useCausalMask !== this.causal) {
        check(this.inboundNodes.length === 0, () =>
            `useCausalMask=${useCausalMask} differs from an earlier symbolic call of this layer ` +
            `(causal=${this.causal}); use one layer per setting`);
        this.causal = useCausalMask;
      }
    }
    return super.apply(list as Tensor[], callArgs);
  }

  /**
   * Runs on [query, value, key, attentionMask?] (from apply) or, as tfjs-layers'
   * MultiHeadAttention allows, on query with {value, key?, attentionMask?} in kwargs.
   */
  override call(inputs: Tensor | Tensor[], kwargs: Kwargs): Tensor {
    return tidy(() => this.attend(inputs, kwargs, false).output);
  }

  /**
   * Like call, and also returns the attention probabilities [batch, heads, seqQ, seqK] (before
   * dropout). The output comes from flashAttention as in call; the probabilities are computed the
   * plain way (matMul, mask, softmax), which materialises batch * heads * seqQ * seqK floats:
   * meant for inspection at modest lengths, not for training.
   */
  callAndReturnAttentionScores(query: Tensor, kwargs: FlashMultiHeadAttentionCallArgs): [Tensor, Tensor] {
    if (!this.built) {
      // Building inside apply gives the weights their layer-scoped names (what save/load matches).
      (this.apply(query, kwargs as unknown as Kwargs) as Tensor).dispose();
    }
    return tidy(() => {
      const { output, scores } = this.attend(query, kwargs as unknown as Kwargs, true);
      return [output, scores!];
    });
  }

  /** The output carries the query's mask, as in Keras. */
  override computeMask(inputs: Tensor | Tensor[], mask?: Tensor | Tensor[]): Tensor {
    if (Array.isArray(mask)) return mask[0] ?? null!;
    if (mask != null) return mask;
    const query = Array.isArray(inputs) ? inputs[0] : inputs;
    return query?.kerasMask ?? null!;
  }

  /**
   * The attention itself on projected q [B, T, H, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv].
   * A subclass may override it (the training example's stock comparison does, with plain
   * attention); options follow flashAttention's.
   */
  protected computeAttention(q: Tensor4D, k: Tensor4D, v: Tensor4D, options: AttentionOptions): Tensor4D {
    return flashAttention(q, k, v, options);
  }

  private attend(inputs: Tensor | Tensor[], kwargs: Kwargs, withScores: boolean): { output: Tensor, scores?: Tensor } {
    let query: Tensor, value: Tensor, key: Tensor, attentionMask: Tensor | undefined;
    if (Array.isArray(inputs)) {
      [query, value, key, attentionMask] = inputs;
    } else {
      check(kwargs?.['value'] instanceof Tensor, () => 'must pass the `value` argument as a Tensor');
      [query, value] = [inputs, kwargs['value']];
      key = kwargs['key'] ?? value;
      attentionMask = kwargs['attentionMask'] ?? undefined;
    }
    const [batch, seqQ, seqK] = this.checkCallShapes(query, value, key);
    const mask = this.combinedMask(query, value, attentionMask, kwargs?.['mask'], batch, seqQ, seqK);
    const options = this.attentionOptions(seqQ, seqK, kwargs?.['useCausalMask'] ?? this.causal,
                                          mask, kwargs?.['training'] === true);

    const q = this.project(query, this.queryKernel, this.queryBias);
    const k = this.project(key, this.keyKernel, this.keyBias);
    const v = this.project(value, this.valueKernel, this.valueBias);
    const attended = this.computeAttention(q, k, v, options);

    // [B, T, H, Dv] x [H, Dv, ...out] -> [B, T, ...out], as one matMul.
    const outShape = this.outputKernel.shape.slice(2) as number[];
    const outSize = outShape.reduce((a, b) => a * b, 1);
    let output = matMul(reshape(attended, [batch * seqQ, this.numHeads * this.valueDim]),
                        reshape(this.outputKernel.read(), [this.numHeads * this.valueDim, outSize]));
    if (this.outputBias) output = add(output, reshape(this.outputBias.read(), [outSize]));
    output = reshape(output, [batch, seqQ, ...outShape]);
    if (!withScores) return { output };
    const { probabilities } = plainAttention(q, k, v, { ...options, dropoutRate: 0 });
    return { output, scores: probabilities };
  }

  private checkCallShapes(query: Tensor, value: Tensor, key: Tensor): [number, number, number] {
    for (const [name, t] of [['query', query], ['value', value], ['key', key]] as const) {
      check(t instanceof Tensor && t.rank === 3, () =>
          `${name} must be a rank-3 [batch, sequence, features] Tensor, but got ${t instanceof Tensor ? `shape ${shapeStr(t.shape)}` : typeof t}`);
    }
    const expectFeatures = (name: string, t: Tensor, kernel: tfl.LayerVariable) =>
        check(t.shape[2] === kernel.shape[0], () =>
            `${name} has ${t.shape[2]} features but the layer was built for ${kernel.shape[0]} (shape ${shapeStr(t.shape)})`);
    expectFeatures('query', query, this.queryKernel);
    expectFeatures('value', value, this.valueKernel);
    expectFeatures('key', key, this.keyKernel);
    check(value.shape[0] === query.shape[0] && key.shape[0] === query.shape[0], () =>
        `query, value and key must have the same batch size, but got ${shapeStr(query.shape)}, ${shapeStr(value.shape)}, ${shapeStr(key.shape)}`);
    check(key.shape[1] === value.shape[1], () =>
        `key and value must have the same sequence length, but got key ${shapeStr(key.shape)} and value ${shapeStr(value.shape)}`);
    return [query.shape[0], query.shape[1], value.shape[1]] as [number, number, number];
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
   * The Keras masks (the query's [B, T] and the value's [B, S], carried on the tensors by
   * tfjs-layers or passed by the graph executor) ANDed with attentionMask, broadcast no further
   * than [B, T, S]: heads are never materialised. Null when nothing is masked.
   */
  private combinedMask(query: Tensor, value: Tensor, attentionMask: Tensor | undefined,
                       passedMasks: Tensor | Tensor[] | undefined,
                       batch: number, seqQ: number, seqK: number): Tensor | null {
    const passed = Array.isArray(passedMasks) ? passedMasks : [passedMasks];
    const queryMask = query.kerasMask ?? passed[0] ?? null;
    // The executor passes only the first input's mask; in self-attention it is the value's too.
    const valueMask = value.kerasMask ?? passed[1] ?? (value === query ? queryMask : null);
    const parts: Tensor[] = [];
    if (queryMask != null) parts.push(reshape(cast(queryMask, 'bool'), [batch, seqQ, 1]));
    if (valueMask != null) parts.push(reshape(cast(valueMask, 'bool'), [batch, 1, seqK]));
    if (attentionMask != null) {
      const m = attentionMask.rank === 2 ? reshape(attentionMask, [1, ...attentionMask.shape]) : attentionMask;
      const target = [batch, seqQ, seqK];
      check(m.rank === 3 && m.shape.every((d, i) => d === 1 || d === target[i]), () =>
          `attentionMask must be [batch, seqQ, seqK] = ${shapeStr(target)} (or broadcastable), but got shape ${shapeStr(attentionMask.shape)}`);
      parts.push(cast(m, 'bool'));
    }
    if (parts.length === 0) return null;
    return parts.reduce((a, b) => logicalAnd(a, b));
  }

  private attentionOptions(seqQ: number, seqK: number, useCausalMask: boolean, mask: Tensor | null,
                           training: boolean): AttentionOptions {
    const [left, unboundedOrRight]: [number, number] = this.windowSize ?? [-1, -1];
    let right = unboundedOrRight;
    let causalMask: Tensor | null = null;
    if (useCausalMask) {
      // Keras's causal mask keeps key j for query i when j <= i (top-left aligned); flashAttention's
      // window is bottom-right aligned (j <= i + seqK - seqQ + right), so it is the right window
      // seqQ - seqK. When seqQ < seqK that is negative, which a window cannot express: a [T, S]
      // lower-triangular mask does it instead.
      if (seqQ >= seqK) right = right < 0 ? seqQ - seqK : Math.min(right, seqQ - seqK);
      else causalMask = reshape(linalg.bandPart(ones([seqQ, seqK], 'bool'), -1, 0), [1, seqQ, seqK]);
    }
    const combined = mask && causalMask ? logicalAnd(mask, causalMask) : mask ?? causalMask;
    const options: AttentionOptions = {};
    if (left >= 0 || right >= 0) options.windowSize = [left, right];
    // [B, T, S] -> [B, 1, T, S]: one mask shared by all heads.
    if (combined) options.mask = reshape(combined, [combined.shape[0], 1, seqQ, seqK]);
    if (this.alibi !== false) options.alibiSlopes = this.alibi === true ? alibiSlopesFor(this.numHeads) : this.alibi;
    if (this.softcap > 0) options.softcap = this.softcap;
    // No seed: flashAttention draws a fresh one per call, which its gradient then reuses.
    if (training && this.dropout > 0) options.dropoutRate = this.dropout;
    return options;
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
      attentionAxes: null,
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
