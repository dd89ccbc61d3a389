/**
 * The training example's step, made cheaper after the H200 profile (BENCHMARKS.md, "Where a
 * training step's time goes"): FlatAdam takes the same steps as tfjs's Adam, the matMul layer norm
 * is layer normalisation, trainingLoss is the compiled loss, and trainSteps reports every loss.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { seededRandom } from '../examples/transformer/data';
import {
  buildTransformer, compileTransformer, FlatAdam, LayerNorm, trainableVariables, trainingLoss, trainSteps,
  TransformerConfig,
} from '../examples/transformer/model';
import { relativeError } from './helpers/tfjs_mha';

const CONFIG: TransformerConfig = { vocabSize: 20, seqLen: 24, dim: 16, heads: 2, layers: 2, attention: 'flash' };

function batch(seed: number) {
  const random = seededRandom(seed);
  const ids = Array.from({ length: 2 * (CONFIG.seqLen + 1) }, () => Math.floor(random() * CONFIG.vocabSize));
  const rows = [0, 1].map(b => ids.slice(b * (CONFIG.seqLen + 1), (b + 1) * (CONFIG.seqLen + 1)));
  return {
    tokens: tf.tensor2d(rows.map(r => r.slice(0, -1)), undefined, 'int32'),
    targets: tf.tensor3d(rows.map(r => r.slice(1).map(t => [t]))),
  };
}

beforeAll(async () => {
  await tf.setBackend('cpu');
});

test('FlatAdam takes the steps tfjs\'s Adam takes, weight for weight', async () => {
  const flat = buildTransformer(CONFIG);
  const stock = buildTransformer(CONFIG);
  stock.setWeights(flat.getWeights());
  compileTransformer(flat, 0.01);
  stock.compile({ optimizer: tf.train.adam(0.01), loss: 'sparseCategoricalCrossentropy' });
  expect(flat.optimizer).toBeInstanceOf(FlatAdam);
  const initial = flat.getWeights().map(w => w.dataSync().slice());
  for (const seed of [1, 2, 3]) {
    const { tokens, targets } = batch(seed);
    const [a, b] = [Number(await flat.trainOnBatch(tokens, targets)), Number(await stock.trainOnBatch(tokens, targets))];
    expect(a).toBeCloseTo(b, 5);
  }
  const after = flat.getWeights();
  stock.getWeights().forEach((w, i) => {
    expect(after[i].shape).toEqual(w.shape);
    expect(relativeError(after[i].dataSync(), w.dataSync())).toBeLessThan(1e-5);
    // Every weight moved (by about 3 × 0.01 per element): the comparison is not vacuous.
    expect(relativeError(after[i].dataSync(), initial[i])).toBeGreaterThan(1e-3);
  });
});

test('FlatAdam refuses optimizer state written for separate weights', async () => {
  const model = buildTransformer(CONFIG);
  const optimizer = new FlatAdam(0.01, trainableVariables(model));
  const state = [{ name: 'iter', tensor: tf.scalar(1) }, ...['a/m', 'b/m', 'a/v', 'b/v'].map(name => ({ name, tensor: tf.zeros([2]) }))];
  await expect(optimizer.setWeights(state)).rejects.toThrow(/one flat weight \(3 tensors\), got 5/);
});

test('the matMul layer norm normalises each row to zero mean and unit variance, then scales', () => {
  const norm = new LayerNorm({ dim: 8 });
  const x = tf.randomNormal([2, 3, 8], 1.5, 3, 'float32', 7);
  const y = norm.apply(x) as tf.Tensor;
  const { mean, variance } = tf.moments(x, -1, true);
  const want = tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-5)));
  expect(y.shape).toEqual([2, 3, 8]);
  expect(relativeError(y.dataSync(), want.dataSync())).toBeLessThan(1e-5);
});

test('trainingLoss is the compiled loss, and trainSteps reports each step\'s loss in order', async () => {
  const model = buildTransformer(CONFIG);
  compileTransformer(model, 0.01);
  const { tokens, targets } = batch(5);
  const compiled = Number((model.evaluate(tokens, targets) as tf.Scalar).dataSync()[0]);
  expect(trainingLoss(model, tokens, targets).dataSync()[0]).toBeCloseTo(compiled, 5);

  const twin = buildTransformer(CONFIG);
  twin.setWeights(model.getWeights());
  compileTransformer(twin, 0.01);
  const seen: Array<[number, number]> = [];
  await trainSteps(model, 3, () => ({ tokens, targets }), (step, loss) => seen.push([step, loss]));
  const expected: number[] = [];
  for (let i = 0; i < 3; i++) expected.push(Number(await twin.trainOnBatch(tokens, targets)));
  expect(seen.map(s => s[0])).toEqual([0, 1, 2]);
  seen.forEach(([, loss], i) => expect(loss).toBeCloseTo(expected[i], 5));
  expect(seen[2][1]).toBeLessThan(seen[0][1]);
});
