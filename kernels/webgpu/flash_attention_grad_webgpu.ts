/**
 * WebGPU backward kernel (FlashAttention-2), named after the steps of Triton's fused-attention
 * tutorial:
 *  1. backward preprocess: D = rowsum(dO * O), packed with the saved logsumexp as "stats";
 *  2. dK/dV pass: a workgroup owns a key/value tile of one kv head and streams the query tiles of
 *     every query head in its group, recomputing P from q, k and logsumexp, and accumulates dK and
 *     dV in registers; GQA's sum over the group happens in that loop;
 *  3. dQ pass: a workgroup owns a query tile and streams key/value tiles, accumulating dQ.
 * No atomics: every output element is written by one thread after a fixed-order loop, so the same
 * inputs give the same bits.
 */
import { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, FlashAttentionAttrs, FlashAttentionGrad, FlashAttentionGradInputs, OptionFlags,
} from '../../src/contract';
import {
  keyTileLoopWGSL, loadTileWGSL, prefetchedTileWGSL, optionHelpers, queryRangeWGSL,
} from './attention_wgsl';
import {
  dotTileWGSL, keptAt, keptBitsWGSL, passPrologueWGSL, registersWGSL, tileConstants,
  vec4sPerThread, weightedSumWGSL,
} from './flash_attention_webgpu';
import {
  checkBindingSizes, checkDispatch, deviceLimits, FlashProgram, runProgram, shaderKeyOf, unpack,
  unroll, WebGPUBackend, withDeviceErrorCheck,
} from './program';
import { chooseTiles, threadsOf, TileConfig, vec4Count } from './tiles';
import { optionUniforms } from './uniforms';

/** Backward preprocess: stats = [logsumexp (copied), D = rowsum(dO * O)], each [B, H, Nq]. */

/**
 * The recompute step both backward passes share: this thread's registers of the score tile
 * S = q·k and of dP = dO·v, and the keep bits of its elements. The dQ pass holds query rows
 * (rowsAreQueries); the dK/dV pass holds key rows, so it computes the transposed tiles.
 */
function recomputeTileWGSL(t: TileConfig, rowsAreQueries: boolean, d4: number, dv4: number): string {
  const [sRows, sCols, dpRows, dpCols] = rowsAreQueries ? ['qTile', 'kTile', 'doTile', 'vTile']
                                                        : ['kTile', 'qTile', 'vTile', 'doTile'];
  const zero = unroll(t.rowsPerThread, r => unroll(t.colsPerThread, c => `s_${r}_${c} = 0.0; dp_${r}_${c} = 0.0;`));
  return `
        ${registersWGSL('s', 'f32', t.rowsPerThread, t.colsPerThread)}
        ${registersWGSL('dp', 'f32', t.rowsPerThread, t.colsPerThread)}
        ${zero}
        ${dotTileWGSL(t, 's', sRows, sCols, d4, t.unroll)}
        ${dotTileWGSL(t, 'dp', dpRows, dpCols, dv4, t.unroll)}
        ${keptBitsWGSL(t, rowsAreQueries)}`;
}

class BackwardPreprocessProgram extends FlashProgram {
  variableNames = ['o', 'dy', 'logsumexp'];
  outputShape: number[];
  workgroupSize: [number, number, number] = [64, 1, 1];
  dispatch: [number, number, number];
  dispatchLayout = { x: [0] };
  size = true;

