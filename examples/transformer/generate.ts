/**
 * Text generation with the model of model.ts, two ways:
 *  - with a key/value cache: a prefill of the prompt, then one token per step, every attention
 *    layer called with its cache (FlashMultiHeadAttention's cached call) so a step costs one
 *    token's projections and one row of attention over the cache;
 *  - by full recomputation: the whole sequence so far through model.predict for every token, the
 *    baseline.
 * Both walk the same weights and give the same tokens under greedy decoding.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention } from '../../src/index';
import { PositionEmbedding } from './model';

export interface GenerateOptions {
  /** Tokens to generate after the prompt. */
  length: number;
  /** 0 = greedy (argmax); else sampling from p^(1/temperature). */
  temperature: number;
  /** Uniform [0, 1) numbers for sampling (unused when greedy). */
  random: () => number;
  /** Called after every generated token (progress output). */
  onToken?: (generated: number, total: number) => void;
  /** Positions of the key/value cache; default prompt + length (a bench's warm-up passes its run's). */
  cacheLength?: number;
}

export interface Generation {
  /** The generated tokens (without the prompt). */
  tokens: number[];
  /** Seconds from the first call to the last token read back (prefill included). */
  seconds: number;
  /** Seconds to the first token (the prompt's pass: the prefill with the cache). */
  firstTokenSeconds: number;
}

/** Tokens per second after the first token: the per-token rate of a long generation. */
export function stepRate(g: Generation): number {
  return (g.tokens.length - 1) / (g.seconds - g.firstTokenSeconds);
}

