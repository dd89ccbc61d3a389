/**
 * The training example's generation (examples/transformer/generate.ts): with the key/value cache
 * it gives the tokens full recomputation gives (greedy), and every step's probabilities match.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { seededRandom } from '../examples/transformer/data';
import { CachedDecoder, generateCached, generateUncached } from '../examples/transformer/generate';
import { buildTransformer, TransformerConfig } from '../examples/transformer/model';
import { randomTensor, relativeError } from './helpers/tfjs_mha';

const CONFIG: Omit<TransformerConfig, 'attention'> = { vocabSize: 20, seqLen: 24, dim: 16, heads: 2, layers: 2 };
const PROMPT = [3, 1, 4, 1, 5];

/** The example's model with seeded weights large enough that greedy decoding does not repeat one token. */
function model(attention: TransformerConfig['attention']): tf.LayersModel {
  const m = buildTransformer({ ...CONFIG, attention });
  m.setWeights(m.getWeights().map((w, i) => randomTensor(w.shape, 100 + i, 0.5)));
  return m;
}

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe.each(['flash', 'stock'] as const)('%s attention: tokens with the cache equal full recomputation', (attention) => {
  // Greedy (what --uncached checks), and sampled with the same random stream, which varies the
  // tokens (a random model's greedy output tends to repeat one token).
  test.each([0, 1])('temperature %d', async (temperature) => {
    const m = model(attention);
    const options = () => ({ length: 14, temperature, random: seededRandom(7) });
    // First: the layer norms make their shared averaging column (kept for good) on first use.
    const full = await generateUncached(m, PROMPT, options());
    const before = tf.memory().numTensors;
    const cached = await generateCached(m, PROMPT, options());
    expect(tf.memory().numTensors).toBe(before);
    expect(cached.tokens).toHaveLength(14);
    expect(cached.tokens).toEqual(full.tokens);
    if (temperature > 0) expect(new Set(full.tokens).size).toBeGreaterThan(3);
  });
});

test('each step\'s probabilities equal the last row of model.predict on the whole sequence', async () => {
  const m = model('flash');
  const decoder = new CachedDecoder(m);
  const ids = [...PROMPT];
  let row = decoder.feed(PROMPT);
  for (const next of [7, 2, 9, 0]) {
    const expected = tf.tidy(() => {
      const out = m.predict(tf.tensor2d([ids], undefined, 'int32')) as tf.Tensor;
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
  await expect(generateCached(model('flash'), PROMPT, { length: 20, temperature: 0, random: Math.random }))
      .rejects.toThrow(/prompt \(5\) \+ length \(20\) exceeds the model's 24 positions/);
});
