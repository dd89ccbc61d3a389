/**
 * The staged-product machinery shared by the backward passes and the staged forward: every
 * operand of a tile product goes through workgroup memory in chunks of DEPTH head-dim columns
 * (score products) or ACC_DEPTH rows (accumulating products), each thread computing a
 * rowsPerThread x colsPerThread register block from vec4 reads, the next chunk prefetched into
 * registers while the current one computes (flash_attention_grad_webgpu.ts explains the design).
 * A thread owns tile rows tr * RPT + r and the contiguous tile columns tc * CPT + c.
 */
import { unroll } from './program';
import { backwardLayout, threadsOf, TileConfig } from './tiles';
import { registersWGSL, tileConstants } from './wgsl_fragments';

/**
 * WGSL constants of a staged pass (the backward passes and the staged forward). The thread
 * grid is TR x TC (tid = tr * TC + tc); a thread owns tile rows tr * RPT + r and tile columns
 * tc * CPT + c (contiguous runs, read as vec4s when they are multiples of 4), and the
 * accumulator vec4 columns tc + TC * m.
 */
export function stagedConstants(t: TileConfig, headDim: number, headDimV: number): string {
  const l = backwardLayout(t, headDim, headDimV);
  return `
    ${tileConstants(t, headDim, headDimV)}
    const CPT = ${t.colsPerThread};
    const DEPTH = ${l.depth};
    const ACC_DEPTH = ${l.accumulateDepth};
    // vec4s per staged row of a transposed operand chunk, and per row of the P^T and dS^T tiles.
    const ROWS_STAGE4 = ${l.rows4p};
    const COLS_STAGE4 = ${l.cols4p};
    // Staging buffers, flat: [DEPTH][ROWS_STAGE4] or [DEPTH][COLS_STAGE4] transposed operand chunks for the
    // score products, [ACC_DEPTH][width4] row chunks for the accumulating products.
    var<workgroup> stage0 : array<vec4<f32>, ${l.stageVec4s}>;
    var<workgroup> stage1 : array<vec4<f32>, ${l.stageVec4s}>;`;
}

/**
 * Reads `count` consecutive floats starting at element `first` of a vec4 row `row` (a WGSL
 * expression of an array<vec4<f32>>): as vec4s when aligned runs of 4, else element by element.
 * Declares name_0 .. name_{count-1} as f32 lets.
 */
export function readRunWGSL(name: string, row: (vec4Index: string) => string, first: string, count: number): string {
  if (count % 4 === 0) {
    return unroll(count / 4, q => `let ${name}v${q} = ${row(`(${first}) / 4 + ${q}`)};
      ${unroll(4, e => `let ${name}_${q * 4 + e} = ${name}v${q}[${e}];`, ' ')}`);
  }
  return unroll(count, e => `let ${name}_${e} = ${row(`(${first} + ${e}) / 4`)}[(${first} + ${e}) % 4];`);
}

/** Where one staged chunk comes from: `count` floats, element idx at (row, x) of a [rows, heads, width] tensor. */
export interface StageLoad {
  stage: 'stage0' | 'stage1';
  /** Rows start + row of src for row < seq (the sequence's first row and length). */
  src: string; start: string; seq: string; heads: string; head: string; width: string; mul?: string;
  /** First sequence row of the chunk (a WGSL expression that may use col0). */
  first: string;
  /** Score operands are staged transposed ([x][row], DEPTH head-dim columns from x0); value rows as [row][x]. */
  transposed: boolean;
  /** Transposed: the tile's row count (ROWS or COLS) and the chunk's first head-dim column. Else the width in vec4s. */
  rows?: 'ROWS' | 'COLS'; x0?: string; width4?: number;
}

/** Floats a staged chunk holds (DEPTH x rows transposed, ACC_DEPTH x width else). */
export function stageCount(l: StageLoad, t: TileConfig): number {
  const { depth, accumulateDepth } = backwardLayout(t, 0, 0);
  return l.transposed ? (l.rows === 'ROWS' ? t.rows : t.cols) * depth : accumulateDepth * l.width4! * 4;
}

/**
 * One phase of a pass's pipeline: `chunks` steps, step k staging its operands' chunk k in
 * workgroup memory and then running its products on them. While a step computes, each thread
 * already holds the next step's share of global memory in registers (software pipelining, as the
 * forward's key/value prefetch); the last step of a phase prefetches the next phase's first.
 * Phases are WGSL loops (not unrolled): SwiftShader's compile time grows with the number of
 * barriers in the shader text.
 */
