/**
 * WGSL shared by the forward and backward programs: the contract's per-element semantics
 * (src/contract/kernel_names.ts) as helper functions. Each option is a compile-time switch: a disabled
 * option compiles to a stub (onnxruntime's WGSL-template style), so one kernel family serves
 * every combination and the disabled cases cost nothing.
 */
import { OptionFlags } from '../../src/contract';

/**
 * Masked scores are set to this finite sentinel rather than -inf: WGSL lets implementations
 * assume finite math, so no infinity is ever produced inside the kernels.
 */
export const NEG_BIG = '-3.0e38';
export const NEG_HALF = '-1.0e38';

/**
 * Helpers, all taking the query row i and key column j in sequence coordinates, and
 * off = seqK - seqQ (bottom-right alignment):
 *  - scoreOf(raw, i, j, off, slope) -> s after softcap and ALiBi;
 *  - scoreAndGrad(raw, ...) -> vec2(s, ds/draw / 1) for the backward (softcap's 1 - tanh^2);
 *  - isKept(b, h, i, j, nq, nk, off): window, bounds and mask;
 *  - tileFullyKept(i0, i1, j0, j1, nq, nk, off): every (i, j) of the tile is kept, so the
 *    per-element test can be skipped (interior tiles of causal/windowed attention);
 *  - dropoutRowKey(bh, i), dropoutScale(rowKey, j): the counter-based hash of src/contract/dropout.ts.
 */
export function optionHelpers(f: OptionFlags): string {
  const tanh = `
    // tanh from exp: GPU tanh built-ins may be low-precision approximations.
    fn preciseTanh(x : f32) -> f32 {
      let t = exp(-2.0 * abs(x));
      return sign(x) * (1.0 - t) / (1.0 + t);
    }`;
  const softcapped = f.softcap ? 'uniforms.softcap * preciseTanh(raw / uniforms.softcap)' : 'raw';
  const alibi = f.alibi ? ' - slope * f32(abs(i + off - j))' : '';
  return `
    ${f.softcap ? tanh : ''}
    fn scoreOf(raw : f32, i : i32, j : i32, off : i32, slope : f32) -> f32 {
      return ${softcapped}${alibi};
    }
    fn scoreAndGrad(raw : f32, i : i32, j : i32, off : i32, slope : f32) -> vec2<f32> {
      ${f.softcap ? `let t = preciseTanh(raw / uniforms.softcap);
      return vec2<f32>(uniforms.softcap * t${alibi}, 1.0 - t * t);`
                  : `return vec2<f32>(raw${alibi}, 1.0);`}
    }
    ${f.mask ? `
    // The mask broadcasts against [batch, heads, seqQ, seqK]: its size-1 dims repeat.
    fn maskAt(b : i32, h : i32, i : i32, j : i32) -> bool {
      let s = uniforms.maskShape;
      let idx = ((select(b, 0, s.x == 1) * s.y + select(h, 0, s.y == 1)) * s.z +
                 select(i, 0, s.z == 1)) * s.w + select(j, 0, s.w == 1);
      return mask[idx] != 0;
    }` : ''}
    // Branch-free (non-short-circuit & and an always-valid mask index): nested per-element
    // branches made SwiftShader's shader compiler blow up when window and mask combine.
    fn isKept(b : i32, h : i32, i : i32, j : i32, nq : i32, nk : i32, off : i32) -> bool {
      var keep = (i < nq) & (j < nk);
      ${f.window ? `
      keep = keep & ((uniforms.windowLeft < 0) | (j >= i + off - uniforms.windowLeft));
      keep = keep & ((uniforms.windowRight < 0) | (j <= i + off + uniforms.windowRight));` : ''}
      ${f.mask ? 'keep = keep & maskAt(b, h, min(i, nq - 1), min(j, nk - 1));' : ''}
      return keep;
    }
    // Query rows [i0, i1) x key columns [j0, j1).
    fn tileFullyKept(i0 : i32, i1 : i32, j0 : i32, j1 : i32, nq : i32, nk : i32, off : i32) -> bool {
      ${f.mask ? 'return false;' : `
      var full = i1 <= nq && j1 <= nk;
      ${f.window ? `
      if (uniforms.windowLeft >= 0) { full = full && j0 >= i1 - 1 + off - uniforms.windowLeft; }
      if (uniforms.windowRight >= 0) { full = full && j1 - 1 <= i0 + off + uniforms.windowRight; }` : ''}
      return full;`}
    }
    ${f.dropout ? `
    fn mix32(x0 : u32) -> u32 {
      var x = x0;
      x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
      return x;
    }
    fn dropoutRowKey(bh : i32, i : i32) -> u32 {
      return mix32(mix32(mix32(uniforms.seed ^ 0x9e3779b9u) ^ u32(bh)) ^ u32(i));
    }
    // keep / (1 - rate) for element (row of rowKey, j).
    fn dropoutScale(rowKey : u32, j : i32) -> f32 {
      return select(0.0, uniforms.dropScale, mix32(rowKey ^ u32(j)) >= uniforms.dropThreshold);
    }` : `
    fn dropoutRowKey(bh : i32, i : i32) -> u32 { return 0u; }
    fn dropoutScale(rowKey : u32, j : i32) -> f32 { return 1.0; }`}
    fn slopeOf(h : i32) -> f32 { return ${f.alibi ? 'alibiSlopes[h]' : '0.0'}; }
  `;
}

/**
 * Key columns [begin, end) that query rows [i0, i1) can see under the window (end <= begin:
 * none). As WGSL statements assigning `colBegin`/`colEnd`.
 */
