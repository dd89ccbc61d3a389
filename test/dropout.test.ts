/** Dropout on the attention probabilities: rate, determinism per seed, and a consistent gradient. */
import * as tf from '@tensorflow/tfjs';
import { flashAttention } from '../src/index';
import { dropoutKeep } from '../src/contract';
import { caseData, compare, F32_TOLERANCE, reference, runOp, CaseSpec } from './helpers/attention_case';
import { CPU_PATHS, registerFallbackBackend } from './helpers/backends';

registerFallbackBackend();

describe('the counter-based dropout mask', () => {
  test.each([0.1, 0.5, 0.9])('keeps a fraction 1 - %f of elements (within 4 sigma)', (rate) => {
    const n = 200000;
    let kept = 0;
    for (let e = 0; e < n; e++) if (dropoutKeep(12345, e % 7, Math.floor(e / 7) % 97, Math.floor(e / 679), rate)) kept++;
    const sigma = Math.sqrt(n * rate * (1 - rate));
    expect(Math.abs(kept - n * (1 - rate))).toBeLessThan(4 * sigma);
  });

  test('differs between seeds and between neighbouring elements', () => {
    let agreeSeeds = 0, agreeNeighbours = 0;
    for (let j = 0; j < 10000; j++) {
      if (dropoutKeep(1, 0, 3, j, 0.5) === dropoutKeep(2, 0, 3, j, 0.5)) agreeSeeds++;
      if (dropoutKeep(1, 0, 3, j, 0.5) === dropoutKeep(1, 0, 4, j, 0.5)) agreeNeighbours++;
    }
    expect(Math.abs(agreeSeeds - 5000)).toBeLessThan(300);
    expect(Math.abs(agreeNeighbours - 5000)).toBeLessThan(300);
  });
});

describe.each(CPU_PATHS)('dropout in flashAttention on the $name', ({ backend }) => {
  beforeAll(async () => { await tf.setBackend(backend); });
  const q = () => tf.randomNormal([1, 16, 2, 8], 0, 1, 'float32', 1) as tf.Tensor4D;
  const k = () => tf.randomNormal([1, 24, 2, 8], 0, 1, 'float32', 2) as tf.Tensor4D;
  const v = () => tf.ones([1, 24, 2, 8]) as tf.Tensor4D;

  test('the same seed gives the same result; another seed another', async () => {
    const [a, b, c] = [7, 7, 8].map(seed => flashAttention(q(), k(), v(), { dropoutRate: 0.5, seed }));
    expect(await a.data()).toEqual(await b.data());
    expect(await a.data()).not.toEqual(await c.data());
    tf.dispose([a, b, c]);
  });

  test('with v = 1 the output averages (keep / (1 - rate)) over probabilities: about 1', async () => {
    // out[i] = sum_j P_ij * keep_ij / (1 - rate): expectation 1, and exactly 1 with rate 0.
    const out = flashAttention(q(), k(), v(), { dropoutRate: 0.3, seed: 3 });
    const mean = (await tf.mean(out).data())[0];
    expect(Math.abs(mean - 1)).toBeLessThan(0.1);
    const none = flashAttention(q(), k(), v(), { dropoutRate: 0 });
    expect(Math.abs((await tf.mean(none).data())[0] - 1)).toBeLessThan(1e-6);
    tf.dispose([out, none]);
  });

  test('gradients use the forward pass mask (match the reference at the same seed)', async () => {
    const c: CaseSpec = { dims: { batch: 2, seqQ: 9, seqK: 13, heads: 4, kvHeads: 2, headDim: 5, headDimV: 6 }, dropoutRate: 0.4, seed: 99 };
    const d = caseData(c);
    const errors = compare(await runOp(c, d), reference(c, d));
    for (const [name, err] of Object.entries(errors)) {
      expect(err).toBeLessThan(name === 'out' || name === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads);
    }
  });
});
