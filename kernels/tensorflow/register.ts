/**
 * Registers the `tensorflow` (tfjs-node-gpu) kernels, only when the CUDA op library loads into
 * this process's TensorFlow: with no kernel registered, flashAttention on that backend takes
 * the blockwise fallback (src/flash_attention.ts). When tfjs-node-gpu is present but the library
 * cannot be used (not built, CPU-only TensorFlow, no GPU), that is said once, with the reason.
 *
 * Nothing happens at import: the op calls ensureTensorflowKernels() the first time it runs on the
 * `tensorflow` backend. Importing the package therefore never touches the file system or native
 * code, which bundles for Node (webpack, esbuild) and other backends' users rely on.
 */
import { getKernel, registerKernel } from '@tensorflow/tfjs-core';
import { FlashAttention } from '../../src/contract';
import { flashAttentionGradTensorflowConfig, flashAttentionTensorflowConfig } from './flash_attention_tensorflow';
import { loadOpLibrary, OpLibraryStatus } from './op_library';

let status: OpLibraryStatus | undefined;
let warned = false;

/**
 * Loads the op library and registers the kernels if that has not happened yet (tried again on
 * each call until it loads). The op does this by itself on the `tensorflow` backend; call it to
 * find out early whether the CUDA kernels are in use.
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

/** The op's hook: the first call on the `tensorflow` backend tries once; later calls are free. */
export function ensureTensorflowKernels(): void {
  if (status === undefined) registerTensorflowKernels();
}
