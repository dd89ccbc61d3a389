/**
 * The oracle of the non-finite tests (test/nan_propagation.test.ts): the plain composite
 * (matMul, softmax, matMul) evaluated in float64 in two forms that differ only in products with an
 * exactly-zero weight:
 *  - strict: the composite literally: every (query, key) pair enters the products, a masked or
 *    zero-probability one with weight 0, so 0 * NaN and 0 * Infinity give NaN;
 *  - skipping: pairs that are masked, have zero probability or are dropped never enter.
 * A tiled kernel skips whole tiles the mask hides, so it sits between the two: checkOutput accepts,
 * element by element, what either form gives.
 */
import { dropoutKeep } from '../../src/contract';
import { CaseData, caseAttrs, CaseSpec, rng } from './cases';

type Outputs = Record<'out' | 'lse' | 'dq' | 'dk' | 'dv', Float64Array>;

/**
 * The composite in float64 (strict) or with zero-weight pairs skipped. The contract's rules that
 * the composite has no counterpart for are applied in both: a row with no kept key gives out 0,
 * logsumexp -Infinity and dq 0.
 */
export function compositeFloat64(c: CaseSpec, d: CaseData, strict: boolean): Outputs {
  const a = caseAttrs(c, d);
  const { batch, seqQ: nq, seqK: nk, heads, kvHeads, headDim: hd, headDimV: dvDim } = c.dims;
  const maskShape = d.mask ? [...new Array(4 - c.maskShape!.length).fill(1), ...c.maskShape!] : [];
  const r: Outputs = {
    out: new Float64Array(batch * nq * heads * dvDim), lse: new Float64Array(batch * heads * nq),
    dq: new Float64Array(batch * nq * heads * hd), dk: new Float64Array(batch * nk * kvHeads * hd),
    dv: new Float64Array(batch * nk * kvHeads * dvDim),
  };
  const off = nk - nq;
  for (let b = 0; b < batch; b++) for (let h = 0; h < heads; h++) {
    const kvh = Math.floor(h / (heads / kvHeads));
    const qo = (i: number) => ((b * nq + i) * heads + h) * hd;
    const ko = (j: number) => ((b * nk + j) * kvHeads + kvh) * hd;
    const vo = (j: number) => ((b * nk + j) * kvHeads + kvh) * dvDim;
    const oo = (i: number) => ((b * nq + i) * heads + h) * dvDim;
    for (let i = 0; i < nq; i++) {
      const s = new Float64Array(nk), capGrad = new Float64Array(nk).fill(1), kept = new Array<boolean>(nk);
      const drop = new Float64Array(nk).fill(1);
      for (let j = 0; j < nk; j++) {
        let dot = 0;
        for (let x = 0; x < hd; x++) dot += d.q[qo(i) + x] * d.k[ko(j) + x];
        let sij = a.scale * dot;
        if (a.softcap > 0) {
          const t = Math.tanh(sij / a.softcap);
          sij = a.softcap * t;
          capGrad[j] = 1 - t * t;
        }
        if (a.hasAlibi) sij -= d.slopes![h] * Math.abs(i + off - j);
        s[j] = sij;
        let keep = (a.windowLeft < 0 || j >= i + off - a.windowLeft) && (a.windowRight < 0 || j <= i + off + a.windowRight);
        if (keep && d.mask) {
          const [mb, mh, mq, mk] = maskShape;
          keep = !!d.mask[(((mb === 1 ? 0 : b) * mh + (mh === 1 ? 0 : h)) * mq + (mq === 1 ? 0 : i)) * mk + (mk === 1 ? 0 : j)];
        }
        kept[j] = keep;
        if (a.dropoutRate > 0) drop[j] = dropoutKeep(a.seed, b * heads + h, i, j, a.dropoutRate) ? 1 / (1 - a.dropoutRate) : 0;
      }
      // Softmax over the kept keys (where(keep, s, -Infinity) in the composite).
      let m = -Infinity;
      for (let j = 0; j < nk; j++) if (kept[j]) m = Math.max(m, s[j]);   // Math.max propagates NaN
      const empty = !kept.includes(true) || (!strict && m === -Infinity);
      const e = s.map((sj, j) => (kept[j] && !empty ? Math.exp(sj - m) : 0));
      const l = e.reduce((x, y) => x + y, 0);
      const p = e.map(x => (empty ? 0 : x / l));
      r.lse[(b * heads + h) * nq + i] = empty ? -Infinity : m + Math.log(l);
      // A fully masked row: out 0 and dq 0 (the contract); strictly its zeros still enter dK.
      if (empty && !strict) continue;
      const enters = (j: number) => strict || (kept[j] && e[j] !== 0);
      const out = new Float64Array(dvDim);
      for (let j = 0; j < nk; j++) {
        if (!enters(j) || (!strict && drop[j] === 0)) continue;
        for (let x = 0; x < dvDim; x++) out[x] += p[j] * drop[j] * d.v[vo(j) + x];
      }
      if (empty) out.fill(0);
      out.forEach((y, x) => { r.out[oo(i) + x] = y; });
      // Backward: dS = P * (dP - D), D = rowsum(dy * out). tf.where's gradient multiplies by the
      // condition, so a masked pair's dS is 0 * (dP - D): NaN where that is not finite.
      let D = 0;
      for (let x = 0; x < dvDim; x++) D += d.dy[oo(i) + x] * out[x];
      for (let j = 0; j < nk; j++) {
        if (!enters(j)) continue;
        let dp = 0;
        for (let x = 0; x < dvDim; x++) dp += d.dy[oo(i) + x] * d.v[vo(j) + x];
        const ds = (kept[j] && !empty ? p[j] : 0) * (dp * drop[j] - D) * capGrad[j] * a.scale;
        for (let x = 0; x < dvDim; x++) r.dv[vo(j) + x] += p[j] * drop[j] * d.dy[oo(i) + x];
        for (let x = 0; x < hd; x++) {
          if (!empty) r.dq[qo(i) + x] += ds * d.k[ko(j) + x];
          r.dk[ko(j) + x] += ds * d.q[qo(i) + x];
        }
      }
    }
  }
  return r;
}

