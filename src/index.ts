/**
 * tfjs-flash-attention: importing this module registers the kernels (cpu, webgpu) and the
 * recompute gradient, and adds tf.flashAttention and tf.flashAttentionVarlen to the CommonJS `tf` objects it can reach. The
 * tensorflow (CUDA) kernels are registered by the op the first time it runs on that backend, when
 * the CUDA op library is built: importing touches neither the file system nor native code.
 */
import './register_all';
import { flashAttention } from './flash_attention';
import { flashAttentionVarlen } from './flash_attention_varlen';
import { attachToTf } from './attach';

export { flashAttention } from './flash_attention';
export type { FlashAttentionResult } from './flash_attention';
export { flashAttentionVarlen } from './flash_attention_varlen';
export type { FlashAttentionVarlenResult } from './flash_attention_varlen';
export type { FlashAttentionOptions, FlashAttentionVarlenOptions, SeqLens } from './contract';
export { MAX_HEAD_DIM, FlashAttention, FlashAttentionGrad } from './contract';
/** Optional: loads the CUDA op library now (the op does on first use) and says whether it is in use. */
export { registerTensorflowKernels } from '../kernels/tensorflow/register';
/** Opt-in: replaces the 'webgpu' backend with one whose device has `subgroups` (see its doc). */
export { useWebGPUWithSubgroups } from '../kernels/webgpu/subgroups';
export type {
  FlashAttentionAttrs, FlashAttentionInputs, FlashAttentionGradInputs, Precision,
} from './contract';
export { FlashMultiHeadAttention, flashMultiHeadAttention } from './layer';
export type { FlashMultiHeadAttentionArgs, FlashMultiHeadAttentionCallArgs } from './layer';

attachToTf({ flashAttention, flashAttentionVarlen });
