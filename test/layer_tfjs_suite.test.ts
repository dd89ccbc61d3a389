/**
 * tfjs-layers' own MultiHeadAttention test suite (tfjs-layers/src/layers/nlp/
 * multihead_attention_test.ts, tfjs 4.22), restated for FlashMultiHeadAttention: their cases,
 * our code. Like theirs it calls `call` directly on layers that were never applied (the layer
 * builds on its first call), on the cpu backend and on WebGPU.
 *
 * Where the restatement differs: their per-sublayer weight counts become the layer's own
 * (kernel and bias per projection); their 'causal' case compares useCausalMask with the padding
 * masks alone, which tfjs's own class does not satisfy either (its outputs differ by 0.03), so it
 * is stated with the causal part (their 'not_causal' case) and the non-causal call is compared
 * with the padding masks alone.
 */
import * as tf from '@tensorflow/tfjs';
import { AttentionOptions } from '../src/layer';
import { FlashMultiHeadAttention } from '../src/index';
import { LAYER_BACKENDS, useLayerBackend } from './helpers/layer_backends';

type Shape = Array<number | null>;

/** Reads asynchronously: WebGPU in Node cannot read synchronously. */
async function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  expect(a.shape).toEqual(b.shape);
  const [x, y] = await Promise.all([a.data(), b.data()]);
  return Array.from(x as Float32Array).reduce((m, v, i) => Math.max(m, Math.abs(v - (y[i] as number))), 0);
}
/** tfjs's expectTensorsClose / expectTensorsNotClose tolerance. */
const EPSILON = 1e-3;

