/**
 * WebGPU forward kernel: one fused WGSL program (FlashAttention-2's forward). A workgroup owns a
 * tile of query rows of one (batch, head); the forward inner loop streams key/value tiles through
 * workgroup memory, keeps the running row max, row sum and output accumulator in registers
 * (online softmax), and writes the output and the row log-sum-exp once. Nothing seqQ x seqK is
 * ever stored. Key tiles a query tile cannot see (causal, sliding window) are skipped whole.
 * Two variants of the inner loop (tiles.ts chooses, as measured): tiled (whole-head-dim Q, K, V
 * tiles in workgroup memory) and staged (the backward's chunked products, staged_wgsl.ts), whose
 * workgroup memory does not grow with the head dim.
 *
 * With sequence lengths (seqLayout 'padded' or 'packed', a compile-time option: sequenceWGSL),
 * workgroup z is a sequence: its queries and keys are read from (start, length) ranges, key tiles
 * past its keys are never loaded, a query tile past its queries does no key work and (padded)
 * writes out 0 and logsumexp -Infinity, so the cost follows sum(lenQ * lenK). Both variants
 * (tiled and staged) take the same row tile, sequence and epilogue.
 */
import { KernelConfig, KernelFunc, TensorInfo, util } from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, FlashAttention, FlashAttentionAttrs, FlashAttentionInputs, OptionFlags,
} from '../../src/contract';
import { optionHelpers } from './attention_wgsl';
import { maybeFlashDecodeWebGPU } from './flash_decode_webgpu';
import {
  checkBindingSizes, checkDispatch, deviceLimits, FlashProgram, inputsByName, logSumExpNotComputed, optionalInputNames, runProgram,
  shaderKeyOf, unpack, unroll, WebGPUBackend, withDeviceErrorCheck,
} from './program';
import { subgroupMinSizeOf } from './subgroups';
import {
  accumulatePhase, keptBitsWGSL as stagedKeptBitsWGSL, pipelinedLoopWGSL, scorePhase,
  stagedConstants, storeTransposedWGSL, zeroAccumulators, zeroScores,
} from './staged_wgsl';
import { backwardLayout, chooseTiles, paddedVec4, threadsOf, TileConfig, vec4Count } from './tiles';
import { optionUniforms } from './uniforms';
import {
  dotTileWGSL, keptAt, keptBitsWGSL, keyRangeWGSL, keyTileLoopWGSL, loadTileWGSL, logSumExpIndexWGSL,
  passPrologueWGSL, prefetchedTileWGSL, registersWGSL, rowReduction, rowShuffleWidth, sequenceWGSL, tileConstants,
  vec4sPerThread, weightedSumWGSL,
} from './wgsl_fragments';

export class FlashForwardProgram extends FlashProgram {
  variableNames: string[];
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms: string;

  /**
   * subgroupSize: the smallest subgroup size of the device when the row reductions may use
   * subgroup shuffles (see subgroups.ts), 0 for the workgroup-memory path.
   */
  constructor(private s: AttentionProblem, private tiles: TileConfig, private flags: OptionFlags,
              private subgroupSize = 0) {
    super();
    this.variableNames = ['q', 'k', 'v', ...optionalInputNames(flags)];
    this.uniforms = optionUniforms(s).fields;
    // One packed output: out [B, Nq, H, Dv], then logsumexp [B, H, Nq] (problem.ts has the shapes);
    // out alone where logSumExp is not needed (no unpack copies then).
    this.outputShape = s.computeLogSumExp ? [util.sizeFromShape(s.outShape) + util.sizeFromShape(s.logSumExpShape)] : s.outShape;
    this.workgroupSize = [threadsOf(tiles), 1, 1];
    const rowTiles = Math.ceil(s.seqQ / tiles.rows);
    // Windowed programs pair query tiles (see getUserCode).
    this.dispatch = [flags.window ? Math.ceil(rowTiles / 2) : rowTiles, s.heads, s.batch];
    this.shaderKey = shaderKeyOf('flashAttentionForward', {
      headDim: s.headDim, headDimV: s.headDimV, ...tiles, ...flags,
      shuffleWidth: rowShuffleWidth(tiles, subgroupSize), logSumExp: s.computeLogSumExp,
    });
  }

  getUserCode(): string {
    return this.tiles.staged ? this.stagedUserCode() : this.tiledUserCode();
  }