export interface Phase { chunks: number; loads: (k: string) => StageLoad[]; compute: (k: string) => string; }

/**
 * Loads of more floats per thread than this are not prefetched but read straight into workgroup
 * memory after the step's first barrier: unrolled, they made SwiftShader's compiler use over
 * 20 GB (the backward at headDim 256 on 16-thread tiles; measured again 2026-12-02 with a cap of
 * 16: bad_alloc past 5.7 GB after 105 s, against 0.78 GB and 7 s with 8). The tuned H200 tiles
 * prefetch at most 4.
 */
const MAX_UNROLLED_PREFETCH = 8;
const prefetched = (l: StageLoad, t: TileConfig) => Math.ceil(stageCount(l, t) / threadsOf(t)) <= MAX_UNROLLED_PREFETCH;

/** WGSL of the register prefetch of one step: pf{n}_{u} = this thread's elements of each load. */
export function prefetchWGSL(loads: StageLoad[], t: TileConfig, depth: number, guard = ''): string {
  const nt = threadsOf(t);
  return loads.map((l, n) => {
    if (!prefetched(l, t)) return '';
    const count = stageCount(l, t);
    const perThread = Math.ceil(count / nt);
    return unroll(perThread, u => {
      const idx = `tid + ${u * nt}`;
      const [row, x] = l.transposed ? [`(${idx}) / DEPTH`, `(${idx}) % DEPTH`]
                                    : [`(${idx}) / ${l.width4! * 4}`, `(${idx}) % ${l.width4! * 4}`];
      const col = l.transposed ? `${l.x0} + ${x}` : x;
      const inRange = (u + 1) * nt > count ? `${idx} < ${count} && ` : '';
      return `{
          let row = ${l.first} + ${row};
          let x = ${col};
          pf${n}_${u} = 0.0;
          if (${guard}${inRange}row < ${l.seq} && x < ${l.width}) {
            pf${n}_${u} = ${l.src}[((${l.start} + row) * ${l.heads} + ${l.head}) * ${l.width} + x]${l.mul ? ` * ${l.mul}` : ''};
          }
        }`;
    });
  }).join('\n');
}

/** WGSL moving the prefetched registers of a step into its staging buffers. */
export function storeStageWGSL(loads: StageLoad[], t: TileConfig, depth: number): string {
  const nt = threadsOf(t);
  return loads.map((l, n) => {
    const count = stageCount(l, t);
    if (!prefetched(l, t)) {
      const [row, x] = l.transposed ? ['idx / DEPTH', 'idx % DEPTH'] : [`idx / ${l.width4! * 4}`, `idx % ${l.width4! * 4}`];
      const target = l.transposed ? `${l.stage}[(idx % DEPTH) * ${l.rows}_STAGE4 + (idx / DEPTH) / 4][(idx / DEPTH) % 4]`
          : `${l.stage}[(idx / ${l.width4! * 4}) * ${l.width4} + (idx % ${l.width4! * 4}) / 4][idx % 4]`;
      return `
          for (var idx = tid; idx < ${count}; idx += NT) {
            let row = ${l.first} + ${row};
            let x = ${l.transposed ? `${l.x0} + ${x}` : x};
            var val = 0.0;
            if (row < ${l.seq} && x < ${l.width}) {
              val = ${l.src}[((${l.start} + row) * ${l.heads} + ${l.head}) * ${l.width} + x]${l.mul ? ` * ${l.mul}` : ''};
            }
            ${target} = val;
          }`;
    }
    return unroll(Math.ceil(count / nt), u => {
      const idx = `tid + ${u * nt}`;
      const target = l.transposed
          ? `${l.stage}[((${idx}) % DEPTH) * ${l.rows}_STAGE4 + ((${idx}) / DEPTH) / 4][((${idx}) / DEPTH) % 4]`
          : `${l.stage}[((${idx}) / ${l.width4! * 4}) * ${l.width4} + ((${idx}) % ${l.width4! * 4}) / 4][(${idx}) % 4]`;
      return (u + 1) * nt > count ? `if (${idx} < ${count}) { ${target} = pf${n}_${u}; }` : `${target} = pf${n}_${u};`;
    });
  }).join('\n');
}

/** Declares the prefetch registers the largest step needs. */
export function prefetchRegistersWGSL(phases: Phase[], t: TileConfig, depth: number): string {
  const nt = threadsOf(t);
  return [0, 1].map(n => {
    const most = Math.max(0, ...phases.map(p => {
      const l = p.loads('0')[n];
      return l && prefetched(l, t) ? Math.ceil(stageCount(l, t) / nt) : 0;
    }));
    return unroll(most, u => `var pf${n}_${u} = 0.0;`, ' ');
  }).join(' ');
}

