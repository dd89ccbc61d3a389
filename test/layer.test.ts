/**
 * FlashMultiHeadAttention: the options tfjs has no counterpart of (against a float64 reference of
 * the layer), attention scores, dropout, masks from earlier layers, memory, functional models,
 * training, serialization and argument errors. Parity with tfjs-layers' own MultiHeadAttention
 * is in layer_parity.test.ts.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention, FlashMultiHeadAttentionArgs, flashMultiHeadAttention } from '../src/index';
import { AttentionOptions } from '../src/layer';
import { alibiSlopesFor, plainAttention } from '../src/layer_plain_attention';
import { FlashAttention, FlashAttentionAttrs } from '../src/contract';
import { referenceForward } from './helpers/reference';
import '@tensorflow/tfjs-backend-webgpu';
import {
  LayerReferenceCase, randomMaskWithoutEmptyRows, randomTensor, referenceLayerForward, relativeError,
} from './helpers/tfjs_mha';

/** The same layer with attention computed the plain way: the gradient oracle (tfjs autodiff). */
class PlainMultiHeadAttention extends FlashMultiHeadAttention {
  static override className = 'PlainMultiHeadAttentionForTests';
  protected override computeAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, options: AttentionOptions) {
    return plainAttention(q, k, v, options).output;
  }
}

const NONZERO_BIASES = tf.initializers.randomNormal({ mean: 0, stddev: 0.5 });

/** A layer built on the inputs (so its weights exist), with non-zero biases. */
function builtLayer(args: FlashMultiHeadAttentionArgs, query: tf.Tensor, value: tf.Tensor, key?: tf.Tensor,
                    Layer = FlashMultiHeadAttention) {
  const layer = new Layer({ biasInitializer: NONZERO_BIASES, ...args });
  layer.apply(query, { value, key });
  return layer;
}

