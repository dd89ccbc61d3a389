/**
 * CPU forward kernel: FlashAttention-2's algorithm in TypeScript. For each tile of query rows it
 * streams key/value tiles (the forward inner loop), keeping the running row max, row sum and
 * output accumulator (online softmax), and writes the output and row log-sum-exp once.
 * Extra memory: O(TILE_Q * (TILE_K + headDimV)), never seqQ x seqK.
 */
import { KernelConfig, KernelFunc, KernelBackend } from '@tensorflow/tfjs-core';
import { FlashAttention, FlashAttentionAttrs, FlashAttentionInputs, keyRangeForQueries } from '../../src/contract';
import {
  CPUProblem, dropoutRow, lseIndex, makeOutput, oRow, readProblem, scoreTile, TILE_K, TILE_Q, vRow,
} from './attention_problem';
// Module-level aliases: a global lookup (Math, Infinity) in a hot loop is ~40x slower inside
// jest's vm sandbox, where the tests run these loops.
const { exp, floor, log, max, min } = Math;
const INF = Infinity;

export function flashForwardCPU(p: CPUProblem): { out: Float32Array; logSumExp: Float32Array } {
  const { heads, headDimV: dv, attrs } = p;
  const out = new Float32Array(p.rowsQ * heads * dv);          // rows past a length stay 0
  const logSumExp = new Float32Array(p.logSumExpShape.reduce((a, b) => a * b, 1)).fill(-INF);
  const s = new Float64Array(TILE_Q * TILE_K);
  const acc = new Float64Array(TILE_Q * dv);
  const rowMax = new Float64Array(TILE_Q);
  const rowSum = new Float64Array(TILE_Q);
  const drop = new Float64Array(TILE_K);
  for (const seq of p.sequences) for (let h = 0; h < heads; h++) {
    const { b, lenQ, lenK } = seq;
    const kvh = floor(h / p.group);
    // Only the sequence's own tiles: the cost follows lenQ * lenK, not the padded extents.
    for (let i0 = 0; i0 < lenQ; i0 += TILE_Q) {
      const i1 = min(lenQ, i0 + TILE_Q);
      acc.fill(0); rowMax.fill(-INF); rowSum.fill(0);
      const [jLo, jHi] = keyRangeForQueries(attrs, i0, i1, lenQ, lenK);
      // Forward inner loop over the key/value tiles this query tile can see.
      for (let j0 = jLo; j0 < jHi; j0 += TILE_K) {
        const j1 = min(jHi, j0 + TILE_K);
        scoreTile(p, seq, h, i0, i1, j0, j1, s, null);
        for (let i = i0; i < i1; i++) {
          const r = i - i0, sr = r * TILE_K;
          let tileMax = -INF;
          for (let c = 0; c < j1 - j0; c++) tileMax = max(tileMax, s[sr + c]);
          if (tileMax === -INF) continue;           // every key of this tile is masked for row i
          // Online softmax: rescale what was accumulated under the old max.
          const newMax = max(rowMax[r], tileMax);
          const alpha = exp(rowMax[r] - newMax);
          rowMax[r] = newMax;
          rowSum[r] *= alpha;
          const ar = r * dv;
          for (let c = 0; c < dv; c++) acc[ar + c] *= alpha;
          if (p.flags.dropout) dropoutRow(p, b, h, i, j0, j1, drop);
          for (let j = j0; j < j1; j++) {
            const e = exp(s[sr + j - j0] - newMax);
            if (e === 0) continue;
            rowSum[r] += e;                               // the normaliser ignores dropout
            const w = p.flags.dropout ? e * drop[j - j0] : e;
            if (w === 0) continue;
            const vo = vRow(p, seq.startK + j, kvh);
            for (let c = 0; c < dv; c++) acc[ar + c] += w * p.v[vo + c];
          }
        }
      }
      for (let i = i0; i < i1; i++) {
        const r = i - i0, oo = oRow(p, seq.startQ + i, h);
        const empty = rowSum[r] === 0;                    // no key left after masking
        for (let c = 0; c < dv; c++) out[oo + c] = empty ? 0 : acc[r * dv + c] / rowSum[r];
        logSumExp[lseIndex(p, seq, h, i)] = empty ? -INF : rowMax[r] + log(rowSum[r]);
      }
    }
  }
  return { out, logSumExp };
}

const flashAttentionCPU: KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK } = inputs as unknown as FlashAttentionInputs;
  const a = attrs as unknown as FlashAttentionAttrs;
  const p = readProblem(backend as KernelBackend, q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, a);
  const { out, logSumExp } = flashForwardCPU(p);
  return [
    makeOutput(backend as KernelBackend, p.outShape, out),
    makeOutput(backend as KernelBackend, p.logSumExpShape, logSumExp),
  ];
};

export const flashAttentionCPUConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'cpu',
  kernelFunc: flashAttentionCPU,
};