export function keyRangeWGSL(f: OptionFlags, i0: string, i1: string): string {
  return `
    var colBegin = 0;
    var colEnd = nk;
    ${f.window ? `
    if (uniforms.windowLeft >= 0) { colBegin = max(0, ${i0} + off - uniforms.windowLeft); }
    if (uniforms.windowRight >= 0) { colEnd = min(nk, ${i1} + off + uniforms.windowRight); }` : ''}`;
}

/** Query rows [begin, end) that see some key of columns [j0, j1), as `rowBegin`/`rowEnd`. */
export function queryRangeWGSL(f: OptionFlags, j0: string, j1: string): string {
  return `
    var rowBegin = 0;
    var rowEnd = nq;
    ${f.window ? `
    if (uniforms.windowRight >= 0) { rowBegin = max(0, ${j0} - off - uniforms.windowRight); }
    if (uniforms.windowLeft >= 0) { rowEnd = min(nq, ${j1} - off + uniforms.windowLeft); }` : ''}`;
}

/**
 * Cooperative load of `count` rows of a [.., rows, heads, width] tensor into a workgroup tile of
 * vec4s (zero-padded past `width` and past the sequence end), optionally multiplied by `mul`.
 */
export function loadTileWGSL(o: {
  tile: string; src: string; width: string; width4: string; count: string;
  first: string; seqLen: string; heads: string; head: string; mul?: string;
}): string {
  return `
    for (var idx = tid; idx < ${o.count} * ${o.width4} * 4; idx += NT) {
      let r = idx / (${o.width4} * 4);
      let c = idx - r * (${o.width4} * 4);
      let row = ${o.first} + r;
      var x = 0.0;
      if (row < ${o.seqLen} && c < ${o.width}) {
        x = ${o.src}[((b * ${o.seqLen} + row) * ${o.heads} + ${o.head}) * ${o.width} + c]${o.mul ? ` * ${o.mul}` : ''};
      }
      ${o.tile}[r][c / 4][c % 4] = x;
    }`;
}

/** Prefetch at most this many floats per thread per streamed tile. */
export const MAX_PREFETCH_PER_THREAD = 16;

/**
 * Software pipelining of a streamed tile: each thread loads its share of the next tile from
 * global memory into registers before the current tile's math, and stores it to workgroup memory
 * after the closing barrier, so global-memory latency hides behind compute.
 */
export function prefetchedTileWGSL(o: {
  name: string; tile: string; src: string; width: string; width4: number; count: number; threads: number;
  seqLen: string; heads: string; head: string; mul?: string;
}) {
  const total = o.count * o.width4 * 4;
  const perThread = Math.ceil(total / o.threads);
  if (perThread > MAX_PREFETCH_PER_THREAD) {
    // Too many registers (and, on SwiftShader, a shader compile that ran out of memory): load
    // the tile directly at the top of the iteration instead. The loop must name its start col0.
    return {
      declare: '',
      load: (_first: string) => '',
      store: loadTileWGSL({ tile: o.tile, src: o.src, width: o.width, width4: String(o.width4),
                            count: String(o.count), first: 'col0', seqLen: o.seqLen, heads: o.heads,
                            head: o.head, mul: o.mul }),
    };
  }
  const each = (body: (u: number) => string) =>
      Array.from({ length: perThread }, (_, u) => body(u)).join('\n');
  const guard = (u: number) => (u + 1) * o.threads > total ? `idx < ${total} && ` : '';
  return {
    declare: each(u => `var ${o.name}${u} = 0.0;`),
    load: (first: string) => each(u => `{
      let idx = tid + ${u * o.threads};
      let r = idx / ${o.width4 * 4};
      let c = idx - r * ${o.width4 * 4};
      let row = ${first} + r;
      var x = 0.0;
      if (${guard(u)}row < ${o.seqLen} && c < ${o.width}) {
        x = ${o.src}[((b * ${o.seqLen} + row) * ${o.heads} + ${o.head}) * ${o.width} + c]${o.mul ? ` * ${o.mul}` : ''};
      }
      ${o.name}${u} = x;
    }`),
    store: each(u => `{
      let idx = tid + ${u * o.threads};
      ${guard(u) ? `if (idx < ${total}) {` : '{'}
        let r = idx / ${o.width4 * 4};
        let c = idx - r * ${o.width4 * 4};
        ${o.tile}[r][c / 4][c % 4] = ${o.name}${u};
      }
    }`),
  };
}

/**
 * The loop over the key/value tiles that query rows [row0, row1) can see (keyRangeWGSL skips the
 * tiles the window masks entirely), shared by the forward inner loop and the dQ pass: each
 * iteration moves the prefetched tiles into workgroup memory, then starts loading the next ones
 * into registers so their latency overlaps this tile's compute. The body sees col0.
 */
export function keyTileLoopWGSL(f: OptionFlags, tiles: ReturnType<typeof prefetchedTileWGSL>[], body: string): string {
  const each = (g: (t: ReturnType<typeof prefetchedTileWGSL>) => string) => tiles.map(g).join('\n        ');
  return `
      ${keyRangeWGSL(f, 'row0', 'row1')}
      ${each(t => t.declare)}
      let firstCol = (colBegin / COLS) * COLS;
      if (firstCol < colEnd) {
        ${each(t => t.load('firstCol'))}
      }
      for (var col0 = firstCol; col0 < colEnd; col0 += COLS) {
        ${each(t => t.store)}
        workgroupBarrier();
        if (col0 + COLS < colEnd) {
          ${each(t => t.load('col0 + COLS'))}
        }
${body}
      }`;
}