/** bool [1, 1, T, S], true where key j <= query i: Keras's top-left aligned causal mask. */
function topLeftCausal(seqQ: number, seqK: number): tf.Tensor {
  return tf.tidy(() => tf.reshape(tf.linalg.bandPart(tf.ones([seqQ, seqK], 'bool'), -1, 0), [1, 1, seqQ, seqK]));
}

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('options beyond Keras match the float64 reference of the layer', () => {
  interface OptionCase {
    name: string; seqQ: number; seqK: number;
    args: Partial<FlashMultiHeadAttentionArgs>;
    call?: { useCausalMask?: boolean; attentionMask?: boolean };
    reference: (c: { seqQ: number; seqK: number; attentionMask?: tf.Tensor }) =>
        Pick<LayerReferenceCase, 'attrs' | 'alibiSlopes' | 'mask'>;
  }
  const CASES: OptionCase[] = [
    { name: 'grouped-query heads (numKeyValueHeads)', seqQ: 6, seqK: 6, args: { numHeads: 4, numKeyValueHeads: 2 },
      reference: () => ({}) },
    { name: 'multi-query (one key/value head)', seqQ: 5, seqK: 8, args: { numHeads: 3, numKeyValueHeads: 1 },
      reference: () => ({}) },
    { name: 'windowSize', seqQ: 9, seqK: 9, args: { windowSize: [2, 1] },
      reference: () => ({ attrs: { windowLeft: 2, windowRight: 1 } }) },
    { name: 'alibi: true (standard slopes)', seqQ: 7, seqK: 7, args: { numHeads: 4, alibi: true },
      reference: () => ({ alibiSlopes: [1 / 4, 1 / 16, 1 / 64, 1 / 256] }) },
    { name: 'alibi slopes given', seqQ: 6, seqK: 9, args: { alibi: [0.3, 0.7] },
      reference: () => ({ alibiSlopes: [0.3, 0.7] }) },
    { name: 'softcap', seqQ: 7, seqK: 7, args: { softcap: 1.5 }, reference: () => ({ attrs: { softcap: 1.5 } }) },
    { name: 'causal as the layer default, T > S (top-left aligned)', seqQ: 8, seqK: 5, args: { causal: true },
      reference: ({ seqQ, seqK }) => ({ mask: topLeftCausal(seqQ, seqK) }) },
    { name: 'causal overridden by useCausalMask: false', seqQ: 6, seqK: 6, args: { causal: true },
      call: { useCausalMask: false }, reference: () => ({}) },
    { name: 'everything at once: GQA, causal, window, ALiBi, softcap, attentionMask', seqQ: 8, seqK: 8,
      args: { numHeads: 4, numKeyValueHeads: 2, windowSize: [3, -1], alibi: true, softcap: 2 },
      call: { useCausalMask: true, attentionMask: true },
      reference: ({ seqQ, seqK, attentionMask }) => ({
        attrs: { windowLeft: 3, softcap: 2 }, alibiSlopes: alibiSlopesFor(4),
        mask: tf.logicalAnd(topLeftCausal(seqQ, seqK), tf.expandDims(attentionMask!, 1)),
      }) },
  ];

  test.each(CASES)('$name', (c) => {
    const query = randomTensor([2, c.seqQ, 8], 1);
    const value = randomTensor([2, c.seqK, 8], 2);
    const args = { numHeads: 2, keyDim: 4, valueDim: 3, ...c.args } as FlashMultiHeadAttentionArgs;
    const layer = builtLayer(args, query, value);
    const attentionMask = c.call?.attentionMask ? randomMaskWithoutEmptyRows(2, c.seqQ, c.seqK, 3) : undefined;
    const actual = layer.apply(query, { value, attentionMask, useCausalMask: c.call?.useCausalMask }) as tf.Tensor;
    const expected = referenceLayerForward({
      numHeads: args.numHeads, numKeyValueHeads: args.numKeyValueHeads ?? args.numHeads,
      keyDim: args.keyDim, valueDim: args.valueDim!, weights: layer.getWeights(), useBias: true,
      query, value, ...c.reference({ seqQ: c.seqQ, seqK: c.seqK, attentionMask }),
    });
    expect(relativeError(actual.dataSync(), expected)).toBeLessThan(1e-5);
  });

  test('alibiSlopesFor follows the paper for a power of two and otherwise', () => {
    expect(alibiSlopesFor(4)).toEqual([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]);
    // 6 heads: the 4-head slopes, then every other one of the 8-head slopes.
    expect(alibiSlopesFor(6)).toEqual([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]);
  });
});

describe('the plain attention path follows the flashAttention contract', () => {
  test('forward matches the float64 reference (GQA, window, ALiBi, softcap, mask with an empty row)', () => {
    const dims = { batch: 2, seqQ: 6, seqK: 7, heads: 4, kvHeads: 2, headDim: 5, headDimV: 3 };
    const q = randomTensor([2, 6, 4, 5], 11) as tf.Tensor4D;
    const k = randomTensor([2, 7, 2, 5], 12) as tf.Tensor4D;
    const v = randomTensor([2, 7, 2, 3], 13) as tf.Tensor4D;
    const maskValues = Array.from({ length: 2 * 6 * 7 }, (_, i) => (i % 3 !== 0 && i >= 7 ? 1 : 0));
    const mask = tf.tensor(maskValues, [2, 1, 6, 7], 'bool');   // row 0 of batch 0 keeps nothing
    const slopes = [0.1, 0.2, 0.3, 0.4];
    const { output } = plainAttention(q, k, v, { mask, alibiSlopes: slopes, softcap: 3, windowSize: [4, 2] });
    const attrs: FlashAttentionAttrs = {
      scale: 1 / Math.sqrt(5), softcap: 3, windowLeft: 4, windowRight: 2, hasAlibi: true, hasMask: true,
      dropoutRate: 0, seed: 0, precision: 'highest', seqLayout: 'dense', maxSeqLenQ: 6, maxSeqLenK: 7, numSeqs: 2,
    };
    const { out } = referenceForward(dims, { q: q.dataSync(), k: k.dataSync(), v: v.dataSync(), alibiSlopes: slopes,
                                             mask: { values: maskValues, shape: [2, 1, 6, 7] } }, attrs);
    expect(relativeError(output.dataSync(), out)).toBeLessThan(1e-5);
  });
});

