/**
 * tfjs-flash-attention: importing this module registers the kernels (cpu, webgpu, and tensorflow
 * when the CUDA op library is built) and the recompute gradient, and adds tf.flashAttention to the
 * CommonJS `tf` objects it can reach.
 */
import './register_all';
import { flashAttention } from './flash_attention';
import { attachToTf } from './attach';

export { flashAttention } from './flash_attention';
export type { FlashAttentionResult } from './flash_attention';
export type { FlashAttentionOptions } from './contract';
export { MAX_HEAD_DIM, FlashAttention, FlashAttentionGrad } from './contract';
/** Call after importing @tensorflow/tfjs-node-gpu when that import comes after this package's. */
export { registerTensorflowKernels } from '../kernels/tensorflow/register';
/** Opt-in: replaces the 'webgpu' backend with one whose device has `subgroups` (see its doc). */
export { useWebGPUWithSubgroups } from '../kernels/webgpu/subgroups';
export type {
  FlashAttentionAttrs, FlashAttentionInputs, FlashAttentionGradInputs, Precision,
} from './contract';
export { FlashMultiHeadAttention, flashMultiHeadAttention } from './layer';
export type { FlashMultiHeadAttentionArgs, FlashMultiHeadAttentionCallArgs } from './layer';

attachToTf({ flashAttention });
