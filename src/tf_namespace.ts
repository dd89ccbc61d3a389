/**
 * Types for the names this package adds to CommonJS `tf` objects: `tf.flashAttention`,
 * `tf.flashAttentionVarlen` and
 * `tf.layers.flashMultiHeadAttention`. Opt in with `import 'tfjs-flash-attention/tf-namespace';`
 * (which also registers everything, as the main entry does).
 *
 * Not part of the main entry's types because ESM users cannot have these names: an ES module
 * namespace object cannot be extended, so `tf.flashAttention` is undefined there; they import the
 * names from this package.
 */
import { flashAttention as flashAttentionOp } from './flash_attention';
import { flashAttentionVarlen as flashAttentionVarlenOp } from './flash_attention_varlen';
import { flashMultiHeadAttention as flashMultiHeadAttentionFactory } from './layer';

export * from './index';

declare module '@tensorflow/tfjs-core' {
  /** tfjs-flash-attention's op (see its `flashAttention` export). */
  export const flashAttention: typeof flashAttentionOp;
  /** tfjs-flash-attention's packed variable-length op (see its `flashAttentionVarlen` export). */
  export const flashAttentionVarlen: typeof flashAttentionVarlenOp;
}

declare module '@tensorflow/tfjs-layers/dist/exports_layers' {
  /** tfjs-flash-attention's layer factory (see its `flashMultiHeadAttention` export). */
  export const flashMultiHeadAttention: typeof flashMultiHeadAttentionFactory;
}
