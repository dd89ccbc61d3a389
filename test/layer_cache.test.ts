/**
 * FlashMultiHeadAttention's cached call (issue 13, "The layer"): layer.call(query, {value, cache,
 * cacheUpdateIndex}) -> [output, newCache], as keras_hub's CachedMultiHeadAttention. A prefill
 * then one token at a time equals the uncached causal call on the whole sequence; bad arguments
 * throw before any work, naming the argument, and leak nothing.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention, FlashMultiHeadAttentionArgs } from '../src/index';
import { callStepByStep, NONZERO_BIASES, read } from './helpers/layer_cache';
import { LAYER_BACKENDS, useLayerBackend } from './helpers/layer_backends';
import { randomTensor, relativeError } from './helpers/tfjs_mha';


interface CacheCase {
  name: string;
  args: Partial<FlashMultiHeadAttentionArgs>;
  /** Query lengths of the successive calls: a prefill, then single tokens (or chunks). */
  chunks: number[];
  gpu?: boolean;
}

const CASES: CacheCase[] = [
  { name: 'prefill 3, then one token at a time', args: {}, chunks: [3, 1, 1, 1, 1], gpu: true },
  { name: 'GQA, ALiBi, softcap', args: { numHeads: 4, numKeyValueHeads: 2, alibi: true, softcap: 2 },
    chunks: [4, 1, 1, 1], gpu: true },
  { name: 'sliding window', args: { windowSize: [2, -1] }, chunks: [1, 1, 1, 1, 1, 1] },
  { name: 'chunks of 2 and 3 after an empty-cache prefill of 1', args: { numKeyValueHeads: 1 }, chunks: [1, 3, 2] },
];

describe.each(LAYER_BACKENDS)('on $backend', ({ backend, available }) => {
  const run = available ? test : test.skip;
  useLayerBackend({ backend, available });

  describe('step by step, the cached call equals the uncached causal call on the whole sequence', () => {
    run.each(backend === 'cpu' ? CASES : CASES.filter(c => c.gpu))('$name', async (c) => {
      const batch = 2, features = 8, keyDim = 4, maxLength = 12;
      const total = c.chunks.reduce((a, b) => a + b, 0);
      const x = randomTensor([batch, total, features], 1);
      const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim, causal: true, biasInitializer: NONZERO_BIASES, ...c.args });
      const full = layer.apply(x, { value: x }) as tf.Tensor;
      const kvHeads = layer.numKeyValueHeads;

      const { outputs, cache, newTensors } = await callStepByStep(layer, x, c.chunks, maxLength);
      // Only the outputs and the last cache are new (the first cache was replaced).
      expect(newTensors).toBe(outputs.length);
      const stepwise = tf.concat(outputs, 1);
      expect(relativeError(await read(stepwise), await read(full))).toBeLessThan(1e-5);

      // The cache holds the projected keys, then the values, at positions < total; NaN after.
      const written = await read(tf.slice(cache, [0, 0, 0, 0, 0], [batch, 2, total, kvHeads, keyDim]));
      expect(written.every(Number.isFinite)).toBe(true);
      const rest = await read(tf.slice(cache, [0, 0, total, 0, 0], [batch, 2, maxLength - total, kvHeads, keyDim]));
      expect(rest.every(Number.isNaN)).toBe(true);
      const [keyKernel, keyBias] = [layer.getWeights()[2], layer.getWeights()[3]];
      const keys = tf.add(tf.reshape(tf.matMul(tf.reshape(x, [batch * total, features]),
                                               tf.reshape(keyKernel, [features, kvHeads * keyDim])), [batch, total, kvHeads, keyDim]), keyBias);
      const cachedKeys = tf.reshape(tf.slice(cache, [0, 0, 0, 0, 0], [batch, 1, total, kvHeads, keyDim]), [batch, total, kvHeads, keyDim]);
      expect(relativeError(await read(cachedKeys), await read(keys))).toBeLessThan(1e-5);
      tf.dispose([x, full, cache, stepwise, keys, cachedKeys, ...outputs]);
    });
  });
});

