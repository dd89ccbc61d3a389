/**
 * A small decoder-only transformer: token + learned position embeddings, N pre-norm blocks of
 * causal self-attention and an MLP, a final layer norm and a softmax over the vocabulary.
 * `attention: 'stock'` swaps FlashMultiHeadAttention for the same layer computing attention the
 * plain way (matMul, mask, softmax, matMul, as tfjs-layers' MultiHeadAttention does), with the
 * same weights: the baseline of the side-by-side comparison.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention } from '../../src/index';
import { AttentionOptions } from '../../src/layer';
import { plainAttention } from '../../src/layer_plain_attention';

/** FlashMultiHeadAttention with attention materialised as [batch, heads, T, S]. */
export class StockMultiHeadAttention extends FlashMultiHeadAttention {
  static override className = 'StockMultiHeadAttention';
  protected override computeAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, options: AttentionOptions) {
    return plainAttention(q, k, v, options).output;
  }
}
tf.serialization.registerClass(StockMultiHeadAttention);

interface TokenEmbeddingArgs { vocabSize: number; dim: number; name?: string }

/**
 * Token embedding as oneHot(tokens) x table. tf.layers.embedding's gradient goes through
 * tf.gather's, an unsortedSegmentSum that tfjs runs as a few kernels per vocabulary entry: most
 * of a training step here (about 2,700 kernels per step at 65 characters). A one-hot matMul's
 * gradient is one matMul.
 */
export class TokenEmbedding extends tf.layers.Layer {
  static className = 'TokenEmbedding';
  private readonly vocabSize: number;
  private readonly dim: number;
  private embeddings!: tf.LayerVariable;

  constructor(args: TokenEmbeddingArgs) {
    super(args);
    this.vocabSize = args.vocabSize;
    this.dim = args.dim;
  }

  override build(): void {
    this.embeddings = this.addWeight('embeddings', [this.vocabSize, this.dim], 'float32',
                                     tf.initializers.randomNormal({ mean: 0, stddev: 0.02 }));
    this.built = true;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    return [...(inputShape as tf.Shape), this.dim];
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const tokens = Array.isArray(inputs) ? inputs[0] : inputs;
    const [batch, length] = tokens.shape as [number, number];
    return tf.tidy(() => {
      const oneHot = tf.oneHot(tf.reshape(tf.cast(tokens, 'int32'), [batch * length]), this.vocabSize);
      return tf.reshape(tf.matMul(oneHot, this.embeddings.read()), [batch, length, this.dim]);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), vocabSize: this.vocabSize, dim: this.dim };
  }
}
tf.serialization.registerClass(TokenEmbedding);

interface LayerNormArgs { dim: number; epsilon?: number; name?: string }

/** [dim, 1] of 1/dim: a row mean as a matMul. Shared by every norm of that width, never freed. */
const averagers = new Map<number, tf.Tensor2D>();
function averager(dim: number): tf.Tensor2D {
  if (!averagers.has(dim)) averagers.set(dim, tf.keep(tf.fill([dim, 1], 1 / dim)) as tf.Tensor2D);
  return averagers.get(dim)!;
}

/**
 * Layer normalisation over the last axis with broadcasting ops. tf.layers.layerNormalization
 * tiles gamma and beta to the input's shape, and tfjs's Tile gradient is a slice and an add per
 * repetition: two kernels per token per norm, which at 4096 tokens dominated a training step.
 * Mean and variance are matMuls with a column of 1/dim rather than tf.moments: the gradient of
 * tf.mean multiplies by a ones(x.shape) tensor that tfjs fills on the CPU and uploads, 4 MiB per
 * mean at 4096 tokens, 40 MiB per training step of the two-layer model on the H200 profile.
 */
export class LayerNorm extends tf.layers.Layer {
  static className = 'TransformerLayerNorm';
  private readonly dim: number;
  private readonly epsilon: number;
  private gamma!: tf.LayerVariable;
  private beta!: tf.LayerVariable;

  constructor(args: LayerNormArgs) {
    super(args);
    this.dim = args.dim;
    this.epsilon = args.epsilon ?? 1e-5;
  }