  /**
   * The staged forward: the backward's chunked products (staged_wgsl.ts). Each key tile runs
   * S = Q K^T in DEPTH-column chunks into a register block per thread, the online softmax on that
   * block (row max and sum across a row's threads by rowReduction), P^T through workgroup memory,
   * and O += P V in ACC_DEPTH-row chunks into the thread's accumulator registers.
   */
  private stagedUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const reduce = rowReduction(t, this.subgroupSize);
    const dv4 = vec4Count(headDimV);
    const vj = vec4sPerThread(t, dv4);
    const depth = backwardLayout(t, headDim, headDimV).depth;
    const qRows = { src: 'q', start: 'qStart', seq: 'nq', heads: 'heads', head: 'h', width: 'D', first: 'row0', mul: 'uniforms.scale' };
    const kCols = { src: 'k', start: 'kStart', seq: 'nk', heads: 'kvHeads', head: 'kvh', width: 'D', first: 'col0' };
    const vCols = { src: 'v', start: 'kStart', seq: 'nk', heads: 'kvHeads', head: 'kvh', width: 'DV', first: 'col0' };
    const phases = [scorePhase(t, depth, 's', headDim, qRows, kCols),
                    accumulatePhase(t, depth, [{ out: 'acc', weights: 'pTile', perThread: vj, load: { ...vCols, width4: dv4 } }])];
    return `
    ${stagedConstants(t, headDim, headDimV)}
    var<workgroup> pTile : array<array<vec4<f32>, ROWS_STAGE4>, COLS>;
    ${reduce.shared ? 'var<workgroup> rowPartial : array<array<f32, TCP>, ROWS>;' : ''}
    ${optionHelpers(f)}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      ${this.rowTileWGSL()}
      ${this.rowStateWGSL(vj)}

      // Forward inner loop.
      ${keyRangeWGSL(f, 'row0', 'row1')}
      let firstCol = (colBegin / COLS) * COLS;
      ${pipelinedLoopWGSL(t, depth, 'firstCol', 'colEnd', phases, zeroScores(t, ['s']), { 0: `
        ${stagedKeptBitsWGSL(t, true)}
        ${this.rowMaxWGSL(reduce, c => `col0 + tc * CPT + ${c}`)}
        ${reduce.barrier}
        ${this.probabilitiesWGSL(reduce, vj, c => `col0 + tc * CPT + ${c}`, (r, c, p) => `s_${r}_${c} = ${p};`)}
        // The next step's barriers order these writes before the O += P V steps read them.
        ${storeTransposedWGSL(t, 'pTile', (r, c) => `s_${r}_${c}`)}` })}

      ${this.epilogueWGSL(reduce, vj)}
      ${f.window ? '}   // the paired query tiles' : ''}
    }`;
  }

  private tiledUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const reduce = rowReduction(t, this.subgroupSize);
    const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
    const vj = vec4sPerThread(t, dv4);
    const stream = { count: t.cols, threads: threadsOf(t), start: 'kStart', seqLen: 'nk', heads: 'kvHeads', head: 'kvh' };
    // With sharedKV, K and V take turns in kvTile: the next K is prefetched as usual, and this
    // tile's V is loaded into registers at the top of the iteration (its latency hidden by the
    // scores) and stored once every thread is done reading K.
    const shared = !!t.sharedKV;
    const [kTile, vTile] = shared ? ['kvTile', 'kvTile'] : ['kTile', 'vTile'];
    const kPre = prefetchedTileWGSL({ name: 'kNext', tile: kTile, src: 'k', width: 'D', width4: d4, ...stream });
    const vPre = prefetchedTileWGSL({ name: shared ? 'vNow' : 'vNext', tile: vTile, src: 'v', width: 'DV', width4: dv4, ...stream });
    return `
    ${tileConstants(t, headDim, headDimV)}
    // Rows read by several thread rows at once are padded to an odd vec4 count (no bank conflicts).
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    ${shared ? `var<workgroup> kvTile : array<array<vec4<f32>, ${Math.max(paddedVec4(headDim), dv4)}>, COLS>;` : `
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, COLS>;
    var<workgroup> vTile : array<array<vec4<f32>, DV4>, COLS>;`}
    var<workgroup> pTile : array<array<vec4<f32>, COLS4P>, ROWS>;
    ${reduce.shared ? 'var<workgroup> rowPartial : array<array<f32, TCP>, ROWS>;' : ''}
    ${optionHelpers(f)}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      ${this.rowTileWGSL()}
      ${loadTileWGSL({ tile: 'qTile', src: 'q', width: 'D', width4: 'D4', count: 'ROWS', first: 'row0',
                       start: 'qStart', seqLen: 'nq', heads: 'heads', head: 'h', mul: 'uniforms.scale' })}

      ${this.rowStateWGSL(vj)}

      // Forward inner loop.
      ${keyTileLoopWGSL(f, shared ? [kPre] : [kPre, vPre], `
        ${shared ? `${vPre.declare}
        ${vPre.load('col0')}` : ''}
        ${zeroScores(t, ['s'])}
        ${dotTileWGSL(t, 's', 'qTile', kTile, d4, t.unroll)}

        ${keptBitsWGSL(t, true)}
        ${this.rowMaxWGSL(reduce, c => `col0 + tc + TC * ${c}`)}
        ${shared ? `workgroupBarrier();   // every thread is done with K: V takes its place
        ${vPre.store}` : reduce.barrier}

        ${this.probabilitiesWGSL(reduce, vj, c => `col0 + tc + TC * ${c}`,
                                 (r, c, p) => `pTile[tr * RPT + ${r}][(tc + TC * ${c}) / 4][(tc + TC * ${c}) % 4] = ${p};`)}
        workgroupBarrier();
        ${weightedSumWGSL(t, 'acc', 'pTile', vTile, dv4)}
        workgroupBarrier();
      `)}

      ${this.epilogueWGSL(reduce, vj)}
      ${f.window ? '}   // the paired query tiles' : ''}
    }`;
  }

  /**
   * The opening of main() after the prologue: the workgroup's head (h, kvh, slope) and query tile
   * [row0, row1). Windowed programs take two query tiles, closed by rowTileEndWGSL.
   */
  private rowTileWGSL(): string {
    const f = this.flags;
    return `
      let h = i32(wgId.y);
      let b = i32(wgId.z);
      let kvh = h / (heads / kvHeads);
      ${sequenceWGSL(f)}
      let slope = slopeOf(h);
      let numRowTiles = (qExtent + ROWS - 1) / ROWS;
      ${f.window ? `
      // Under a causal mask query tile i sees i + 1 key tiles: a workgroup takes tiles
      // n - 1 - x and x (heaviest first), so every workgroup does about the same work.
      ${f.seqRanges ? `// The grid is sized for the longest sequence: a shorter one leaves workgroups idle.
      let pairedTiles = clamp(numRowTiles - 2 * i32(wgId.x), 0, 2);`
                    : 'let pairedTiles = select(2, 1, 2 * i32(wgId.x) + 1 == numRowTiles);'}
      for (var pairIdx = 0; pairIdx < pairedTiles; pairIdx++) {
      workgroupBarrier();   // the previous tile's threads are done with the workgroup tiles
      let rowTile = select(numRowTiles - 1 - i32(wgId.x), i32(wgId.x), pairIdx == 1);` : `
      let rowTile = i32(wgId.x);`}
      let row0 = rowTile * ROWS;
      let row1 = min(row0 + ROWS, nq);`;
  }

  /** The online softmax's per-row state: max m, sum l, dropout key, output accumulator acc. */
  private rowStateWGSL(vj: number): string {
    const t = this.tiles;
    return `
      ${registersWGSL('m', 'f32', t.rowsPerThread)}
      ${registersWGSL('l', 'f32', t.rowsPerThread)}
      ${registersWGSL('rowKey', 'u32', t.rowsPerThread)}
      ${unroll(t.rowsPerThread, r => `m_${r} = NEG_BIG; l_${r} = 0.0; rowKey_${r} = dropoutRowKey(b * heads + h, row0 + tr * RPT + ${r});`)}
      ${zeroAccumulators(t, 'acc', vj)}`;
  }

  /**
   * The scores s_r_c of this thread's block (key column colOf(c), keep bits in keptBits) after
   * options and masking, and each row's max published for rowReduction (a barrier must follow).
   */
  private rowMaxWGSL(reduce: ReturnType<typeof rowReduction>, colOf: (c: number) => string): string {
    const t = this.tiles;
    return `
        ${reduce.declare('rowMax')}
        ${unroll(t.rowsPerThread, r => `{
          let i = row0 + tr * RPT + ${r};
          var rowMax = NEG_BIG;
          ${unroll(t.colsPerThread, c => `{
            let j = ${colOf(c)};
            let x = select(NEG_BIG, scoreOf(s_${r}_${c}, i, j, off, slope), ${keptAt(t, r, c)});
            s_${r}_${c} = x;
            rowMax = max(rowMax, select(x, NEG_BIG, poisons(x)));
          }`)}
          ${reduce.publish('rowMax', 'max', r)}
        }`)}`;
  }

  /**
   * Online softmax on this thread's block: the new row max, the rescale of what was accumulated
   * under the old one, and each probability p (dropped) handed to storeP(r, c, p).
   */
  private probabilitiesWGSL(reduce: ReturnType<typeof rowReduction>, vj: number, colOf: (c: number) => string,
                            storeP: (r: number, c: number, p: string) => string): string {
    const t = this.tiles;
    return unroll(t.rowsPerThread, r => `{
          ${reduce.combine('tileMax', 'rowMax', 'max', r)}
          let newMax = max(m_${r}, tileMax);
          // Both maxima are finite (NEG_BIG while nothing is kept; NaN and +inf scores are left
          // out of them), so alpha is never NaN.
          let alpha = exp(m_${r} - newMax);
          m_${r} = newMax;
          l_${r} *= alpha;
          ${unroll(vj, jj => `acc_${r}_${jj} *= alpha;`, ' ')}
          ${unroll(t.colsPerThread, c => `{
            let x = s_${r}_${c};
            // Masking follows the keep bit, never a comparison of the score: a masked score
            // contributes exactly 0, and a kept NaN or +inf one a NaN (the composite's
            // exp(inf - inf)) that makes the row's sum, output and logsumexp NaN.
            let p = select(select(0.0, exp(x - newMax), ${keptAt(t, r, c)}), quietNaN(x), poisons(x));
            l_${r} += p;   // the normaliser ignores dropout
            ${storeP(r, c, `p * dropoutScale(rowKey_${r}, ${colOf(c)})`)}
          }`)}
        }`);
  }

  /**
   * After the inner loop: each thread summed its own columns, so the row sums are combined across
   * the row's threads, then the output (acc_r_jj holds vec4 column tc + TC * jj) and logsumexp.
   */
  private epilogueWGSL(reduce: ReturnType<typeof rowReduction>, vj: number): string {
    const rows = (body: (r: number) => string) => unroll(this.tiles.rowsPerThread, body);
    return `
      ${reduce.declare('rowSum')}
      ${rows(r => `{
        var rowSum = l_${r};
        ${reduce.publish('rowSum', 'add', r)}
      }`)}
      ${reduce.barrier}
      ${this.s.computeLogSumExp ? 'let outSize = rowsQ * heads * DV;' : ''}
      ${rows(r => `{
        let row = tr * RPT + ${r};
        let i = row0 + row;
        ${reduce.combine('rowSum', 'rowSum', 'add', r)}
        if (i < qExtent) {
          // A row with no kept key (sum exactly 0; rows past the sequence's length keep none):
          // out 0 (even where acc holds 0 * NaN of a masked value), logsumexp -Infinity. A NaN
          // sum is not empty: it propagates.
          let empty = rowSum == 0.0;
          let inv = 1.0 / select(rowSum, 1.0, empty);
          let base = ((qStart + i) * heads + h) * DV;
          ${unroll(vj, jj => `{
            let c4 = tc + TC * ${jj};
            let o = select(acc_${r}_${jj} * inv, vec4<f32>(0.0), empty);
            ${unroll(4, e => `if (c4 * 4 + ${e} < DV) { result[base + c4 * 4 + ${e}] = o[${e}]; }`)}
          }`)}
          ${this.s.computeLogSumExp ? `if (tc == 0) {
            // log(NaN) is not NaN everywhere (SwiftShader: +inf), so a NaN sum is passed on itself.
            let lse = select(m_${r} + log(rowSum), rowSum, poisons(rowSum));
            result[outSize + ${logSumExpIndexWGSL('h', 'i')}] = select(lse, -uniforms.INFINITY, empty);
          }` : ''}
        }
      }`)}`;
  }
}