describe('callAndReturnAttentionScores', () => {
  test('returns call\'s output and [batch, heads, T, S] probabilities: rows sum to 1, zero where masked', () => {
    const query = randomTensor([2, 5, 8], 21);
    const layer = builtLayer({ numHeads: 4, numKeyValueHeads: 2, keyDim: 4, alibi: true }, query, query);
    const [output, scores] = layer.callAndReturnAttentionScores(query, { value: query, useCausalMask: true });
    expect(relativeError(output.dataSync(), (layer.apply(query, { value: query, useCausalMask: true }) as tf.Tensor).dataSync()))
        .toBeLessThan(1e-6);
    expect(scores.shape).toEqual([2, 4, 5, 5]);
    const p = scores.arraySync() as number[][][][];
    for (const head of p.flat()) {
      head.forEach((row, i) => {
        expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
        row.forEach((pij, j) => { if (j > i) expect(pij).toBe(0); });
      });
    }
  });

  test('builds the layer when called first', () => {
    const query = randomTensor([1, 3, 4], 22);
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 2 });
    const [output, scores] = layer.callAndReturnAttentionScores(query, { value: query });
    expect(output.shape).toEqual([1, 3, 4]);
    expect(scores.shape).toEqual([1, 2, 3, 3]);
    expect(layer.getWeights()).toHaveLength(8);
  });
});

describe('dropout (on the attention probabilities, training only)', () => {
  let query: tf.Tensor, dropped: FlashMultiHeadAttention, plain: FlashMultiHeadAttention;
  beforeAll(() => {
    query = randomTensor([1, 16, 8], 31);
    dropped = builtLayer({ numHeads: 2, keyDim: 4, dropout: 0.5 }, query, query);
    plain = builtLayer({ numHeads: 2, keyDim: 4 }, query, query);
    plain.setWeights(dropped.getWeights());
  });
  const run = (layer: FlashMultiHeadAttention, training?: boolean) =>
      (layer.apply(query, { value: query, training }) as tf.Tensor).dataSync();

  test('is off in inference', () => {
    expect(relativeError(run(dropped), run(plain))).toBe(0);
    expect(relativeError(run(dropped, false), run(plain))).toBe(0);
  });

  test('is on in training, with a fresh mask each call', () => {
    const first = run(dropped, true), second = run(dropped, true);
    expect(relativeError(first, run(plain))).toBeGreaterThan(1e-3);
    expect(relativeError(first, second)).toBeGreaterThan(1e-3);
  });
});

describe('masks carried by inputs from earlier layers (Embedding maskZero)', () => {
  // Sequence 0 is padded at the end: its real tokens must attend only to each other, exactly as
  // if the padding were not there.
  const tokens = () => tf.tensor2d([[3, 1, 4, 1, 5, 0, 0], [2, 6, 5, 3, 5, 8, 9]], undefined, 'int32');
  const unpadded = () => tf.tensor2d([[3, 1, 4, 1, 5]], undefined, 'int32');

  function modelAndLayer() {
    const input = tf.input({ shape: [null], dtype: 'int32' });
    const embedded = tf.layers.embedding({ inputDim: 10, outputDim: 8, maskZero: true }).apply(input) as tf.SymbolicTensor;
    const attention = flashMultiHeadAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES });
    const output = attention.apply(embedded, { value: embedded }) as tf.SymbolicTensor;
    return tf.model({ inputs: input, outputs: output });
  }

  test('padded keys are ignored (functional model, graph execution)', () => {
    const model = modelAndLayer();
    const padded = (model.predict(tokens()) as tf.Tensor).slice([0, 0, 0], [1, 5, 8]);
    const alone = model.predict(unpadded()) as tf.Tensor;
    expect(relativeError(padded.dataSync(), alone.dataSync())).toBeLessThan(1e-5);
  });

  test('padded keys are ignored (eager call on the Embedding output)', () => {
    const model = modelAndLayer();
    const [embedding, attention] = [model.layers[1], model.layers[2]];
    const eager = (x: tf.Tensor) => {
      const embedded = embedding.apply(x) as tf.Tensor;
      return attention.apply(embedded, { value: embedded }) as tf.Tensor;
    };
    const padded = eager(tokens()).slice([0, 0, 0], [1, 5, 8]);
    expect(relativeError(padded.dataSync(), eager(unpadded()).dataSync())).toBeLessThan(1e-5);
  });
});

