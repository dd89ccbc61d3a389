/**
 * FlashMultiHeadAttention: a drop-in for tfjs-layers' (Keras's) MultiHeadAttention whose attention
 * runs through flashAttention, so no [batch, heads, seqQ, seqK] tensor is ever built on the kernel
 * backends. Same constructor arguments, call signature, weights (order, shapes) and outputs;
 * beyond Keras it adds grouped-query attention, sliding windows, ALiBi and soft-capping.
 */
import {
  add, cast, linalg, logicalAnd, matMul, ones, reshape, serialization, SymbolicTensor as _unused,
  Tensor, Tensor4D, tidy,
} from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { Constraint, ConstraintIdentifier } from '@tensorflow/tfjs-layers/dist/constraints';
import type { LayerArgs } from '@tensorflow/tfjs-layers/dist/engine/topology';
import type { Initializer, InitializerIdentifier } from '@tensorflow/tfjs-layers/dist/initializers';
import type { Shape } from '@tensorflow/tfjs-layers/dist/keras_format/common';
import type { Regularizer, RegularizerIdentifier } from '@tensorflow/tfjs-layers/dist/regularizers';
import type { Kwargs } from '@tensorflow/tfjs-layers/dist/types';
import { attachToTf } from './attach';
import { flashAttention } from './flash_attention';
import { alibiSlopesFor, plainAttention } from './layer_plain_attention';
import { FlashAttentionOptions } from './options';
