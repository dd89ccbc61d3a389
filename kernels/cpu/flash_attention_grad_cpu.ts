/**
 * CPU backward kernel (FlashAttention-2): the backward preprocess computes D = rowsum(dO * O);
 * the dK/dV pass walks key/value tiles, recomputes P = exp(S - logSumExp) tile by tile from q, k
 * and the saved logSumExp, and accumulates dK and dV in the tile (summing the query heads of a
 * GQA group). Being single-threaded, it also adds each tile's dS * K into dQ there, which saves
 * the GPU kernels' separate dQ pass (that pass exists on GPUs only to avoid atomics).
 * Extra memory: O(seq * headDim) for dQ plus O(TILE_Q * TILE_K) tiles; never seqQ x seqK.
 */
import { KernelBackend, KernelConfig, KernelFunc, TensorInfo, TypedArray } from '@tensorflow/tfjs-core';
import {
  FlashAttentionAttrs, FlashAttentionGrad, FlashAttentionGradInputs, queryRangeForKeys,
} from '../../src/contract';
import {
  CPUProblem, dropoutRow, kRow, lseIndex, makeOutput, oRow, qRow, readProblem, scoreTile, TILE_K, TILE_Q, vRow,
} from './attention_problem';
// Module-level aliases: a global lookup (Math, Infinity) in a hot loop is ~40x slower inside
// jest's vm sandbox, where the tests run these loops.
const { exp, min } = Math;
const INF = Infinity;

export interface SavedForward { out: TypedArray; logSumExp: TypedArray; dy: TypedArray; }

/** Backward preprocess: D[lseIndex(seq, h, i)] = sum_c dO[row, h, c] * O[row, h, c], row = startQ + i. */
function backwardPreprocess(p: CPUProblem, f: SavedForward): Float64Array {
  const D = new Float64Array(f.logSumExp.length);
  for (const seq of p.sequences) for (let h = 0; h < p.heads; h++) for (let i = 0; i < seq.lenQ; i++) {
    const o = oRow(p, seq.startQ + i, h);
    let t = 0;
    for (let c = 0; c < p.headDimV; c++) t += f.dy[o + c] * f.out[o + c];
    D[lseIndex(p, seq, h, i)] = t;
  }
  return D;
}

export function flashBackwardCPU(p: CPUProblem, f: SavedForward) {
  const { kvHeads, headDim: d, headDimV: dvDim, attrs } = p;
  // Rows past a sequence's length (queries and keys) keep zero gradients.
  const dq = new Float64Array(p.rowsQ * p.heads * d);
  const dk = new Float32Array(p.rowsK * kvHeads * d);
  const dv = new Float32Array(p.rowsK * kvHeads * dvDim);
  const D = backwardPreprocess(p, f);
  const s = new Float64Array(TILE_Q * TILE_K);
  const capGrad = p.flags.softcap ? new Float64Array(TILE_Q * TILE_K) : null;
  const drop = new Float64Array(TILE_K).fill(1);
  const dkAcc = new Float64Array(TILE_K * d);
  const dvAcc = new Float64Array(TILE_K * dvDim);
  const dpRow = new Float64Array(TILE_K);

  for (const seq of p.sequences) for (let kvh = 0; kvh < kvHeads; kvh++) {
    const { b, lenQ, lenK } = seq;
    // dK/dV pass: one key/value tile at a time, over every query tile (and GQA head) that sees it.
    for (let j0 = 0; j0 < lenK; j0 += TILE_K) {
      const j1 = min(lenK, j0 + TILE_K);
      dkAcc.fill(0); dvAcc.fill(0);
      const [iLo, iHi] = queryRangeForKeys(attrs, j0, j1, lenQ, lenK);
      for (let h = kvh * p.group; h < (kvh + 1) * p.group; h++) {
        for (let i0 = iLo; i0 < iHi; i0 += TILE_Q) {
          const i1 = min(iHi, i0 + TILE_Q);
          scoreTile(p, seq, h, i0, i1, j0, j1, s, capGrad);   // recompute, never stored
          for (let i = i0; i < i1; i++) {
            const rowLogSumExp = f.logSumExp[lseIndex(p, seq, h, i)];
            if (rowLogSumExp === -INF) continue;              // fully masked row: zero gradient
            const sr = (i - i0) * TILE_K;
            const oo = oRow(p, seq.startQ + i, h), qo = qRow(p, seq.startQ + i, h);
            const Di = D[lseIndex(p, seq, h, i)];
            if (p.flags.dropout) dropoutRow(p, b, h, i, j0, j1, drop);
            for (let j = j0; j < j1; j++) {
              const c0 = j - j0;
              const sij = s[sr + c0];
              if (sij === -INF) continue;
              const P = exp(sij - rowLogSumExp);
              const vo = vRow(p, seq.startK + j, kvh);
              // dV += P~^T dO ;  dP = (dO . v) * dropout
              let dP = 0;
              const pd = P * drop[c0];
              for (let c = 0; c < dvDim; c++) {
                dvAcc[c0 * dvDim + c] += pd * f.dy[oo + c];
                dP += f.dy[oo + c] * p.v[vo + c];
              }
              dpRow[c0] = dP * drop[c0];
              let dS = P * (dpRow[c0] - Di);
              if (capGrad) dS *= capGrad[sr + c0];
              dS *= attrs.scale;
              const ko = kRow(p, seq.startK + j, kvh);
              for (let c = 0; c < d; c++) {
                dkAcc[c0 * d + c] += dS * p.q[qo + c];
                dq[qo + c] += dS * p.k[ko + c];
              }
            }
          }
        }
      }
      for (let j = j0; j < j1; j++) {
        const c0 = j - j0;
        const ko = kRow(p, seq.startK + j, kvh), vo = vRow(p, seq.startK + j, kvh);
        for (let c = 0; c < d; c++) dk[ko + c] = dkAcc[c0 * d + c];
        for (let c = 0; c < dvDim; c++) dv[vo + c] = dvAcc[c0 * dvDim + c];
      }
    }
  }
  return { dq: Float32Array.from(dq), dk, dv };
}

const flashAttentionGradCPU: KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, out, logSumExp, dy } =
      inputs as unknown as FlashAttentionGradInputs;
  const be = backend as KernelBackend;
  const p = readProblem(be, q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK, attrs as unknown as FlashAttentionAttrs);
  const read = (t: TensorInfo) => be.readSync(t.dataId) as TypedArray;
  const g = flashBackwardCPU(p, { out: read(out), logSumExp: read(logSumExp), dy: read(dy) });
  return [makeOutput(be, q.shape, g.dq), makeOutput(be, k.shape, g.dk), makeOutput(be, v.shape, g.dv)];
};

export const flashAttentionGradCPUConfig: KernelConfig = {
  kernelName: FlashAttentionGrad,
  backendName: 'cpu',
  kernelFunc: flashAttentionGradCPU,
};
