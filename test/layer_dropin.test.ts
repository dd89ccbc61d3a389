/**
 * FlashMultiHeadAttention as a drop-in: misspelt or unsupported arguments are errors that name
 * them, returnAttentionScores returns [output, scores] as in Keras (eagerly and in a functional
 * model), every check runs before the layer is built (so a failed call leaves it unbuilt and a
 * later correct call works, and eager and symbolic calls reject the same inputs), call() builds a
 * layer never applied, and attentionAxes attends over any axes of higher-rank inputs as Keras.
 * Numeric checks run on the cpu backend and on WebGPU.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention, FlashMultiHeadAttentionArgs, flashMultiHeadAttention } from '../src/index';
import { randomMaskWithoutEmptyRows, randomTensor, relativeError } from './helpers/tfjs_mha';
import { LAYER_BACKENDS, useLayerBackend } from './helpers/layer_backends';

const ERROR = (message: RegExp) => new RegExp(`^Error in flashMultiHeadAttention: .*${message.source}`);
const NONZERO_BIASES = tf.initializers.randomNormal({ mean: 0, stddev: 0.5 });

/** Reads asynchronously: WebGPU in Node cannot read synchronously. */
const read = async (t: tf.Tensor) => (await t.data()) as Float32Array;

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('unknown arguments are rejected, naming them', () => {
  test.each([
    [{ numHeads: 2, keyDim: 4, casual: true }, /unknown argument 'casual' \(did you mean 'causal'\?\); known arguments: numHeads, keyDim/],
    [{ numHeads: 2, keyDim: 4, useCausalMask: true },
      /unknown argument 'useCausalMask' \(a call argument; the constructor's default for it is causal\)/],
    [{ numHeads: 2, keyDim: 4, num_heads: 2 }, /unknown argument 'num_heads' \(did you mean 'numHeads'\?\)/],
    [{ numHeads: 2, keyDim: 4, dtype: 'float16' }, /dtype must be 'float32' \(flashAttention computes in float32\), but got "float16"/],
  ])('constructor %j', (args, message) => {
    expect(() => new FlashMultiHeadAttention(args as unknown as FlashMultiHeadAttentionArgs)).toThrow(ERROR(message));
  });

  test('tfjs-layers\' own arguments (name, dtype float32, trainable, inputShape) are accepted', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, name: 'mine', dtype: 'float32', trainable: false, inputShape: [5, 8] });
    expect(layer.name).toBe('mine');
  });

  const query = () => randomTensor([2, 5, 8], 1);
  test.each([
    ['useCasualMask', { useCasualMask: true }, /unknown call argument 'useCasualMask' \(did you mean 'useCausalMask'\?\); known call arguments: value, key, attentionMask, useCausalMask, returnAttentionScores, training/],
    ['return_attention_scores', { return_attention_scores: true }, /unknown call argument 'return_attention_scores'/],
    ['causal', { causal: true }, /unknown call argument 'causal' \(a constructor argument; the call takes useCausalMask\)/],
    ['a non-boolean useCausalMask', { useCausalMask: 'yes' }, /useCausalMask must be a boolean, but got "yes"/],
    ['a non-boolean returnAttentionScores', { returnAttentionScores: 1 }, /returnAttentionScores must be a boolean, but got 1/],
  ])('call with %s: eagerly, symbolically and through call()', (_, extra, message) => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const x = query();
    expect(() => layer.apply(x, { value: x, ...extra })).toThrow(ERROR(message));
    const input = tf.input({ shape: [5, 8] });
    expect(() => layer.apply(input, { value: input, ...extra })).toThrow(ERROR(message));
    expect(() => layer.call(x, { value: x, ...extra })).toThrow(ERROR(message));
    expect(layer.built).toBe(false);
  });
});

