/**
 * WGSL fragments shared by the tiled passes (forward inner loop, dQ pass, dK/dV pass): tile
 * constants, the pass prologue, tile loads and register prefetch, the key-tile loop, the tile dot
 * products, the keep bits and the row reductions.
 *
 * A fragment reads no variable of the pass it is pasted into unless that variable is named in
 * its arguments: the per-thread and per-workgroup values come in a PassNames object (which
 * passPrologueWGSL and each pass's main() declare), tiles and sources by name. Module-scope
 * constants (ROWS, COLS, TC, RPT, NT, ...) are declared by tileConstants here, and the option
 * functions (isKept, tileFullyKept, ...) by optionHelpers in attention_wgsl.ts.
 */
import { OptionFlags } from '../../src/contract';
import { NEG_BIG, NEG_HALF } from './attention_wgsl';
import { unroll } from './program';
import { MAX_PREFETCH_PER_THREAD, paddedVec4, threadsOf, TileConfig, vec4Count } from './tiles';

/** The WGSL names of the values a pass declares and the fragments read. */
export interface PassNames {
  /** Flat local index (i32) and the thread's row and column in the tile's thread grid. */
  thread: string; threadRow: string; threadCol: string;
  /** Batch index of the workgroup's rows: its sequence. */
  batchIndex: string;
  /** The sequence's lengths of queries and keys, and seqK - seqQ (bottom-right alignment). */
  seqQ: string; seqK: string; offset: string;
  /** The sequence's first row of q (and out) and of k and v: row r of it is memory row start + r. */
  startQ: string; startK: string;
  /**
   * Rows of the sequence a pass writes: its length, or with padded lengths the whole padded
   * extent (rows past the length get 0, and logSumExp -Infinity).
   */
  extentQ: string; extentK: string;
  /** First and one-past-last row of the workgroup's own tile, and the streamed tile's first column. */
  row0: string; row1: string; col0: string;
}

/** The names passPrologueWGSL declares and every pass uses. */
export const PASS_NAMES: PassNames = {
  thread: 'tid', threadRow: 'tr', threadCol: 'tc', batchIndex: 'b', seqQ: 'nq', seqK: 'nk', offset: 'off',
  startQ: 'qStart', startK: 'kStart', extentQ: 'qExtent', extentK: 'kExtent',
  row0: 'row0', row1: 'row1', col0: 'col0',
};

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
 * tfjs hands the workgroup id over through a private variable, which WGSL's uniformity analysis
 * treats as non-uniform; loops that contain barriers must be bounded by uniform values, so the id
 * is passed through workgroup memory with workgroupUniformLoad (declares wgId).
 */
const UNIFORM_WORKGROUP_ID = `
      if (localIndex == 0u) { sharedWorkgroupId = workgroupId; }
      let wgId = workgroupUniformLoad(&sharedWorkgroupId);`;
const UNIFORM_WORKGROUP_ID_DECL = 'var<workgroup> sharedWorkgroupId : vec3<u32>;';

/** Statically uses every binding: tfjs binds all inputs, and an 'auto' layout drops unused ones. */
const touchBindings = (names: string[]) => names.map(n => `_ = ${n}[0];`).join(' ');

/**
 * The opening of every pass's main(): bindings touched, the uniform workgroup id (wgId), the
 * thread's tile coordinates (n.thread, n.threadRow, n.threadCol) and the shapes (batch, heads,
 * kvHeads; rowsQ and rowsK, the rows of q and of k in memory). The sequence's lengths come from
 * sequenceWGSL, once the pass knows its batch index.
 */
export const passPrologueWGSL = (variableNames: string[], n: PassNames = PASS_NAMES) => `
      ${touchBindings(variableNames)}
      ${UNIFORM_WORKGROUP_ID}
      let ${n.thread} = i32(localIndex);
      let ${n.threadCol} = ${n.thread} % TC;
      let ${n.threadRow} = ${n.thread} / TC;
      let batch = uniforms.qShape.x;
      let heads = uniforms.qShape.z;
      let kvHeads = uniforms.kShape.z;
      let rowsQ = uniforms.qShape.x * uniforms.qShape.y;
      let rowsK = uniforms.kShape.x * uniforms.kShape.y;`;

