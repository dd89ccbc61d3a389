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

/**
 * Layer normalisation over the last axis with broadcasting ops. tf.layers.layerNormalization
 * tiles gamma and beta to the input's shape, and tfjs's Tile gradient is a slice and an add per
 * repetition: two kernels per token per norm, which at 4096 tokens dominated a training step.
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
      const { mean, variance } = tf.moments(x, -1, true);
      const normalized = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, this.epsilon)));
      return tf.add(tf.mul(normalized, this.gamma.read()), this.beta.read());
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
  private readonly maxLength: number;
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
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    const length = x.shape[1]!;
    if (length > this.maxLength) {
      throw new Error(`PositionEmbedding: sequence length ${length} exceeds maxLength ${this.maxLength}`);
    }
    return tf.tidy(() => tf.add(x, tf.slice(this.embeddings.read(), [0, 0], [length, this.dim])));
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

export function compileTransformer(model: tf.LayersModel, learningRate: number): void {
  model.compile({ optimizer: tf.train.adam(learningRate), loss: 'sparseCategoricalCrossentropy' });
}

/**
 * Samples `length` characters after `prompt`, feeding back the last `context` tokens (a short
 * context is enough for a small model and keeps sampling cheap), left-padded with spaces so every
 * call has the same shape: WebGPU then compiles its shaders once, not once per length.
 */
export async function sampleText(model: tf.LayersModel, encode: (s: string) => Int32Array,
                                 decode: (ids: number[]) => string, prompt: string, length: number,
                                 context: number, temperature: number, random: () => number): Promise<string> {
  const ids = Array.from(encode(prompt));
  const space = encode(' ')[0];
  for (let n = 0; n < length; n++) {
    const recent = ids.slice(-context);
    const window = [...new Array(context - recent.length).fill(space), ...recent];
    const last = tf.tidy(() => {
      const out = model.predict(tf.tensor2d([window], [1, window.length], 'int32')) as tf.Tensor;
      return tf.squeeze(tf.slice(out, [0, window.length - 1, 0], [1, 1, -1]));
    });
    // Asynchronous read: WebGPU in Node cannot read synchronously (no OffscreenCanvas).
    const probs = await last.data();
    last.dispose();
    // Temperature: p^(1/t), renormalised.
    const weights = Array.from(probs, p => Math.pow(Math.max(p, 1e-12), 1 / temperature));
    let r = random() * weights.reduce((a, b) => a + b, 0), next = 0;
    while (next < weights.length - 1 && (r -= weights[next]) > 0) next++;
    ids.push(next);
  }
  return decode(ids.slice(-length));
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
