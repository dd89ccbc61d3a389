/**
 * What the WebGPU passes bind and dispatch. The op hands every kernel one-element placeholders for the ALiBi
 * slopes, the mask and the sequence ranges when those options are off. A pass that bound them
 * would upload each on every call, and tfjs uploads into a pooled buffer by ending the compute
 * pass for a copy (kernels/webgpu/program.ts, optionalInputNames). So: with the options off, a
 * forward (one-pass or split-KV decode) and a backward upload nothing but what the caller made;
 * with them on, the slopes, the mask and the lengths are uploaded (the spy sees uploads at all).
 * And logSumExp is computed only where it can be used (returnLogSumExp, or a gradient being
 * taken): otherwise a one-pass forward is one program (out written directly, no unpack copies)
 * and a split-KV decode two (no logSumExp combine), with the same output.
 */
import * as tf from '@tensorflow/tfjs';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flashAttention } from '../src/index';
import { decodeCalls } from '../kernels/webgpu/flash_decode_webgpu';
import { destroyWebGPU, gpuTest, HAS_GPU, useWebGPU, withProgramsRun } from './helpers/webgpu_env';

interface TensorData { shape: number[]; dtype: string; values: unknown; resource: unknown }

/** Runs f and returns the shapes and dtypes of the tensors uploaded from the CPU meanwhile. */
function uploadsDuring(f: () => void): string[] {
  const backend = tf.backend() as unknown as WebGPUBackend & { uploadToGPU(id: object): void; tensorMap: { get(id: object): TensorData } };
  const original = backend.uploadToGPU;
  const seen: string[] = [];
  backend.uploadToGPU = function (this: typeof backend, dataId: object) {
    const d = this.tensorMap.get(dataId);
    if (d.resource == null && d.values != null) seen.push(`${d.dtype}[${d.shape.join(',')}]`);
    return original.call(this, dataId);
  };
  try {
    f();
  } finally {
    backend.uploadToGPU = original;
  }
  return seen;
}

/** The families (shaderKeyOf's first part) of the WebGPU programs f dispatched, in order. */
async function programsDuring(f: () => void): Promise<string[]> {
  const { programs } = await withProgramsRun(f);
  return programs.map(key => key.split('_')[0]);
}

/** A random tensor already uploaded, so using it uploads nothing. */
function onGpu(shape: number[], seed: number): tf.Tensor {
  const t = tf.randomNormal(shape, 0, 1, 'float32', seed);
  (tf.backend() as unknown as { uploadToGPU(id: object): void }).uploadToGPU(t.dataId);
  return t;
}

if (HAS_GPU) {
  beforeAll(async () => { await useWebGPU(); });
  afterAll(() => destroyWebGPU());
}

describe('WebGPU passes bind the optional inputs only where their option is on', () => {
  gpuTest('forward (one-pass and split-KV decode) and backward with no option upload nothing', () => {
    const q = onGpu([1, 8, 2, 8], 1), k = onGpu([1, 8, 2, 8], 2), v = onGpu([1, 8, 2, 8], 3);
    const q1 = onGpu([1, 1, 2, 8], 4), kLong = onGpu([1, 512, 2, 8], 5), vLong = onGpu([1, 512, 2, 8], 6);
    const dy = onGpu([1, 8, 2, 8], 7);
    const before = tf.memory().numTensors;
    const decodesBefore = decodeCalls();
    const uploads = uploadsDuring(() => tf.tidy(() => {
      flashAttention(q, k, v, { causal: true });
      flashAttention(q1, kLong, vLong);
      tf.grads((a, b, c) => flashAttention(a, b, c, { causal: true }) as tf.Tensor)([q, k, v], dy);
    }));
    expect(decodeCalls()).toBe(decodesBefore + 1);   // the split-KV path ran
    expect(uploads).toEqual([]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([q, k, v, q1, kLong, vLong, dy]);
  });

  gpuTest('with ALiBi, a mask and lengths those inputs are uploaded (the spy sees uploads)', () => {
    const q = onGpu([2, 8, 2, 8], 1), k = onGpu([2, 8, 2, 8], 2), v = onGpu([2, 8, 2, 8], 3);
    const uploads = uploadsDuring(() => tf.tidy(() => {
      const mask = tf.ones([2, 1, 8, 8], 'bool');
      flashAttention(q, k, v, { alibiSlopes: [0.5, 0.25], mask, seqLensK: [8, 5] });
    }));
    expect(uploads).toEqual(expect.arrayContaining(['float32[2]', 'bool[2,1,8,8]']));
    expect(uploads.some(u => u.startsWith('int32'))).toBe(true);   // the lengths' ranges
    tf.dispose([q, k, v]);
  });
});

describe('WebGPU kernels compute logSumExp only where it can be used', () => {
  const ONE_PASS = ['flashAttentionForward'];
  const SPLIT_KV = ['flashDecodeSplit', 'flashDecodeCombine'];
  const cases = [
    { name: 'one-pass forward', shapes: [[1, 8, 2, 8], [1, 8, 2, 8]], lean: ONE_PASS, full: [...ONE_PASS, 'flashAttentionUnpack', 'flashAttentionUnpack'] },
    { name: 'split-KV decode', shapes: [[1, 1, 4, 8], [1, 512, 2, 8]], lean: SPLIT_KV, full: [...SPLIT_KV, 'flashDecodeCombine'] },
  ];
  for (const c of cases) {
    gpuTest(`${c.name}: without returnLogSumExp or a gradient, fewer programs and the same output`, async () => {
      const [qShape, kShape] = c.shapes;
      const q = onGpu(qShape, 1), k = onGpu(kShape, 2), v = onGpu(kShape, 3);
      const before = tf.memory().numTensors;
      let lean!: tf.Tensor, full!: { output: tf.Tensor, logSumExp: tf.Tensor };
      const leanPrograms = await programsDuring(() => { lean = flashAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D, { causal: true }); });
      const fullPrograms = await programsDuring(() => {
        full = flashAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D, { causal: true, returnLogSumExp: true });
      });
      expect(leanPrograms).toEqual(c.lean);
      expect(fullPrograms).toEqual(c.full);
      expect(Array.from(await lean.data())).toEqual(Array.from(await full.output.data()));
      const lse = await full.logSumExp.data();
      expect(lse.length).toBe(qShape[0] * qShape[2] * qShape[1]);
      expect(Array.from(lse).every(Number.isFinite)).toBe(true);
      tf.dispose([lean, full.output, full.logSumExp]);
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose([q, k, v]);
    });

    gpuTest(`${c.name}: under a gradient logSumExp is computed (the backward reads it)`, async () => {
      const [qShape, kShape] = c.shapes;
      const q = onGpu(qShape, 1), k = onGpu(kShape, 2), v = onGpu(kShape, 3);
      const programs = await programsDuring(() => tf.tidy(() => {
        tf.grads((a, b, e) => flashAttention(a as tf.Tensor4D, b as tf.Tensor4D, e as tf.Tensor4D, { causal: true }))([q, k, v]);
      }));
      expect(programs.slice(0, c.full.length)).toEqual(c.full);
      tf.dispose([q, k, v]);
    });
  }
});