/**
 * The score-product phase: acc[r][c] += sum_x A[row r][x] * B[col c][x] over x < width, in
 * chunks of DEPTH head-dim columns staged transposed (stage0[x][row], stage1[x][col]).
 */
export function scorePhase(t: TileConfig, depth: number, acc: string, width: number, a: Omit<StageLoad, 'stage' | 'transposed'>,
                    b: Omit<StageLoad, 'stage' | 'transposed'>): Phase {
  return {
    chunks: Math.ceil(width / depth),
    loads: k => [{ ...a, stage: 'stage0', transposed: true, rows: 'ROWS', x0: `${k} * DEPTH` },
                 { ...b, stage: 'stage1', transposed: true, rows: 'COLS', x0: `${k} * DEPTH` }],
    compute: () => `
        for (var x = 0; x < ${Math.min(depth, width)}; x++) {
          ${readRunWGSL('av', i => `stage0[x * ROWS_STAGE4 + ${i}]`, 'tr * RPT', t.rowsPerThread)}
          ${readRunWGSL('bv', i => `stage1[x * COLS_STAGE4 + ${i}]`, 'tc * CPT', t.colsPerThread)}
          ${unroll(t.rowsPerThread, r => unroll(t.colsPerThread, c => `${acc}_${r}_${c} += av_${r} * bv_${c};`, ' '))}
        }`,
  };
}

/**
 * The accumulating phase: out[r][m] += sum_col W[col][row r] * V[col][vec4 column tc + TC * m]
 * for each (out, W, V) term, over the COLS columns of the streamed block, DEPTH value rows per
 * step (stage0 for the first term, stage1 for the second).
 */
export function accumulatePhase(t: TileConfig, depth: number, terms: Array<{
  out: string; weights: string; perThread: number; load: Omit<StageLoad, 'stage' | 'transposed' | 'first'>;
}>): Phase {
  const stages = ['stage0', 'stage1'] as const;
  return {
    chunks: t.cols / backwardLayout(t, 0, 0).accumulateDepth,
    loads: k => terms.map((o, n) => ({ ...o.load, stage: stages[n], transposed: false, first: `col0 + ${k} * ACC_DEPTH` })),
    compute: k => `
        for (var j = 0; j < ACC_DEPTH; j++) {
          ${terms.map((o, n) => `{
            ${readRunWGSL('w', i => `${o.weights}[${k} * ACC_DEPTH + j][${i}]`, 'tr * RPT', t.rowsPerThread)}
            ${unroll(o.perThread, m => `let vv${m} = ${stages[n]}[j * ${o.load.width4} + min(tc + TC * ${m}, ${o.load.width4! - 1})];`)}
            ${unroll(t.rowsPerThread, r => unroll(o.perThread, m => `${o.out}_${r}_${m} += w_${r} * vv${m};`, ' '))}
          }`).join('\n')}
        }`,
  };
}

/**
 * The loop over the streamed blocks col0 = first, first + COLS, .. < end: each block runs the
 * phases in order (`after[p]` after phase p's last step), prefetching every step's operands while
 * the previous step computes, the next block's first step during this block's last.
 */
export function pipelinedLoopWGSL(t: TileConfig, depth: number, first: string, end: string, phases: Phase[], head: string,
                           after: Record<number, string>): string {
  const nextBlock = phases[0].loads('0').map(l => ({ ...l, first: l.first.replace(/col0/g, '(col0 + COLS)') }));
  return `
      ${prefetchRegistersWGSL(phases, t, depth)}
      {
        let col0 = ${first};
        if (col0 < ${end}) {
          ${prefetchWGSL(phases[0].loads('0'), t, depth)}
        }
      }
      for (var col0 = ${first}; col0 < ${end}; col0 += COLS) {
        ${head}
        ${phases.map((phase, p) => `
        for (var k${p} = 0; k${p} < ${phase.chunks}; k${p}++) {
          workgroupBarrier();
          ${storeStageWGSL(phase.loads(`k${p}`), t, depth)}
          workgroupBarrier();
          if (k${p} + 1 < ${phase.chunks}) {
            ${prefetchWGSL(phase.loads(`(k${p} + 1)`), t, depth)}
          } else ${p + 1 < phases.length ? `{
            ${prefetchWGSL(phases[p + 1].loads('0'), t, depth)}
          }` : `if (col0 + COLS < ${end}) {
            ${prefetchWGSL(nextBlock, t, depth)}
          }`}
          ${phase.compute(`k${p}`)}
        }
        ${after[p] ?? ''}`).join('\n')}
      }`;
}

