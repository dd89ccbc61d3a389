/**
 * The layer's cached call step by step (FlashMultiHeadAttention, keras_hub's CachedMultiHeadAttention
 * shape), shared by the suites that check it against the uncached call (layer_cache.test.ts,
 * layer_decode_subgroups.test.ts).
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention } from '../../src/index';

/** Random biases for the layers under test (zero biases would hide one added in the wrong place). */
export const NONZERO_BIASES = tf.initializers.randomNormal({ mean: 0, stddev: 0.5 });

/** A tensor's values, copied. */
export const read = async (t: tf.Tensor) => Float32Array.from(await t.data() as Float32Array);

/** A cache whose unwritten positions hold NaN: a call that read past its length would show it. */
export function poisonedCache(batch: number, maxLength: number, kvHeads: number, headDim: number): tf.Tensor {
  return tf.fill([batch, 2, maxLength, kvHeads, headDim], NaN);
}

/** One cached call: the query's new positions `step` written at `index` of `cache`; [output, newCache]. */
export type CachedCall = (layer: FlashMultiHeadAttention, step: tf.Tensor, cache: tf.Tensor, index: number) => tf.Tensor[];

/** The typed cached call; inside tf.tidy as a generation loop would be (the output and the new cache survive it). */
export const callWithCache: CachedCall = (layer, step, cache, index) =>
  tf.tidy(() => layer.callWithCache(step, { value: step, cache, cacheUpdateIndex: index }));

/**
 * Feeds x [batch, total, features] to the layer's cached call in chunks (a prefill, then single
 * tokens or chunks), from a poisoned cache of maxLength positions; `around` wraps each call (to
 * record what ran). Returns the outputs, the last cache and how many tensors the calls left
 * beyond the first cache (only the outputs and the last cache should be new).
 */
export async function callStepByStep(layer: FlashMultiHeadAttention, x: tf.Tensor, chunks: number[], maxLength: number,
                                     call: CachedCall = callWithCache,
                                     around: (run: () => tf.Tensor[]) => Promise<tf.Tensor[]> = async run => run()) {
  const [batch, , features] = x.shape;
  const kvHeads = layer.numKeyValueHeads, keyDim = layer.keyDim;
  let cache = poisonedCache(batch, maxLength, kvHeads, keyDim);
  const outputs: tf.Tensor[] = [];
  let index = 0;
  const tensorsBefore = tf.memory().numTensors;
  for (const n of chunks) {
    const step = tf.slice(x, [0, index, 0], [batch, n, features]);
    const [output, next] = await around(() => call(layer, step, cache, index));
    expect(output.shape).toEqual([batch, n, features]);
    expect(next.shape).toEqual([batch, 2, maxLength, kvHeads, keyDim]);
    tf.dispose([cache, step]);
    cache = next;
    outputs.push(output);
    index += n;
  }
  return { outputs, cache, newTensors: tf.memory().numTensors - tensorsBefore };
}
