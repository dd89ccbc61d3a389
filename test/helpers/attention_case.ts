/**
 * Shared machinery for the spec tests: the cases of cases.ts, plus running flashAttention (forward
 * and tf.grads) on the current backend.
 */
import * as tf from '@tensorflow/tfjs';
import { flashAttention } from '../../src/index';
import { CaseData, caseOptions, CaseSpec, OpResult } from './cases';

export * from './cases';

/** Runs flashAttention forward and its gradient (of sum(out * dy)) on the current backend. */
export async function runOp(c: CaseSpec, d: CaseData, withGrads = true): Promise<OpResult> {
  const { batch: B, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  const q = tf.tensor4d(d.q, [B, seqQ, heads, headDim]);
  const k = tf.tensor4d(d.k, [B, seqK, kvHeads, headDim]);
  const v = tf.tensor4d(d.v, [B, seqK, kvHeads, headDimV]);
  const dy = tf.tensor4d(d.dy, [B, seqQ, heads, headDimV]);
  const opts = caseOptions(c, d);
  try {
    const { output, logSumExp } = flashAttention(q, k, v, { ...opts, returnLogSumExp: true });
    const res: OpResult = {
      out: await output.data() as Float32Array, lse: await logSumExp.data() as Float32Array,
      dq: new Float32Array(0), dk: new Float32Array(0), dv: new Float32Array(0),
    };
    tf.dispose([output, logSumExp]);
    if (withGrads) {
      const g = tf.grads((a: tf.Tensor, b: tf.Tensor, e: tf.Tensor) =>
        tf.sum(tf.mul(flashAttention(a as tf.Tensor4D, b as tf.Tensor4D, e as tf.Tensor4D, { ...opts, returnLogSumExp: false }), dy)));
      const [gq, gk, gv] = g([q, k, v]);
      [res.dq, res.dk, res.dv] = await Promise.all([gq.data(), gk.data(), gv.data()]) as Float32Array[];
      tf.dispose([gq, gk, gv]);
    }
    return res;
  } finally {
    tf.dispose([q, k, v, dy, opts.mask as tf.Tensor]);
  }
}
