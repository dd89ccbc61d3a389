/**
 * WebGPU backward kernel (FlashAttention-2), named after the steps of Triton's fused-attention
 * tutorial:
 *  1. backward preprocess: D = rowsum(dO * O), packed with the saved logsumexp as "stats";
 *  2. dK/dV pass: a workgroup owns a block of keys of one kv head and streams the query blocks of
 *     every query head in its group, recomputing P^T = exp(K Q^T - logsumexp) and
 *     dS^T = P^T * (V dO^T - D), and accumulates dV += P^T dO and dK += dS^T Q in registers;
 *     GQA's sum over the group happens in that loop;
 *  3. dQ pass: a workgroup owns a block of queries and streams key blocks, accumulating dQ += dS K.
 * No atomics: every output element is written by one thread after a fixed-order loop, so the same
 * inputs give the same bits.
 *
 * With sequence lengths (a compile-time option, as in the forward) both passes work inside each
 * sequence's ranges: tiles past a length are skipped, and rows past it get dQ = 0 (queries) or
 * dK = dV = 0 (keys), written even where a partial tile summed 0 * NaN.
 *
 * Both tiled passes are built as small matrix products (the way a SIMT GEMM is): every operand is
 * staged through workgroup memory in chunks of `depth` head-dim columns (or `depth` rows for the
 * accumulating products), so workgroup memory does not grow with the head dim, and each thread
 * computes a rowsPerThread x colsPerThread block of the score tile and of its accumulators from
 * vec4 reads of both operands (rowsPerThread * colsPerThread FMAs per (rowsPerThread +
 * colsPerThread) floats read from workgroup memory). The resident block's operands (Q and dO in
 * the dQ pass, K and V in the dK/dV pass) are re-read from L2 per streamed block: every pass is
 * far from bandwidth-bound, and this is what lets headDim 128 and 256 keep 64-row tiles.
 */
import { KernelConfig, KernelFunc, TensorInfo, util } from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, FlashAttentionAttrs, FlashAttentionGrad, FlashAttentionGradInputs, OptionFlags,
} from '../../src/contract';
import { optionHelpers } from './attention_wgsl';
import {
  checkBindingSizes, checkDispatch, deviceLimits, FlashProgram, inputsByName, optionalInputNames, runProgram,
  shaderKeyOf, unpack, RANGE_NAMES, unroll, WebGPUBackend, withDeviceErrorCheck, withSeqRanges,
} from './program';
import { backwardLayout, chooseTiles, threadsOf, TileConfig, vec4Count } from './tiles';
import { optionUniforms } from './uniforms';
import {
  accumulatePhase, keptBitsWGSL, keptAt, pipelinedLoopWGSL, scorePhase, stagedConstants, storeTransposedWGSL,
  writeRowsWGSL, zeroAccumulators, zeroScores,
} from './staged_wgsl';
import {
  keyRangeWGSL, logSumExpIndexWGSL, PASS_NAMES, passPrologueWGSL, queryRangeWGSL, RangeReader, registersWGSL,
  sequenceWGSL,
} from './wgsl_fragments';

/**
 * Backward preprocess: stats = [logsumexp (copied), D = rowsum(dO * O)], each shaped as logsumexp
 * ([B, H, Nq], or [1, H, totalQ] for packed sequences: the same index arithmetic with B = 1).
 *
 * With sequence ranges the passes would bind two more buffers than WebGPU's default 8 storage
 * buffers per stage allow, so the ranges travel in stats: it is then int32, logsumexp and D
 * stored as their bits (exact, NaN payloads and -Infinity included), followed by
 * (startQ, lenQ, startK, lenK) per sequence (STATS_RANGES reads them).
 */
class BackwardPreprocessProgram extends FlashProgram {
  variableNames: string[];
  outputShape: number[];
  workgroupSize: [number, number, number] = [64, 1, 1];
  dispatch: [number, number, number];
  dispatchLayout = { x: [0] };
  size = true;

  constructor(private s: AttentionProblem) {
    super();
    this.variableNames = withSeqRanges(['o', 'dy', 'logsumexp'], s.flags, RANGE_NAMES);
    const rows = util.sizeFromShape(s.logSumExpShape);
    this.outputShape = [2 * rows + (s.flags.seqRanges ? 4 * s.batch : 0)];
    this.dispatch = [Math.ceil(Math.max(rows, s.batch) / 64), 1, 1];
    this.shaderKey = shaderKeyOf('flashAttentionBackwardPreprocess', { headDimV: this.s.headDimV, seqRanges: s.flags.seqRanges });
  }

