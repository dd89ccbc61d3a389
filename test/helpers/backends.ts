/**
 * Backends for the spec tests. 'cpu' runs our CPU kernel. 'cpu-no-flash' is the stock cpu backend
 * with every kernel except ours: exactly the situation of webgl, wasm or tensorflow without the
 * CUDA op, so flashAttention takes the blockwise fallback there.
 */
import * as tf from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { FlashAttention, FlashAttentionGrad } from '../../src/contract';

export const FALLBACK_BACKEND = 'cpu-no-flash';

export function registerFallbackBackend(): void {
  if (tf.findBackendFactory(FALLBACK_BACKEND)) return;
  tf.registerBackend(FALLBACK_BACKEND, () => new MathBackendCPU());
  for (const kernel of tf.getKernelsForBackend('cpu')) {
    if (kernel.kernelName === FlashAttention || kernel.kernelName === FlashAttentionGrad) continue;
    tf.registerKernel({ ...kernel, backendName: FALLBACK_BACKEND });
  }
}

/** The two paths every CPU-side spec runs on: the kernel and the fallback. */
export const CPU_PATHS = [
  { name: 'cpu kernel', backend: 'cpu' },
  { name: 'blockwise fallback', backend: FALLBACK_BACKEND },
] as const;
