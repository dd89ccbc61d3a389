/**
 * The training example's generation (examples/transformer/generate.ts): with the key/value cache
 * it gives the tokens full recomputation gives (greedy), and every step's probabilities match.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { seededRandom } from '../examples/transformer/data';
import { CachedDecoder, generateCached, generateUncached } from '../examples/transformer/generate';
import { buildTransformer, TransformerConfig } from '../examples/transformer/model';
import { relativeError } from './helpers/tfjs_mha';

const CONFIG: Omit<TransformerConfig, 'attention'> = { vocabSize: 20, seqLen: 24, dim: 16, heads: 2, layers: 2 };
const PROMPT = [3, 1, 4, 1, 5];

beforeAll(async () => {
  await tf.setBackend('cpu');
});

test.each(['flash', 'stock'] as const)('%s attention: greedy tokens with the cache equal full recomputation', async (attention) => {
  const model = buildTransformer({ ...CONFIG, attention });
  const options = { length: 14, temperature: 0, random: seededRandom(1) };
  // First: the layer norms make their shared averaging column (kept for good) on first use.
  const full = await generateUncached(model, PROMPT, options);
  const before = tf.memory().numTensors;
  const cached = await generateCached(model, PROMPT, options);
  expect(tf.memory().numTensors).toBe(before);
  expect(cached.tokens).toHaveLength(14);
  expect(cached.tokens).toEqual(full.tokens);
  // Not a constant sequence: the comparison says something.
  expect(new Set(full.tokens).size).toBeGreaterThan(1);
});

test('each step\'s probabilities equal the last row of model.predict on the whole sequence', async () => {
  const model = buildTransformer({ ...CONFIG, attention: 'flash' });
  const decoder = new CachedDecoder(model);
  const ids = [...PROMPT];
  let row = decoder.feed(PROMPT);
  for (const next of [7, 2, 9, 0]) {
    const expected = tf.tidy(() => {
      const out = model.predict(tf.tensor2d([ids], undefined, 'int32')) as tf.Tensor;
      return tf.reshape(tf.slice(out, [0, ids.length - 1, 0], [1, 1, -1]), [-1]);
    });
    expect(relativeError(row.dataSync(), expected.dataSync())).toBeLessThan(1e-5);
    tf.dispose([row, expected]);
    ids.push(next);
    row = decoder.feed([next]);
  }
  row.dispose();
  decoder.dispose();
});

test('a prompt and length past the position embedding are refused', async () => {
  const model = buildTransformer({ ...CONFIG, attention: 'flash' });
  await expect(generateCached(model, PROMPT, { length: 20, temperature: 0, random: Math.random }))
      .rejects.toThrow(/prompt \(5\) \+ length \(20\) exceeds the model's 24 positions/);
});
