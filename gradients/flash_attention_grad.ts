/**
 * The registered gradient of `FlashAttention` (FlashAttention-2 backward): it keeps only q, k, v,
 * the output and the row log-sum-exp, and hands them to the `FlashAttentionGrad` kernel, which
 * recomputes the probabilities tile by tile. No seqQ x seqK matrix is saved or built.
 *
 * The logSumExp output is treated as a constant (as in FlashAttention, whose autograd function
 * ignores the gradient of softmax_lse); ALiBi slopes and the mask get zero gradients, and so do
 * the sequence ranges (integers). The ranges are saved with q, k, v, so the backward pass of a
 * variable-length call walks the same sequences as its forward (kernel_names.ts header).
 */
import {
  engine, GradConfig, NamedAttrMap, registerGradient, Tensor, zeros, zerosLike,
} from '@tensorflow/tfjs-core';
import { FlashAttention, FlashAttentionGrad, FlashAttentionGradInputs } from '../src/contract';

export const flashAttentionGradConfig: GradConfig = {
  kernelName: FlashAttention,
  inputsToSave: ['q', 'k', 'v', 'alibiSlopes', 'mask', 'seqRangesQ', 'seqRangesK'],
  outputsToSave: [true, true],
  gradFunc: (dys: Tensor | Tensor[], saved: Tensor[], attrs: NamedAttrMap) => {
    const dy = (dys as Tensor[])[0];
    const [q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, out, logSumExp] = saved;
    const inputs: FlashAttentionGradInputs = { q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, out, logSumExp, dy };
    // Backprop runs inside tfjs's tidy, so grads of pruned inputs are disposed, not leaked.
    const [dq, dk, dv] = engine().runKernel(FlashAttentionGrad, inputs as {}, attrs) as Tensor[];
    return {
      q: () => dq,
      k: () => dk,
      v: () => dv,
      alibiSlopes: () => zerosLike(alibiSlopes),
      mask: () => zeros(mask.shape, 'float32'),
      seqRangesQ: () => zeros(seqRangesQ.shape, 'float32'),
      seqRangesK: () => zeros(seqRangesK.shape, 'float32'),
    };
  },
};

registerGradient(flashAttentionGradConfig);
