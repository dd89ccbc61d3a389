/**
 * Blockwise attention from stock tfjs ops, for every backend without a FlashAttention kernel
 * (webgl, wasm, tensorflow without the CUDA op library, ...). It walks key blocks with an online
 * softmax, so it holds O(seqQ * KEY_BLOCK) per head instead of seqQ x seqK; its custom gradient
 * recomputes each block's probabilities from q, k and the saved log-sum-exp, like the kernels do.
 *
 * Layout trick for GQA: q is viewed as [B, Hkv, group * seqQ, D], so one batched matMul against
 * k [B, Hkv, seqK, D] serves every query head of a group without copying K or V; for masking the
 * scores are viewed as [B, Hkv, group, seqQ, block].
 */
import {
  abs, add, customGrad, div, equal, exp, greaterEqual, lessEqual, log, logicalAnd, matMul, max, maximum,
  mul, range, reshape, scalar, slice, sub, sum, tanh, Tensor, tensor, tidy, transpose, where, zeros,
  concat, dispose, onesLike, zerosLike, Tensor1D, Tensor3D, Tensor4D, broadcastTo, GradSaveFunc,
} from '@tensorflow/tfjs-core';
import { FlashAttentionAttrs } from '../../src/kernel_names';
import { keyRangeForQueries } from '../../src/window';
import { dropoutBits, dropoutRowKey, dropoutThreshold } from '../../src/dropout';

/** Keys per block: the fallback's working set is O(heads * seqQ * KEY_BLOCK) floats. */
export const KEY_BLOCK = 256;

interface Geometry {
  B: number; Nq: number; Nk: number; H: number; Hkv: number; g: number; D: number; Dv: number;
}

/** Everything a block needs besides the block's k/v: shared by the forward and backward passes. */
class BlockScorer {
  constructor(readonly geo: Geometry, readonly a: FlashAttentionAttrs,
              readonly slopes5: Tensor | null, readonly mask4: Tensor | null) {}

  /**
   * Scores of keys [j0, j1) for q4 [B, Hkv, g*Nq, D] as [B, Hkv, g, Nq, len], masked to -Infinity,
   * plus tanh(raw / softcap) when softcap is on (the backward pass needs its derivative).
   * Each step frees its predecessor at once: a tidy would keep every block-sized intermediate
   * alive until the block ends, multiplying the working set.
   */
  scores(q4: Tensor, j0: number, j1: number, k4: Tensor) {
    const { B, Nq, Nk, Hkv, g } = this.geo;
    const a = this.a;
    const len = j1 - j0;
    const kb = slice(k4, [0, 0, j0, 0], [-1, -1, len, -1]);
    let s5 = tidy(() => reshape(mul(matMul(q4, kb, false, true), scalar(a.scale)), [B, Hkv, g, Nq, len]));
    const update = (f: () => Tensor) => { const next = tidy(f); s5.dispose(); s5 = next; };
    let capTanh: Tensor | null = null;
    if (a.softcap > 0) {
      capTanh = tidy(() => tanh(div(s5, scalar(a.softcap))));
      update(() => mul(capTanh!, scalar(a.softcap)));
    }
    // rel = j - (i + off), [1, 1, 1, Nq, len]: small, shared by heads and batches.
    const rel = tidy(() => sub(reshape(range(j0, j1, 1, 'float32'), [1, 1, 1, 1, len]),
                               reshape(range(Nk - Nq, Nk, 1, 'float32'), [1, 1, 1, Nq, 1])));
    if (this.slopes5) update(() => sub(s5, mul(this.slopes5!, abs(rel))));
    const keepMask = tidy(() => {
      let keep: Tensor | null = null;
      const and = (m: Tensor) => { keep = keep ? logicalAnd(keep, m) : m; };
      if (a.windowLeft >= 0) and(greaterEqual(rel, scalar(-a.windowLeft)));
      if (a.windowRight >= 0) and(lessEqual(rel, scalar(a.windowRight)));
      if (this.mask4) {
        const [mb, mh, mq, mk] = this.mask4.shape;
        const blk = mk === 1 ? this.mask4 : slice(this.mask4, [0, 0, 0, j0], [-1, -1, -1, len]);
        const bl = blk.shape[3] as number;
        and(mh === 1 ? reshape(blk, [mb, 1, 1, mq, bl]) : reshape(blk, [mb, Hkv, g, mq, bl]));
      }
      return keep ?? scalar(true);
    });
    rel.dispose();
    if (keepMask.rank > 0) {
      update(() => whereAnyRank(broadcastTo(keepMask, s5.shape), s5, broadcastTo(scalar(-Infinity), s5.shape)));
    }
    keepMask.dispose();
    return { s5, capTanh, kb, len };
  }