/**
 * Where a pass reads sequence b's ranges: field 0..3 = startQ, lenQ, startK, lenK (WGSL i32).
 * By default the bindings seqRangesQ/K [numSeqs, 2].
 */
export type RangeReader = (b: string, field: 0 | 1 | 2 | 3) => string;
const RANGE_BINDINGS: RangeReader = (b, field) => `${field < 2 ? 'seqRangesQ' : 'seqRangesK'}[2 * ${b}${field % 2 ? ' + 1' : ''}]`;

/**
 * The workgroup's sequence n.batchIndex (kernel_names.ts header): its first rows (n.startQ,
 * n.startK), lengths (n.seqQ, n.seqK), the bottom-right offset n.offset and the rows the passes
 * write (n.extentQ, n.extentK). Without ranges, sequence b is batch element b, whole. With
 * ranges, (start, length) are read with `ranges`; they are uniform (a read-only buffer at the
 * uniform workgroup id), so loops with barriers may be bounded by them.
 */
export function sequenceWGSL(f: OptionFlags, n: PassNames = PASS_NAMES, ranges: RangeReader = RANGE_BINDINGS): string {
  if (!f.seqRanges) {
    return `
      let ${n.seqQ} = uniforms.qShape.y;
      let ${n.seqK} = uniforms.kShape.y;
      let ${n.startQ} = ${n.batchIndex} * ${n.seqQ};
      let ${n.startK} = ${n.batchIndex} * ${n.seqK};
      let ${n.offset} = ${n.seqK} - ${n.seqQ};
      let ${n.extentQ} = ${n.seqQ};
      let ${n.extentK} = ${n.seqK};`;
  }
  return `
      let ${n.startQ} = ${ranges(n.batchIndex, 0)};
      let ${n.seqQ} = ${ranges(n.batchIndex, 1)};
      let ${n.startK} = ${ranges(n.batchIndex, 2)};
      let ${n.seqK} = ${ranges(n.batchIndex, 3)};
      let ${n.offset} = ${n.seqK} - ${n.seqQ};
      // A packed sequence owns only its rows; a padded one its whole stretch of the batch.
      let ${n.extentQ} = ${f.packed ? n.seqQ : 'uniforms.qShape.y'};
      let ${n.extentK} = ${f.packed ? n.seqK : 'uniforms.kShape.y'};`;
}

/** The logSumExp index of query row i of head h (kernel_names.ts header; one formula for every layout). */
export const logSumExpIndexWGSL = (head: string, i: string, n: PassNames = PASS_NAMES) =>
    `${n.startQ} * uniforms.lseStartStride + ${head} * uniforms.lseHeadStride + ${i}`;

/**
 * Declares per-thread registers name_r (or name_r_c) as separate variables, so no private array
 * can be left in local memory (on the H100 this measured the same as constant-indexed arrays;
 * SwiftShader compiled it several times faster).
 */
export function registersWGSL(name: string, type: string, rows: number, cols = 0): string {
  const names = cols === 0 ? Array.from({ length: rows }, (_, r) => `${name}_${r}`)
      : Array.from({ length: rows * cols }, (_, i) => `${name}_${Math.floor(i / cols)}_${i % cols}`);
  return names.map(v => `var ${v} : ${type};`).join(' ');
}

/** The vec4 columns a thread owns of a `width4`-vec4-wide accumulator row. */
export const vec4sPerThread = (t: TileConfig, width4: number) => Math.ceil(width4 / (t.cols / t.colsPerThread));

/**
 * Key columns [begin, end) that query rows [i0, i1) can see under the window (end <= begin:
 * none). As WGSL statements assigning `colBegin`/`colEnd`.
 */
