/**
 * Kernels of backend `tensorflow` (tfjs-node-gpu): they run the TensorFlow ops `FlashAttention`
 * and `FlashAttentionGrad` that the CUDA op library registers (native/tf_op/), through
 * tfjs-node's executeMultipleOutputs, inputs in the contract's order (q, k, v, alibiSlopes,
 * mask, seqRangesQ, seqRangesK; the gradient adds out, logSumExp, dy). The op attributes are the
 * tfjs kernels' attributes, plus dropoutThreshold: TensorFlow's float attribute is float32, and
 * floor(rate * 2^32) of the float32 rate can differ from the contract's float64 one, so the exact
 * threshold travels too.
 */
import { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, FlashAttention, FlashAttentionAttrs, FlashAttentionGrad,
  FlashAttentionGradInputs, FlashAttentionInputs,
} from '../../src/contract';

/** tfjs-node's TFEOpAttr: the attr type codes come from its binding (TF_ATTR_*). */
export interface TensorflowOpAttr {
  name: string;
  type: number;
  value: number | boolean | string;
}

/** The part of tfjs-node's NodeJSKernelBackend these kernels use. */
export interface TensorflowBackendLike {
  binding: { TF_ATTR_INT: number; TF_ATTR_FLOAT: number; TF_ATTR_BOOL: number; TF_ATTR_STRING: number };
  executeMultipleOutputs(name: string, opAttrs: TensorflowOpAttr[], inputs: TensorInfo[],
                         numOutputs: number): TensorInfo[];
}

export function tensorflowOpAttrs(problem: AttentionProblem, binding: TensorflowBackendLike['binding']): TensorflowOpAttr[] {
  const { TF_ATTR_INT: INT, TF_ATTR_FLOAT: FLOAT, TF_ATTR_BOOL: BOOL, TF_ATTR_STRING: STRING } = binding;
  const { attrs } = problem;
  return [
    { name: 'scale', type: FLOAT, value: attrs.scale },
    { name: 'softcap', type: FLOAT, value: attrs.softcap },
    { name: 'windowLeft', type: INT, value: attrs.windowLeft },
    { name: 'windowRight', type: INT, value: attrs.windowRight },
    { name: 'hasAlibi', type: BOOL, value: attrs.hasAlibi },
    { name: 'hasMask', type: BOOL, value: attrs.hasMask },
    { name: 'dropoutRate', type: FLOAT, value: attrs.dropoutRate },
    // As a signed 32-bit value: the op keeps the low 32 bits, whatever width the binding uses.
    { name: 'seed', type: INT, value: attrs.seed | 0 },
    { name: 'precision', type: STRING, value: attrs.precision },
    { name: 'dropoutThreshold', type: INT, value: problem.flags.dropout ? problem.dropoutThreshold : -1 },
    { name: 'seqLayout', type: STRING, value: attrs.seqLayout },
    { name: 'maxSeqLenQ', type: INT, value: attrs.maxSeqLenQ },
    { name: 'maxSeqLenK', type: INT, value: attrs.maxSeqLenK },
    { name: 'numSeqs', type: INT, value: attrs.numSeqs },
  ];
}

const flashAttentionTensorflow: KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK } = inputs as unknown as FlashAttentionInputs;
  const b = backend as unknown as TensorflowBackendLike;
  const problem = attentionProblem(q.shape, k.shape, v.shape, attrs as unknown as FlashAttentionAttrs);
  return b.executeMultipleOutputs(FlashAttention, tensorflowOpAttrs(problem, b.binding),
                                  [q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK], 2);
};

const flashAttentionGradTensorflow: KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, out, logSumExp, dy } =
    inputs as unknown as FlashAttentionGradInputs;
  const b = backend as unknown as TensorflowBackendLike;
  const problem = attentionProblem(q.shape, k.shape, v.shape, attrs as unknown as FlashAttentionAttrs);
  return b.executeMultipleOutputs(FlashAttentionGrad, tensorflowOpAttrs(problem, b.binding),
                                  [q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, out, logSumExp, dy], 3);
};

export const flashAttentionTensorflowConfig: KernelConfig = {
  kernelName: FlashAttention, backendName: 'tensorflow', kernelFunc: flashAttentionTensorflow,
};
export const flashAttentionGradTensorflowConfig: KernelConfig = {
  kernelName: FlashAttentionGrad, backendName: 'tensorflow', kernelFunc: flashAttentionGradTensorflow,
};
