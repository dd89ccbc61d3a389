/**
 * WebGPU forward kernel: one fused WGSL program (FlashAttention-2's forward). A workgroup owns a
 * tile of query rows of one (batch, head); the forward inner loop streams key/value tiles through
 * workgroup memory, keeps the running row max, row sum and output accumulator in registers
 * (online softmax), and writes the output and the row log-sum-exp once. Nothing seqQ x seqK is
 * ever stored. Key tiles a query tile cannot see (causal, sliding window) are skipped whole.
 */
import { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import {
  AttentionProblem, attentionProblem, FlashAttention, FlashAttentionAttrs, FlashAttentionInputs, OptionFlags,
} from '../../src/contract';
import {
  keyTileLoopWGSL, loadTileWGSL, NEG_BIG, prefetchedTileWGSL, NEG_HALF, optionHelpers,
} from './attention_wgsl';
import {
  checkBindingSizes, checkDispatch, deviceLimits, FlashProgram, runProgram, shaderKeyOf, unpack,
  unroll, WebGPUBackend, withDeviceErrorCheck,
} from './program';
import { subgroupMinSizeOf } from './subgroups';
import { chooseTiles, paddedVec4, threadsOf, TileConfig, vec4Count } from './tiles';
import { optionUniforms } from './uniforms';

/** WGSL constants of a tiled pass: tile sizes, thread grid and head dims. */
export function tileConstants(t: TileConfig, headDim: number, headDimV: number): string {
  const tc = t.cols / t.colsPerThread;
  return `
    const ROWS = ${t.rows};
    const COLS = ${t.cols};
    const COLS4 = ${t.cols / 4};
    const COLS4P = ${(t.cols / 4) | 1};
    const TCP = ${tc | 1};
    const RPT = ${t.rowsPerThread};
    const TC = ${tc};
    const NT = ${threadsOf(t)};
    const D = ${headDim};
    const D4 = ${vec4Count(headDim)};
    const D4P = ${paddedVec4(headDim)};
    const DV = ${headDimV};
    const DV4 = ${vec4Count(headDimV)};
    const DV4P = ${paddedVec4(headDimV)};
    const NEG_BIG = ${NEG_BIG};
    const NEG_HALF = ${NEG_HALF};
    ${UNIFORM_WORKGROUP_ID_DECL}`;
}

/**
 * WGSL accumulating acc[r][c] += dot(rowTile[row r][x], colTile[col c][x]) over x < width4 vec4s,
 * for this thread's RPT rows and colsPerThread strided columns.
 */
export function dotTileWGSL(t: TileConfig, acc: string, rowTile: string, colTile: string,
                            width4: number, step: number): string {
  const cpt = t.colsPerThread;
  return `
    for (var x0 = 0; x0 < ${width4}; x0 += ${step}) {
      ${unroll(step, u => `{
        let x = x0 + ${u};
        ${unroll(cpt, c => `let cv${c} = ${colTile}[tc + TC * ${c}][x];`)}
        ${unroll(t.rowsPerThread, r => `{
          let rv = ${rowTile}[tr * RPT + ${r}][x];
          ${unroll(cpt, c => `${acc}_${r}_${c} += dot(rv, cv${c});`, ' ')}
        }`)}
      }`)}
    }`;
}

/**
 * WGSL accumulating out[r][jj] += sum_col weights[row r][col] * values[col][vec4 column], for this
 * thread's vec4 columns tc + TC * jj (jj < perThread) of a `width4`-vec4-wide value tile.
 */
export function weightedSumWGSL(t: TileConfig, out: string, weights: string, values: string,
                                width4: number): string {
  const perThread = Math.ceil(width4 / (t.cols / t.colsPerThread));
  return `
    for (var k4 = 0; k4 < COLS4; k4++) {
      ${unroll(t.rowsPerThread, r => `let w${r} = ${weights}[tr * RPT + ${r}][k4];`)}
      ${unroll(4, e => `{
        ${unroll(perThread, jj => `let vv${jj} = ${values}[k4 * 4 + ${e}][min(tc + TC * ${jj}, ${width4 - 1})];`)}
        ${unroll(t.rowsPerThread, r => unroll(perThread, jj => `${out}_${r}_${jj} += w${r}[${e}] * vv${jj};`, ' '))}
      }`)}
    }`;
}

/**
 * WGSL computing keptBits: bit (r * colsPerThread + c) says whether this thread's element
 * (r, c) is kept. Whole tiles inside the window (and inside both sequences, without a mask) skip
 * the per-element test in one uniform branch; the test itself is branch-free.
 */
export function keptBitsWGSL(t: TileConfig, rowsAreQueries: boolean): string {
  const [i0, i1, j0, j1] = rowsAreQueries ? ['row0', 'row0 + ROWS', 'col0', 'col0 + COLS']
                                          : ['col0', 'col0 + COLS', 'row0', 'row0 + ROWS'];
  const row = (r: number) => `row0 + tr * RPT + ${r}`, col = (c: number) => `col0 + tc + TC * ${c}`;
  return `
    var keptBits = 0xffffffffu;
    if (!tileFullyKept(${i0}, ${i1}, ${j0}, ${j1}, nq, nk, off)) {
      keptBits = 0u;
      ${unroll(t.rowsPerThread, r => unroll(t.colsPerThread, c => {
        const [i, j] = rowsAreQueries ? [row(r), col(c)] : [col(c), row(r)];
        return `keptBits |= select(0u, ${1 << (r * t.colsPerThread + c) >>> 0}u, isKept(b, h, ${i}, ${j}, nq, nk, off));`;
      }))}
    }`;
}
export const keptAt = (t: TileConfig, r: number, c: number) =>
    `((keptBits & ${(1 << (r * t.colsPerThread + c)) >>> 0}u) != 0u)`;

/**
 * Declares per-thread registers name_r (or name_r_c) as separate variables, so no private array
 * can be left in local memory (on the H100 this measured the same as constant-indexed arrays;
 * SwiftShader compiled it several times faster).
 */
export function registersWGSL(name: string, type: string, rows: number, cols = 0): string {
  const names = cols === 0 ? Array.from({ length: rows }, (_, r) => `${name}_${r}`)
      : Array.from({ length: rows * cols }, (_, i) => `${name}_${Math.floor(i / cols)}_${i % cols}`);
  return names.map(n => `var ${n} : ${type};`).join(' ');
}

/** The vec4 columns a thread owns of a `width4`-vec4-wide accumulator row. */
export const vec4sPerThread = (t: TileConfig, width4: number) => Math.ceil(width4 / (t.cols / t.colsPerThread));

/**
 * tfjs hands the workgroup id over through a private variable, which WGSL's uniformity analysis
 * treats as non-uniform; loops that contain barriers must be bounded by uniform values, so the id
 * is passed through workgroup memory with workgroupUniformLoad (declares wgId).
 */
export const UNIFORM_WORKGROUP_ID = `
      if (localIndex == 0u) { sharedWorkgroupId = workgroupId; }
      let wgId = workgroupUniformLoad(&sharedWorkgroupId);`;
export const UNIFORM_WORKGROUP_ID_DECL = 'var<workgroup> sharedWorkgroupId : vec3<u32>;';

/** Statically uses every binding: tfjs binds all inputs, and an 'auto' layout drops unused ones. */
export const touchBindings = (names: string[]) => names.map(n => `_ = ${n}[0];`).join(' ');

/**
 * The opening of every pass's main(): bindings touched, the uniform workgroup id (wgId), the
 * thread's tile coordinates (tid, tr, tc) and the shapes (batch, nq, heads, nk, kvHeads).
 */
export const passPrologueWGSL = (variableNames: string[]) => `
      ${touchBindings(variableNames)}
      ${UNIFORM_WORKGROUP_ID}
      let tid = i32(localIndex);
      let tc = tid % TC;
      let tr = tid / TC;
      let batch = uniforms.qShape.x;
      let nq = uniforms.qShape.y;
      let heads = uniforms.qShape.z;
      let nk = uniforms.kShape.y;
      let kvHeads = uniforms.kShape.z;`;

/**
 * How many adjacent threads of a row reduce by subgroupShuffleXor before the rest goes through
 * workgroup memory: the largest power of two dividing both the row's thread count TC and the
 * device's smallest subgroup size (1: workgroup memory only). A row's threads are consecutive
 * local indices (tid = tr * TC + tc), so aligned runs of this many lie in one subgroup at any
 * subgroup size the device may use.
 */
export function rowShuffleWidth(t: TileConfig, subgroupSize: number): number {
  const tc = t.cols / t.colsPerThread;
  let w = 1;
  while (subgroupSize > 0 && w * 2 <= subgroupSize && tc % (w * 2) === 0) w *= 2;
  return w;
}

/**
 * WGSL reducing per-thread values across the TC threads of each row: publish (after each
 * thread's own value is in a variable), then barrier, then combine (declares the result). With
 * shuffles of width TC no workgroup memory and no barrier are needed; with width 1 this is the
 * workgroup-memory path exactly.
 */
export function rowReduction(t: TileConfig, subgroupSize: number) {
  const w = rowShuffleWidth(t, subgroupSize);
  const tc = t.cols / t.colsPerThread;
  const shared = w < tc;
  const op = (kind: 'max' | 'add', a: string, b: string) => kind === 'max' ? `max(${a}, ${b})` : `${a} + ${b}`;
  const shuffles = (v: string, kind: 'max' | 'add') =>
      unroll(Math.log2(w), k => `${v} = ${op(kind, v, `subgroupShuffleXor(${v}, ${1 << k}u)`)};`, ' ');
  return {
    /** Whether the row partials go through workgroup memory (rowPartial is declared). */
    shared,
    /** Declares where publish leaves the reduced values when no workgroup memory is used. */
    declare: (v: string) => shared ? '' : registersWGSL(`${v}Reduced`, 'f32', t.rowsPerThread),
    publish: (v: string, kind: 'max' | 'add', r: number) => `
      ${shuffles(v, kind)}
      ${shared ? `rowPartial[tr * RPT + ${r}][tc] = ${v};` : `${v}Reduced_${r} = ${v};`}`,
    barrier: shared ? 'workgroupBarrier();' : '',
    combine: (out: string, kind: 'max' | 'add', r: number) => shared ? `
      var ${out} = ${kind === 'max' ? 'NEG_BIG' : '0.0'};
      for (var t = 0; t < TC; t += ${w}) { ${out} = ${op(kind, out, `rowPartial[row][t]`)}; }`
      : `let ${out} = ${kind === 'max' ? 'rowMax' : 'rowSum'}Reduced_${r};`,
  };
}

export class FlashForwardProgram extends FlashProgram {
  variableNames = ['q', 'k', 'v', 'alibiSlopes', 'mask'];
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
    this.uniforms = optionUniforms(s).fields;
    // One packed output: out [B, Nq, H, Dv], then logsumexp [B, H, Nq].
    this.outputShape = [s.batch * s.seqQ * s.heads * s.headDimV + s.batch * s.heads * s.seqQ];
    this.workgroupSize = [threadsOf(tiles), 1, 1];
    const rowTiles = Math.ceil(s.seqQ / tiles.rows);
    // Windowed programs pair query tiles (see getUserCode).
    this.dispatch = [flags.window ? Math.ceil(rowTiles / 2) : rowTiles, s.heads, s.batch];
    this.shaderKey = shaderKeyOf('flashAttentionForward', {
      headDim: s.headDim, headDimV: s.headDimV, ...tiles, ...flags,
      shuffleWidth: rowShuffleWidth(tiles, subgroupSize),
    });
  }

  getUserCode(): string {
    const t = this.tiles, f = this.flags, { headDim, headDimV } = this.s;
    const reduce = rowReduction(t, this.subgroupSize);
    const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
    const vj = vec4sPerThread(t, dv4);
    const rows = (body: (r: number) => string) => unroll(t.rowsPerThread, body);
    const cols = (body: (c: number) => string) => unroll(t.colsPerThread, body);
    const stream = { count: t.cols, threads: threadsOf(t), seqLen: 'nk', heads: 'kvHeads', head: 'kvh' };
    const kPre = prefetchedTileWGSL({ name: 'kNext', tile: 'kTile', src: 'k', width: 'D', width4: d4, ...stream });
    const vPre = prefetchedTileWGSL({ name: 'vNext', tile: 'vTile', src: 'v', width: 'DV', width4: dv4, ...stream });
    return `
    ${tileConstants(t, headDim, headDimV)}
    // Rows read by several thread rows at once are padded to an odd vec4 count (no bank conflicts).
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, COLS>;
    var<workgroup> vTile : array<array<vec4<f32>, DV4>, COLS>;
    var<workgroup> pTile : array<array<vec4<f32>, COLS4P>, ROWS>;
    ${reduce.shared ? 'var<workgroup> rowPartial : array<array<f32, TCP>, ROWS>;' : ''}
    ${optionHelpers(f)}

    fn main() {
      ${passPrologueWGSL(this.variableNames)}
      let h = i32(wgId.y);
      let b = i32(wgId.z);
      let kvh = h / (heads / kvHeads);
      let off = nk - nq;
      let slope = slopeOf(h);
      let numRowTiles = (nq + ROWS - 1) / ROWS;
      ${f.window ? `
      // Under a causal mask query tile i sees i + 1 key tiles: a workgroup takes tiles
      // n - 1 - x and x (heaviest first), so every workgroup does about the same work.
      let pairedTiles = select(2, 1, 2 * i32(wgId.x) + 1 == numRowTiles);
      for (var pairIdx = 0; pairIdx < pairedTiles; pairIdx++) {
      workgroupBarrier();   // the previous tile's threads are done with the workgroup tiles
      let rowTile = select(numRowTiles - 1 - i32(wgId.x), i32(wgId.x), pairIdx == 1);` : `
      let rowTile = i32(wgId.x);`}
      let row0 = rowTile * ROWS;
      let row1 = min(row0 + ROWS, nq);
      ${loadTileWGSL({ tile: 'qTile', src: 'q', width: 'D', width4: 'D4', count: 'ROWS', first: 'row0',
                       seqLen: 'nq', heads: 'heads', head: 'h', mul: 'uniforms.scale' })}

      ${registersWGSL('m', 'f32', t.rowsPerThread)}
      ${registersWGSL('l', 'f32', t.rowsPerThread)}
      ${registersWGSL('acc', 'vec4<f32>', t.rowsPerThread, vj)}
      ${registersWGSL('rowKey', 'u32', t.rowsPerThread)}
      ${rows(r => `m_${r} = NEG_BIG; l_${r} = 0.0; rowKey_${r} = dropoutRowKey(b * heads + h, row0 + tr * RPT + ${r});
      ${unroll(vj, jj => `acc_${r}_${jj} = vec4<f32>(0.0);`, ' ')}`)}

      // Forward inner loop.
      ${keyTileLoopWGSL(f, [kPre, vPre], `
        ${registersWGSL('s', 'f32', t.rowsPerThread, t.colsPerThread)}
        ${rows(r => cols(c => `s_${r}_${c} = 0.0;`))}
        ${dotTileWGSL(t, 's', 'qTile', 'kTile', d4, t.unroll)}

        ${keptBitsWGSL(t, true)}
        ${reduce.declare('rowMax')}
        ${rows(r => `{
          let i = row0 + tr * RPT + ${r};
          var rowMax = NEG_BIG;
          ${cols(c => `{
            let j = col0 + tc + TC * ${c};
            let x = select(NEG_BIG, scoreOf(s_${r}_${c}, i, j, off, slope), ${keptAt(t, r, c)});
            s_${r}_${c} = x;
            rowMax = max(rowMax, x);
          }`)}
          ${reduce.publish('rowMax', 'max', r)}
        }`)}
        ${reduce.barrier}

        ${rows(r => `{
          let row = tr * RPT + ${r};
          ${reduce.combine('tileMax', 'max', r)}
          let newMax = max(m_${r}, tileMax);
          // Online softmax: rescale what was accumulated under the old max. Both maxima are
          // finite (NEG_BIG when nothing is kept yet), so alpha is never NaN.
          let alpha = exp(m_${r} - newMax);
          m_${r} = newMax;
          l_${r} *= alpha;
          ${unroll(vj, jj => `acc_${r}_${jj} *= alpha;`, ' ')}
          ${cols(c => `{
            let col = tc + TC * ${c};
            let x = s_${r}_${c};
            let p = select(0.0, exp(x - newMax), x > NEG_HALF);
            l_${r} += p;   // the normaliser ignores dropout
            pTile[row][col / 4][col % 4] = p * dropoutScale(rowKey_${r}, col0 + col);
          }`)}
        }`)}
        workgroupBarrier();
        ${weightedSumWGSL(t, 'acc', 'pTile', 'vTile', dv4)}
        workgroupBarrier();
      `)}

      // Each thread summed its own columns; combine the row sums across the row's threads.
      ${reduce.declare('rowSum')}
      ${rows(r => `{
        var rowSum = l_${r};
        ${reduce.publish('rowSum', 'add', r)}
      }`)}
      ${reduce.barrier}
      let outSize = batch * nq * heads * DV;
      ${rows(r => `{
        let row = tr * RPT + ${r};
        let i = row0 + row;
        ${reduce.combine('rowSum', 'add', r)}
        if (i < nq) {
          // A row with no kept key: out 0, logsumexp -Infinity.
          let inv = select(0.0, 1.0 / rowSum, rowSum > 0.0);
          let base = ((b * nq + i) * heads + h) * DV;
          ${unroll(vj, jj => `{
            let c4 = tc + TC * ${jj};
            ${unroll(4, e => `if (c4 * 4 + ${e} < DV) { result[base + c4 * 4 + ${e}] = acc_${r}_${jj}[${e}] * inv; }`)}
          }`)}
          if (tc == 0) {
            result[outSize + (b * heads + h) * nq + i] =
                select(-uniforms.INFINITY, m_${r} + log(rowSum), rowSum > 0.0);
          }
        }
      }`)}
      ${f.window ? '}' : ''}
    }`;
  }
}

export function flashAttentionWebGPU(
    args: { inputs: FlashAttentionInputs, backend: WebGPUBackend, attrs: FlashAttentionAttrs }): TensorInfo[] {
  const { inputs, backend, attrs } = args;
  const { q, k, v, alibiSlopes, mask } = inputs as unknown as Record<string, TensorInfo>;
  const s = attentionProblem(q.shape, k.shape, v.shape, attrs);
  const limits = deviceLimits(backend);
  const program = new FlashForwardProgram(s, chooseTiles('forward', limits, s.headDim, s.headDimV),
                                          s.flags, subgroupMinSizeOf(backend));
  checkBindingSizes(limits, [['q', q.shape], ['k', k.shape], ['v', v.shape], ['mask', mask.shape],
                             ['the output and logsumexp', program.outputShape]]);
  checkDispatch(limits, program.dispatch);
  return withDeviceErrorCheck(backend, () => {
    const packed = runProgram(backend, program, [q, k, v, alibiSlopes, mask], optionUniforms(s).data);
    return unpack(backend, packed, [[s.batch, s.seqQ, s.heads, s.headDimV], [s.batch, s.heads, s.seqQ]]);
  });
}

export const flashAttentionWebGPUConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'webgpu',
  kernelFunc: flashAttentionWebGPU as unknown as KernelFunc,
};