export function keyRangeWGSL(f: OptionFlags, i0: string, i1: string, n: PassNames = PASS_NAMES): string {
  return `
    var colBegin = 0;
    var colEnd = ${n.seqK};
    ${f.window ? `
    // Compared before adding, so windows near 2^31 cannot overflow i32.
    if (uniforms.windowLeft >= 0 && uniforms.windowLeft < ${i0} + ${n.offset}) {
      colBegin = ${i0} + ${n.offset} - uniforms.windowLeft;
    }
    if (uniforms.windowRight >= 0 && uniforms.windowRight < ${n.seqK} - ${i1} - ${n.offset}) {
      colEnd = ${i1} + ${n.offset} + uniforms.windowRight;
    }` : ''}
    ${f.seqRanges ? `
    // A tile of rows past the sequence's queries does no key work.
    if (${i0} >= ${n.seqQ}) { colEnd = 0; }` : ''}`;
}

/** Query rows [begin, end) that see some key of columns [j0, j1), as `rowBegin`/`rowEnd`. */
export function queryRangeWGSL(f: OptionFlags, j0: string, j1: string, n: PassNames = PASS_NAMES): string {
  return `
    var rowBegin = 0;
    var rowEnd = ${n.seqQ};
    ${f.window ? `
    if (uniforms.windowRight >= 0 && uniforms.windowRight < ${j0} - ${n.offset}) {
      rowBegin = ${j0} - ${n.offset} - uniforms.windowRight;
    }
    if (uniforms.windowLeft >= 0 && uniforms.windowLeft < ${n.seqQ} - ${j1} + ${n.offset}) {
      rowEnd = ${j1} - ${n.offset} + uniforms.windowLeft;
    }` : ''}
    ${f.seqRanges ? `
    // A tile of keys past the sequence's keys does no query work.
    if (${j0} >= ${n.seqK}) { rowEnd = 0; }` : ''}`;
}

/** Where a tile's rows come from: rows start.. of a [rows, heads, width] tensor (q, k, v flattened). */
interface TileSource {
  /** The workgroup tile (array of vec4 rows) and the storage buffer it is loaded from. */
  tile: string; src: string;
  /** Row width in floats (a WGSL expression), the sequence's first row and length, head count and head. */
  width: string; start: string; seqLen: string; heads: string; head: string;
  /** Multiplies every element (e.g. the softmax scale folded into q). */
  mul?: string;
}

/** The WGSL expression of element (row, c) of a tile source, 0 past the sequence end and width. */
function sourceElement(o: TileSource, row: string, c: string, guard: string, n: PassNames): string {
  return `
      var x = 0.0;
      if (${guard}${row} < ${o.seqLen} && ${c} < ${o.width}) {
        x = ${o.src}[((${o.start} + ${row}) * ${o.heads} + ${o.head}) * ${o.width} + ${c}]${o.mul ? ` * ${o.mul}` : ''};
      }`;
}

/**
 * Cooperative load of `count` rows starting at row `first` into a workgroup tile of vec4s
 * (zero-padded past `width` and past the sequence end).
 */
export function loadTileWGSL(o: TileSource & { width4: string; count: string; first: string },
                             n: PassNames = PASS_NAMES): string {
  return `
    for (var idx = ${n.thread}; idx < ${o.count} * ${o.width4} * 4; idx += NT) {
      let r = idx / (${o.width4} * 4);
      let c = idx - r * (${o.width4} * 4);
      let row = ${o.first} + r;
      ${sourceElement(o, 'row', 'c', '', n)}
      ${o.tile}[r][c / 4][c % 4] = x;
    }`;
}

/** A streamed tile split into its register prefetch (declare, load(first)) and its store. */
export interface PrefetchedTile { declare: string; load: (first: string) => string; store: string; }

/**
 * Software pipelining of a streamed tile: each thread loads its share of the next tile from
 * global memory into registers (named `name`0, `name`1, ...) before the current tile's math, and
 * stores it to workgroup memory after the closing barrier, so global-memory latency hides behind
 * compute.
 */
