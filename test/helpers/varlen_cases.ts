/**
 * Variable-length cases (issue 12): sequences of given lengths in a padded batch (flashAttention's
 * seqLensQ/K) or packed back to back (flashAttentionVarlen's cuSeqLensQ/K), and their float64
 * reference. Nothing here runs the op (varlen_case.ts does), so kernel tools can use it too.
 *
 * The reference is reference.ts run on each sequence alone (its q, k, v rows sliced out, and for a
 * padded batch the mask's rows and columns of that batch element), placed back at the sequence's
 * rows; rows past a sequence's length keep out 0, logsumexp -Infinity and zero gradients. Running
 * each sequence alone is what "aligned to the actual lengths" means: the reference's own
 * bottom-right offset becomes lenK - lenQ for causal, window and ALiBi alike (an explicit mask on
 * the padded shape could express the first two but not ALiBi's |i + lenK - lenQ - j|).
 */
import { CaseData, caseAttrs, caseData, CaseSpec, comboCase, randInt, rng } from './cases';
import { referenceBackward, referenceForward, RefInputs } from './reference';

export type VarlenLayout = 'padded' | 'packed';

/**
 * A case with sequence lengths. dims.batch is the number of sequences. 'padded': q is
 * [batch, seqQ, heads, headDim] and lensQ[b] <= seqQ; 'packed': q is [sum(lensQ), heads, headDim]
 * and dims.seqQ/seqK are the longest lengths (as the kernels' problem sees them).
 */
export interface VarlenSpec extends CaseSpec {
  layout: VarlenLayout;
  lensQ: number[];
  lensK: number[];
}

/** (start row, length) of every sequence's queries and keys, and the row counts of q and k. */
export interface SequenceRows {
  q: [number, number][];
  k: [number, number][];
  rowsQ: number;
  rowsK: number;
}

/** [0, l0, l0 + l1, ...]: the cumulative offsets flashAttentionVarlen takes. */
export function cuSeqLens(lens: readonly number[]): number[] {
  const cu = [0];
  for (const l of lens) cu.push(cu[cu.length - 1] + l);
  return cu;
}

export function sequenceRows(c: VarlenSpec): SequenceRows {
  const { batch, seqQ, seqK } = c.dims;
  if (c.layout === 'padded') {
    return {
      q: c.lensQ.map((l, b) => [b * seqQ, l]), k: c.lensK.map((l, b) => [b * seqK, l]),
      rowsQ: batch * seqQ, rowsK: batch * seqK,
    };
  }
  const cuQ = cuSeqLens(c.lensQ), cuK = cuSeqLens(c.lensK);
  return {
    q: c.lensQ.map((l, s) => [cuQ[s], l]), k: c.lensK.map((l, s) => [cuK[s], l]),
    rowsQ: cuQ[batch], rowsK: cuK[batch],
  };
}

/** Random data for every row of q, k, v and dy (padding rows too: their values must not matter). */
export function varlenData(c: VarlenSpec): CaseData {
  if (c.layout === 'padded') return caseData(c);
  const { rowsQ, rowsK } = sequenceRows(c);
  return caseData({ ...c, dims: { ...c.dims, batch: 1, seqQ: rowsQ, seqK: rowsK } });
}

/** The rank-4 mask's values for batch element b, cut to lenQ rows and lenK columns. */
function sequenceMask(mask: NonNullable<RefInputs['mask']>, b: number, lenQ: number, lenK: number) {
  const [mb, mh, mq, mk] = mask.shape;
  const shape = [1, mh, mq === 1 ? 1 : lenQ, mk === 1 ? 1 : lenK];
  const values = new Uint8Array(shape.reduce((x, y) => x * y, 1));
  let o = 0;
  for (let h = 0; h < mh; h++) for (let i = 0; i < shape[2]; i++) for (let j = 0; j < shape[3]; j++) {
    values[o++] = mask.values[(((mb === 1 ? 0 : b) * mh + h) * mq + i) * mk + j] ? 1 : 0;
  }
  return { values, shape };
}

/**
 * out [rows of q, heads, headDimV], lse ('padded' [batch, heads, seqQ], 'packed' [heads, totalQ]),
 * and the gradients of sum(out * dy), in float64.
 */