  constructor(private s: AttentionProblem) {
    super();
    this.outputShape = [2 * s.batch * s.heads * s.seqQ];
    this.dispatch = [Math.ceil(s.batch * s.heads * s.seqQ / 64), 1, 1];
    this.shaderKey = shaderKeyOf('flashAttentionBackwardPreprocess', { headDimV: s.headDimV });
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      let rowCount = uniforms.size / 2;
      if (index < rowCount) {
        let nq = uniforms.oShape.y;
        let heads = uniforms.oShape.z;
        let i = index % nq;
        let bh = index / nq;
        let base = ((bh / heads * nq + i) * heads + bh % heads) * ${this.s.headDimV};
        var d = 0.0;
        for (var c = 0; c < ${this.s.headDimV}; c++) { d += dy[base + c] * o[base + c]; }
        result[index] = logsumexp[index];
        result[rowCount + index] = d;
      }
    }`;
  }
}

const GRAD_INPUTS = ['q', 'k', 'v', 'alibiSlopes', 'mask', 'dy', 'stats'];

/** Reads this thread's rows' logsumexp and D from stats (0 past the sequence end). */
const statsOf = (rowsOfThread: number) => unroll(rowsOfThread, r => `{
      let i = row0 + tr * RPT + ${r};
      if (i < nq) {
        lse_${r} = stats[(b * heads + h) * nq + i];
        delta_${r} = stats[batch * heads * nq + (b * heads + h) * nq + i];
      }
    }`);

/** dQ pass: rows are queries, columns keys. */
class DQProgram extends FlashProgram {
  variableNames = GRAD_INPUTS;
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms: string;

  constructor(private s: AttentionProblem, private tiles: TileConfig, private flags: OptionFlags) {
    super();
    this.uniforms = optionUniforms(s).fields;
    this.outputShape = [s.batch, s.seqQ, s.heads, s.headDim];
    this.workgroupSize = [threadsOf(tiles), 1, 1];
    this.dispatch = [Math.ceil(s.seqQ / tiles.rows), s.heads, s.batch];
    this.shaderKey = shaderKeyOf('flashAttentionBackwardDQ', {
      headDim: s.headDim, headDimV: s.headDimV, ...tiles, ...flags,
    });
  }

  getUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
    const dj = vec4sPerThread(t, d4);
    const rows = (body: (r: number) => string) => unroll(t.rowsPerThread, body);
    const cols = (body: (c: number) => string) => unroll(t.colsPerThread, body);
    const stream = { count: t.cols, threads: threadsOf(t), seqLen: 'nk', heads: 'kvHeads', head: 'kvh' };
    const kPre = prefetchedTileWGSL({ name: 'kNext', tile: 'kTile', src: 'k', width: 'D', width4: d4, ...stream });
    const vPre = prefetchedTileWGSL({ name: 'vNext', tile: 'vTile', src: 'v', width: 'DV', width4: dv4, ...stream });
    return `
    ${tileConstants(t, headDim, headDimV)}
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    var<workgroup> doTile : array<array<vec4<f32>, DV4P>, ROWS>;
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, COLS>;
    var<workgroup> vTile : array<array<vec4<f32>, DV4P>, COLS>;
    var<workgroup> dsTile : array<array<vec4<f32>, COLS4P>, ROWS>;
    ${optionHelpers(f)}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      let h = i32(wgId.y);
      let b = i32(wgId.z);
      let kvh = h / (heads / kvHeads);
      let off = nk - nq;
      let slope = slopeOf(h);
      let numRowTiles = (nq + ROWS - 1) / ROWS;
      let rowTile = ${f.window ? 'numRowTiles - 1 - i32(wgId.x)' : 'i32(wgId.x)'};
      let row0 = rowTile * ROWS;
      let row1 = min(row0 + ROWS, nq);
      ${loadTileWGSL({ tile: 'qTile', src: 'q', width: 'D', width4: 'D4', count: 'ROWS', first: 'row0',
                       seqLen: 'nq', heads: 'heads', head: 'h', mul: 'uniforms.scale' })}
      ${loadTileWGSL({ tile: 'doTile', src: 'dy', width: 'DV', width4: 'DV4', count: 'ROWS', first: 'row0',
                       seqLen: 'nq', heads: 'heads', head: 'h' })}
      ${registersWGSL('lse', 'f32', t.rowsPerThread)}
      ${registersWGSL('delta', 'f32', t.rowsPerThread)}
      ${registersWGSL('rowKey', 'u32', t.rowsPerThread)}
      ${registersWGSL('dq', 'vec4<f32>', t.rowsPerThread, dj)}
      ${rows(r => `lse_${r} = 0.0; delta_${r} = 0.0; rowKey_${r} = dropoutRowKey(b * heads + h, row0 + tr * RPT + ${r});
      ${unroll(dj, jj => `dq_${r}_${jj} = vec4<f32>(0.0);`, ' ')}`)}
      ${statsOf(t.rowsPerThread)}

