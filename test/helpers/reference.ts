/**
 * Float64 reference attention: the naive full-matrix algorithm, written independently of the
 * kernels (no tiling, no online softmax) to be the oracle of every test. It follows the contract
 * in src/contract/kernel_names.ts literally, with analytical gradients.
 */
import { dropoutKeep, FlashAttentionAttrs } from '../../src/contract';
// Module-level aliases: a global lookup (Math, Infinity) in a hot loop is ~40x slower inside
// jest's vm sandbox, where the tests run these loops.
const { abs, exp, floor, log, max, tanh } = Math;
const INF = Infinity;

export interface RefDims {
  batch: number; seqQ: number; seqK: number; heads: number; kvHeads: number;
  headDim: number; headDimV: number;
}

export interface RefInputs {
  q: ArrayLike<number>; k: ArrayLike<number>; v: ArrayLike<number>;
  /** length heads, when attrs.hasAlibi. */
  alibiSlopes?: ArrayLike<number>;
  /** rank-4 broadcastable bool mask as 0/1 values with its shape, when attrs.hasMask. */
  mask?: { values: ArrayLike<number | boolean>; shape: number[] };
  /**
   * The sequence index dropout hashes for batch element 0, when the reference runs one sequence
   * of a larger batch alone (variable lengths, helpers/varlen_cases.ts); default: b.
   */
  sequence?: number;
}

export interface RefForward { out: Float64Array; lse: Float64Array; }
export interface RefGrads { dq: Float64Array; dk: Float64Array; dv: Float64Array; }

/** Score, probability and dropout structure of one (b, h) pair, shared by forward and backward. */
function headProblem(d: RefDims, x: RefInputs, a: FlashAttentionAttrs, b: number, h: number) {
  const { seqQ: nq, seqK: nk, heads, kvHeads, headDim: hd } = d;
  const kvh = floor(h / (heads / kvHeads));
  const off = nk - nq;
  const qAt = (i: number, c: number) => x.q[((b * nq + i) * heads + h) * hd + c];
  const kAt = (j: number, c: number) => x.k[((b * nk + j) * kvHeads + kvh) * hd + c];
  const raw = new Float64Array(nq * nk);       // scale * q.k
  const s = new Float64Array(nq * nk);         // after softcap and alibi
  const kept = new Uint8Array(nq * nk);
  for (let i = 0; i < nq; i++) {
    for (let j = 0; j < nk; j++) {
      let dot = 0;
      for (let c = 0; c < hd; c++) dot += qAt(i, c) * kAt(j, c);
      let sij = a.scale * dot;
      raw[i * nk + j] = sij;
      if (a.softcap > 0) sij = a.softcap * tanh(sij / a.softcap);
      if (a.hasAlibi) sij += -Number(x.alibiSlopes![h]) * abs(i + off - j);
      s[i * nk + j] = sij;
      let keep = (a.windowLeft < 0 || j >= i + off - a.windowLeft) &&
                 (a.windowRight < 0 || j <= i + off + a.windowRight);
      if (keep && a.hasMask) {
        const [mb, mh, mq, mk] = x.mask!.shape;
        const idx = (((mb === 1 ? 0 : b) * mh + (mh === 1 ? 0 : h)) * mq + (mq === 1 ? 0 : i)) * mk + (mk === 1 ? 0 : j);
        keep = Boolean(x.mask!.values[idx]);
      }
      kept[i * nk + j] = keep ? 1 : 0;
    }
  }
  const p = new Float64Array(nq * nk);
  const lse = new Float64Array(nq);
  for (let i = 0; i < nq; i++) {
    let m = -INF;
    for (let j = 0; j < nk; j++) if (kept[i * nk + j]) m = max(m, s[i * nk + j]);
    if (m === -INF) { lse[i] = -INF; continue; }
    let l = 0;
    for (let j = 0; j < nk; j++) if (kept[i * nk + j]) l += exp(s[i * nk + j] - m);
    lse[i] = m + log(l);
    for (let j = 0; j < nk; j++) if (kept[i * nk + j]) p[i * nk + j] = exp(s[i * nk + j] - lse[i]);
  }
  // Dropout multiplier per element: keep / (1 - rate), from the shared counter-based hash.
  const drop = new Float64Array(nq * nk).fill(1);
  if (a.dropoutRate > 0) {
    for (let i = 0; i < nq; i++) for (let j = 0; j < nk; j++) {
      drop[i * nk + j] = dropoutKeep(a.seed, (x.sequence ?? b) * heads + h, i, j, a.dropoutRate) ? 1 / (1 - a.dropoutRate) : 0;
    }
  }
  return { kvh, raw, s, p, lse, drop };
}

