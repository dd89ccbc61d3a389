/**
 * What the WebGPU passes bind: the op hands every kernel one-element placeholders for the ALiBi
 * slopes, the mask and the sequence ranges when those options are off. A pass that bound them
 * would upload each on every call, and tfjs uploads into a pooled buffer by ending the compute
 * pass for a copy (kernels/webgpu/program.ts, optionalInputNames). So: with the options off, a
 * forward (one-pass or split-KV decode) and a backward upload nothing but what the caller made;
 * with them on, the slopes, the mask and the lengths are uploaded (the spy sees uploads at all).
 */
import * as tf from '@tensorflow/tfjs';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flashAttention } from '../src/index';
import { decodeCalls } from '../kernels/webgpu/flash_decode_webgpu';
import { destroyWebGPU, gpuTest, HAS_GPU, useWebGPU } from './helpers/webgpu_env';

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