export const kind = (x: number) => (Number.isNaN(x) ? 'NaN' : x === Infinity ? '+Inf' : x === -Infinity ? '-Inf' : 'finite');

/**
 * Checks one output against the two forms: the kind of every element, then the finite values
 * (norm-wise relative error against the float64 values). `scale` is the output's magnitude had
 * the inputs been finite: where non-finite values leave only a few tiny finite results, their
 * float32 rounding is judged against the problem's scale, not against themselves. Returns the
 * problems found.
 */
export function checkOutput(name: string, got: ArrayLike<number>, strict: Float64Array, skipping: Float64Array,
                            tol: number, scale = 0): string[] {
  if (got.length !== strict.length) return [`${name}: length ${got.length}, expected ${strict.length}`];
  const wrong: string[] = [];
  let num = 0, den = 0;
  for (let i = 0; i < got.length; i++) {
    const allowed = new Set([kind(strict[i]), kind(skipping[i])]);
    if (!allowed.has(kind(got[i]))) {
      if (wrong.length < 4) wrong.push(`${name}[${i}] = ${got[i]}, expected ${[...allowed].join(' or ')}`);
      else if (wrong.length === 4) wrong.push(`${name}: ...`);
      continue;
    }
    const want = Number.isFinite(skipping[i]) ? skipping[i] : strict[i];
    if (Number.isFinite(got[i]) && Number.isFinite(want)) {
      num = Math.max(num, Math.abs(got[i] - want));
      den = Math.max(den, Math.abs(want));
    }
  }
  den = Math.max(den, scale);
  const err = den === 0 ? num : num / den;
  if (!(err < tol)) wrong.push(`${name}: finite values' relative error ${err} >= ${tol}`);
  return wrong;
}

export type Where = 'q' | 'k' | 'v';
export const SPECIAL = [NaN, Infinity, -Infinity];

/** Puts `count` non-finite values at random places of q, k or v (reproducible from seed). */
export function withNonFinite(d: CaseData, where: Where, values: number[], seed: number, count = 2): CaseData {
  const r = rng(seed);
  const x = Float32Array.from(d[where]);
  for (let n = 0; n < count; n++) x[Math.floor(r() * x.length)] = values[Math.floor(r() * values.length)];
  return { ...d, [where]: x };
}