  getUserCode(): string {
    const ranges = this.s.flags.seqRanges;
    const asStat = (x: string) => (ranges ? `bitcast<i32>(${x})` : x);
    return `
    fn main(index : i32) {
      ${ranges ? `
      let lse = uniforms.logsumexpShape;
      let rowCount = lse.x * lse.y * lse.z;
      if (index < uniforms.seqRangesQShape.x) {
        let at = 2 * rowCount + 4 * index;
        result[at] = seqRangesQ[2 * index];
        result[at + 1] = seqRangesQ[2 * index + 1];
        result[at + 2] = seqRangesK[2 * index];
        result[at + 3] = seqRangesK[2 * index + 1];
      }` : `
      let rowCount = uniforms.size / 2;`}
      if (index < rowCount) {
        let nq = uniforms.oShape.y;
        let heads = uniforms.oShape.z;
        let i = index % nq;
        let bh = index / nq;
        let base = ((bh / heads * nq + i) * heads + bh % heads) * ${this.s.headDimV};
        var d = 0.0;
        for (var c = 0; c < ${this.s.headDimV}; c++) { d += dy[base + c] * o[base + c]; }
        result[index] = ${asStat('logsumexp[index]')};
        result[rowCount + index] = ${asStat('d')};
      }
    }`;
  }
}

/** The passes' inputs: with sequence ranges, stats carries them (BackwardPreprocessProgram). */
/** The dK/dV and dQ passes' inputs (the ranges travel in stats, from the backward preprocess). */
const gradInputNames = (f: OptionFlags) => ['q', 'k', 'v', ...optionalInputNames(f, false), 'dy', 'stats'];

/** logsumexp (which 0) or D (1) of query row i of head h, from stats. */
function statWGSL(f: OptionFlags, which: 0 | 1, h: string, i: string): string {
  const at = `${which ? 'rowsQ * heads + ' : ''}${logSumExpIndexWGSL(h, i)}`;
  return f.seqRanges ? `bitcast<f32>(stats[${at}])` : `stats[${at}]`;
}
/** The passes' sequences: their ranges follow logsumexp and D in stats. */
const STATS_RANGES: RangeReader = (b, field) => `stats[2 * rowsQ * heads + 4 * ${b} + ${field}]`;

/**
 * The recomputed probability of a score under its row's logsumexp, with the forward's
 * non-finite semantics: a masked pair is exactly 0 (its dS too), a kept NaN or +inf score, or a
 * NaN logsumexp (a poisoned row), gives NaN (exp(NaN) is not NaN everywhere: SwiftShader gives
 * +inf), so NaN reaches dq, dk and dv wherever the composite's gradients are NaN.
 */
const PROBABILITY_WGSL = `
    fn probability(score : f32, lse : f32, kept : bool) -> f32 {
      let z = score - lse;
      return select(0.0, select(exp(z), quietNaN(z), poisons(z) | poisons(score) | poisons(lse)), kept);
    }
    // logsumexp -Infinity: a row with no kept key (its dq is exactly 0, even with NaN in k).
    fn emptyRow(lse : f32) -> bool { return bitcast<u32>(lse) == 0xff800000u; }`;

/** dQ pass: rows are queries, columns keys. */
class DQProgram extends FlashProgram {
  variableNames: string[];
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms: string;

  constructor(private s: AttentionProblem, private tiles: TileConfig, private flags: OptionFlags) {
    super();
    this.variableNames = gradInputNames(flags);
    this.uniforms = optionUniforms(s).fields;
    this.outputShape = [s.outShape[0], s.outShape[1], s.heads, s.headDim];   // q's
    this.workgroupSize = [threadsOf(tiles), 1, 1];
    this.dispatch = [Math.ceil(s.seqQ / tiles.rows), s.heads, s.batch];
    this.shaderKey = shaderKeyOf('flashAttentionBackwardDQ', {
      headDim: s.headDim, headDimV: s.headDimV, ...tiles, ...flags,
    });
  }

  getUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const d4 = vec4Count(headDim);
    const tc = t.cols / t.colsPerThread;
    const dj = Math.ceil(d4 / tc);
    const rows = (body: (r: number) => string) => unroll(t.rowsPerThread, body);
    const cols = (body: (c: number) => string) => unroll(t.colsPerThread, body);
    const depth = backwardLayout(t, headDim, headDimV).depth;
    const qRows = { src: 'q', start: 'qStart', seq: 'nq', heads: 'heads', head: 'h', width: 'D', first: 'row0', mul: 'uniforms.scale' };
    const dyRows = { src: 'dy', start: 'qStart', seq: 'nq', heads: 'heads', head: 'h', width: 'DV', first: 'row0' };
    const kCols = { src: 'k', start: 'kStart', seq: 'nk', heads: 'kvHeads', head: 'kvh', width: 'D', first: 'col0' };
    const vCols = { src: 'v', start: 'kStart', seq: 'nk', heads: 'kvHeads', head: 'kvh', width: 'DV', first: 'col0' };
    // qs are pre-multiplied by scale: s = scale * q . k.
    const phases = [scorePhase(t, depth, 's', headDim, qRows, kCols), scorePhase(t, depth, 'dp', headDimV, dyRows, vCols),
                    accumulatePhase(t, depth, [
      { out: 'dq', weights: 'dsTile', perThread: dj, load: { ...kCols, width4: d4 } }])];
    return `
    ${stagedConstants(t, headDim, headDimV)}
    var<workgroup> dsTile : array<array<vec4<f32>, ROWS_STAGE4>, COLS>;
    ${optionHelpers(f)}
    ${PROBABILITY_WGSL}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      let h = i32(wgId.y);
      let b = i32(wgId.z);
      let kvh = h / (heads / kvHeads);
      ${sequenceWGSL(f, PASS_NAMES, STATS_RANGES)}
      let slope = slopeOf(h);
      let numRowTiles = (qExtent + ROWS - 1) / ROWS;
      // Under a window the last query tiles see the most keys: start those first${f.seqRanges
          ? ` (a grid sized for the
      // longest sequence has tiles past a shorter one: those stay past it, and do nothing)` : ''}.
      let rowTile = ${!f.window ? 'i32(wgId.x)' : f.seqRanges
          ? 'select(i32(wgId.x), numRowTiles - 1 - i32(wgId.x), i32(wgId.x) < numRowTiles)'
          : 'numRowTiles - 1 - i32(wgId.x)'};
      let row0 = rowTile * ROWS;
      let row1 = min(row0 + ROWS, nq);
      ${registersWGSL('lse', 'f32', t.rowsPerThread)}
      ${registersWGSL('delta', 'f32', t.rowsPerThread)}
      ${registersWGSL('rowKey', 'u32', t.rowsPerThread)}
      ${rows(r => `{
        let i = row0 + tr * RPT + ${r};
        lse_${r} = 0.0; delta_${r} = 0.0;
        rowKey_${r} = dropoutRowKey(b * heads + h, i);
        if (i < nq) {
          lse_${r} = ${statWGSL(f, 0, 'h', 'i')};
          delta_${r} = ${statWGSL(f, 1, 'h', 'i')};
        }
      }`)}
      ${zeroAccumulators(t, 'dq', dj)}

      ${keyRangeWGSL(f, 'row0', 'row1')}
      let firstCol = (colBegin / COLS) * COLS;
      ${pipelinedLoopWGSL(t, depth, 'firstCol', 'colEnd', phases, zeroScores(t), { 1: `
        ${keptBitsWGSL(t, true)}
        ${rows(r => `{
          let i = row0 + tr * RPT + ${r};
          ${cols(c => `{
            let j = col0 + tc * CPT + ${c};
            let sg = scoreAndGrad(s_${r}_${c}, i, j, off, slope);
            let kept = ${keptAt(t, r, c)};
            let p = probability(sg.x, lse_${r}, kept);
            s_${r}_${c} = select(0.0, p * (dp_${r}_${c} * dropoutScale(rowKey_${r}, j) - delta_${r}) * sg.y, kept);   // dS
          }`)}
        }`)}
        // The next step's barriers order these writes before the dQ += dS K steps read them.
        ${storeTransposedWGSL(t, 'dsTile', (r, c) => `s_${r}_${c}`)}` })}
      ${rows(r => unroll(dj, m => `dq_${r}_${m} = select(dq_${r}_${m}, vec4<f32>(0.0), emptyRow(lse_${r}));`, ' '))}
      ${writeRowsWGSL(t, 'dq', dj, { base: '0', first: 'row0', start: 'qStart', extent: 'qExtent', heads: 'heads', head: 'h',
                                     width: 'D', scale: 'uniforms.scale', zeroFrom: f.seqRanges ? 'nq' : undefined })}
    }`;
  }
}

/** dK/dV pass: rows are keys of one kv head, columns queries of every head in its group. */
class DKDVProgram extends FlashProgram {
  variableNames: string[];
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms: string;

  constructor(private s: AttentionProblem, private tiles: TileConfig, private flags: OptionFlags) {
    super();
    this.variableNames = gradInputNames(flags);
    this.uniforms = optionUniforms(s).fields;
    // One packed output: dk [B, Nk, Hkv, D], then dv [B, Nk, Hkv, Dv].
    this.outputShape = [s.rowsK * s.kvHeads * (s.headDim + s.headDimV)];
    this.workgroupSize = [threadsOf(tiles), 1, 1];
    this.dispatch = [Math.ceil(s.seqK / tiles.rows), s.kvHeads, s.batch];
    this.shaderKey = shaderKeyOf('flashAttentionBackwardDKDV', {
      headDim: s.headDim, headDimV: s.headDimV, ...tiles, ...flags,
    });
  }

  getUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
    const tc = t.cols / t.colsPerThread;
    const dkj = Math.ceil(d4 / tc), dvj = Math.ceil(dv4 / tc);
    const rows = (body: (r: number) => string) => unroll(t.rowsPerThread, body);
    const cols = (body: (c: number) => string) => unroll(t.colsPerThread, body);
    const depth = backwardLayout(t, headDim, headDimV).depth;
    // Keys past the sequence's length get dK = dV = 0 (with padded lengths, where they exist).
    const keyRows = { first: 'row0', start: 'kStart', extent: 'kExtent', heads: 'kvHeads', head: 'kvh',
                      zeroFrom: f.seqRanges ? 'nk' : undefined };
    const kRows = { src: 'k', start: 'kStart', seq: 'nk', heads: 'kvHeads', head: 'kvh', width: 'D', first: 'row0' };
    const vRows = { src: 'v', start: 'kStart', seq: 'nk', heads: 'kvHeads', head: 'kvh', width: 'DV', first: 'row0' };
    const qCols = { src: 'q', start: 'qStart', seq: 'nq', heads: 'heads', head: 'h', width: 'D', first: 'col0', mul: 'uniforms.scale' };
    const dyCols = { src: 'dy', start: 'qStart', seq: 'nq', heads: 'heads', head: 'h', width: 'DV', first: 'col0' };
    // dV += P^T dO, dK += dS^T (scale q): dK = scale * dS^T q.
    const phases = [scorePhase(t, depth, 's', headDim, kRows, qCols), scorePhase(t, depth, 'dp', headDimV, vRows, dyCols),
                    accumulatePhase(t, depth, [
      { out: 'dv', weights: 'pTile', perThread: dvj, load: { ...dyCols, width4: dv4 } },
      { out: 'dk', weights: 'dsTile', perThread: dkj, load: { ...qCols, width4: d4 } }])];
    return `
    ${stagedConstants(t, headDim, headDimV)}
    var<workgroup> pTile : array<array<vec4<f32>, ROWS_STAGE4>, COLS>;
    var<workgroup> dsTile : array<array<vec4<f32>, ROWS_STAGE4>, COLS>;
    ${optionHelpers(f)}
    ${PROBABILITY_WGSL}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      let kvh = i32(wgId.y);
      let b = i32(wgId.z);
      let group = heads / kvHeads;
      ${sequenceWGSL(f, PASS_NAMES, STATS_RANGES)}
      let row0 = i32(wgId.x) * ROWS;
      let row1 = min(row0 + ROWS, nk);
      ${zeroAccumulators(t, 'dk', dkj)}
      ${zeroAccumulators(t, 'dv', dvj)}
      ${queryRangeWGSL(f, 'row0', 'row1')}