  override build(): void {
    this.gamma = this.addWeight('gamma', [this.dim], 'float32', tf.initializers.ones());
    this.beta = this.addWeight('beta', [this.dim], 'float32', tf.initializers.zeros());
    this.built = true;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    return tf.tidy(() => {
      const rows = tf.reshape(x, [-1, this.dim]) as tf.Tensor2D;
      const centered = tf.sub(rows, tf.matMul(rows, averager(this.dim)));
      const variance = tf.matMul(tf.square(centered), averager(this.dim));
      const normalized = tf.mul(centered, tf.rsqrt(tf.add(variance, this.epsilon)));
      return tf.reshape(tf.add(tf.mul(normalized, this.gamma.read()), this.beta.read()), x.shape);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dim: this.dim, epsilon: this.epsilon };
  }
}
tf.serialization.registerClass(LayerNorm);

interface PositionEmbeddingArgs { maxLength: number; dim: number; name?: string }

/** Adds a learned embedding of each position (0, 1, ...) to [batch, T, dim] inputs, T <= maxLength. */
export class PositionEmbedding extends tf.layers.Layer {
  static className = 'PositionEmbedding';
  readonly maxLength: number;
  private readonly dim: number;
  private embeddings!: tf.LayerVariable;

  constructor(args: PositionEmbeddingArgs) {
    super(args);
    this.maxLength = args.maxLength;
    this.dim = args.dim;
  }

  override build(): void {
    this.embeddings = this.addWeight('embeddings', [this.maxLength, this.dim], 'float32',
                                     tf.initializers.randomNormal({ mean: 0, stddev: 0.02 }));
    this.built = true;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return this.addPositions(Array.isArray(inputs) ? inputs[0] : inputs, 0);
  }

  /** x [batch, T, dim] at positions start ... start + T - 1 (generation with a cache feeds later positions). */
  addPositions(x: tf.Tensor, start: number): tf.Tensor {
    const length = x.shape[1]!;
    if (start + length > this.maxLength) {
      throw new Error(`PositionEmbedding: positions up to ${start + length} exceed maxLength ${this.maxLength}`);
    }
    return tf.tidy(() => tf.add(x, tf.slice(this.embeddings.read(), [start, 0], [length, this.dim])));
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), maxLength: this.maxLength, dim: this.dim };
  }
}
tf.serialization.registerClass(PositionEmbedding);

export interface TransformerConfig {
  vocabSize: number;
  /** Longest sequence the position embedding covers. */
  seqLen: number;
  dim: number;
  heads: number;
  layers: number;
  attention: 'flash' | 'stock';
}

export function buildTransformer(c: TransformerConfig): tf.LayersModel {
  if (c.dim % c.heads !== 0) throw new Error(`dim (${c.dim}) must be a multiple of heads (${c.heads})`);
  const Attention = c.attention === 'flash' ? FlashMultiHeadAttention : StockMultiHeadAttention;
  const tokens = tf.input({ shape: [null], dtype: 'int32', name: 'tokens' });
  let x = new TokenEmbedding({ vocabSize: c.vocabSize, dim: c.dim, name: 'token_embedding' }).apply(tokens) as tf.SymbolicTensor;
  x = new PositionEmbedding({ maxLength: c.seqLen, dim: c.dim, name: 'position_embedding' }).apply(x) as tf.SymbolicTensor;
  for (let i = 0; i < c.layers; i++) {
    const normed = new LayerNorm({ dim: c.dim, name: `block${i}_norm1` }).apply(x) as tf.SymbolicTensor;
    const attended = new Attention({ numHeads: c.heads, keyDim: c.dim / c.heads, causal: true, name: `block${i}_attention` })
        .apply(normed, { value: normed }) as tf.SymbolicTensor;
    x = tf.layers.add({ name: `block${i}_residual1` }).apply([x, attended]) as tf.SymbolicTensor;
    const normed2 = new LayerNorm({ dim: c.dim, name: `block${i}_norm2` }).apply(x) as tf.SymbolicTensor;
    const hidden = tf.layers.dense({ units: 4 * c.dim, activation: 'relu', name: `block${i}_mlp_in` }).apply(normed2);
    const mlp = tf.layers.dense({ units: c.dim, name: `block${i}_mlp_out` }).apply(hidden) as tf.SymbolicTensor;
    x = tf.layers.add({ name: `block${i}_residual2` }).apply([x, mlp]) as tf.SymbolicTensor;
  }
  x = new LayerNorm({ dim: c.dim, name: 'final_norm' }).apply(x) as tf.SymbolicTensor;
  const probabilities = tf.layers.dense({ units: c.vocabSize, activation: 'softmax', name: 'next_token' })
      .apply(x) as tf.SymbolicTensor;
  return tf.model({ inputs: tokens, outputs: probabilities, name: `transformer_${c.attention}` });
}

/**
 * Adam over all of a model's trainable weights at once: their gradients concatenated into one
 * vector, one Adam update of a flat copy of the weights, then each weight assigned its slice.
 * tfjs's Adam runs about 14 kernels and uploads about 7 scalars per weight (538 kernels and 264
 * uploads per step for the two-layer model); this runs about 60 kernels, for the same updates.
 * On the H200 a training step of the example was bound by the CPU queuing kernels (296 ms to
 * queue against 82 ms of GPU work), so kernels saved are time saved. Checkpoints hold its state
 * as tfjs's Adam would for one weight named `flat` (loadCheckpoint turns it back into this class).
 */