/**
 * keptBits: bit (r * CPT + c) says whether this thread's score (r, c) is kept. Whole tiles inside
 * the window (and inside both sequences, without a mask) skip the per-element test in one
 * uniform branch.
 */
export function keptBitsWGSL(t: TileConfig, rowsAreQueries: boolean): string {
  const [i0, i1, j0, j1] = rowsAreQueries ? ['row0', 'row0 + ROWS', 'col0', 'col0 + COLS']
                                          : ['col0', 'col0 + COLS', 'row0', 'row0 + ROWS'];
  const row = (r: number) => `row0 + tr * RPT + ${r}`, col = (c: number) => `col0 + tc * CPT + ${c}`;
  return `
        var keptBits = 0xffffffffu;
        if (!tileFullyKept(${i0}, ${i1}, ${j0}, ${j1}, nq, nk, off)) {
          keptBits = 0u;
          ${unroll(t.rowsPerThread, r => unroll(t.colsPerThread, c => {
            const [i, j] = rowsAreQueries ? [row(r), col(c)] : [col(c), row(r)];
            return `keptBits |= select(0u, ${(1 << (r * t.colsPerThread + c)) >>> 0}u, isKept(b, h, ${i}, ${j}, nq, nk, off));`;
          }))}
        }`;
}
export const keptAt = (t: TileConfig, r: number, c: number) =>
    `((keptBits & ${(1 << (r * t.colsPerThread + c)) >>> 0}u) != 0u)`;

/** Writes this thread's w_r_c registers (its rows x columns) into a [COLS][ROWS_STAGE4] tile. */
export function storeTransposedWGSL(t: TileConfig, tile: string, value: (r: number, c: number) => string): string {
  return unroll(t.colsPerThread, c => t.rowsPerThread % 4 === 0
      ? unroll(t.rowsPerThread / 4, q => `${tile}[tc * CPT + ${c}][tr * RPT / 4 + ${q}] = vec4<f32>(${
          unroll(4, e => value(q * 4 + e, c), ', ')});`)
      : unroll(t.rowsPerThread, r => `${tile}[tc * CPT + ${c}][(tr * RPT + ${r}) / 4][(tr * RPT + ${r}) % 4] = ${value(r, c)};`));
}

/**
 * Writes accumulator registers acc_r_m (scaled by `scale`) to the sequence's rows `first`.. below
 * `extent` of a [rows, heads, width] output (memory row start + row). Rows at or past `zeroFrom`
 * (given with lengths: rows past the sequence's length) are written 0, whatever was summed.
 */
export function writeRowsWGSL(t: TileConfig, acc: string, perThread: number, o: {
  base: string; first: string; start: string; extent: string; zeroFrom?: string; heads: string; head: string;
  width: string; scale?: string;
}): string {
  const value = (r: number, m: number, e: number) => {
    const v = `${acc}_${r}_${m}[${e}]${o.scale ? ` * ${o.scale}` : ''}`;
    return o.zeroFrom ? `select(${v}, 0.0, missing)` : v;
  };
  return unroll(t.rowsPerThread, r => `{
        let row = ${o.first} + tr * RPT + ${r};
        if (row < ${o.extent}) {
          let base = ${o.base} + ((${o.start} + row) * ${o.heads} + ${o.head}) * ${o.width};
          ${o.zeroFrom ? `let missing = row >= ${o.zeroFrom};` : ''}
          ${unroll(perThread, m => `{
            let c4 = tc + TC * ${m};
            ${unroll(4, e => `if (c4 * 4 + ${e} < ${o.width}) { result[base + c4 * 4 + ${e}] = ${value(r, m, e)}; }`)}
          }`)}
        }
      }`);
}

/** Declares and zeroes this thread's score-block registers name_r_c of each name. */
export const zeroScores = (t: TileConfig, names = ['s', 'dp']) => names.map(n =>
    `${registersWGSL(n, 'f32', t.rowsPerThread, t.colsPerThread)}
        ${unroll(t.rowsPerThread, r => unroll(t.colsPerThread, c => `${n}_${r}_${c} = 0.0;`, ' '))}`).join('\n        ');

export const zeroAccumulators = (t: TileConfig, name: string, perThread: number) =>
    `${registersWGSL(name, 'vec4<f32>', t.rowsPerThread, perThread)}
      ${unroll(t.rowsPerThread, r => unroll(perThread, m => `${name}_${r}_${m} = vec4<f32>(0.0);`, ' '))}`;

