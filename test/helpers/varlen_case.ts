/**
 * Runs variable-length cases (varlen_cases.ts) through the op: flashAttention with seqLensQ/K for
 * a padded batch, flashAttentionVarlen with cuSeqLensQ/K for packed sequences; forward,
 * logsumexp and tf.grads on the current backend.
 */
import * as tf from '@tensorflow/tfjs';
import { flashAttention, flashAttentionVarlen } from '../../src/index';
import type { SeqLens } from '../../src/contract';
import { CaseData, caseOptions, OpResult } from './cases';
import { cuSeqLens, sequenceRows, VarlenSpec } from './varlen_cases';

export * from './varlen_cases';

/** Every form the lengths may take; a case's seed picks one, so all are exercised. */
export type LensForm = 'array' | 'int32array' | 'tensor';
const FORMS: LensForm[] = ['array', 'int32array', 'tensor'];

function lensAs(values: number[], form: LensForm): SeqLens {
  if (form === 'array') return values;
  if (form === 'int32array') return Int32Array.from(values);
  return tf.tensor1d(values, 'int32');
}

/**
 * seqLensQ and seqLensK; a side whose lengths are all full is left out when the other is not
 * (the op then takes that side as full length), so that path is exercised too.
 */
function paddedLens(c: VarlenSpec, form: LensForm): Record<string, SeqLens> {
  const fullQ = c.lensQ.every(l => l === c.dims.seqQ), fullK = c.lensK.every(l => l === c.dims.seqK);
  const lens: Record<string, SeqLens> = {};
  if (!fullQ || fullK) lens.seqLensQ = lensAs(c.lensQ, form);
  if (!fullK || fullQ) lens.seqLensK = lensAs(c.lensK, form);
  return lens;
}

/** Runs the case's forward (and the gradients of sum(out * dy)) on the current backend. */
export async function runVarlenOp(c: VarlenSpec, d: CaseData, withGrads = true,
                                  form: LensForm = FORMS[c.seed % FORMS.length]): Promise<OpResult> {
  const { batch, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  const { rowsQ, rowsK } = sequenceRows(c);
  const lead = c.layout === 'padded' ? [batch, seqQ] : [rowsQ];
  const leadK = c.layout === 'padded' ? [batch, seqK] : [rowsK];
  const q = tf.tensor(d.q, [...lead, heads, headDim]);
  const k = tf.tensor(d.k, [...leadK, kvHeads, headDim]);
  const v = tf.tensor(d.v, [...leadK, kvHeads, headDimV]);
  const dy = tf.tensor(d.dy, [...lead, heads, headDimV]);
  const base = caseOptions(c, d);
  const lens = c.layout === 'padded' ? paddedLens(c, form)
    : { cuSeqLensQ: lensAs(cuSeqLens(c.lensQ), form), cuSeqLensK: lensAs(cuSeqLens(c.lensK), form) };
  const run = (a: tf.Tensor, b: tf.Tensor, e: tf.Tensor, returnLogSumExp: boolean) => {
    if (c.layout === 'padded') {
      return flashAttention(a, b, e, { ...base, ...lens, returnLogSumExp } as Parameters<typeof flashAttention>[3]);
    }
    const { mask: _none, ...options } = base;
    return flashAttentionVarlen(a, b, e, { ...options, ...lens, returnLogSumExp } as Parameters<typeof flashAttentionVarlen>[3]);
  };
  try {
    const { output, logSumExp } = run(q, k, v, true) as { output: tf.Tensor; logSumExp: tf.Tensor };
    const res: OpResult = {
      out: await output.data() as Float32Array, lse: await logSumExp.data() as Float32Array,
      dq: new Float32Array(0), dk: new Float32Array(0), dv: new Float32Array(0),
    };
    tf.dispose([output, logSumExp]);
    if (withGrads) {
      const g = tf.grads((a: tf.Tensor, b: tf.Tensor, e: tf.Tensor) => tf.sum(tf.mul(run(a, b, e, false) as tf.Tensor, dy)));
      const [gq, gk, gv] = g([q, k, v]);
      [res.dq, res.dk, res.dv] = await Promise.all([gq.data(), gk.data(), gv.data()]) as Float32Array[];
      tf.dispose([gq, gk, gv]);
    }
    return res;
  } finally {
    tf.dispose([q, k, v, dy, base.mask as tf.Tensor,
                ...(Object.values(lens) as unknown[]).filter((x): x is tf.Tensor => x instanceof tf.Tensor)]);
  }
}
