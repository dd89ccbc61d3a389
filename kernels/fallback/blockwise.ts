/**
 * Blockwise attention from stock tfjs ops, for every backend without a FlashAttention kernel
 * (webgl, wasm, tensorflow without the CUDA op library, ...). It walks key blocks with an online
 * softmax, so it holds O(seqQ * KEY_BLOCK) per head instead of seqQ x seqK; its custom gradient
 * recomputes each block's probabilities from q, k and the saved log-sum-exp, like the kernels do.
 *
 * Layout trick for GQA: q is viewed as [batch, kvHeads, group * seqQ, headDim], so one batched
 * matMul against k [batch, kvHeads, seqK, headDim] serves every query head of a group without
 * copying K or V; for masking the scores are viewed as [batch, kvHeads, group, seqQ, block].
 */
import {
  abs, add, customGrad, less, gather, div, equal, exp, greaterEqual, lessEqual, log, logicalAnd, matMul, max, maximum,
  mul, range, reshape, scalar, slice, sub, sum, tanh, Tensor, tensor, tidy, transpose, where, zeros,
  concat, dispose, onesLike, zerosLike, Tensor1D, Tensor3D, Tensor4D, broadcastTo, GradSaveFunc,
} from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, dropoutBits, dropoutRowKey, FlashAttentionAttrs, keyRangeForQueries,
} from '../../src/contract';

/**
 * The sequences' (start row, length) pairs, flat as the kernels' seqRangesQ/K [numSeqs, 2]: the
 * op read them from the user's lengths, so the fallback gets them as values, not tensors.
 */
export interface SequenceRanges { q: Int32Array; k: Int32Array; }

/** Each batch element's lengths in a padded batch. */
interface PaddedLengths { q: number[]; k: number[]; }

const lengthsOf = (r: Int32Array) => Array.from(r.filter((_, i) => i % 2 === 1));

/** Keys per block: the fallback's working set is O(heads * seqQ * KEY_BLOCK) floats. */
export const KEY_BLOCK = 256;

/** Everything a block needs besides the block's k/v: shared by the forward and backward passes. */
class BlockScorer {
  /**
   * lens: each batch element's query and key lengths (seqLayout 'padded'), or null when every
   * sequence is full length.
   */
  constructor(readonly problem: AttentionProblem, readonly slopes5: Tensor | null, readonly mask4: Tensor | null,
              readonly lens: PaddedLengths | null) {}