// Many small heads, so a score matrix dwarfs everything that grows only linearly in T.
const MEMORY_HEADS = 16;
const scoresBytes = (seq: number) => MEMORY_HEADS * seq * seq * 4;

/** Largest tensor (in bytes) any kernel outputs during a causal training step, and peak new memory. */
async function trainingStepMemory(Layer: typeof FlashMultiHeadAttention, seq: number) {
  const x = randomTensor([1, seq, 8], 41);
  const layer = builtLayer({ numHeads: MEMORY_HEADS, keyDim: 2 }, x, x, undefined, Layer);
  const bytesBefore = tf.memory().numBytes;
  const info = await tf.profile(() => tf.tidy(() => {
    tf.variableGrads(() => tf.sum(layer.apply(x, { value: x, useCausalMask: true }) as tf.Tensor) as tf.Scalar);
  }));
  const sizes = info.kernels.flatMap(k => k.outputShapes.map(s => 4 * (s as number[]).reduce((a, b) => a * b, 1)));
  return { largestOutput: Math.max(...sizes), peak: info.peakBytes - bytesBefore };
}

describe('never materialises [batch, heads, T, S] on the kernel backends', () => {
  test('cpu: a causal training step stays far below one score matrix', async () => {
    const { largestOutput, peak } = await trainingStepMemory(FlashMultiHeadAttention, 256);
    expect(largestOutput).toBeLessThan(scoresBytes(256) / 16);
    expect(peak).toBeLessThan(scoresBytes(256) / 2);
  });

  // Smaller, because tfjs-cpu's broadcasting ops make the plain path slow.
  test('(the check can fail: the plain path does materialise the scores)', async () => {
    const { largestOutput, peak } = await trainingStepMemory(PlainMultiHeadAttention, 64);
    expect(largestOutput).toBeGreaterThanOrEqual(scoresBytes(64));
    expect(peak).toBeGreaterThan(scoresBytes(64));
  });
});