describe('checks run before the layer is built', () => {
  test.each([
    [{ numHeads: 2, keyDim: 512 }, /keyDim must be a positive integer <= 256 \(flashAttention's largest head size\), but got 512/],
    [{ numHeads: 2, keyDim: 4, valueDim: 300 }, /valueDim must be a positive integer <= 256/],
  ])('keyDim and valueDim that flashAttention cannot run are rejected by the constructor: %j', (args, message) => {
    expect(() => new FlashMultiHeadAttention(args)).toThrow(ERROR(message));
  });

  const MISMATCH = /the last dimension of 'queryShape' and 'valueShape' must be equal, but are 8, 6/;

  test('a symbolic apply that fails leaves the layer unbuilt, and a later correct call works', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const [query, badValue, value] = [tf.input({ shape: [5, 8] }), tf.input({ shape: [7, 6] }), tf.input({ shape: [7, 8] })];
    expect(() => layer.apply(query, { value: badValue })).toThrow(ERROR(MISMATCH));
    expect(layer.built).toBe(false);
    expect(layer.weights).toHaveLength(0);
    const output = layer.apply(query, { value }) as tf.SymbolicTensor;
    expect(output.shape).toEqual([null, 5, 8]);
    expect(layer.getWeights().map(w => w.shape[0])).toEqual([8, 2, 8, 2, 8, 2, 2, 8]);
  });

  test('the same mismatch is an error eagerly too, before building', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    expect(() => layer.apply(randomTensor([2, 5, 8], 2), { value: randomTensor([2, 7, 6], 3) })).toThrow(ERROR(MISMATCH));
    expect(() => layer.call(randomTensor([2, 5, 8], 2), { value: randomTensor([2, 7, 6], 3) })).toThrow(ERROR(MISMATCH));
    expect(layer.built).toBe(false);
    // Now built for 6 features.
    const output = layer.apply(randomTensor([2, 5, 6], 4), { value: randomTensor([2, 7, 6], 5) }) as tf.Tensor;
    expect(output.shape).toEqual([2, 5, 6]);
  });

  test('a build that fails in an initializer leaves no weights behind', () => {
    // A tfjs initializer whose second draw (the query bias) fails.
    const failsOnce = tf.initializers.glorotUniform({});
    const draw = failsOnce.apply.bind(failsOnce);
    let calls = 0;
    failsOnce.apply = (shape, dtype) => {
      if (++calls === 2) throw new Error('initializer failed');
      return draw(shape, dtype);
    };
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, kernelInitializer: failsOnce, biasInitializer: failsOnce });
    const x = randomTensor([1, 3, 8], 6);
    expect(() => layer.apply(x, { value: x })).toThrow('initializer failed');
    expect(layer.built).toBe(false);
    expect(layer.weights).toHaveLength(0);
    expect((layer.apply(x, { value: x }) as tf.Tensor).shape).toEqual([1, 3, 8]);
    expect(layer.weights).toHaveLength(8);
  });

  test('call() on a built layer checks its inputs as apply does', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const x = randomTensor([2, 5, 8], 8);
    layer.call(x, { value: x });
    expect(() => layer.call(x, { value: [[1, 2]] } as unknown as { value: tf.Tensor }))
        .toThrow(ERROR(/value must be a Tensor, but got object/));
    expect(() => layer.call(x, { value: randomTensor([2, 5, 6], 9) })).toThrow(ERROR(/value has 6 features but the layer was built for 8/));
  });

  test('call() on a layer never applied builds it, with weights named in the layer\'s scope (as apply does)', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const x = randomTensor([2, 5, 8], 7);
    const output = layer.call(x, { value: x }) as tf.Tensor;
    expect(output.shape).toEqual([2, 5, 8]);
    expect(layer.weights.map(w => w.originalName)).toEqual(
        ['query', 'key', 'value', 'attentionOutput'].flatMap(p => [`${layer.name}/${p}/kernel`, `${layer.name}/${p}/bias`]));
    expect(relativeError(output.dataSync(), (layer.apply(x, { value: x }) as tf.Tensor).dataSync())).toBe(0);
  });
});

