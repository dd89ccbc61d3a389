import { registerKernel } from '@tensorflow/tfjs-core';
import { flashAttentionCPUConfig } from './flash_attention_cpu';
import { flashAttentionGradCPUConfig } from './flash_attention_grad_cpu';

registerKernel(flashAttentionCPUConfig);
registerKernel(flashAttentionGradCPUConfig);