  /**
   * Scores of keys [j0, j1) for q4 [batch, kvHeads, group * seqQ, headDim] as
   * [batch, kvHeads, group, seqQ, len], masked to -Infinity, plus tanh(raw / softcap) when softcap is on (the backward pass needs its derivative).
   * Each step frees its predecessor at once: a tidy would keep every block-sized intermediate
   * alive until the block ends, multiplying the working set.
   */
  scores(q4: Tensor, j0: number, j1: number, k4: Tensor) {
    const { batch, seqQ, seqK, kvHeads, group, offset, attrs: a, flags } = this.problem;
    const len = j1 - j0;
    const kb = slice(k4, [0, 0, j0, 0], [-1, -1, len, -1]);
    let s5 = tidy(() => reshape(mul(matMul(q4, kb, false, true), scalar(a.scale)), [batch, kvHeads, group, seqQ, len]));
    const update = (f: () => Tensor) => { const next = tidy(f); s5.dispose(); s5 = next; };
    let capTanh: Tensor | null = null;
    if (flags.softcap) {
      capTanh = tidy(() => tanh(div(s5, scalar(a.softcap))));
      update(() => mul(capTanh!, scalar(a.softcap)));
    }
    const lens = this.lens;
    const keys = () => reshape(range(j0, j1, 1, 'float32'), [1, 1, 1, 1, len]);
    const queries = () => reshape(range(0, seqQ, 1, 'float32'), [1, 1, 1, seqQ, 1]);
    const perBatch = (x: number[]) => tensor(x, [batch, 1, 1, 1, 1], 'float32');
    // rel = j - (i + off), [1, 1, 1, seqQ, len]: small, shared by heads and batches; with lengths
    // off = lenK - lenQ per batch element, [batch, 1, 1, seqQ, len].
    const rel = tidy(() => (lens
      ? sub(keys(), add(queries(), perBatch(lens.k.map((l, b) => l - lens.q[b]))))
      : sub(keys(), reshape(range(offset, seqK, 1, 'float32'), [1, 1, 1, seqQ, 1]))));
    if (this.slopes5) update(() => sub(s5, mul(this.slopes5!, abs(rel))));
    const keepMask = tidy(() => {
      let keep: Tensor | null = null;
      const and = (m: Tensor) => { keep = keep ? logicalAnd(keep, m) : m; };
      if (lens) {   // keys j >= lenK do not exist; queries i >= lenQ see none
        and(logicalAnd(less(keys(), perBatch(lens.k)), less(queries(), perBatch(lens.q))));
      }
      if (a.windowLeft >= 0) and(greaterEqual(rel, scalar(-a.windowLeft)));
      if (a.windowRight >= 0) and(lessEqual(rel, scalar(a.windowRight)));
      if (this.mask4) {
        const [mb, mh, mq, mk] = this.mask4.shape;
        const blk = mk === 1 ? this.mask4 : slice(this.mask4, [0, 0, 0, j0], [-1, -1, -1, len]);
        const bl = blk.shape[3] as number;
        and(mh === 1 ? reshape(blk, [mb, 1, 1, mq, bl]) : reshape(blk, [mb, kvHeads, group, mq, bl]));
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

  /** Dropout multipliers (0 or 1/(1-rate)) of keys [j0, j1) as [batch, kvHeads, group, seqQ, len]. */
  dropout(j0: number, j1: number): Tensor | null {
    const { batch, heads, seqQ, kvHeads, group, attrs, flags, dropoutThreshold, dropoutScale } = this.problem;
    if (!flags.dropout) return null;
    const len = j1 - j0;
    const vals = new Float32Array(batch * heads * seqQ * len);
    let o = 0;
    for (let bh = 0; bh < batch * heads; bh++) for (let i = 0; i < seqQ; i++) {
      const key = dropoutRowKey(attrs.seed, bh, i);
      for (let j = j0; j < j1; j++) vals[o++] = dropoutBits(key, j) >= dropoutThreshold ? dropoutScale : 0;
    }
    return tensor(vals, [batch, kvHeads, group, seqQ, len]);
  }
}

/**
 * where() on operands of one shape, any rank: the webgl and webgpu Select kernels stop at rank 4
 * ("Where for rank 5 is not yet supported"), so the operands go through flat.
 */
function whereAnyRank(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  return reshape(where(reshape(cond, [-1]), reshape(a, [-1]), reshape(b, [-1])), a.shape);
}

/** [batch, seq, heads, dim] -> [batch, heads, seq, dim]; q's heads then split as [kvHeads, group * seq]. */
const toHeadMajor = (x: Tensor) => transpose(x, [0, 2, 1, 3]);

/**
 * The keys [lo, hi) some query can see: the window's range, per batch element when the lengths
 * differ (their union), so blocks past every sequence's keys are never computed.
 */
function visibleKeys(scorer: BlockScorer): [number, number] {
  const { attrs, seqQ, seqK } = scorer.problem;
  const lens = scorer.lens;
  if (!lens) return keyRangeForQueries(attrs, 0, seqQ, seqQ, seqK);
  let [lo, hi] = [seqK, 0];
  lens.q.forEach((lenQ, b) => {
    if (lenQ === 0 || lens.k[b] === 0) return;
    const [l, h] = keyRangeForQueries(attrs, 0, lenQ, lenQ, lens.k[b]);
    if (l < h) [lo, hi] = [Math.min(lo, l), Math.max(hi, h)];
  });
  return lo < hi ? [lo, hi] : [0, 0];
}

function blockForward(q: Tensor, k: Tensor, v: Tensor, scorer: BlockScorer): { out: Tensor; logSumExp: Tensor } {
  const { batch, seqQ, seqK, heads, kvHeads, group, headDim, headDimV } = scorer.problem;
  const q4 = reshape(toHeadMajor(q), [batch, kvHeads, group * seqQ, headDim]);
  const k4 = toHeadMajor(k), v4 = toHeadMajor(v);
  let m: Tensor = broadcastTo(scalar(-Infinity), [batch, kvHeads, group, seqQ, 1]);
  let l: Tensor = zeros([batch, kvHeads, group, seqQ, 1]);
  let acc: Tensor = zeros([batch, kvHeads, group * seqQ, headDimV]);
  const [jLo, jHi] = visibleKeys(scorer);
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
      const pv = matMul(reshape(p, [batch, kvHeads, group * seqQ, len]), vb);
      p.dispose();
      const accNew = add(mul(acc, reshape(alpha, [batch, kvHeads, group * seqQ, 1])), pv);
      return { mNew, lNew, accNew };
    });
    dispose([m, l, acc]);
    ({ mNew: m, lNew: l, accNew: acc } = next);
  }
  return tidy(() => {
    const empty = equal(l, 0);                                   // no key left after masking
    const lSafe = whereAnyRank(empty, onesLike(l), l);
    // acc is 0 on empty rows unless a masked value was NaN or infinite (0 * NaN): out is 0 there.
    const emptyRows = broadcastTo(reshape(empty, [batch, kvHeads, group * seqQ, 1]), acc.shape);
    const out4 = whereAnyRank(emptyRows, zerosLike(acc), div(acc, reshape(lSafe, [batch, kvHeads, group * seqQ, 1])));
    const out = transpose(reshape(out4, [batch, heads, seqQ, headDimV]), [0, 2, 1, 3]);
    const logSumExp = reshape(whereAnyRank(empty, broadcastTo(scalar(-Infinity), l.shape), add(m, log(lSafe))),
                              [batch, heads, seqQ]);
    dispose([m, l, acc]);
    return { out, logSumExp };
  });
}

function blockBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, logSumExp: Tensor, dy: Tensor,
                       scorer: BlockScorer): Tensor[] {
  const { batch, seqQ, seqK, heads, kvHeads, group, headDim, headDimV, attrs } = scorer.problem;
  return tidy(() => {
    const q4 = reshape(toHeadMajor(q), [batch, kvHeads, group * seqQ, headDim]);
    const k4 = toHeadMajor(k), v4 = toHeadMajor(v);
    const dO4 = reshape(toHeadMajor(dy), [batch, kvHeads, group * seqQ, headDimV]);
    // Backward preprocess: D = rowsum(dO * O).
    const Drow = reshape(sum(mul(dy, out), -1), [batch, seqQ, heads]);
    const D5 = reshape(transpose(Drow, [0, 2, 1]), [batch, kvHeads, group, seqQ, 1]);
    const logSumExp5 = reshape(logSumExp, [batch, kvHeads, group, seqQ, 1]);
    const logSumExpSafe = whereAnyRank(equal(logSumExp5, -Infinity), zerosLike(logSumExp5), logSumExp5);
    let dq4: Tensor = zeros([batch, kvHeads, group * seqQ, headDim]);
    const dkBlocks: Tensor[] = [], dvBlocks: Tensor[] = [];
    // Keys past every sequence's length get zero dk, dv without being visited.
    const keysUsed = scorer.lens ? Math.max(0, ...scorer.lens.k) : seqK;
    for (let j0 = 0; j0 < keysUsed; j0 += KEY_BLOCK) {
      const j1 = Math.min(keysUsed, j0 + KEY_BLOCK);
      const step = tidy(() => {
        const { s5, capTanh, kb, len } = scorer.scores(q4, j0, j1, k4);
        const p = tidy(() => exp(sub(s5, logSumExpSafe)));      // recomputed; 0 where masked
        s5.dispose();
        const drop = scorer.dropout(j0, j1);
        const vb = slice(v4, [0, 0, j0, 0], [-1, -1, len, -1]);
        const dvB = tidy(() => matMul(reshape(drop ? mul(p, drop) : p, [batch, kvHeads, group * seqQ, len]), dO4,
                                      true, false));
        let dp = tidy(() => reshape(matMul(dO4, vb, false, true), [batch, kvHeads, group, seqQ, len]));
        if (drop) { const dpd = mul(dp, drop); dispose([dp, drop]); dp = dpd; }
        let ds = tidy(() => mul(p, sub(dp, D5)));
        dispose([dp, p]);
        if (capTanh) {
          const dsc = tidy(() => mul(ds, sub(scalar(1), mul(capTanh, capTanh))));
          dispose([ds, capTanh]);
          ds = dsc;
        }
        const ds4 = reshape(mul(ds, scalar(attrs.scale)), [batch, kvHeads, group * seqQ, len]);
        ds.dispose();
        return { dqB: matMul(ds4, kb), dkB: matMul(ds4, q4, true, false), dvB };
      });
      const dqNew = add(dq4, step.dqB);
      dispose([dq4, step.dqB]);
      dq4 = dqNew;
      dkBlocks.push(step.dkB); dvBlocks.push(step.dvB);
    }
    // A fully masked row has zero dq, even where a masked key was NaN or infinite (0 * NaN).
    const emptyRows = broadcastTo(reshape(equal(logSumExp5, -Infinity), [batch, kvHeads, group * seqQ, 1]), dq4.shape);
    const dq = transpose(reshape(whereAnyRank(emptyRows, zerosLike(dq4), dq4), [batch, heads, seqQ, headDim]), [0, 2, 1, 3]);
    if (keysUsed < seqK) {
      dkBlocks.push(zeros([batch, kvHeads, seqK - keysUsed, headDim]));
      dvBlocks.push(zeros([batch, kvHeads, seqK - keysUsed, headDimV]));
    }
    const dk = transpose(concat(dkBlocks, 2), [0, 2, 1, 3]);
    const dv = transpose(concat(dvBlocks, 2), [0, 2, 1, 3]);
    return [dq, dk, dv];
  });
}