      // GQA: the query heads of this kv head's group, in a fixed order (deterministic sum).
      for (var hg = 0; hg < group; hg++) {
        let h = kvh * group + hg;
        let slope = slopeOf(h);
        let firstCol = (rowBegin / COLS) * COLS;
        ${pipelinedLoopWGSL(t, depth, 'firstCol', 'rowEnd', phases, zeroScores(t), { 1: `
          ${keptBitsWGSL(t, false)}
          ${cols(c => `{
            let i = col0 + tc * CPT + ${c};
            var lseI = 0.0;
            var deltaI = 0.0;
            if (i < nq) {
              lseI = ${statWGSL(f, 0, 'h', 'i')};
              deltaI = ${statWGSL(f, 1, 'h', 'i')};
            }
            let colKey = dropoutRowKey(b * heads + h, i);
            ${rows(r => `{
              let j = row0 + tr * RPT + ${r};
              let sg = scoreAndGrad(s_${r}_${c}, i, j, off, slope);
              let kept = ${keptAt(t, r, c)};
              let p = probability(sg.x, lseI, kept);
              let drop = dropoutScale(colKey, j);
              s_${r}_${c} = select(0.0, p * (dp_${r}_${c} * drop - deltaI) * sg.y, kept);   // dS
              dp_${r}_${c} = p * drop;                                    // dropped P
            }`)}
          }`)}
          ${storeTransposedWGSL(t, 'pTile', (r, c) => `dp_${r}_${c}`)}
          ${storeTransposedWGSL(t, 'dsTile', (r, c) => `s_${r}_${c}`)}` })}
      }

