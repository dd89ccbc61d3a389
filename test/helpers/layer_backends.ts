/**
 * The backends the layer suites run on: cpu always, webgpu where the adapter and our WebGPU
 * kernel exist (without it flashAttention would take the fallback, whose reads Node cannot do).
 */
import * as tf from '@tensorflow/tfjs';
import { FlashAttention } from '../../src/contract';
import { destroyWebGPU, HAS_GPU } from './webgpu_env';

export interface LayerBackend { backend: 'cpu' | 'webgpu'; available: boolean }

export const LAYER_BACKENDS: LayerBackend[] = [
  { backend: 'cpu', available: true },
  { backend: 'webgpu', available: HAS_GPU && tf.getKernel(FlashAttention, 'webgpu') != null },
];

/** Switches the enclosing describe block to `backend` and back to cpu afterwards. */
export function useLayerBackend({ backend, available }: LayerBackend): void {
  beforeAll(async () => {
    if (!available) return;
    // tfjs-webgpu runs tiny ops on the CPU and reads their inputs back synchronously (no OffscreenCanvas in Node).
    if (backend === 'webgpu') tf.env().set('WEBGPU_CPU_FORWARD', false);
    expect(await tf.setBackend(backend)).toBe(true);
  });
  afterAll(async () => {
    if (backend === 'webgpu') destroyWebGPU();
    await tf.setBackend('cpu');
  });
}
