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
  const smallNormal = () => tf.initializers.randomNormal({ mean: 0, stddev: 0.02 });
  const tokens = tf.input({ shape: [null], dtype: 'int32', name: 'tokens' });
  let x = tf.layers.embedding({ inputDim: c.vocabSize, outputDim: c.dim, embeddingsInitializer: smallNormal(), name: 'token_embedding' })
      .apply(tokens) as tf.SymbolicTensor;
  x = new PositionEmbedding({ maxLength: c.seqLen, dim: c.dim, name: 'position_embedding' }).apply(x) as tf.SymbolicTensor;
  for (let i = 0; i < c.layers; i++) {
    const normed = tf.layers.layerNormalization({ epsilon: 1e-5, name: `block${i}_norm1` }).apply(x) as tf.SymbolicTensor;
    const attended = new Attention({ numHeads: c.heads, keyDim: c.dim / c.heads, causal: true, name: `block${i}_attention` })
        .apply(normed, { value: normed }) as tf.SymbolicTensor;
    x = tf.layers.add({ name: `block${i}_residual1` }).apply([x, attended]) as tf.SymbolicTensor;
    const normed2 = tf.layers.layerNormalization({ epsilon: 1e-5, name: `block${i}_norm2` }).apply(x) as tf.SymbolicTensor;
    const hidden = tf.layers.dense({ units: 4 * c.dim, activation: 'relu', name: `block${i}_mlp_in` }).apply(normed2);
    const mlp = tf.layers.dense({ units: c.dim, name: `block${i}_mlp_out` }).apply(hidden) as tf.SymbolicTensor;
    x = tf.layers.add({ name: `block${i}_residual2` }).apply([x, mlp]) as tf.SymbolicTensor;
  }
  x = tf.layers.layerNormalization({ epsilon: 1e-5, name: 'final_norm' }).apply(x) as tf.SymbolicTensor;
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