/**
 * Memory-lean attention from tfjs ops with a recompute gradient. Same contract as the
 * `FlashAttention` kernel (alibiSlopes and mask are used only when attrs.hasAlibi / hasMask); with
 * seqLayout 'padded' or 'packed', ranges holds the sequences' (start row, length) pairs.
 */
export function flashAttentionBlockwise(q: Tensor4D, k: Tensor4D, v: Tensor4D, alibiSlopes: Tensor1D,
                                        mask: Tensor4D, attrs: FlashAttentionAttrs,
                                        ranges: SequenceRanges | null = null): { output: Tensor4D; logSumExp: Tensor3D } {
  if (attrs.seqLayout === 'packed') return packedBlockwise(q, k, v, alibiSlopes, mask, attrs, ranges!);
  const problem = attentionProblem(q.shape, k.shape, v.shape, attrs);
  const { batch, seqQ, heads, kvHeads, group, headDimV } = problem;
  const lens = problem.flags.seqRanges ? { q: lengthsOf(ranges!.q), k: lengthsOf(ranges!.k) } : null;
  const outSize = batch * seqQ * heads * headDimV;
  // customGrad returns one tensor: output and logSumExp travel packed, then are split below.
  const packed = customGrad((...args: Array<Tensor | GradSaveFunc>) => {
    const [qx, kx, vx] = args as Tensor[];
    const save = args[3] as GradSaveFunc;
    const slopes5 = attrs.hasAlibi ? reshape(alibiSlopes, [1, kvHeads, group, 1, 1]) : null;
    const scorer = new BlockScorer(problem, slopes5, attrs.hasMask ? mask : null, lens);
    const { out, logSumExp } = blockForward(qx, kx, vx, scorer);
    save([qx, kx, vx, out, logSumExp, alibiSlopes, mask]);
    return {
      value: concat([reshape(out, [-1]), reshape(logSumExp, [-1])]),
      gradFunc: (dPacked: Tensor, saved: Tensor[]): Tensor[] => {
        const [sq, sk, sv, sOut, sLogSumExp, sSlopes, sMask] = saved;
        const bwScorer = new BlockScorer(problem, attrs.hasAlibi ? reshape(sSlopes, [1, kvHeads, group, 1, 1]) : null,
                                         attrs.hasMask ? sMask : null, lens);
        // The logSumExp part of the gradient is ignored, as in the kernels' registered gradient.
        const dy = reshape(slice(dPacked, 0, outSize), sOut.shape);
        return blockBackward(sq, sk, sv, sOut, sLogSumExp, dy, bwScorer);
      },
    };
  })(...(lens ? withoutPadding(q, k, v, lens) : [q, k, v]));
  const output = reshape(slice(packed, 0, outSize), [batch, seqQ, heads, headDimV]) as Tensor4D;
  const logSumExp = reshape(slice(packed, outSize, batch * heads * seqQ), [batch, heads, seqQ]) as Tensor3D;
  packed.dispose();
  return { output, logSumExp };
}