describe('the cached call on cpu', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  test('an unbuilt layer builds on its first (cached) call; without a cache the call returns one tensor', () => {
    const x = randomTensor([1, 3, 8], 2);
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, causal: true });
    const result = layer.apply(x, { value: x, cache: tf.zeros([1, 2, 5, 2, 4]), cacheUpdateIndex: 0 } as never);
    expect(Array.isArray(result)).toBe(true);
    expect(layer.built).toBe(true);
    const [output, cache] = result as tf.Tensor[];
    expect(output.shape).toEqual([1, 3, 8]);
    expect(cache.shape).toEqual([1, 2, 5, 2, 4]);
    expect(relativeError(output.dataSync(), (layer.apply(x, { value: x }) as tf.Tensor).dataSync())).toBeLessThan(1e-5);
    expect(layer.apply(x, { value: x })).toBeInstanceOf(tf.Tensor);
  });

  test('useCausalMask: false lets the new tokens of one call see each other', () => {
    const x = randomTensor([1, 4, 8], 3);
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const [output] = layer.call(x, { value: x, cache: tf.zeros([1, 2, 6, 2, 4]), cacheUpdateIndex: 0,
                                     useCausalMask: false } as never) as tf.Tensor[];
    const bidirectional = layer.apply(x, { value: x }) as tf.Tensor;
    expect(relativeError(output.dataSync(), bidirectional.dataSync())).toBeLessThan(1e-5);
  });

  test('an attentionMask [batch, seqQ, maxLength] hides cache positions: as the uncached call with that mask', () => {
    const x = randomTensor([2, 4, 8], 7);
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, numKeyValueHeads: 1 });
    const hidden = (b: number, i: number, j: number) => (b === 0 && j === 1) || (b === 1 && i >= 2 && j === 0);
    const maskOf = (keys: number) => tf.tensor3d(Array.from({ length: 2 * 4 * keys }, (_, n) =>
      (hidden(Math.floor(n / (4 * keys)), Math.floor(n / keys) % 4, n % keys) ? 0 : 1)), [2, 4, keys], 'bool');
    const full = layer.apply(x, { value: x, attentionMask: maskOf(4), useCausalMask: true }) as tf.Tensor;
    const [cached] = layer.call(x, { value: x, cache: tf.zeros([2, 2, 6, 1, 4]), cacheUpdateIndex: 0,
                                     attentionMask: maskOf(6) } as never) as tf.Tensor[];
    expect(relativeError(cached.dataSync(), full.dataSync())).toBeLessThan(1e-5);
  });

  describe('bad arguments throw before any work, naming the argument, and leak nothing', () => {
    let layer: FlashMultiHeadAttention, query: tf.Tensor;
    beforeAll(() => {
      layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, numKeyValueHeads: 1 });
      query = randomTensor([2, 3, 8], 4);
      layer.apply(query, { value: query });
    });
    const cacheOf = (shape: number[], dtype: tf.DataType = 'float32') => tf.zeros(shape, dtype);
    const good = [2, 2, 8, 1, 4];
    const cases: Array<{ name: string; kwargs: () => object; error: RegExp; query?: () => tf.Tensor }> = [
      { name: 'cache of the wrong rank', kwargs: () => ({ cache: cacheOf([2, 2, 8, 4]), cacheUpdateIndex: 0 }),
        error: /cache must be \[batch, 2, maxLength, numKeyValueHeads, keyDim\] = \[2, 2, maxLength, 1, 4\], but got shape \[2, 2, 8, 4\]/ },
      { name: 'cache with the wrong kvHeads', kwargs: () => ({ cache: cacheOf([2, 2, 8, 2, 4]), cacheUpdateIndex: 0 }),
        error: /cache must be .* but got shape \[2, 2, 8, 2, 4\]/ },
      { name: 'cache of another batch', kwargs: () => ({ cache: cacheOf([1, 2, 8, 1, 4]), cacheUpdateIndex: 0 }),
        error: /cache must be .* but got shape \[1, 2, 8, 1, 4\]/ },
      { name: 'cache of int32', kwargs: () => ({ cache: cacheOf(good, 'int32'), cacheUpdateIndex: 0 }),
        error: /cache must be float32, but got int32/ },
      { name: 'cache that is not a tensor', kwargs: () => ({ cache: [[1]], cacheUpdateIndex: 0 }),
        error: /cache must be a Tensor/ },
      { name: 'negative cacheUpdateIndex', kwargs: () => ({ cache: cacheOf(good), cacheUpdateIndex: -1 }),
        error: /cacheUpdateIndex must be an integer in \[0, maxLength = 8\], but got -1/ },
      { name: 'cacheUpdateIndex past maxLength', kwargs: () => ({ cache: cacheOf(good), cacheUpdateIndex: 9 }),
        error: /cacheUpdateIndex must be an integer in \[0, maxLength = 8\], but got 9/ },
      { name: 'fractional cacheUpdateIndex', kwargs: () => ({ cache: cacheOf(good), cacheUpdateIndex: 1.5 }),
        error: /cacheUpdateIndex must be an integer/ },
      { name: 'cache without cacheUpdateIndex', kwargs: () => ({ cache: cacheOf(good) }),
        error: /cacheUpdateIndex must be an integer in \[0, maxLength = 8\], but got undefined/ },
      { name: 'cacheUpdateIndex without a cache', kwargs: () => ({ cacheUpdateIndex: 0 }),
        error: /cacheUpdateIndex needs a cache/ },
      { name: 'a query longer than the room left', kwargs: () => ({ cache: cacheOf(good), cacheUpdateIndex: 6 }),
        error: /cacheUpdateIndex \+ seqQ must be <= maxLength = 8, but is 9/ },
      { name: 'attentionMask over the value instead of the cache', kwargs: () => ({ cache: cacheOf(good), cacheUpdateIndex: 0,
                                                                                    attentionMask: tf.ones([2, 3, 3], 'bool') }),
        error: /attentionMask must be \[batch, seqQ, seqK\] = \[2, 3, 8\] .* but got shape \[2, 3, 3\]/ },
      { name: 'returnAttentionScores', kwargs: () => ({ cache: cacheOf(good), cacheUpdateIndex: 0, returnAttentionScores: true }),
        error: /a cached call does not return attention scores/ },
    ];

    test.each(cases)('$name', ({ kwargs, error }) => {
      const args = kwargs();
      const before = tf.memory().numTensors;
      expect(() => layer.call(query, { value: query, ...args } as never)).toThrow(error);
      expect(() => layer.apply(query, { value: query, ...args } as never)).toThrow(error);
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose(Object.values(args).filter((x): x is tf.Tensor => x instanceof tf.Tensor));
    });

    test('value of another length than the query', () => {
      const value = randomTensor([2, 2, 8], 5);
      const before = tf.memory().numTensors;
      expect(() => layer.call(query, { value, cache: cacheOf(good), cacheUpdateIndex: 0 } as never))
          .toThrow(/value and key hold the query's new positions: their sequence length must be seqQ = 3, but got value \[2, 2, 8\]/);
      expect(tf.memory().numTensors).toBe(before + 1);   // the cache made for the call
    });

    test('a layer whose valueDim differs from keyDim, and a symbolic call', () => {
      const other = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, valueDim: 3 });
      expect(() => other.apply(query, { value: query, cache: cacheOf([2, 2, 8, 2, 4]), cacheUpdateIndex: 0 } as never))
          .toThrow(/needs valueDim == keyDim, but they are 3 and 4/);
      expect(other.built).toBe(false);
      const input = tf.input({ shape: [3, 8] });
      expect(() => layer.apply(input, { value: input, cache: cacheOf(good), cacheUpdateIndex: 0 } as never))
          .toThrow(/a cached call \(cache, cacheUpdateIndex\) runs eagerly on Tensors/);
    });

    test('Keras masks', () => {
      const masked = randomTensor([2, 3, 8], 6);
      masked.kerasMask = tf.ones([2, 3], 'bool');
      expect(() => layer.call(masked, { value: masked, cache: cacheOf(good), cacheUpdateIndex: 0 } as never))
          .toThrow(/a cached call does not take Keras \(padding\) masks/);
    });
  });
});