      ${keyTileLoopWGSL(f, [kPre, vPre], `        ${recomputeTileWGSL(t, true, d4, dv4)}
        ${rows(r => `{
          let row = tr * RPT + ${r};
          let i = row0 + row;
          ${cols(c => `{
            let col = tc + TC * ${c};
            let j = col0 + col;
            let sg = scoreAndGrad(s_${r}_${c}, i, j, off, slope);
            let kept = ${keptAt(t, r, c)};
            let p = select(0.0, exp(sg.x - lse_${r}), kept);
            let ds = p * (dp_${r}_${c} * dropoutScale(rowKey_${r}, j) - delta_${r}) * sg.y;
            dsTile[row][col / 4][col % 4] = ds;
          }`)}
        }`)}
        workgroupBarrier();
        ${weightedSumWGSL(t, 'dq', 'dsTile', 'kTile', d4)}
        workgroupBarrier();
      `)}

      ${rows(r => `{
        let i = row0 + tr * RPT + ${r};
        if (i < nq) {
          let base = ((b * nq + i) * heads + h) * D;
          ${unroll(dj, jj => `{
            let c4 = tc + TC * ${jj};
            ${unroll(4, e => `if (c4 * 4 + ${e} < D) { result[base + c4 * 4 + ${e}] = dq_${r}_${jj}[${e}] * uniforms.scale; }`)}
          }`)}
        }
      }`)}
    }`;
  }
}

/** dK/dV pass: rows are keys of one kv head, columns queries of every head in its group. */
class DKDVProgram extends FlashProgram {
  variableNames = GRAD_INPUTS;
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms: string;

  constructor(private s: AttentionProblem, private tiles: TileConfig, private flags: OptionFlags) {
    super();
    this.uniforms = optionUniforms(s).fields;
    // One packed output: dk [B, Nk, Hkv, D], then dv [B, Nk, Hkv, Dv].
    this.outputShape = [s.batch * s.seqK * s.kvHeads * (s.headDim + s.headDimV)];
    this.workgroupSize = [threadsOf(tiles), 1, 1];
    this.dispatch = [Math.ceil(s.seqK / tiles.rows), s.kvHeads, s.batch];
    this.shaderKey = shaderKeyOf('flashAttentionBackwardDKDV', {
      headDim: s.headDim, headDimV: s.headDimV, ...tiles, ...flags,
    });
  }

  getUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
    const dkj = vec4sPerThread(t, d4), dvj = vec4sPerThread(t, dv4);
    const rows = (body: (r: number) => string) => unroll(t.rowsPerThread, body);
    const cols = (body: (c: number) => string) => unroll(t.colsPerThread, body);
    const stream = { count: t.cols, threads: threadsOf(t), seqLen: 'nq', heads: 'heads', head: 'h' };
    const qPre = prefetchedTileWGSL({ name: 'qNext', tile: 'qTile', src: 'q', width: 'D', width4: d4,
                                      mul: 'uniforms.scale', ...stream });
    const doPre = prefetchedTileWGSL({ name: 'doNext', tile: 'doTile', src: 'dy', width: 'DV', width4: dv4, ...stream });
    const write = (acc: string, n4: number, width: string, base: string, scale = '') => unroll(n4, jj => `{
            let c4 = tc + TC * ${jj};
            ${unroll(4, e => `if (c4 * 4 + ${e} < ${width}) { result[${base} + c4 * 4 + ${e}] = ${acc}_${jj}[${e}]${scale}; }`)}
          }`);
    return `
    ${tileConstants(t, headDim, headDimV)}
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, ROWS>;
    var<workgroup> vTile : array<array<vec4<f32>, DV4P>, ROWS>;
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, COLS>;
    var<workgroup> doTile : array<array<vec4<f32>, DV4P>, COLS>;
    var<workgroup> pTile : array<array<vec4<f32>, COLS4P>, ROWS>;
    var<workgroup> colLse : array<f32, COLS>;
    var<workgroup> colDelta : array<f32, COLS>;
    var<workgroup> colKey : array<u32, COLS>;
    ${optionHelpers(f)}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      let kvh = i32(wgId.y);
      let b = i32(wgId.z);
      let group = heads / kvHeads;
      let off = nk - nq;
      let row0 = i32(wgId.x) * ROWS;
      let row1 = min(row0 + ROWS, nk);
      ${loadTileWGSL({ tile: 'kTile', src: 'k', width: 'D', width4: 'D4', count: 'ROWS', first: 'row0',
                       seqLen: 'nk', heads: 'kvHeads', head: 'kvh' })}
      ${loadTileWGSL({ tile: 'vTile', src: 'v', width: 'DV', width4: 'DV4', count: 'ROWS', first: 'row0',
                       seqLen: 'nk', heads: 'kvHeads', head: 'kvh' })}
      ${registersWGSL('dk', 'vec4<f32>', t.rowsPerThread, dkj)}
      ${registersWGSL('dv', 'vec4<f32>', t.rowsPerThread, dvj)}
      ${rows(r => `${unroll(dkj, jj => `dk_${r}_${jj} = vec4<f32>(0.0);`, ' ')}
      ${unroll(dvj, jj => `dv_${r}_${jj} = vec4<f32>(0.0);`, ' ')}`)}
      ${queryRangeWGSL(f, 'row0', 'row1')}

      ${qPre.declare}
      ${doPre.declare}
      // GQA: the query heads of this kv head's group, in a fixed order (deterministic sum).
      for (var hg = 0; hg < group; hg++) {
        let h = kvh * group + hg;
        let slope = slopeOf(h);
        let firstCol = (rowBegin / COLS) * COLS;
        if (firstCol < rowEnd) {
          ${qPre.load('firstCol')}
          ${doPre.load('firstCol')}
        }
        for (var col0 = firstCol; col0 < rowEnd; col0 += COLS) {
          ${qPre.store}
          ${doPre.store}
          for (var idx = tid; idx < COLS; idx += NT) {
            let i = col0 + idx;
            var lseI = 0.0;
            var deltaI = 0.0;
            if (i < nq) {
              lseI = stats[(b * heads + h) * nq + i];
              deltaI = stats[batch * heads * nq + (b * heads + h) * nq + i];
            }
            colLse[idx] = lseI;
            colDelta[idx] = deltaI;
            colKey[idx] = dropoutRowKey(b * heads + h, i);
          }
          workgroupBarrier();
          if (col0 + COLS < rowEnd) {
            ${qPre.load('col0 + COLS')}
            ${doPre.load('col0 + COLS')}
          }
          ${recomputeTileWGSL(t, false, d4, dv4)}
          ${rows(r => `{
            let row = tr * RPT + ${r};
            let j = row0 + row;
            ${cols(c => `{
              let col = tc + TC * ${c};
              let i = col0 + col;
              let sg = scoreAndGrad(s_${r}_${c}, i, j, off, slope);
              let kept = ${keptAt(t, r, c)};
              let p = select(0.0, exp(sg.x - colLse[col]), kept);
              let drop = dropoutScale(colKey[col], j);
              pTile[row][col / 4][col % 4] = p * drop;
              s_${r}_${c} = p * (dp_${r}_${c} * drop - colDelta[col]) * sg.y;   // dS
            }`)}
          }`)}
          workgroupBarrier();
          ${weightedSumWGSL(t, 'dv', 'pTile', 'doTile', dv4)}
          workgroupBarrier();
          ${rows(r => cols(c => `pTile[tr * RPT + ${r}][(tc + TC * ${c}) / 4][(tc + TC * ${c}) % 4] = s_${r}_${c};`))}
          workgroupBarrier();
          // qTile holds scale * q, so this is dK = scale * dS^T q.
          ${weightedSumWGSL(t, 'dk', 'pTile', 'qTile', d4)}
          workgroupBarrier();
        }
      }

      let dkSize = batch * nk * kvHeads * D;
      ${rows(r => `{
        let j = row0 + tr * RPT + ${r};
        if (j < nk) {
          let dkBase = ((b * nk + j) * kvHeads + kvh) * D;
          let dvBase = dkSize + ((b * nk + j) * kvHeads + kvh) * DV;
          ${write(`dk_${r}`, dkj, 'D', 'dkBase')}
          ${write(`dv_${r}`, dvj, 'DV', 'dvBase')}
        }
      }`)}
    }`;
  }
}

export function flashAttentionGradWebGPU(
    args: { inputs: FlashAttentionGradInputs, backend: WebGPUBackend, attrs: FlashAttentionAttrs }): TensorInfo[] {
  const { inputs, backend, attrs } = args;
  const { q, k, v, alibiSlopes, mask, out, logSumExp, dy } = inputs as unknown as Record<string, TensorInfo>;
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
    const stats = runProgram(backend, preprocess, [out, dy, logSumExp], []);
    const passInputs = [q, k, v, alibiSlopes, mask, dy, stats];
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