/** The next token from a probability row: argmax when greedy, else a tempered sample. */
export function pickToken(probs: ArrayLike<number>, temperature: number, random: () => number): number {
  if (temperature === 0) {
    let best = 0;
    for (let i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i;
    return best;
  }
  const weights = Array.from(probs, p => Math.pow(Math.max(p, 1e-12), 1 / temperature));
  let r = random() * weights.reduce((a, b) => a + b, 0), next = 0;
  while (next < weights.length - 1 && (r -= weights[next]) > 0) next++;
  return next;
}

/** Progress of a generation: redrawn per token on a terminal, a line every 2 s otherwise (logs). */
export function tokenProgress(label: string): (done: number, total: number) => void {
  const started = performance.now();
  let shown = started;
  return (done, total) => {
    const now = performance.now();
    if (!process.stdout.isTTY && now - shown < 2000 && done < total) return;
    shown = now;
    const line = `${label}: ${done}/${total} tokens, ${(done / ((now - started) / 1000)).toFixed(1)} tokens/s`;
    if (process.stdout.isTTY) process.stdout.write(`\r${line}${done === total ? '\n' : ''}`);
    else console.log(line);
  };
}

/** The longest sequence the model's position embedding covers. */
export function contextLength(model: tf.LayersModel): number {
  return (model.getLayer('position_embedding') as PositionEmbedding).maxLength;
}

function checkLength(model: tf.LayersModel, prompt: number[], length: number): void {
  const limit = contextLength(model);
  if (prompt.length === 0) throw new Error('generate: the prompt must have at least one token');
  if (prompt.length + length > limit) {
    throw new Error(`generate: prompt (${prompt.length}) + length (${length}) exceeds the model's ${limit} positions`);
  }
}

/** Reads a [vocab] probability row (asynchronously: WebGPU in Node cannot read synchronously) and frees it. */
async function readRow(row: tf.Tensor): Promise<Float32Array> {
  const values = await row.data() as Float32Array;
  row.dispose();
  return values;
}

/** Full recomputation: the whole sequence through model.predict for every new token. */
export async function generateUncached(model: tf.LayersModel, prompt: number[], o: GenerateOptions): Promise<Generation> {
  checkLength(model, prompt, o.length);
  const ids = [...prompt];
  const started = performance.now();
  let firstTokenSeconds = 0;
  for (let n = 0; n < o.length; n++) {
    const last = tf.tidy(() => {
      const probabilities = model.predict(tf.tensor2d([ids], [1, ids.length], 'int32')) as tf.Tensor;
      return tf.reshape(tf.slice(probabilities, [0, ids.length - 1, 0], [1, 1, -1]), [-1]);
    });
    ids.push(pickToken(await readRow(last), o.temperature, o.random));
    if (n === 0) firstTokenSeconds = (performance.now() - started) / 1000;
    o.onToken?.(n + 1, o.length);
  }
  return { tokens: ids.slice(prompt.length), seconds: (performance.now() - started) / 1000, firstTokenSeconds };
}

/**
 * The model's layers, walked eagerly with a cache per attention layer: the decoder of model.ts
 * (token and position embeddings, pre-norm blocks, final norm, softmax head), by layer name, so a
 * model loaded from a checkpoint works too.
 */
export class CachedDecoder {
  private readonly blocks: number;
  private caches: tf.Tensor[];
  /** Positions filled in the caches. */
  private filled = 0;

  constructor(private readonly model: tf.LayersModel, readonly maxLength = contextLength(model)) {
    this.blocks = model.layers.filter(l => /^block\d+_attention$/.test(l.name)).length;
    this.caches = Array.from({ length: this.blocks }, (_, i) => {
      const attention = this.attention(i);
      return tf.zeros([1, 2, maxLength, attention.numKeyValueHeads, attention.keyDim]);
    });
  }

  private attention(i: number): FlashMultiHeadAttention {
    return this.model.getLayer(`block${i}_attention`) as FlashMultiHeadAttention;
  }

  private apply(name: string, x: tf.Tensor): tf.Tensor {
    return this.model.getLayer(name).apply(x) as tf.Tensor;
  }

  /**
   * Feeds tokens at the next positions (the prompt at once, then one token per call) and
   * returns the probabilities of the token after the last one, [vocab].
   */
  feed(tokens: number[]): tf.Tensor {
    const start = this.filled;
    if (start + tokens.length > this.maxLength) {
      throw new Error(`CachedDecoder: ${start + tokens.length} positions exceed the cache's ${this.maxLength}`);
    }
    const next: tf.Tensor[] = [];
    const row = tf.tidy(() => {
      const embedded = this.apply('token_embedding', tf.tensor2d([tokens], [1, tokens.length], 'int32'));
      let x = (this.model.getLayer('position_embedding') as PositionEmbedding).addPositions(embedded, start);
      for (let i = 0; i < this.blocks; i++) {
        const normed = this.apply(`block${i}_norm1`, x);
        const [attended, cache] = this.attention(i).callWithCache(normed, {
          value: normed, cache: this.caches[i], cacheUpdateIndex: start,
        });
        next.push(tf.keep(cache));
        x = tf.add(x, attended);
        const hidden = this.apply(`block${i}_mlp_in`, this.apply(`block${i}_norm2`, x));
        x = tf.add(x, this.apply(`block${i}_mlp_out`, hidden));
      }
      const last = tf.slice(x, [0, tokens.length - 1, 0], [1, 1, -1]);
      return tf.reshape(this.apply('next_token', this.apply('final_norm', last)), [-1]);
    });
    tf.dispose(this.caches);
    this.caches = next;
    this.filled += tokens.length;
    return row;
  }

  dispose(): void {
    tf.dispose(this.caches);
    this.caches = [];
  }
}

/** Generation with the key/value cache: prefill the prompt, then one token per step. */
export async function generateCached(model: tf.LayersModel, prompt: number[], o: GenerateOptions): Promise<Generation> {
  checkLength(model, prompt, o.length);
  const decoder = new CachedDecoder(model, o.cacheLength ?? prompt.length + o.length);
  const tokens: number[] = [];
  const started = performance.now();
  let firstTokenSeconds = 0;
  try {
    let probabilities = decoder.feed(prompt);
    for (let n = 0; n < o.length; n++) {
      tokens.push(pickToken(await readRow(probabilities), o.temperature, o.random));
      if (n === 0) firstTokenSeconds = (performance.now() - started) / 1000;
      o.onToken?.(n + 1, o.length);
      if (n + 1 < o.length) probabilities = decoder.feed([tokens[n]]);
    }
  } finally {
    decoder.dispose();
  }
  return { tokens, seconds: (performance.now() - started) / 1000, firstTokenSeconds };
}