export function varlenReference(c: VarlenSpec, d: CaseData) {
  const { heads, kvHeads, headDim: hd, headDimV: dvDim, seqQ } = c.dims;
  const rows = sequenceRows(c);
  const attrs = caseAttrs(c, d);
  const maskShape = d.mask ? [...new Array(4 - c.maskShape!.length).fill(1), ...c.maskShape!] : [];
  const r = {
    out: new Float64Array(rows.rowsQ * heads * dvDim), lse: new Float64Array(rows.rowsQ * heads).fill(-Infinity),
    dq: new Float64Array(rows.rowsQ * heads * hd), dk: new Float64Array(rows.rowsK * kvHeads * hd),
    dv: new Float64Array(rows.rowsK * kvHeads * dvDim),
  };
  for (let b = 0; b < c.dims.batch; b++) {
    const [startQ, lenQ] = rows.q[b], [startK, lenK] = rows.k[b];
    const qRows = (x: Float32Array, width: number) => x.subarray(startQ * width, (startQ + lenQ) * width);
    const kRows = (x: Float32Array, width: number) => x.subarray(startK * width, (startK + lenK) * width);
    const dims = { batch: 1, seqQ: lenQ, seqK: lenK, heads, kvHeads, headDim: hd, headDimV: dvDim };
    const x: RefInputs = {
      q: qRows(d.q, heads * hd), k: kRows(d.k, kvHeads * hd), v: kRows(d.v, kvHeads * dvDim),
      alibiSlopes: d.slopes, sequence: b,
    };
    if (d.mask) x.mask = sequenceMask({ values: d.mask, shape: maskShape }, b, lenQ, lenK);
    const fwd = referenceForward(dims, x, attrs);
    const grads = referenceBackward(dims, x, attrs, qRows(d.dy, heads * dvDim));
    r.out.set(fwd.out, startQ * heads * dvDim);
    r.dq.set(grads.dq, startQ * heads * hd);
    r.dk.set(grads.dk, startK * kvHeads * hd);
    r.dv.set(grads.dv, startK * kvHeads * dvDim);
    for (let h = 0; h < heads; h++) for (let i = 0; i < lenQ; i++) {
      const at = c.layout === 'padded' ? (b * heads + h) * seqQ + i : h * rows.rowsQ + startQ + i;
      r.lse[at] = fwd.lse[h * lenQ + i];
    }
  }
  return r;
}

/**
 * The explicit bool mask [batch, 1, seqQ, seqK] (as 0/1) that says what a padded case's lengths
 * say, with its causal/window aligned to the lengths (lenK - lenQ): flashAttention with this mask
 * and without causal/window must give what the lengths give, ALiBi aside (a bias, not a mask).
 */
export function lengthsMask(c: VarlenSpec, d: CaseData): Uint8Array {
  if (c.layout !== 'padded' || c.alibi || c.maskShape) throw new Error('lengthsMask: padded cases without ALiBi or mask');
  const { windowLeft: wl, windowRight: wr } = caseAttrs(c, d);
  const { batch, seqQ, seqK } = c.dims;
  const m = new Uint8Array(batch * seqQ * seqK);
  for (let b = 0; b < batch; b++) for (let i = 0; i < c.lensQ[b]; i++) for (let j = 0; j < c.lensK[b]; j++) {
    const rel = j - (i + c.lensK[b] - c.lensQ[b]);
    m[(b * seqQ + i) * seqK + j] = (wl < 0 || rel >= -wl) && (wr < 0 || rel <= wr) ? 1 : 0;
  }
  return m;
}

/** A length in [0, full], drawn so that 0, 1 and full each come up often. */
function randomLength(r: () => number, full: number): number {
  switch (randInt(r, 0, 3)) {
    case 0: return 0;
    case 1: return Math.min(1, full);
    case 2: return full;
    default: return randInt(r, 0, full);
  }
}

/**
 * comboCase's shape and options with random lengths. 'packed' takes no mask: flags must not
 * include it. Packed cases have at least one query and one key row in all (q and k are non-empty).
 */
export function varlenCase(flags: ReadonlySet<string>, seed: number, layout: VarlenLayout, maxSeq = 24): VarlenSpec {
  if (layout === 'packed' && flags.has('mask')) throw new Error('packed sequences take no mask');
  const base = comboCase(flags, seed, maxSeq);
  const r = rng(seed * 104729 + 3);
  const batch = layout === 'packed' ? randInt(r, 1, 4) : base.dims.batch;
  const lensQ = Array.from({ length: batch }, () => randomLength(r, base.dims.seqQ));
  const lensK = Array.from({ length: batch }, () => randomLength(r, base.dims.seqK));
  if (layout === 'padded') return { ...base, layout, lensQ, lensK };
  if (Math.max(...lensQ) === 0) lensQ[randInt(r, 0, batch - 1)] = randInt(r, 1, base.dims.seqQ);
  if (Math.max(...lensK) === 0) lensK[randInt(r, 0, batch - 1)] = randInt(r, 1, base.dims.seqK);
  return {
    ...base, layout, lensQ, lensK,
    dims: { ...base.dims, batch, seqQ: Math.max(...lensQ), seqK: Math.max(...lensK) },
  };
}

export const describeVarlen = (c: VarlenSpec) =>
  `${c.layout} lensQ [${c.lensQ}] lensK [${c.lensK}] H${c.dims.heads}/${c.dims.kvHeads} ` +
  `D${c.dims.headDim}/${c.dims.headDimV}${c.layout === 'padded' ? ` padded to ${c.dims.seqQ} x ${c.dims.seqK}` : ''} ` +
  `${[c.causal && 'causal', c.windowSize && `window=${c.windowSize}`, c.softcap && `softcap=${c.softcap}`,
      c.alibi && 'alibi', c.maskShape && `mask=[${c.maskShape}]`, c.dropoutRate && `dropout=${c.dropoutRate}`]
      .filter(Boolean).join(' ') || 'plain'} (seed ${c.seed})`;
