/**
 * FlashMultiHeadAttention's cached call (layer.call(query, {value, cache, cacheUpdateIndex})) on
 * the opt-in subgroups device: a cache of DECODE_MIN_SEQ_K positions makes every step, prefill and
 * single tokens, a split-KV call whose split pass is the subgroup pass (decode_subgroup_wgsl.ts),
 * with no hook set (the automatic choice). Step by step it equals the uncached causal call on the
 * whole sequence (the one-pass kernel, too short for the split-KV kernel) on the same device and on
 * the cpu backend, for MHA, GQA and MQA (with ALiBi, softcap, a window), and leaks no tensor.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention, FlashMultiHeadAttentionArgs } from '../src/index';
import { decodeCalls, DECODE_MIN_SEQ_K } from '../kernels/webgpu/flash_decode_webgpu';
import { isSubgroupSplit, subgroupPipelines, useSubgroupsDevice } from './helpers/decode_subgroups';
import { callStepByStep, NONZERO_BIASES, read } from './helpers/layer_cache';
import { randomTensor, relativeError } from './helpers/tfjs_mha';
import { gpuBytesInUse, gpuTest, HAS_GPU, takeUncapturedErrors, withProgramsRun } from './helpers/webgpu_env';

const COMPILE_HEAVY_MS = 600000;

interface Case {
  name: string;
  args: Partial<FlashMultiHeadAttentionArgs>;
  /** Query lengths of the successive calls: a prefill, then single tokens. */
  chunks: number[];
  /** An attentionMask: whether query position i of sequence b may see key position j. */
  mask?: (b: number, i: number, j: number) => boolean;
}

// keyDim a multiple of 4: K and V are vec4 loads, so the subgroup pass applies.
const CASES: Case[] = [
  { name: 'MHA, 2 heads, keyDim 8', args: { numHeads: 2, keyDim: 8 }, chunks: [3, 1, 1, 1, 1] },
  { name: 'GQA 4/2, keyDim 8, ALiBi, softcap', args: { numHeads: 4, numKeyValueHeads: 2, keyDim: 8, alibi: true, softcap: 2 },
    chunks: [4, 1, 1, 1] },
  { name: 'MQA 4/1, keyDim 16, sliding window [2, -1]', args: { numHeads: 4, numKeyValueHeads: 1, keyDim: 16, windowSize: [2, -1] },
    chunks: [1, 1, 1, 1, 1, 1] },
];

/**
 * An attentionMask [batch, seqQ, maxLength], as the README documents for a cached call (the layer
 * once checked it against the value's length and threw "attentionMask must be [batch, seqQ, seqK]
 * = [2, 2, 2] ... but got shape [2, 2, 256]").
 */
const MASKED: Case = {
  name: 'GQA 4/2, keyDim 8, an attentionMask hiding keys 1 and 3 of sequence 0, 2 of sequence 1 from query 4 on',
  args: { numHeads: 4, numKeyValueHeads: 2, keyDim: 8 }, chunks: [2, 1, 1, 1, 1],
  mask: (b, i, j) => !(b === 0 && (j === 1 || j === 3)) && !(b === 1 && i >= 4 && j === 2),
};

