/**
 * FlashMultiHeadAttention against tfjs-layers' own MultiHeadAttention with copied weights: same
 * weights (order and shapes) and the same outputs within 1e-5, for every call form Keras has.
 * (Its own file: the bundled tfjs class re-registers layer classes for serialization.)
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention } from '../src/index';
import {
  loadTfjsMultiHeadAttention, randomMaskWithoutEmptyRows, randomTensor, relativeError,
  TfjsMultiHeadAttention, tfjsMhaWeights,
} from './helpers/tfjs_mha';

const MultiHeadAttention = loadTfjsMultiHeadAttention();
/**
 * Non-zero biases, so a misplaced bias cannot hide. As a config dict: the bundled tfjs class has
 * its own Initializer class, so an instance from tf.initializers would not pass its instanceof.
 */
const NONZERO_BIASES = { className: 'RandomNormal', config: { mean: 0, stddev: 0.5 } } as unknown as 'zeros';

interface ParityCase {
  name: string;
  batch?: number; seqQ: number; seqK: number;
  queryFeatures: number; valueFeatures?: number; keyFeatures?: number;
  numHeads: number; keyDim: number; valueDim?: number;
  outputShape?: number | number[];
  useBias?: boolean;
  useCausalMask?: boolean;
  attentionMask?: boolean;
}

const CASES: ParityCase[] = [
  { name: 'self-attention', seqQ: 7, seqK: 7, queryFeatures: 8, numHeads: 2, keyDim: 4 },
  { name: 'cross-attention with a separate key, T < S', seqQ: 5, seqK: 9, queryFeatures: 6,
    valueFeatures: 6, keyFeatures: 10, numHeads: 3, keyDim: 4, valueDim: 5 },
  { name: 'cross-attention, T > S', seqQ: 9, seqK: 4, queryFeatures: 6, valueFeatures: 6, numHeads: 2, keyDim: 3 },
  { name: 'useCausalMask, T = S', seqQ: 8, seqK: 8, queryFeatures: 8, numHeads: 2, keyDim: 4, useCausalMask: true },
  { name: 'useCausalMask, T > S (top-left aligned)', seqQ: 9, seqK: 5, queryFeatures: 6,
    valueFeatures: 6, numHeads: 2, keyDim: 4, useCausalMask: true },
  { name: 'useCausalMask, T < S (top-left aligned)', seqQ: 4, seqK: 10, queryFeatures: 6,
    valueFeatures: 6, numHeads: 2, keyDim: 4, useCausalMask: true },
  { name: 'attentionMask', seqQ: 6, seqK: 11, queryFeatures: 8, valueFeatures: 8, numHeads: 2, keyDim: 4,
    attentionMask: true },
  { name: 'attentionMask with useCausalMask', seqQ: 7, seqK: 7, queryFeatures: 8, numHeads: 2, keyDim: 4,
    attentionMask: true, useCausalMask: true },
  { name: 'outputShape as a number, no biases', seqQ: 5, seqK: 5, queryFeatures: 8, numHeads: 2, keyDim: 4,
    outputShape: 3, useBias: false },
  { name: 'outputShape with two dimensions', seqQ: 5, seqK: 6, queryFeatures: 4, valueFeatures: 4,
    numHeads: 2, keyDim: 4, outputShape: [2, 3] },
];

/** Both layers, built on the case's inputs, with the tfjs layer's (random) weights copied over. */
function buildPair(c: ParityCase, seed: number) {
  const batch = c.batch ?? 2;
  const query = randomTensor([batch, c.seqQ, c.queryFeatures], seed);
  const value = randomTensor([batch, c.seqK, c.valueFeatures ?? c.queryFeatures], seed + 1);
  const key = c.keyFeatures ? randomTensor([batch, c.seqK, c.keyFeatures], seed + 2) : undefined;
  const attentionMask = c.attentionMask ? randomMaskWithoutEmptyRows(batch, c.seqQ, c.seqK, seed + 3) : undefined;
  const args = {
    numHeads: c.numHeads, keyDim: c.keyDim, valueDim: c.valueDim, outputShape: c.outputShape,
    useBias: c.useBias,
    biasInitializer: NONZERO_BIASES,
  };
  const mha: TfjsMultiHeadAttention = new MultiHeadAttention(args);
  const flash = new FlashMultiHeadAttention(args);
  const callArgs = { value, key, attentionMask, useCausalMask: c.useCausalMask };
  mha.call(query, callArgs);
  flash.apply(query, callArgs);
  return { mha, flash, query, callArgs };
}