describe('on WebGPU (Dawn; SwiftShader in CI)', () => {
  // test/global-setup.js sets WEBGPU_ADAPTER when Dawn finds an adapter (CI requires one). Until
  // the WebGPU kernel is registered, flashAttention takes the blockwise fallback there, whose
  // rank-5 broadcasts tfjs-webgpu reads back synchronously: impossible in Node (no OffscreenCanvas).
  const gpuTest = process.env.WEBGPU_ADAPTER && tf.getKernel(FlashAttention, 'webgpu') ? test : test.skip;
  const useWebGPU = async () => {
    // tfjs-webgpu runs tiny ops on the CPU and reads their inputs back synchronously, which
    // needs OffscreenCanvas: browsers have it, Node does not.
    tf.env().set('WEBGPU_CPU_FORWARD', false);
    expect(await tf.setBackend('webgpu')).toBe(true);
  };
  afterAll(async () => {
    await tf.setBackend('cpu');
  });

  gpuTest('causal self-attention: output and weight gradients match the cpu backend', async () => {
    await tf.setBackend('cpu');
    const x = randomTensor([2, 24, 8], 91);
    const dy = randomTensor([2, 24, 8], 92);
    const layer = builtLayer({ numHeads: 2, keyDim: 4 }, x, x);
    const vars = layer.trainableWeights.map(w => (w as unknown as { val: tf.Variable }).val);
    // Reads are asynchronous: WebGPU in Node cannot read synchronously (no OffscreenCanvas).
    const run = async () => {
      const [output, ...grads] = tf.tidy(() => {
        const { grads: byName } = tf.variableGrads(
            () => tf.sum(tf.mul(layer.apply(x, { value: x, useCausalMask: true }) as tf.Tensor, dy)) as tf.Scalar, vars);
        return [layer.apply(x, { value: x, useCausalMask: true }) as tf.Tensor, ...vars.map(v => byName[v.name])];
      });
      const values = await Promise.all([output, ...grads].map(t => t.data() as Promise<Float32Array>));
      tf.dispose([output, ...grads]);
      return { output: values[0], grads: values.slice(1) };
    };
    const onCpu = await run();
    await useWebGPU();
    const onGpu = await run();
    expect(relativeError(onGpu.output, onCpu.output)).toBeLessThan(1e-5);
    const scale = Math.max(...onCpu.grads.map(g => Math.max(...Array.from(g, Math.abs))));
    onGpu.grads.forEach((g, i) => {
      expect(Math.max(...Array.from(g, (v, j) => Math.abs(v - onCpu.grads[i][j]))) / scale).toBeLessThan(1e-4);
    });
  });

  gpuTest('a causal training step stays far below one score matrix', async () => {
    await useWebGPU();
    const { largestOutput, peak } = await trainingStepMemory(FlashMultiHeadAttention, 128);
    expect(largestOutput).toBeLessThan(scoresBytes(128) / 16);
    expect(peak).toBeLessThan(scoresBytes(128) / 2);
  });
});

describe('gradients through flashAttention', () => {
  test.each([
    { name: 'self-attention, causal', args: {}, seqK: 9, useCausalMask: true },
    { name: 'cross-attention, GQA, ALiBi, softcap, window', seqK: 12,
      args: { numHeads: 4, numKeyValueHeads: 2, alibi: true, softcap: 2, windowSize: [4, 4] as [number, number] } },
  ])('$name: weight gradients match the plain path within 1e-4', ({ args, seqK, useCausalMask }) => {
    const query = randomTensor([2, 9, 8], 51);
    const value = randomTensor([2, seqK, 8], 52);
    const full = { numHeads: 2, keyDim: 4, ...args };
    const flash = builtLayer(full, query, value);
    const plain = builtLayer(full, query, value, undefined, PlainMultiHeadAttention);
    plain.setWeights(flash.getWeights());
    const dy = randomTensor([2, 9, 8], 53);
    const gradsOf = (layer: FlashMultiHeadAttention) => {
      const vars = layer.trainableWeights.map(w => (w as unknown as { val: tf.Variable }).val);
      const { grads } = tf.variableGrads(
          () => tf.sum(tf.mul(layer.apply(query, { value, useCausalMask }) as tf.Tensor, dy)) as tf.Scalar, vars);
      return vars.map(v => grads[v.name].dataSync());
    };
    const [fromFlash, fromPlain] = [gradsOf(flash), gradsOf(plain)];
    expect(fromFlash).toHaveLength(8);
    // Relative to the largest gradient: the key bias's true gradient is 0 (softmax ignores a
    // score shift shared by a whole row), so its own scale is rounding noise.
    const scale = Math.max(...fromPlain.map(g => Math.max(...Array.from(g, Math.abs))));
    fromFlash.forEach((g, i) => {
      const diff = Math.max(...Array.from(g, (x, j) => Math.abs(x - fromPlain[i][j])));
      expect(diff / scale).toBeLessThan(1e-4);
    });
  });
});

