/**
 * Float64 reference for single rows of out and dq. test/helpers/reference.ts is the oracle of the
 * tests, but it builds whole [N, N] matrices; a row of out or dq needs only O(N·d) work, which
 * keeps a spot check affordable at N = 32768 inside a benchmark. Only the benchmark's options
 * (plain or causal attention, Nq = Nk, default scale) are handled.
 */
import { Shape } from './cases';
import type { Inputs, TF } from './attention';

export interface RowRef {
  head: number;
  row: number;
  out: Float64Array;
  dq: Float64Array;
}

/** The rows a case checks: first and last head; an early, a middle and the last query. */
export function checkedRows(s: Shape): Array<{ head: number; row: number }> {
  const heads = [...new Set([0, s.heads - 1])];
  const rows = [...new Set([Math.min(1, s.seq - 1), s.seq >> 1, s.seq - 1])];
  return heads.flatMap(head => rows.map(row => ({ head, row })));
}

/** out and dq of one query row from that head's q row, all of its k and v, and its dOut row. */
export function referenceRow(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>,
                             dOut: ArrayLike<number>, seq: number, headDim: number, row: number,
                             causal: boolean): { out: Float64Array; dq: Float64Array } {
  const scale = 1 / Math.sqrt(headDim);
  const keys = causal ? row + 1 : seq;
  const p = new Float64Array(keys);
  let max = -Infinity;
  for (let j = 0; j < keys; j++) {
    let dot = 0;
    for (let c = 0; c < headDim; c++) dot += q[c] * k[j * headDim + c];
    p[j] = scale * dot;
    max = Math.max(max, p[j]);
  }
  let sum = 0;
  for (let j = 0; j < keys; j++) { p[j] = Math.exp(p[j] - max); sum += p[j]; }
  const out = new Float64Array(headDim);
  const dP = new Float64Array(keys);
  let rowDot = 0;   // sum_j P_j dP_j = dOut . out
  for (let j = 0; j < keys; j++) {
    p[j] /= sum;
    let dpj = 0;
    for (let c = 0; c < headDim; c++) {
      out[c] += p[j] * v[j * headDim + c];
      dpj += dOut[c] * v[j * headDim + c];
    }
    dP[j] = dpj;
    rowDot += p[j] * dpj;
  }
  const dq = new Float64Array(headDim);
  for (let j = 0; j < keys; j++) {
    const dS = p[j] * (dP[j] - rowDot);
    for (let c = 0; c < headDim; c++) dq[c] += scale * dS * k[j * headDim + c];
  }
  return { out, dq };
}

/** Reads, per checked head of batch 0, the slices the reference needs (not the whole tensors). */
export async function referenceRows(tf: TF, x: Inputs, s: Shape): Promise<RowRef[]> {
  const read = async (t: Inputs['q'], begin: number[], size: number[]) => {
    const part = tf.slice(t, begin, size);
    const data = await part.data() as Float32Array;
    part.dispose();
    return data;
  };
  const refs: RowRef[] = [];
  const byHead = new Map<number, { k: Float32Array; v: Float32Array }>();
  for (const { head, row } of checkedRows(s)) {
    if (!byHead.has(head)) {
      byHead.set(head, {
        k: await read(x.k, [0, 0, head, 0], [1, s.seq, 1, s.headDim]),
        v: await read(x.v, [0, 0, head, 0], [1, s.seq, 1, s.headDim]),
      });
    }
    const { k, v } = byHead.get(head)!;
    const q = await read(x.q, [0, row, head, 0], [1, 1, 1, s.headDim]);
    const dOut = await read(x.dOut, [0, row, head, 0], [1, 1, 1, s.headDim]);
    refs.push({ head, row, ...referenceRow(q, k, v, dOut, s.seq, s.headDim, row, s.causal) });
  }
  return refs;
}

/** sqrt(sum (got - ref)^2 / sum ref^2) over all given rows. */
export function relativeError(pairs: Array<{ got: ArrayLike<number>; ref: ArrayLike<number> }>): number {
  let diff = 0, norm = 0;
  for (const { got, ref } of pairs) {
    for (let i = 0; i < ref.length; i++) { diff += (got[i] - ref[i]) ** 2; norm += ref[i] ** 2; }
  }
  return norm === 0 ? (diff === 0 ? 0 : Infinity) : Math.sqrt(diff / norm);
}