      let dkSize = rowsK * kvHeads * D;
      ${writeRowsWGSL(t, 'dk', dkj, { ...keyRows, base: '0', width: 'D' })}
      ${writeRowsWGSL(t, 'dv', dvj, { ...keyRows, base: 'dkSize', width: 'DV' })}
    }`;
  }
}

export function flashAttentionGradWebGPU(
    args: { inputs: FlashAttentionGradInputs, backend: WebGPUBackend, attrs: FlashAttentionAttrs }): TensorInfo[] {
  const { inputs, backend, attrs } = args;
  const { q, k, v, alibiSlopes, mask, out, logSumExp, dy, seqRangesQ, seqRangesK } = inputs as unknown as Record<string, TensorInfo>;
  const s = attentionProblem(q.shape, k.shape, v.shape, attrs);
  const limits = deviceLimits(backend);
  const flags = s.flags;
  const dqProgram = new DQProgram(s, chooseTiles('dq', limits, s.headDim, s.headDimV), flags);
  const dkdvProgram = new DKDVProgram(s, chooseTiles('dkdv', limits, s.headDim, s.headDimV), flags);
  const preprocess = new BackwardPreprocessProgram(s);
  checkBindingSizes(limits, [['q', q.shape], ['k', k.shape], ['v', v.shape], ['mask', mask.shape],
                             ['dy', dy.shape], ['dk and dv', dkdvProgram.outputShape],
                             ['logsumexp and D', preprocess.outputShape]]);
  checkDispatch(limits, dqProgram.dispatch);
  checkDispatch(limits, dkdvProgram.dispatch);
  const uniforms = optionUniforms(s).data;
  return withDeviceErrorCheck(backend, () => {
    const stats = runProgram(backend, preprocess, withSeqRanges([out, dy, logSumExp], flags, () => [seqRangesQ, seqRangesK]),
                             [], flags.seqRanges ? 'int32' : 'float32');
    const passInputs = inputsByName(dkdvProgram.variableNames, { q, k, v, alibiSlopes, mask, dy, stats });
    const dkdv = runProgram(backend, dkdvProgram, passInputs, uniforms);
    const [dk, dv] = unpack(backend, dkdv, [k.shape, v.shape]);
    // Buffers of disposed tensors return to the pool only when the queue is submitted: submitting
    // before the dQ pass keeps the packed dK/dV buffer and dQ from being live together.
    backend.endComputePassEncoder();
    backend.ensureCommandEncoderReady();
    backend.submitQueue();
    const dq = runProgram(backend, dqProgram, passInputs, uniforms);
    backend.disposeData(stats.dataId);
    return [dq, dk, dv];
  });
}

export const flashAttentionGradWebGPUConfig: KernelConfig = {
  kernelName: FlashAttentionGrad,
  backendName: 'webgpu',
  kernelFunc: flashAttentionGradWebGPU as unknown as KernelFunc,
};