describe.each(LAYER_BACKENDS)('MultiHeadAttention suite on $backend', ({ backend, available }) => {
  const it = available ? test : test.skip;
  useLayerBackend({ backend, available });

  describe('Non Masked Attention', () => {
    it.each([
      { testcaseName: 'key value same proj', valueDim: undefined, outputShape: undefined, outputDims: [40, 80] },
      { testcaseName: 'key value different proj', valueDim: 32, outputShape: [60], outputDims: [40, 60] },
    ])('$testcaseName non masked attention', ({ valueDim, outputShape, outputDims }) => {
      const testLayer = new FlashMultiHeadAttention({ numHeads: 12, keyDim: 64, valueDim, outputShape });
      const query = tf.input({ shape: [40, 80] });
      const value = tf.input({ shape: [20, 80] });
      const output = testLayer.apply(query, { value }) as tf.SymbolicTensor;
      expect(output.shape).toEqual([null, ...outputDims]);
    });
  });

  it('non masked self attention', () => {
    const testLayer = new FlashMultiHeadAttention({ numHeads: 12, keyDim: 64 });
    const query = tf.input({ shape: [40, 80] });
    const output = testLayer.apply(query, { value: query }) as tf.SymbolicTensor;
    expect(output.shape).toEqual([null, 40, 80]);
  });

  it('attention scores', () => {
    const testLayer = new FlashMultiHeadAttention({ numHeads: 12, keyDim: 64 });
    const query = tf.ones([1, 40, 80]);
    const [output, coef] = testLayer.callAndReturnAttentionScores(query, { value: query });
    expect(output.shape).toEqual([1, 40, 80]);
    expect(coef.shape).toEqual([1, 12, 40, 40]);
  });

  it('attention scores with values', () => {
    const testLayer = new FlashMultiHeadAttention({ numHeads: 12, keyDim: 64 });
    const query = tf.ones([1, 40, 80]);
    const value = tf.ones([1, 60, 80]);
    const [output, coef] = testLayer.callAndReturnAttentionScores(query, { value });
    expect(output.shape).toEqual([1, 40, 80]);
    expect(coef.shape).toEqual([1, 12, 40, 60]);
  });

  describe('Masked Attention', () => {
    it.each([{ testcaseName: 'with bias', useBias: true }, { testcaseName: 'no bias', useBias: false }])(
        '$testcaseName', async ({ useBias }) => {
      const testLayer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2, useBias });
      const batchSize = 4;
      const query = tf.randomUniform([batchSize, 4, 8], 0, 1, 'float32', 1);
      const value = tf.randomUniform([batchSize, 2, 8], 0, 1, 'float32', 2);
      // A random mask (masks at least one element), then one that masks nothing.
      const maskData = tf.randomUniformInt([batchSize, 4, 2], 0, 2, 3);
      const maskedOutputData = testLayer.call(query, { value, attentionMask: maskData }) as tf.Tensor;
      const nullMaskData = tf.ones([batchSize, 4, 2]);
      const unmaskedOutputData = testLayer.call(query, { value, attentionMask: nullMaskData }) as tf.Tensor;
      expect(await maxAbsDiff(maskedOutputData, unmaskedOutputData)).toBeGreaterThan(EPSILON);
      // Theirs: each EinsumDense sublayer has [kernel, bias] or [kernel]; ours holds all four.
      expect(testLayer.trainableWeights.map(w => w.name.split('/').slice(-1)[0]))
          .toEqual(useBias ? Array(4).fill(['kernel', 'bias']).flat() : Array(4).fill('kernel'));
    });
  });

  it('initializers', async () => {
    const testLayer = new FlashMultiHeadAttention({
      numHeads: 12, keyDim: 64, kernelInitializer: tf.initializers.truncatedNormal({ stddev: 0.02 }),
    });
    const query = tf.ones([1, 40, 80]);
    const output = testLayer.call(query, { value: query }) as tf.Tensor;
    expect(output.shape).toEqual([1, 40, 80]);
    // The projections have different kernel values: the initializer is not reused as one draw.
    const [queryKernel, , keyKernel, , valueKernel, , outputKernel] = testLayer.getWeights();
    const flat = (t: tf.Tensor) => t.reshape([-1]);
    for (const other of [keyKernel, valueKernel, outputKernel]) {
      expect(await maxAbsDiff(flat(queryKernel), flat(other))).toBeGreaterThan(1e-6);
    }
  });

  it('dropout', async () => {
    const testLayer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2, dropout: 0.5 });
    const fromData = tf.ones([32, 4, 8]);
    const toData = tf.ones([32, 2, 8]);
    const trainOut = testLayer.call(fromData, { value: toData, training: true }) as tf.Tensor;
    const testOut = testLayer.call(fromData, { value: toData, training: false }) as tf.Tensor;
    expect(await maxAbsDiff(trainOut, testOut)).toBeGreaterThan(EPSILON);
  });

  describe('Causal Mask Value', () => {
    let testLayer: FlashMultiHeadAttention;
    let maskedQuery: tf.Tensor, maskedValue: tf.Tensor, mask: tf.Tensor;
    beforeEach(() => {
      testLayer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2 });
      const query = tf.tensor2d([[1, 2, 3, 0, 0], [3, 3, 1, 1, 2], [1, 0, 0, 0, 0]]);
      maskedQuery = tf.layers.embedding({ inputDim: 4, outputDim: 8, maskZero: true }).apply(query) as tf.Tensor;
      const value = tf.tensor2d([[5, 4, 0], [3, 0, 0], [2, 1, 1]]);
      maskedValue = tf.layers.embedding({ inputDim: 6, outputDim: 8, maskZero: true }).apply(value) as tf.Tensor;
      // The query and value padding masks, as one [batch, T, S] mask.
      mask = tf.tensor([
        Array<boolean[]>(3).fill([true, true, false]).concat(Array<boolean[]>(2).fill([false, false, false])),
        Array<boolean[]>(5).fill([true, false, false]),
        [[true, true, true]].concat(Array<boolean[]>(4).fill([false, false, false])),
      ]);
    });

    it('causal', async () => {
      const output = testLayer.call(maskedQuery, { value: maskedValue, useCausalMask: true }) as tf.Tensor;
      const causal = mask.logicalAnd(tf.tensor([
        [[true, false, false], [true, true, false]].concat([[true, true, true], [true, true, true], [true, true, true]]),
      ]));
      const outputWithManualMask = testLayer.call(maskedQuery, { value: maskedValue, attentionMask: causal }) as tf.Tensor;
      expect(await maxAbsDiff(output, outputWithManualMask)).toBeLessThan(EPSILON);
    });

    it('not_causal', async () => {
      const output = testLayer.call(maskedQuery, { value: maskedValue }) as tf.Tensor;
      const outputWithManualMask = testLayer.call(maskedQuery, { value: maskedValue, attentionMask: mask }) as tf.Tensor;
      expect(await maxAbsDiff(output, outputWithManualMask)).toBeLessThan(EPSILON);
      // And the causal call is a different function here.
      const causal = testLayer.call(maskedQuery, { value: maskedValue, useCausalMask: true }) as tf.Tensor;
      expect(await maxAbsDiff(output, causal)).toBeGreaterThan(EPSILON);
    });
  });

  describe('Compute Output Shape', () => {
    it.each([
      { testcaseName: 'without_key_same_proj', queryDims: [40, 80], valueDims: [20, 80], keyDims: null, outputShape: undefined },
      { testcaseName: 'with_key_same_proj', queryDims: [40, 80], valueDims: [20, 80], keyDims: [20, 30], outputShape: undefined },
      { testcaseName: 'wihtout_key_different_proj', queryDims: [40, 80], valueDims: [20, 80], keyDims: null, outputShape: [30, 40] },
      { testcaseName: 'with_key_different_proj', queryDims: [40, 80], valueDims: [20, 80], keyDims: [20, 30], outputShape: [15, 50] },
    ])('$testcaseName', ({ queryDims, valueDims, keyDims, outputShape }) => {
      const testLayer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2, valueDim: 2, outputShape });
      const batchSize = 1;
      const queryShape = [batchSize, ...queryDims];
      const valueShape = [batchSize, ...valueDims];
      const keyShape = keyDims ? [batchSize, ...keyDims] : null;
      const query = tf.randomUniform(queryShape);
      const value = tf.randomUniform(valueShape);
      const key = keyShape ? tf.randomUniform(keyShape) : undefined;
      const output = testLayer.call(query, { value, key }) as tf.Tensor;
      const computedOutputShape = testLayer.computeOutputShape([queryShape, valueShape, keyShape as number[]]);
      expect(output.shape).toEqual(computedOutputShape);
    });
  });

  describe('Compute Output Shape Raises Error', () => {
    it.each([
      { testcaseName: 'query_value_dim_mismatch', queryShape: [null, 40, 80], valueShape: [null, 20, 70], keyShape: null },
      { testcaseName: 'key_value_dim_mismatch', queryShape: [null, 40, 80], valueShape: [null, 20, 80], keyShape: [null, 10, 70] },
      { testcaseName: 'key_value_dim_mismatch_high_dim', queryShape: [null, 40, 20, 30, 80],
        valueShape: [null, 10, 10, 50, 80], keyShape: [null, 10, 15, 50, 20] },
    ])('$testcaseName', ({ queryShape, valueShape, keyShape }) => {
      const testLayer = new FlashMultiHeadAttention({ numHeads: 4, keyDim: 2, valueDim: 2 });
      expect(() => testLayer.computeOutputShape([queryShape, valueShape, keyShape as Shape]))
          .toThrow(/^Error in flashMultiHeadAttention: /);
    });
  });

  it('does not leak memory', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2 });
    const query = tf.ones([1, 4, 8]);
    // Initial call that builds the layer.
    layer.call(query, { value: query });
    const numTensors = tf.memory().numTensors;
    layer.call(query, { value: query });
    expect(tf.memory().numTensors).toEqual(numTensors + 1);
  });

  describe('High Dimensional Attention', () => {
    it.each([
      { testcaseName: '4d_inputs_1freebatch_mask2', qDims: [3, 4], vDims: [3, 2], maskDims: [4, 2], attentionAxes: [2] },
      { testcaseName: '4d_inputs_1freebatch_mask3', qDims: [3, 4], vDims: [3, 2], maskDims: [3, 4, 2], attentionAxes: [2] },
      { testcaseName: '4d_inputs_1freebatch_mask4', qDims: [3, 4], vDims: [3, 2], maskDims: [3, 2, 4, 2], attentionAxes: [2] },
      { testcaseName: '4D_inputs_2D_attention', qDims: [3, 4], vDims: [3, 2], maskDims: [3, 4, 3, 2], attentionAxes: [1, 2] },
      { testcaseName: '5D_inputs_2D_attention', qDims: [5, 3, 4], vDims: [5, 3, 2], maskDims: [3, 4, 3, 2], attentionAxes: [2, 3] },
      { testcaseName: '5D_inputs_2D_attention_fullmask', qDims: [5, 3, 4], vDims: [5, 3, 2], maskDims: [5, 3, 4, 3, 2],
        attentionAxes: [2, 3] },
    ])('$testcaseName', async ({ qDims, vDims, maskDims, attentionAxes }) => {
      const testLayer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2, attentionAxes });
      const [batchSize, hiddenSize] = [3, 8];
      const query = tf.randomUniform([batchSize, ...qDims, hiddenSize], 0, 10, 'float32', 4);
      const value = tf.randomUniform([batchSize, ...vDims, hiddenSize], 0, 10, 'float32', 5);
      const maskShape = [batchSize, ...maskDims];
      // One random mask (masks at least one element), one that masks nothing: different outputs.
      const maskData = tf.randomUniformInt(maskShape, 0, 2, 6).asType('bool');
      const nullMaskData = tf.ones(maskShape);
      const outputWithMask = testLayer.call(query, { value, attentionMask: maskData }) as tf.Tensor;
      const outputWithNullMask = testLayer.call(query, { value, attentionMask: nullMaskData }) as tf.Tensor;
      expect(outputWithMask.shape).toEqual([batchSize, ...qDims, hiddenSize]);
      expect(await maxAbsDiff(outputWithMask, outputWithNullMask)).toBeGreaterThan(EPSILON);
    });
  });

  describe('AttentionSubclass', () => {
    class SubclassAttention extends FlashMultiHeadAttention {
      static override className = 'SubclassAttentionForTests';
      protected override computeAttention(_q: tf.Tensor4D, _k: tf.Tensor4D, v: tf.Tensor4D, _options: AttentionOptions) {
        return v;
      }
    }
    it('initializer', () => {
      const testLayer = new SubclassAttention({ numHeads: 12, keyDim: 64 });
      const query = tf.ones([1, 40, 80]);
      const output = testLayer.call(query, { value: query }) as tf.Tensor;
      expect(output.shape).toEqual([1, 40, 80]);
    });
  });
});
