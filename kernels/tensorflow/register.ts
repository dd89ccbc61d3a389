/**
 * Registers the `tensorflow` (tfjs-node-gpu) kernels, only when the CUDA op library loads into
 * this process's TensorFlow: with no kernel registered, flashAttention on that backend takes
 * the blockwise fallback (src/flash_attention.ts). When tfjs-node-gpu is present but the library
 * cannot be used (not built, CPU-only TensorFlow, no GPU), that is said once, with the reason.
 */
import { getKernel, registerKernel } from '@tensorflow/tfjs-core';
import { FlashAttention } from '../../src/contract';
import { flashAttentionGradTensorflowConfig, flashAttentionTensorflowConfig } from './flash_attention_tensorflow';
import { loadOpLibrary, OpLibraryStatus } from './op_library';

let status: OpLibraryStatus | undefined;
let warned = false;

/**
 * Loads the op library and registers the kernels if that has not happened yet; call it after
 * importing @tensorflow/tfjs-node-gpu when that import comes after this package's.
 */
export function registerTensorflowKernels(): OpLibraryStatus {
  if (status?.loaded) return status;
  status = loadOpLibrary();
  if (status.loaded) {
    if (getKernel(FlashAttention, 'tensorflow') == null) {
      registerKernel(flashAttentionTensorflowConfig);
      registerKernel(flashAttentionGradTensorflowConfig);
    }
  } else if (status.relevant && !warned) {
    warned = true;
    console.warn(`tfjs-flash-attention: CUDA kernels unavailable on the tensorflow backend, using the blockwise fallback: ${status.reason}`);
  }
  return status;
}

/** The outcome of the last attempt (undefined before the first). */
export function tensorflowKernelStatus(): OpLibraryStatus | undefined {
  return status;
}

registerTensorflowKernels();
