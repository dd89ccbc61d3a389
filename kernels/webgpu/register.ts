// Registers the WebGPU kernels. Nothing here imports @tensorflow/tfjs-backend-webgpu at runtime:
// registering a kernel for a backend that is never created is harmless.
import { registerKernel } from '@tensorflow/tfjs-core';
import { flashAttentionWebGPUConfig } from './flash_attention_webgpu';
import { flashAttentionGradWebGPUConfig } from './flash_attention_grad_webgpu';

registerKernel(flashAttentionWebGPUConfig);
registerKernel(flashAttentionGradWebGPUConfig);