export class FlatAdam extends tf.AdamOptimizer {
  private flat: tf.Variable | null = null;
  private static made = 0;

  constructor(learningRate: number, private readonly weights: tf.Variable[]) {
    super(learningRate, 0.9, 0.999);
  }

  override applyGradients(gradients: Parameters<tf.AdamOptimizer['applyGradients']>[0]): void {
    const byName: tf.NamedTensorMap = Array.isArray(gradients)
        ? Object.fromEntries(gradients.map(g => [g.name, g.tensor])) : gradients;
    // Made from the weights at the first step, so weights loaded before it count.
    this.flat ??= tf.tidy(() => tf.concat(this.weights.map(w => tf.reshape(w, [-1]))))
                     .variable(false, `flat_adam_weights_${FlatAdam.made++}`);
    const flatGradient = tf.tidy(() => tf.concat(this.weights.map(w => tf.reshape(byName[w.name] ?? tf.zerosLike(w), [-1]))));
    super.applyGradients([{ name: this.flat.name, tensor: flatGradient }]);
    flatGradient.dispose();
    tf.tidy(() => {
      let offset = 0;
      for (const w of this.weights) {
        w.assign(tf.reshape(tf.slice(this.flat!, offset, w.size), w.shape));
        offset += w.size;
      }
    });
  }

  override async setWeights(weightValues: Parameters<tf.AdamOptimizer['setWeights']>[0]): Promise<void> {
    // iterations, then one first and one second moment: the state of one (flat) weight.
    if (weightValues.length !== 3) {
      throw new Error(`FlatAdam: expected the optimizer state of one flat weight (3 tensors), got ${weightValues.length}; ` +
                      'the checkpoint was written with another optimizer');
    }
    await super.setWeights(weightValues);
  }

  override dispose(): void {
    super.dispose();
    this.flat?.dispose();
    this.flat = null;
  }
}

export function compileTransformer(model: tf.LayersModel, learningRate: number): void {
  model.compile({ optimizer: new FlatAdam(learningRate, trainableVariables(model)), loss: 'sparseCategoricalCrossentropy' });
}

/**
 * The compiled model's loss (sparse categorical cross-entropy of the softmax output, averaged
 * over tokens, as tfjs-layers computes it) as a function of the weights, for optimizer.minimize:
 * a training loop that need not read the loss back every step, as trainOnBatch and fit do.
 */
export function trainingLoss(model: tf.LayersModel, tokens: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const probabilities = model.apply(tokens, { training: true }) as tf.Tensor;
    const vocabSize = probabilities.shape[probabilities.shape.length - 1]!;
    const epsilon = tf.backend().epsilon();
    const oneHot = tf.oneHot(tf.cast(tf.reshape(targets, [-1]), 'int32'), vocabSize);
    const logP = tf.log(tf.clipByValue(tf.reshape(probabilities, [-1, vocabSize]), epsilon, 1 - epsilon));
    return tf.neg(tf.mean(tf.sum(tf.mul(oneHot, logP), -1))) as tf.Scalar;
  });
}

/** The model's trainable weights as the variables optimizer.minimize updates. */
export function trainableVariables(model: tf.LayersModel): tf.Variable[] {
  return model.trainableWeights.map(w => w.read() as tf.Variable);
}

/**
 * `steps` training steps with the compiled optimizer, each step's loss read back while the next
 * step runs: model.fit and trainOnBatch wait for every step's loss before queuing the next step,
 * which leaves the GPU idle while the CPU queues a step's kernels. onLoss sees every loss, one
 * step late (the progress bar lags by one step, the losses are the same).
 */
export async function trainSteps(model: tf.LayersModel, steps: number,
                                 batch: (step: number) => { tokens: tf.Tensor; targets: tf.Tensor },
                                 onLoss: (step: number, loss: number) => void): Promise<void> {
  const variables = trainableVariables(model);
  let pending: { step: number; cost: tf.Scalar } | null = null;
  const settle = async (p: { step: number; cost: tf.Scalar }) => {
    const loss = (await p.cost.data())[0];
    p.cost.dispose();
    onLoss(p.step, loss);
  };
  for (let step = 0; step < steps; step++) {
    const { tokens, targets } = batch(step);
    const cost = model.optimizer.minimize(() => trainingLoss(model, tokens, targets), true, variables) as tf.Scalar;
    if (pending) await settle(pending);
    pending = { step, cost };
  }
  if (pending) await settle(pending);
}