describe.each(LAYER_BACKENDS)('on $backend', ({ backend, available }) => {
  const run = available ? test : test.skip;
  useLayerBackend({ backend, available });

  describe('returnAttentionScores: [output, scores] as in Keras', () => {
    run('eagerly: the output of a plain call and the scores of callAndReturnAttentionScores', async () => {
      const query = randomTensor([2, 5, 8], 11);
      const value = randomTensor([2, 7, 8], 12);
      const attentionMask = randomMaskWithoutEmptyRows(2, 5, 7, 13);
      const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES });
      const result = layer.apply(query, { value, attentionMask, useCausalMask: true, returnAttentionScores: true }) as tf.Tensor[];
      expect(Array.isArray(result)).toBe(true);
      const [output, scores] = result;
      const plain = layer.apply(query, { value, attentionMask, useCausalMask: true }) as tf.Tensor;
      const [, expectedScores] = layer.callAndReturnAttentionScores(query, { value, attentionMask, useCausalMask: true });
      expect(scores.shape).toEqual([2, 2, 5, 7]);
      expect(relativeError(await read(output), await read(plain))).toBe(0);
      expect(relativeError(await read(scores), await read(expectedScores))).toBe(0);
      // Probabilities: rows sum to 1, nothing kept above the (top-left) diagonal or where masked.
      const p = await read(scores), m = await read(attentionMask);
      for (let row = 0; row < 2 * 2 * 5; row++) {
        const [b, i] = [Math.floor(row / 10), row % 5];
        let sum = 0;
        for (let j = 0; j < 7; j++) {
          const pij = p[row * 7 + j];
          sum += pij;
          if (j > i || m[(b * 5 + i) * 7 + j] === 0) expect(pij).toBe(0);
        }
        expect(sum).toBeCloseTo(1, 5);
      }
    });

    run('in a functional model: two outputs, equal to the eager call, through save and load', async () => {
      const input = tf.input({ shape: [6, 8] });
      const layer = flashMultiHeadAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES });
      const outputs = layer.apply(input, { value: input, returnAttentionScores: true }) as tf.SymbolicTensor[];
      expect(outputs.map(o => o.shape)).toEqual([[null, 6, 8], [null, 2, 6, 6]]);
      const model = tf.model({ inputs: input, outputs });
      const x = randomTensor([3, 6, 8], 14);
      const [output, scores] = model.predict(x) as tf.Tensor[];
      const [eagerOutput, eagerScores] = layer.apply(x, { value: x, returnAttentionScores: true }) as tf.Tensor[];
      expect(relativeError(await read(output), await read(eagerOutput))).toBe(0);
      expect(relativeError(await read(scores), await read(eagerScores))).toBe(0);

      let saved: tf.io.ModelArtifacts | undefined;
      await model.save(tf.io.withSaveHandler(async (artifacts) => {
        saved = artifacts;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }));
      const loaded = await tf.loadLayersModel(tf.io.fromMemory(saved!));
      const [loadedOutput, loadedScores] = loaded.predict(x) as tf.Tensor[];
      expect(relativeError(await read(loadedOutput), await read(output))).toBe(0);
      expect(relativeError(await read(loadedScores), await read(scores))).toBe(0);
    });
  });

  describe('attentionAxes: the rank-3 layer on the inputs rearranged by hand', () => {
    /** A rank-3 layer with the same weights: the oracle. */
    function pair(args: Partial<FlashMultiHeadAttentionArgs>, x: tf.Tensor) {
      const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES, ...args });
      layer.call(x, { value: x });
      const flat = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, outputShape: args.outputShape });
      const x3 = randomTensor([1, 2, x.shape[x.rank - 1]], 0);
      flat.call(x3, { value: x3 });
      flat.setWeights(layer.getWeights());
      return { layer, flat };
    }

    run('one attention axis next to the features ([batch, X, T, F], axes [2]), with a causal mask', async () => {
      const x = randomTensor([2, 3, 5, 8], 21);
      const { layer, flat } = pair({ attentionAxes: [2] }, x);
      const actual = layer.call(x, { value: x, useCausalMask: true }) as tf.Tensor;
      const x3 = x.reshape([6, 5, 8]);
      const expected = (flat.call(x3, { value: x3, useCausalMask: true }) as tf.Tensor).reshape([2, 3, 5, 8]);
      expect(relativeError(await read(actual), await read(expected))).toBeLessThan(1e-6);
    });

    run('one attention axis away from the features ([batch, T, X, F], axes [1]), with a per-head mask', async () => {
      const x = randomTensor([2, 5, 3, 8], 22);
      const { layer, flat } = pair({ attentionAxes: [1], outputShape: [2, 3] }, x);
      // Keras's layout: [batch, X, heads, T, S].
      const mask = tf.reshape(randomMaskWithoutEmptyRows(2 * 3 * 2, 5, 5, 23), [2, 3, 2, 5, 5]);
      const actual = layer.call(x, { value: x, attentionMask: mask }) as tf.Tensor;
      const x3 = x.transpose([0, 2, 1, 3]).reshape([6, 5, 8]);
      const flatOutput = flat.call(x3, { value: x3, attentionMask: mask.reshape([6, 2, 5, 5]) }) as tf.Tensor;
      const expected = flatOutput.reshape([2, 3, 5, 2, 3]).transpose([0, 2, 1, 3, 4]);
      expect(actual.shape).toEqual([2, 5, 3, 2, 3]);
      expect(relativeError(await read(actual), await read(expected))).toBeLessThan(1e-6);
    });

    run('several axes attend as one flattened sequence (the default on rank-4 inputs), scores in Keras\'s layout', async () => {
      const query = randomTensor([2, 3, 4, 8], 24);
      const value = randomTensor([2, 2, 5, 8], 25);
      const { layer, flat } = pair({}, query);
      const [actual, scores] = layer.call(query, { value, returnAttentionScores: true }) as tf.Tensor[];
      const [q3, v3] = [query.reshape([2, 12, 8]), value.reshape([2, 10, 8])];
      const [flatOutput, flatScores] = flat.call(q3, { value: v3, returnAttentionScores: true }) as tf.Tensor[];
      expect(scores.shape).toEqual([2, 2, 3, 4, 2, 5]);
      expect(relativeError(await read(actual), await read(flatOutput.reshape([2, 3, 4, 8])))).toBeLessThan(1e-6);
      expect(relativeError(await read(scores), await read(flatScores))).toBeLessThan(1e-6);
    });
  });
});