export function prefetchedTileWGSL(o: TileSource & { name: string; width4: number; count: number; threads: number },
                                   n: PassNames = PASS_NAMES): PrefetchedTile {
  const total = o.count * o.width4 * 4;
  const perThread = Math.ceil(total / o.threads);
  if (perThread > MAX_PREFETCH_PER_THREAD) {
    // Too many registers (and, on SwiftShader, a shader compile that ran out of memory): load
    // the tile directly at the top of the iteration (the streamed tile's first column) instead.
    return {
      declare: '',
      load: (_first: string) => '',
      store: loadTileWGSL({ ...o, width4: String(o.width4), count: String(o.count), first: n.col0 }, n),
    };
  }
  const each = (body: (u: number) => string) =>
      Array.from({ length: perThread }, (_, u) => body(u)).join('\n');
  const guard = (u: number) => (u + 1) * o.threads > total ? `idx < ${total} && ` : '';
  return {
    declare: each(u => `var ${o.name}${u} = 0.0;`),
    load: (first: string) => each(u => `{
      let idx = ${n.thread} + ${u * o.threads};
      let r = idx / ${o.width4 * 4};
      let c = idx - r * ${o.width4 * 4};
      let row = ${first} + r;
      ${sourceElement(o, 'row', 'c', guard(u), n)}
      ${o.name}${u} = x;
    }`),
    store: each(u => `{
      let idx = ${n.thread} + ${u * o.threads};
      ${guard(u) ? `if (idx < ${total}) {` : '{'}
        let r = idx / ${o.width4 * 4};
        let c = idx - r * ${o.width4 * 4};
        ${o.tile}[r][c / 4][c % 4] = ${o.name}${u};
      }
    }`),
  };
}

/**
 * The loop over the key/value tiles that query rows [n.row0, n.row1) can see (keyRangeWGSL skips
 * the tiles the window masks entirely), shared by the forward inner loop and the dQ pass: each
 * iteration moves the prefetched tiles into workgroup memory, then starts loading the next ones
 * into registers so their latency overlaps this tile's compute. The loop variable is n.col0.
 */
export function keyTileLoopWGSL(f: OptionFlags, tiles: PrefetchedTile[], body: string,
                                n: PassNames = PASS_NAMES): string {
  const each = (g: (t: PrefetchedTile) => string) => tiles.map(g).join('\n        ');
  return `
      ${keyRangeWGSL(f, n.row0, n.row1, n)}
      ${each(t => t.declare)}
      let firstCol = (colBegin / COLS) * COLS;
      if (firstCol < colEnd) {
        ${each(t => t.load('firstCol'))}
      }
      for (var ${n.col0} = firstCol; ${n.col0} < colEnd; ${n.col0} += COLS) {
        ${each(t => t.store)}
        workgroupBarrier();
        if (${n.col0} + COLS < colEnd) {
          ${each(t => t.load(`${n.col0} + COLS`))}
        }
${body}
      }`;
}

/**
 * WGSL accumulating acc[r][c] += dot(rowTile[row r][x], colTile[col c][x]) over x < width4 vec4s,
 * for this thread's RPT rows and colsPerThread strided columns.
 */
export function dotTileWGSL(t: TileConfig, acc: string, rowTile: string, colTile: string,
                            width4: number, step: number, n: PassNames = PASS_NAMES): string {
  const cpt = t.colsPerThread;
  return `
    for (var x0 = 0; x0 < ${width4}; x0 += ${step}) {
      ${unroll(step, u => `{
        let x = x0 + ${u};
        ${unroll(cpt, c => `let cv${c} = ${colTile}[${n.threadCol} + TC * ${c}][x];`)}
        ${unroll(t.rowsPerThread, r => `{
          let rv = ${rowTile}[${n.threadRow} * RPT + ${r}][x];
          ${unroll(cpt, c => `${acc}_${r}_${c} += dot(rv, cv${c});`, ' ')}
        }`)}
      }`)}
    }`;
}

/**
 * WGSL accumulating out[r][jj] += sum_col weights[row r][col] * values[col][vec4 column], for this
 * thread's vec4 columns threadCol + TC * jj (jj < perThread) of a `width4`-vec4-wide value tile.
 */
export function weightedSumWGSL(t: TileConfig, out: string, weights: string, values: string,
                                width4: number, n: PassNames = PASS_NAMES): string {
  const perThread = vec4sPerThread(t, width4);
  return `
    for (var k4 = 0; k4 < COLS4; k4++) {
      ${unroll(t.rowsPerThread, r => `let w${r} = ${weights}[${n.threadRow} * RPT + ${r}][k4];`)}
      ${unroll(4, e => `{
        ${unroll(perThread, jj => `let vv${jj} = ${values}[k4 * 4 + ${e}][min(${n.threadCol} + TC * ${jj}, ${width4 - 1})];`)}
        ${unroll(t.rowsPerThread, r => unroll(perThread, jj => `${out}_${r}_${jj} += w${r}[${e}] * vv${jj};`, ' '))}
      }`)}
    }`;
}

/**
 * WGSL computing keptBits: bit (r * colsPerThread + c) says whether this thread's element
 * (r, c) of the tile at (n.row0, n.col0) is kept, for batch `batchIndex` and query head `head`.
 * Whole tiles inside the window (and inside both sequences, without a mask) skip the
 * per-element test in one uniform branch; the test itself is branch-free.
 */
export function keptBitsWGSL(t: TileConfig, rowsAreQueries: boolean, head = 'h', n: PassNames = PASS_NAMES): string {
  const { row0, col0 } = n;
  const [i0, i1, j0, j1] = rowsAreQueries ? [row0, `${row0} + ROWS`, col0, `${col0} + COLS`]
                                          : [col0, `${col0} + COLS`, row0, `${row0} + ROWS`];
  const row = (r: number) => `${row0} + ${n.threadRow} * RPT + ${r}`;
  const col = (c: number) => `${col0} + ${n.threadCol} + TC * ${c}`;
  const args = `${n.seqQ}, ${n.seqK}, ${n.offset}`;
  return `
    var keptBits = 0xffffffffu;
    if (!tileFullyKept(${i0}, ${i1}, ${j0}, ${j1}, ${args})) {
      keptBits = 0u;
      ${unroll(t.rowsPerThread, r => unroll(t.colsPerThread, c => {
        const [i, j] = rowsAreQueries ? [row(r), col(c)] : [col(c), row(r)];
        return `keptBits |= select(0u, ${1 << (r * t.colsPerThread + c) >>> 0}u, isKept(${n.batchIndex}, ${head}, ${i}, ${j}, ${args}));`;
      }))}
    }`;
}
export const keptAt = (t: TileConfig, r: number, c: number) =>
    `((keptBits & ${(1 << (r * t.colsPerThread + c)) >>> 0}u) != 0u)`;

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
export function rowReduction(t: TileConfig, subgroupSize: number, n: PassNames = PASS_NAMES) {
  const w = rowShuffleWidth(t, subgroupSize);
  const tc = t.cols / t.colsPerThread;
  const shared = w < tc;
  const op = (kind: 'max' | 'add', a: string, b: string) => kind === 'max' ? `max(${a}, ${b})` : `${a} + ${b}`;
  const shuffles = (v: string, kind: 'max' | 'add') =>
      unroll(Math.log2(w), k => `${v} = ${op(kind, v, `subgroupShuffleXor(${v}, ${1 << k}u)`)};`, ' ');
  const rowOf = (r: number) => `${n.threadRow} * RPT + ${r}`;
  return {
    /** Whether the row partials go through workgroup memory (rowPartial is declared). */
    shared,
    /** Declares where publish leaves the reduced values of `v` when no workgroup memory is used. */
    declare: (v: string) => shared ? '' : registersWGSL(`${v}Reduced`, 'f32', t.rowsPerThread),
    /** Reduces this thread's value `v` of its row r (shuffles) and publishes it. */
    publish: (v: string, kind: 'max' | 'add', r: number) => `
      ${shuffles(v, kind)}
      ${shared ? `rowPartial[${rowOf(r)}][${n.threadCol}] = ${v};` : `${v}Reduced_${r} = ${v};`}`,
    barrier: shared ? 'workgroupBarrier();' : '',
    /** Declares `out`, the row r's reduction of the values published as `v`. */
    combine: (out: string, v: string, kind: 'max' | 'add', r: number) => shared ? `
      var ${out} = ${kind === 'max' ? 'NEG_BIG' : '0.0'};
      for (var t = 0; t < TC; t += ${w}) { ${out} = ${op(kind, out, `rowPartial[${rowOf(r)}][t]`)}; }`
      : `let ${out} = ${v}Reduced_${r};`,
  };
}