export function flashAttentionWebGPU(
    args: { inputs: FlashAttentionInputs, backend: WebGPUBackend, attrs: FlashAttentionAttrs }): TensorInfo[] {
  const { inputs, backend, attrs } = args;
  // A few query rows over many keys: the split-KV kernel (flash_decode_webgpu.ts) when it picks them.
  const decoded = maybeFlashDecodeWebGPU(args);
  if (decoded) return decoded;
  const { q, k, v, mask } = inputs;
  const s = attentionProblem(q.shape, k.shape, v.shape, attrs);
  const limits = deviceLimits(backend);
  const subgroupSize = subgroupMinSizeOf(backend);
  const program = new FlashForwardProgram(s, chooseTiles('forward', limits, s.headDim, s.headDimV, subgroupSize),
                                          s.flags, subgroupSize);
  checkBindingSizes(limits, [['q', q.shape], ['k', k.shape], ['v', v.shape], ['mask', mask.shape],
                             ['the output and logsumexp', program.outputShape]]);
  checkDispatch(limits, program.dispatch);
  return withDeviceErrorCheck(backend, () => {
    // out then logSumExp packed, or out alone (FlashForwardProgram.outputShape).
    const written = runProgram(backend, program, inputsByName(program.variableNames, inputs as unknown as Record<string, TensorInfo>),
                               optionUniforms(s).data);
    return s.computeLogSumExp ? unpack(backend, written, [s.outShape, s.logSumExpShape])
        : [written, logSumExpNotComputed(backend, s.logSumExpShape)];
  });
}

export const flashAttentionWebGPUConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'webgpu',
  kernelFunc: flashAttentionWebGPU as unknown as KernelFunc,
};