describe('functional models', () => {
  const [seq, features] = [6, 8];
  /** input -> FlashMultiHeadAttention (causal self-attention) -> Dense. */
  function causalModel() {
    const input = tf.input({ shape: [seq, features] });
    const attention = flashMultiHeadAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES });
    const attended = attention.apply(input, { value: input, useCausalMask: true }) as tf.SymbolicTensor;
    const output = tf.layers.dense({ units: 3 }).apply(attended) as tf.SymbolicTensor;
    return { model: tf.model({ inputs: input, outputs: output }), attention };
  }
  let x: tf.Tensor;
  beforeAll(() => { x = randomTensor([4, seq, features], 61); });

  test('symbolic apply: output shape, and predict equals the eager layers', () => {
    const { model, attention } = causalModel();
    expect(model.outputs[0].shape).toEqual([null, seq, 3]);
    const eager = model.layers[2].apply(attention.apply(x, { value: x, useCausalMask: true })) as tf.Tensor;
    expect(relativeError((model.predict(x) as tf.Tensor).dataSync(), eager.dataSync())).toBeLessThan(1e-6);
  });

  test('a symbolic useCausalMask becomes the layer\'s causal setting; a conflicting one is an error', () => {
    const { attention } = causalModel();
    expect(attention.causal).toBe(true);
    const other = tf.input({ shape: [seq, features] });
    expect(() => attention.apply(other, { value: other, useCausalMask: false }))
        .toThrow(/Error in flashMultiHeadAttention: useCausalMask=false differs from an earlier symbolic call/);
  });

  test('attentionMask as a model input', () => {
    const input = tf.input({ shape: [seq, features] });
    const maskInput = tf.input({ shape: [seq, seq] });
    const attention = flashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const output = attention.apply(input, { value: input, attentionMask: maskInput }) as tf.SymbolicTensor;
    const model = tf.model({ inputs: [input, maskInput], outputs: output });
    const mask = randomMaskWithoutEmptyRows(4, seq, seq, 62);
    const fromModel = model.predict([x, tf.cast(mask, 'float32')]) as tf.Tensor;
    const eager = attention.apply(x, { value: x, attentionMask: mask }) as tf.Tensor;
    expect(relativeError(fromModel.dataSync(), eager.dataSync())).toBeLessThan(1e-6);
  });

  test('model.fit: the loss falls and every attention weight changes', async () => {
    const { model, attention } = causalModel();
    model.compile({ optimizer: tf.train.adam(0.02), loss: 'meanSquaredError' });
    const before = attention.getWeights().map(w => w.dataSync().slice());
    const history = await model.fit(x, randomTensor([4, seq, 3], 63), { epochs: 8, batchSize: 4, verbose: 0 });
    const losses = history.history.loss as number[];
    expect(losses[losses.length - 1]).toBeLessThan(0.8 * losses[0]);
    attention.getWeights().forEach((w, i) => expect(relativeError(w.dataSync(), before[i])).toBeGreaterThan(1e-4));
  });

  test('model.fit with dropout in training', async () => {
    const input = tf.input({ shape: [seq, features] });
    const attention = flashMultiHeadAttention({ numHeads: 2, keyDim: 4, dropout: 0.3 });
    const model = tf.model({ inputs: input, outputs: attention.apply(input, { value: input }) as tf.SymbolicTensor });
    model.compile({ optimizer: 'sgd', loss: 'meanSquaredError' });
    const history = await model.fit(x, randomTensor([4, seq, features], 64), { epochs: 2, verbose: 0 });
    expect((history.history.loss as number[]).every(Number.isFinite)).toBe(true);
    // Inference stays deterministic.
    expect(relativeError((model.predict(x) as tf.Tensor).dataSync(), (model.predict(x) as tf.Tensor).dataSync())).toBe(0);
  });
});