describe('Keras masks carried by inputs', () => {
  test('cross-attention where only the query carries one: padded query rows attend to nothing, the others to every key', () => {
    const tokens = tf.tensor2d([[3, 1, 4, 0, 0], [2, 6, 5, 3, 5]], undefined, 'int32');
    const query = tf.layers.embedding({ inputDim: 10, outputDim: 8, maskZero: true }).apply(tokens) as tf.Tensor;
    const value = randomTensor([2, 7, 8], 31);
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES });
    const masked = (layer.apply(query, { value }) as tf.Tensor).arraySync() as number[][][];
    const unmasked = (layer.apply(tf.clone(query), { value }) as tf.Tensor).arraySync() as number[][][];
    const outputBias = Array.from(layer.getWeights()[7].dataSync());
    const padded = tokens.arraySync() as number[][];
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 5; t++) {
        expect(relativeError(masked[b][t], padded[b][t] === 0 ? outputBias : unmasked[b][t])).toBeLessThan(1e-6);
      }
    }
  });
});

describe('attentionAxes that cannot work are clear errors', () => {
  test.each([
    ['an axis of rank-3 inputs other than the sequence', { attentionAxes: [2] }, [2, 5, 8], false,
      /attentionAxes \[2\] must name distinct axes between the batch axis and the features of rank-3 inputs \(1 or -2\)/],
    ['useCausalMask over several axes', {}, [2, 3, 4, 8], true,
      /useCausalMask needs a single attention axis, but attention runs over axes \[1,2\]/],
    ['windowSize over several axes', { windowSize: [2, 0] }, [2, 3, 4, 8], false, /windowSize needs a single attention axis/],
  ])('%s', (_, args, shape, useCausalMask, message) => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, ...args } as FlashMultiHeadAttentionArgs);
    const x = tf.zeros(shape);
    expect(() => layer.apply(x, { value: x, useCausalMask })).toThrow(ERROR(message));
    expect(layer.built).toBe(false);
  });

  test('options that need one axis are rejected by the constructor when attentionAxes names several', () => {
    expect(() => new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, attentionAxes: [1, 2], alibi: true }))
        .toThrow(ERROR(/alibi needs a single attention axis, but attention runs over axes \[1,2\]/));
  });
});