/**
 * q, k, v with the rows past each length zeroed: those rows do not exist, so whatever they hold
 * (NaN included) must not reach a product with a zero weight (0 * NaN) in the block matMuls.
 * where()'s gradient passes zero to them, which is theirs by the contract.
 */
function withoutPadding(q: Tensor4D, k: Tensor4D, v: Tensor4D, lens: PaddedLengths): Tensor4D[] {
  const inside = (x: Tensor4D, l: number[]) => {
    const [b, n] = x.shape;
    const rows = new Uint8Array(b * n);
    l.forEach((len, i) => rows.fill(1, i * n, i * n + len));
    return tidy(() => whereAnyRank(broadcastTo(tensor(rows, [b, n, 1, 1], 'bool'), x.shape), x, zerosLike(x)) as Tensor4D);
  };
  return [inside(q, lens.q), inside(k, lens.k), inside(v, lens.k)];
}

/**
 * Packed sequences: gathered into a padded batch [numSeqs, longest, ...] (a row index per slot;
 * slots past a length read row 0, then zeroed), run as 'padded', and gathered back. Gather's
 * gradient scatters the padded gradients back to the packed rows, so no gradient code is added.
 */
function packedBlockwise(q: Tensor4D, k: Tensor4D, v: Tensor4D, alibiSlopes: Tensor1D, mask: Tensor4D,
                         attrs: FlashAttentionAttrs, ranges: SequenceRanges): { output: Tensor4D; logSumExp: Tensor3D } {
  const { numSeqs, maxSeqLenQ, maxSeqLenK } = attrs;
  const [, totalQ, heads] = q.shape;
  const totalK = k.shape[1];
  const headDimV = v.shape[3];
  /** Packed row of every padded slot (0 past a length), and padded slot of every packed row. */
  const slots = (r: Int32Array, longest: number) => {
    const rowOfSlot = new Int32Array(numSeqs * longest), slotOfRow: number[] = [];
    for (let s = 0; s < numSeqs; s++) {
      for (let i = 0; i < r[2 * s + 1]; i++) { rowOfSlot[s * longest + i] = r[2 * s] + i; slotOfRow.push(s * longest + i); }
    }
    return { rowOfSlot: tensor(rowOfSlot, [rowOfSlot.length], 'int32'), slotOfRow: tensor(slotOfRow, [slotOfRow.length], 'int32') };
  };
  const sq = slots(ranges.q, maxSeqLenQ), sk = slots(ranges.k, maxSeqLenK);
  const toPadded = (x: Tensor4D, rows: number, longest: number, idx: Tensor) => {
    const [, , h, d] = x.shape;
    return reshape(gather(reshape(x, [rows, h, d]), idx), [numSeqs, longest, h, d]) as Tensor4D;
  };
  const qp = toPadded(q, totalQ, maxSeqLenQ, sq.rowOfSlot);
  const kp = toPadded(k, totalK, maxSeqLenK, sk.rowOfSlot);
  const vp = toPadded(v, totalK, maxSeqLenK, sk.rowOfSlot);
  const paddedRanges = (r: Int32Array, longest: number) => r.map((x, i) => (i % 2 === 0 ? (i / 2) * longest : x));
  const padded = flashAttentionBlockwise(qp, kp, vp, alibiSlopes, mask, { ...attrs, seqLayout: 'padded' },
                                         { q: paddedRanges(ranges.q, maxSeqLenQ), k: paddedRanges(ranges.k, maxSeqLenK) });
  const output = reshape(gather(reshape(padded.output, [numSeqs * maxSeqLenQ, heads, headDimV]), sq.slotOfRow),
                         [1, totalQ, heads, headDimV]) as Tensor4D;
  const lseRows = reshape(transpose(padded.logSumExp, [1, 0, 2]), [heads, numSeqs * maxSeqLenQ]);
  const logSumExp = reshape(gather(lseRows, sq.slotOfRow, 1), [1, heads, totalQ]) as Tensor3D;
  dispose([qp, kp, vp, padded.output, padded.logSumExp, lseRows, sq.rowOfSlot, sq.slotOfRow, sk.rowOfSlot, sk.slotOfRow]);
  return { output, logSumExp };
}