  /** Dropout multipliers (0 or 1/(1-rate)) of keys [j0, j1) as [B, Hkv, g, Nq, len], from the shared hash. */
  dropout(j0: number, j1: number): Tensor | null {
    const a = this.a;
    if (a.dropoutRate <= 0) return null;
    const { B, H, Nq, Hkv, g } = this.geo;
    const len = j1 - j0, t = dropoutThreshold(a.dropoutRate), keepScale = 1 / (1 - a.dropoutRate);
    const vals = new Float32Array(B * H * Nq * len);
    let o = 0;
    for (let bh = 0; bh < B * H; bh++) for (let i = 0; i < Nq; i++) {
      const key = dropoutRowKey(a.seed, bh, i);
      for (let j = j0; j < j1; j++) vals[o++] = dropoutBits(key, j) >= t ? keepScale : 0;
    }
    return tensor(vals, [B, Hkv, g, Nq, len]);
  }
}

function geometry(q: Tensor, k: Tensor, v: Tensor): Geometry {
  const [B, Nq, H, D] = q.shape as number[], [, Nk, Hkv] = k.shape as number[], Dv = v.shape[3] as number;
  return { B, Nq, Nk, H, Hkv, g: H / Hkv, D, Dv };
}

/**
 * where() on operands of one shape, any rank: the webgl and webgpu Select kernels stop at rank 4
 * ("Where for rank 5 is not yet supported"), so the operands go through flat.
 */
function whereAnyRank(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  return reshape(where(reshape(cond, [-1]), reshape(a, [-1]), reshape(b, [-1])), a.shape);
}

/** [B, N, heads, D] -> [B, heads, N, D]; for q the heads axis then splits as [Hkv, g*N]. */
const toHeadMajor = (x: Tensor) => transpose(x, [0, 2, 1, 3]);

function blockForward(q: Tensor, k: Tensor, v: Tensor, scorer: BlockScorer): { out: Tensor; lse: Tensor } {
  const geo = scorer.geo, { B, Nq, Nk, H, Hkv, g, D, Dv } = geo;
  const q4 = reshape(toHeadMajor(q), [B, Hkv, g * Nq, D]);
  const k4 = toHeadMajor(k), v4 = toHeadMajor(v);
  let m: Tensor = broadcastTo(scalar(-Infinity), [B, Hkv, g, Nq, 1]);
  let l: Tensor = zeros([B, Hkv, g, Nq, 1]);
  let acc: Tensor = zeros([B, Hkv, g * Nq, Dv]);
  const [jLo, jHi] = keyRangeForQueries(scorer.a, 0, Nq, Nq, Nk);
  for (let j0 = jLo; j0 < jHi; j0 += KEY_BLOCK) {
    const j1 = Math.min(jHi, j0 + KEY_BLOCK);
    const next = tidy(() => {
      const { s5, len } = scorer.scores(q4, j0, j1, k4);
      // Online softmax: new running max, rescale of what was accumulated under the old one.
      const mNew = maximum(m, max(s5, -1, true));
      const mSafe = whereAnyRank(equal(mNew, -Infinity), zerosLike(mNew), mNew);
      const alpha = exp(sub(m, mSafe));
      let p = tidy(() => exp(sub(s5, mSafe)));
      s5.dispose();
      const lNew = add(mul(l, alpha), sum(p, -1, true));
      const drop = scorer.dropout(j0, j1);
      if (drop) { const pd = mul(p, drop); dispose([p, drop]); p = pd; }
      const vb = slice(v4, [0, 0, j0, 0], [-1, -1, len, -1]);
      const pv = matMul(reshape(p, [B, Hkv, g * Nq, len]), vb);
      p.dispose();
      const accNew = add(mul(acc, reshape(alpha, [B, Hkv, g * Nq, 1])), pv);
      return { mNew, lNew, accNew };
    });
    dispose([m, l, acc]);
    ({ mNew: m, lNew: l, accNew: acc } = next);
  }
  return tidy(() => {
    const empty = equal(l, 0);                                   // no key left after masking
    const lSafe = whereAnyRank(empty, onesLike(l), l);
    // acc is 0 on empty rows unless a masked value was NaN or infinite (0 * NaN): out is 0 there.
    const emptyRows = broadcastTo(reshape(empty, [B, Hkv, g * Nq, 1]), acc.shape);
    const out4 = whereAnyRank(emptyRows, zerosLike(acc), div(acc, reshape(lSafe, [B, Hkv, g * Nq, 1])));
    const out = transpose(reshape(out4, [B, H, Nq, Dv]), [0, 2, 1, 3]);
    const lse = reshape(whereAnyRank(empty, broadcastTo(scalar(-Infinity), l.shape), add(m, log(lSafe))), [B, H, Nq]);
    dispose([m, l, acc]);
    return { out, lse };
  });
}

function blockBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dy: Tensor,
                       scorer: BlockScorer): Tensor[] {
  const { B, Nq, Nk, H, Hkv, g, D, Dv } = scorer.geo;
  const a = scorer.a;
  return tidy(() => {
    const q4 = reshape(toHeadMajor(q), [B, Hkv, g * Nq, D]);
    const k4 = toHeadMajor(k), v4 = toHeadMajor(v);
    const dO4 = reshape(toHeadMajor(dy), [B, Hkv, g * Nq, Dv]);
    // Backward preprocess: D = rowsum(dO * O).
    const Drow = reshape(sum(mul(dy, out), -1), [B, Nq, H]);
    const D5 = reshape(transpose(Drow, [0, 2, 1]), [B, Hkv, g, Nq, 1]);
    const lse5 = reshape(lse, [B, Hkv, g, Nq, 1]);
    const lseSafe = whereAnyRank(equal(lse5, -Infinity), zerosLike(lse5), lse5);
    let dq4: Tensor = zeros([B, Hkv, g * Nq, D]);
    const dkBlocks: Tensor[] = [], dvBlocks: Tensor[] = [];
    for (let j0 = 0; j0 < Nk; j0 += KEY_BLOCK) {
      const j1 = Math.min(Nk, j0 + KEY_BLOCK);
      const step = tidy(() => {
        const { s5, capTanh, kb, len } = scorer.scores(q4, j0, j1, k4);
        const p = tidy(() => exp(sub(s5, lseSafe)));            // recomputed; 0 where masked
        s5.dispose();
        const drop = scorer.dropout(j0, j1);
        const vb = slice(v4, [0, 0, j0, 0], [-1, -1, len, -1]);
        const dvB = tidy(() => matMul(reshape(drop ? mul(p, drop) : p, [B, Hkv, g * Nq, len]), dO4, true, false));
        let dp = tidy(() => reshape(matMul(dO4, vb, false, true), [B, Hkv, g, Nq, len]));
        if (drop) { const dpd = mul(dp, drop); dispose([dp, drop]); dp = dpd; }
        let ds = tidy(() => mul(p, sub(dp, D5)));
        dispose([dp, p]);
        if (capTanh) {
          const dsc = tidy(() => mul(ds, sub(scalar(1), mul(capTanh, capTanh))));
          dispose([ds, capTanh]);
          ds = dsc;
        }
        const ds4 = reshape(mul(ds, scalar(a.scale)), [B, Hkv, g * Nq, len]);
        ds.dispose();
        return { dqB: matMul(ds4, kb), dkB: matMul(ds4, q4, true, false), dvB };
      });
      const dqNew = add(dq4, step.dqB);
      dispose([dq4, step.dqB]);
      dq4 = dqNew;
      dkBlocks.push(step.dkB); dvBlocks.push(step.dvB);
    }
    // A fully masked row has zero dq, even where a masked key was NaN or infinite (0 * NaN).
    const emptyRows = broadcastTo(reshape(equal(lse5, -Infinity), [B, Hkv, g * Nq, 1]), dq4.shape);
    const dq = transpose(reshape(whereAnyRank(emptyRows, zerosLike(dq4), dq4), [B, H, Nq, D]), [0, 2, 1, 3]);
    const dk = transpose(concat(dkBlocks, 2), [0, 2, 1, 3]);
    const dv = transpose(concat(dvBlocks, 2), [0, 2, 1, 3]);
    return [dq, dk, dv];
  });
}

/**
 * Memory-lean attention from tfjs ops with a recompute gradient. Same contract as the
 * `FlashAttention` kernel (alibiSlopes and mask are used only when attrs.hasAlibi / hasMask).
 */
export function flashAttentionBlockwise(q: Tensor4D, k: Tensor4D, v: Tensor4D, alibiSlopes: Tensor1D,
                                        mask: Tensor4D, attrs: FlashAttentionAttrs): { output: Tensor4D; logSumExp: Tensor3D } {
  const geo = geometry(q, k, v);
  const { B, Nq, H, Hkv, g, Dv } = geo;
  const outSize = B * Nq * H * Dv;
  // customGrad returns one tensor: output and logsumexp travel packed, then are split below.
  const packed = customGrad((...args: Array<Tensor | GradSaveFunc>) => {
    const [qx, kx, vx] = args as Tensor[];
    const save = args[3] as GradSaveFunc;
    const slopes5 = attrs.hasAlibi ? reshape(alibiSlopes, [1, Hkv, g, 1, 1]) : null;
    const scorer = new BlockScorer(geo, attrs, slopes5, attrs.hasMask ? mask : null);
    const { out, lse } = blockForward(qx, kx, vx, scorer);
    save([qx, kx, vx, out, lse, alibiSlopes, mask]);
    return {
      value: concat([reshape(out, [-1]), reshape(lse, [-1])]),
      gradFunc: (dPacked: Tensor, saved: Tensor[]): Tensor[] => {
        const [sq, sk, sv, sOut, sLse, sSlopes, sMask] = saved;
        const bwScorer = new BlockScorer(geo, attrs, attrs.hasAlibi ? reshape(sSlopes, [1, Hkv, g, 1, 1]) : null,
                                         attrs.hasMask ? sMask : null);
        // The logsumexp part of the gradient is ignored, as in the kernels' registered gradient.
        const dy = reshape(slice(dPacked, 0, outSize), sOut.shape);
        return blockBackward(sq, sk, sv, sOut, sLse, dy, bwScorer);
      },
    };
  })(q, k, v);
  const output = reshape(slice(packed, 0, outSize), [B, Nq, H, Dv]) as Tensor4D;
  const logSumExp = reshape(slice(packed, outSize, B * H * Nq), [B, H, Nq]) as Tensor3D;
  packed.dispose();
  return { output, logSumExp };
}