describe('serialization', () => {
  const ALL_ARGS: FlashMultiHeadAttentionArgs = {
    numHeads: 4, keyDim: 6, valueDim: 5, dropout: 0.1, useBias: false, outputShape: [7],
    kernelInitializer: 'heNormal', biasInitializer: 'ones', kernelRegularizer: 'l1l2',
    biasRegularizer: tf.regularizers.l2({ l2: 0.5 }), kernelConstraint: 'maxNorm', biasConstraint: 'nonNeg',
    numKeyValueHeads: 2, causal: true, windowSize: [16, 0], alibi: [0.5, 0.25, 0.125, 0.0625], softcap: 30,
    name: 'attention_under_test',
  };

  test('getConfig / fromConfig round trip', () => {
    const layer = new FlashMultiHeadAttention(ALL_ARGS);
    const config = layer.getConfig();
    const copy = tf.serialization.SerializationMap.getMap().classNameMap['FlashMultiHeadAttention'];
    const rebuilt = FlashMultiHeadAttention.fromConfig(
        copy[0] as unknown as tf.serialization.SerializableConstructor<FlashMultiHeadAttention>, config);
    expect(rebuilt).toBeInstanceOf(FlashMultiHeadAttention);
    expect(rebuilt.getConfig()).toEqual(config);
    expect(config).toMatchObject({
      numHeads: 4, keyDim: 6, valueDim: 5, dropout: 0.1, useBias: false, outputShape: [7],
      numKeyValueHeads: 2, causal: true, windowSize: [16, 0], alibi: [0.5, 0.25, 0.125, 0.0625], softcap: 30,
      kernelInitializer: { className: 'VarianceScaling' }, biasInitializer: { className: 'Ones' },
      biasRegularizer: { className: 'L1L2', config: { l2: 0.5 } }, biasConstraint: { className: 'NonNeg' },
      name: 'attention_under_test',
    });
  });

  test('model.save / tf.loadLayersModel round trip keeps weights, settings and outputs', async () => {
    const input = tf.input({ shape: [5, 8] });
    const maskInput = tf.input({ shape: [5, 5] });
    const attention = flashMultiHeadAttention({ numHeads: 2, keyDim: 4, numKeyValueHeads: 1, alibi: true,
                                                biasInitializer: NONZERO_BIASES });
    const output = attention.apply(input, { value: input, attentionMask: maskInput, useCausalMask: true }) as tf.SymbolicTensor;
    const model = tf.model({ inputs: [input, maskInput], outputs: output });
    let saved: tf.io.ModelArtifacts | undefined;
    await model.save(tf.io.withSaveHandler(async (artifacts) => {
      saved = artifacts;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }));
    const loaded = await tf.loadLayersModel(tf.io.fromMemory(saved!));

    const loadedAttention = loaded.layers.find(l => l instanceof FlashMultiHeadAttention) as FlashMultiHeadAttention;
    expect(loadedAttention.causal).toBe(true);
    expect(loadedAttention.numKeyValueHeads).toBe(1);
    const x = randomTensor([3, 5, 8], 71);
    const mask = tf.cast(randomMaskWithoutEmptyRows(3, 5, 5, 72), 'float32');
    const [a, b] = [model.predict([x, mask]) as tf.Tensor, loaded.predict([x, mask]) as tf.Tensor];
    expect(relativeError(b.dataSync(), a.dataSync())).toBe(0);
  });

  test('tf.layers.flashMultiHeadAttention is attached for CommonJS users', () => {
    const factory = (tf.layers as unknown as Record<string, (a: FlashMultiHeadAttentionArgs) => unknown>).flashMultiHeadAttention;
    expect(factory({ numHeads: 1, keyDim: 2 })).toBeInstanceOf(FlashMultiHeadAttention);
  });
});