export function referenceForward(d: RefDims, x: RefInputs, a: FlashAttentionAttrs): RefForward {
  const { batch, seqQ: nq, seqK: nk, heads, kvHeads, headDimV: dv } = d;
  const out = new Float64Array(batch * nq * heads * dv);
  const lse = new Float64Array(batch * heads * nq);
  for (let b = 0; b < batch; b++) for (let h = 0; h < heads; h++) {
    const { kvh, p, lse: rowLse, drop } = headProblem(d, x, a, b, h);
    for (let i = 0; i < nq; i++) {
      lse[(b * heads + h) * nq + i] = rowLse[i];
      for (let c = 0; c < dv; c++) {
        let acc = 0;
        for (let j = 0; j < nk; j++) acc += p[i * nk + j] * drop[i * nk + j] * x.v[((b * nk + j) * kvHeads + kvh) * dv + c];
        out[((b * nq + i) * heads + h) * dv + c] = acc;
      }
    }
  }
  return { out, lse };
}

/** Gradients of sum(out * dy) with respect to q, k, v. */
export function referenceBackward(d: RefDims, x: RefInputs, a: FlashAttentionAttrs, dy: ArrayLike<number>): RefGrads {
  const { batch, seqQ: nq, seqK: nk, heads, kvHeads, headDim: hd, headDimV: dvDim } = d;
  const dq = new Float64Array(batch * nq * heads * hd);
  const dk = new Float64Array(batch * nk * kvHeads * hd);
  const dv = new Float64Array(batch * nk * kvHeads * dvDim);
  for (let b = 0; b < batch; b++) for (let h = 0; h < heads; h++) {
    const { kvh, raw, p, drop } = headProblem(d, x, a, b, h);
    const vAt = (j: number, c: number) => x.v[((b * nk + j) * kvHeads + kvh) * dvDim + c];
    const kAt = (j: number, c: number) => x.k[((b * nk + j) * kvHeads + kvh) * hd + c];
    const qAt = (i: number, c: number) => x.q[((b * nq + i) * heads + h) * hd + c];
    const dyAt = (i: number, c: number) => dy[((b * nq + i) * heads + h) * dvDim + c];
    for (let i = 0; i < nq; i++) {
      // dP~ = dy . v ; dP = dP~ * drop ; dS = P * (dP - sum_j P dP)
      const dp = new Float64Array(nk);
      let rowDot = 0;
      for (let j = 0; j < nk; j++) {
        let t = 0;
        for (let c = 0; c < dvDim; c++) t += dyAt(i, c) * vAt(j, c);
        dp[j] = t * drop[i * nk + j];
        rowDot += p[i * nk + j] * dp[j];
      }
      for (let j = 0; j < nk; j++) {
        const pij = p[i * nk + j];
        if (pij === 0) continue;
        const pd = pij * drop[i * nk + j];
        for (let c = 0; c < dvDim; c++) dv[((b * nk + j) * kvHeads + kvh) * dvDim + c] += pd * dyAt(i, c);
        let ds = pij * (dp[j] - rowDot);
        if (a.softcap > 0) { const t = tanh(raw[i * nk + j] / a.softcap); ds *= 1 - t * t; }
        ds *= a.scale;
        for (let c = 0; c < hd; c++) {
          dq[((b * nq + i) * heads + h) * hd + c] += ds * kAt(j, c);
          dk[((b * nk + j) * kvHeads + kvh) * hd + c] += ds * qAt(i, c);
        }
      }
    }
  }
  return { dq, dk, dv };
}