describe('the cached call on the subgroups device runs the subgroup split pass and equals the uncached call', () => {
  if (HAS_GPU) {
    // tfjs-webgpu would run tiny ops on the CPU, reading their inputs back synchronously (no OffscreenCanvas in Node).
    beforeAll(() => { tf.env().set('WEBGPU_CPU_FORWARD', false); });
  }
  useSubgroupsDevice();

  async function expectStepwiseEqual(c: Case) {
    const tensorsAtStart = tf.memory().numTensors, bytesAtStart = gpuBytesInUse();
    const batch = 2, features = 16, maxLength = DECODE_MIN_SEQ_K;
    const total = c.chunks.reduce((a, b) => a + b, 0);
    const x = randomTensor([batch, total, features], 7);
    const args = { causal: true, biasInitializer: NONZERO_BIASES, ...c.args } as FlashMultiHeadAttentionArgs;
    const layer = new FlashMultiHeadAttention(args);
    const decodedBefore = decodeCalls();
    // The mask of every query position over the cache's positions (the uncached call takes its first total keys).
    const mask = c.mask ? tf.tensor(Array.from({ length: batch * total * maxLength }, (_, e) =>
        c.mask!(Math.floor(e / (total * maxLength)), Math.floor(e / maxLength) % total, e % maxLength) ? 1 : 0),
                                    [batch, total, maxLength], 'bool') : null;
    const maskOf = (i: number, n: number, keys: number) => tf.slice(mask!, [0, i, 0], [batch, n, keys]);
    const uncachedMask = mask ? maskOf(0, total, total) : null;
    const full = layer.apply(x, { value: x, ...(uncachedMask ? { attentionMask: uncachedMask } : {}) }) as tf.Tensor;
    expect(decodeCalls()).toBe(decodedBefore);   // the whole sequence: too few keys for the split-KV kernel

    const pipelinesBefore = subgroupPipelines().length;
    const { outputs, cache, newTensors } = await callStepByStep(layer, x, c.chunks, maxLength,
      (l, step, cacheIn, index) =>
        tf.tidy(() => l.call(step, {
          value: step, cache: cacheIn, cacheUpdateIndex: index,
          ...(mask ? { attentionMask: maskOf(index, step.shape[1]!, maxLength) } : {}),
        } as never) as tf.Tensor[]),
      async run => {
        const before = decodeCalls();
        const { result, programs } = await withProgramsRun(async () => run());
        // One split-KV call per step, its split pass the subgroup pass.
        expect([decodeCalls() - before, programs.filter(isSubgroupSplit).length]).toEqual([1, 1]);
        return result;
      });
    expect(newTensors).toBe(outputs.length);
    expect(takeUncapturedErrors()).toEqual([]);
    expect(subgroupPipelines().length).toBeGreaterThan(pipelinesBefore);
    expect(subgroupPipelines().some(k => k.includes(`_headDim=${layer.keyDim}_`))).toBe(true);

    const joined = tf.concat(outputs, 1);
    const stepwise = await read(joined);
    expect(stepwise.every(Number.isFinite)).toBe(true);   // nothing read from the poisoned rest of the cache
    expect(relativeError(stepwise, await read(full))).toBeLessThan(1e-5);

    // The uncached call of the same layer (same weights, same input) on the cpu backend.
    const weights = await Promise.all(layer.getWeights().map(read));
    const shapes = layer.getWeights().map(w => w.shape);
    const xValues = await read(x);
    const maskValues = uncachedMask ? await uncachedMask.data() : null;
    tf.dispose([x, full, cache, joined, ...outputs, ...(mask ? [mask, uncachedMask!] : [])]);
    await tf.setBackend('cpu');
    try {
      const onCpu = new FlashMultiHeadAttention(args);
      const xCpu = tf.tensor(xValues, [batch, total, features]);
      tf.dispose(onCpu.apply(xCpu, { value: xCpu }) as tf.Tensor);   // builds it
      const values = weights.map((w, i) => tf.tensor(w, shapes[i]));
      onCpu.setWeights(values);
      const maskCpu = maskValues ? tf.tensor(maskValues, [batch, total, total], 'bool') : null;
      const cpuFull = onCpu.apply(xCpu, { value: xCpu, ...(maskCpu ? { attentionMask: maskCpu } : {}) }) as tf.Tensor;
      expect(relativeError(stepwise, await read(cpuFull))).toBeLessThan(1e-5);
      onCpu.dispose();
      tf.dispose([xCpu, cpuFull, ...values, ...(maskCpu ? [maskCpu] : [])]);
    } finally {
      expect(await tf.setBackend('webgpu')).toBe(true);
    }
    layer.dispose();
    expect(tf.memory().numTensors).toBe(tensorsAtStart);
    expect(gpuBytesInUse()).toBe(bytesAtStart);
  }

  gpuTest.each(CASES)('$name', expectStepwiseEqual, COMPILE_HEAVY_MS);
  gpuTest(MASKED.name, () => expectStepwiseEqual(MASKED), COMPILE_HEAVY_MS);
});