describe('bad arguments', () => {
  test.each([
    [{ numHeads: 0, keyDim: 4 }, /numHeads must be a positive integer/],
    [{ numHeads: 2, keyDim: 2.5 }, /keyDim must be a positive integer/],
    [{ numHeads: 2, keyDim: 4, valueDim: -1 }, /valueDim must be a positive integer/],
    [{ numHeads: 2, keyDim: 4, dropout: 1 }, /dropout must be in \[0, 1\)/],
    [{ numHeads: 2, keyDim: 4, outputShape: [3, 0] }, /outputShape must be a positive integer/],
    [{ numHeads: 2, keyDim: 4, attentionAxes: [0] }, /attentionAxes must be axes between the batch axis \(0\) and the features \(-1\)/],
    [{ numHeads: 4, keyDim: 4, numKeyValueHeads: 3 }, /numKeyValueHeads must be a positive integer dividing numHeads \(4\)/],
    [{ numHeads: 2, keyDim: 4, windowSize: [2] }, /windowSize must be \[left, right\]/],
    [{ numHeads: 2, keyDim: 4, alibi: [0.5] }, /alibi must be a boolean or 2 finite slopes/],
    [{ numHeads: 2, keyDim: 4, softcap: -1 }, /softcap must be a finite number >= 0/],
    [{ numHeads: 2, keyDim: 4, causal: 'yes' }, /causal must be a boolean/],
  ])('constructor %j', (args, message) => {
    expect(() => new FlashMultiHeadAttention(args as unknown as FlashMultiHeadAttentionArgs))
        .toThrow(new RegExp(`^Error in flashMultiHeadAttention: .*${message.source}`));
  });

  test('the default attentionAxes is accepted', () => {
    expect(() => new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, attentionAxes: [1] })).not.toThrow();
  });

  describe('calls', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    let query: tf.Tensor;
    beforeAll(() => {
      query = randomTensor([2, 5, 8], 81);
      layer.apply(query, { value: query });
    });

    test.each([
      ['no value', () => layer.apply(query), /must pass the `value` argument/],
      ['rank-2 query', () => layer.apply(tf.zeros([5, 8]), { value: query }), /query must be a rank-3/],
      ['wrong features', () => layer.apply(tf.zeros([2, 5, 6]), { value: query }), /query has 6 features but the layer was built for 8/],
      ['batch mismatch', () => layer.apply(query, { value: tf.zeros([3, 5, 8]) }), /same batch size/],
      ['key/value length mismatch', () => layer.apply(query, { value: query, key: tf.zeros([2, 4, 8]) }),
        /all dimensions of 'value' and 'key', except the last one, must be equal \(the same batch and sequence length\)/],
      ['attentionMask shape', () => layer.apply(query, { value: query, attentionMask: tf.ones([2, 5, 4], 'bool') }),
        /attentionMask must be \[batch, seqQ, seqK\] = \[2, 5, 5\]/],
      ['concrete mask in a functional model', () => {
        const input = tf.input({ shape: [5, 8] });
        return new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 })
            .apply(input, { value: input, attentionMask: tf.ones([2, 5, 5], 'bool') });
      }, /must be SymbolicTensors too/],
    ])('%s', (_, fn, message) => {
      expect(fn).toThrow(new RegExp(`^Error in flashMultiHeadAttention: .*${message.source}`));
    });
  });

  describe('computeOutputShape', () => {
    const layer = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4 });
    test('query shape, or its leading dims with outputShape', () => {
      expect(layer.computeOutputShape([[null, 5, 8], [null, 7, 8]])).toEqual([null, 5, 8]);
      expect(new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, outputShape: [3, 2] })
          .computeOutputShape([[null, 5, 8], [null, 7, 8], [null, 7, 6]])).toEqual([null, 5, 3, 2]);
    });
    test('query and value must share their last dimension', () => {
      expect(() => layer.computeOutputShape([[null, 5, 8], [null, 7, 6]]))
          .toThrow(/^Error in flashMultiHeadAttention: the last dimension of 'queryShape' and 'valueShape' must be equal, but are 8, 6/);
    });
    test('value and key must share all but their last dimension', () => {
      expect(() => layer.computeOutputShape([[null, 5, 8], [null, 7, 8], [null, 6, 8]]))
          .toThrow(/^Error in flashMultiHeadAttention: all dimensions of 'value' and 'key', except the last one, must be equal/);
    });
  });
});