describe('FlashMultiHeadAttention matches tfjs-layers MultiHeadAttention', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  test.each(CASES)('$name: same weight shapes, in the same order', (c) => {
    const { mha, flash } = buildPair(c, 10);
    expect(flash.getWeights().map(w => w.shape)).toEqual(tfjsMhaWeights(mha).map(w => w.shape));
  });

  test.each(CASES)('$name: same output within 1e-5 with copied weights', (c) => {
    const { mha, flash, query, callArgs } = buildPair(c, 20);
    flash.setWeights(tfjsMhaWeights(mha));
    const expected = mha.call(query, callArgs) as tf.Tensor;
    const actual = flash.apply(query, callArgs) as tf.Tensor;
    expect(actual.shape).toEqual(expected.shape);
    expect(relativeError(actual.dataSync(), expected.dataSync())).toBeLessThan(1e-5);
  });

  test('callAndReturnAttentionScores: same output and same scores', () => {
    const c = CASES.find(k => k.name === 'attentionMask with useCausalMask')!;
    const { mha, flash, query, callArgs } = buildPair(c, 30);
    flash.setWeights(tfjsMhaWeights(mha));
    const [expectedOutput, expectedScores] = mha.callAndReturnAttentionScores(query, callArgs) as tf.Tensor[];
    const [output, scores] = flash.callAndReturnAttentionScores(query, callArgs);
    expect(scores.shape).toEqual(expectedScores.shape);
    expect(relativeError(output.dataSync(), expectedOutput.dataSync())).toBeLessThan(1e-5);
    expect(relativeError(scores.dataSync(), expectedScores.dataSync())).toBeLessThan(1e-5);
  });

  test('masks carried by Embedding(maskZero) inputs: same output on every unpadded query row', () => {
    const tokens = tf.tensor2d([[3, 1, 4, 1, 5, 0, 0], [2, 6, 5, 3, 5, 8, 9]], undefined, 'int32');
    const embedding = tf.layers.embedding({ inputDim: 10, outputDim: 8, maskZero: true });
    const x = embedding.apply(tokens) as tf.Tensor;
    expect(x.kerasMask).toBeDefined();
    const args = { numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES };
    const mha: TfjsMultiHeadAttention = new MultiHeadAttention(args);
    const flash = new FlashMultiHeadAttention(args);
    mha.call(x, { value: x });
    flash.apply(x, { value: x });
    flash.setWeights(tfjsMhaWeights(mha));

    const expected = (mha.call(x, { value: x }) as tf.Tensor).arraySync() as number[][][];
    const actual = (flash.apply(x, { value: x }) as tf.Tensor).arraySync() as number[][][];
    const outputBias = Array.from(flash.getWeights()[7].dataSync());
    const padded = tokens.arraySync() as number[][];
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 7; t++) {
        // A padded query row has no key to attend to: flashAttention's contract gives it zero
        // attention (output = output bias), where tfjs's softmax mask averages all values.
        const want = padded[b][t] === 0 ? outputBias : expected[b][t];
        expect(relativeError(actual[b][t], want)).toBeLessThan(1e-5);
      }
    }
  });
});

describe('attentionAxes on higher-rank inputs matches tfjs-layers MultiHeadAttention', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  test.each([
    { name: 'one axis next to the features, a free batch axis', attentionAxes: [2], query: [2, 3, 4, 8], value: [2, 3, 5, 8],
      mask: [2, 3, 4, 5] },
    { name: 'one axis away from the features', attentionAxes: [1], query: [2, 4, 3, 8], value: [2, 5, 3, 8], mask: [2, 3, 2, 4, 5] },
    { name: 'two axes (the default on rank-4 inputs)', attentionAxes: undefined, query: [2, 3, 4, 8], value: [2, 2, 5, 8],
      mask: [2, 3, 4, 2, 5] },
    { name: 'two of three axes, rank 5', attentionAxes: [2, 3], query: [2, 2, 3, 2, 8], value: [2, 2, 2, 3, 8], mask: [2, 3, 2, 2, 3] },
  ])('$name: same output and scores within 1e-5 with copied weights', ({ attentionAxes, query: qShape, value: vShape, mask: mShape }) => {
    const query = randomTensor(qShape, 40);
    const value = randomTensor(vShape, 41);
    // Keeps at least one key per query row (index 0 of the last axis), so no row is fully masked.
    const mask = tf.tidy(() => tf.logicalOr(tf.greater(randomTensor(mShape, 42), -0.3),
                                            tf.oneHot(tf.zeros(mShape.slice(0, -1), 'int32'), mShape[mShape.length - 1]).cast('bool')));
    const args = { numHeads: 2, keyDim: 4, attentionAxes, biasInitializer: NONZERO_BIASES };
    const mha: TfjsMultiHeadAttention = new MultiHeadAttention(args);
    const flash = new FlashMultiHeadAttention(args);
    mha.call(query, { value });
    flash.call(query, { value });
    flash.setWeights(tfjsMhaWeights(mha));
    const [expected, expectedScores] = mha.callAndReturnAttentionScores(query, { value, attentionMask: mask }) as tf.Tensor[];
    const [actual, scores] = flash.callAndReturnAttentionScores(query, { value, attentionMask: mask });
    expect(actual.shape).toEqual(expected.shape);
    expect(scores.shape).toEqual(expectedScores.shape);
    expect(relativeError(actual.dataSync(), expected.dataSync())).toBeLessThan(1e-5);
    expect(relativeError(scores.dataSync(), expectedScores.dataSync())).toBeLessThan(1e-5);
  });
});
