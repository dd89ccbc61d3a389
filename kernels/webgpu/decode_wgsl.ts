/**
 * WGSL of the split-KV ("flash-decoding") forward (flash_decode_webgpu.ts): the split pass, in four
 * forms, and the combine pass. One family per pass; options are compile-time switches through
 * optionHelpers (attention_wgsl.ts), so a disabled option compiles to a stub as in the one-pass
 * forward. Decode's cost is reading K and V once; the choices below are about how many of those
 * bytes are in flight and how little a workgroup does between loads.
 *
 * Split pass: a workgroup owns one split of the keys [splitBegin, splitEnd) of one (sequence,
 * kv head) and a block of ROWS query rows of that kv head's group (row r of the block is query
 * head kvh * group + gr / nqMax, query row gr % nqMax, gr = rowBlock * ROWS + r), so the keys and
 * values a kv head's group needs are read once per split. Each thread holds its share of the next
 * key tile in registers (DecodeLoads: vec4 loads where headDim and headDimV are multiples of 4,
 * else scalar; prefetch: issued before the current tile's work; the first tile's before the query
 * rows are staged, so that a split of one tile waits for memory once). It writes the unnormalised
 * accumulator, the row max and the row sum of its split; a split past the sequence's length (or
 * outside the window) writes max NEG_BIG and sum 0.
 *  - Staged (splitPassWGSL; any head dim): key and value tiles in workgroup memory; per tile the
 *    score phase (ROWS x COLS scores, SP threads per score), the row phase (each row's running
 *    max and sum, RT threads per row) and the accumulate phase (P V into per-thread accumulators).
 *  - Fused (splitPassFusedWGSL; vec4 loads, at most FUSED_MAX_ROWS rows): only the key tile is
 *    staged; each thread reads its own keys' value vec4s into registers a tile ahead and keeps a
 *    running max, sum and accumulator per row over its keys (no row phase, two barriers fewer per
 *    tile); the threads' parts are combined in order at the end of the split. On the H200 the
 *    staged pass (vec4, prefetch) took 1.2-1.7x its time in most MHA decode rows (one row per
 *    workgroup) and was within about 15 % either way in most GQA 16/2 rows (8 rows;
 *    BENCHMARKS.md, WebGPU decode).
 *  - Grouped and blocked (splitPassGroupedWGSL, splitPassBlockedWGSL; 2 or more rows): the work per
 *    (row, key) done once for all value columns; the blocked pass keeps the keys in registers too and
 *    has two barriers a tile (their own comments).
 *
 * Combine pass (combinePassWGSL, one program per output): workgroups per query row and head,
 * splits combined in a fixed order (deterministic): M = max_s m_s, L = sum_s exp(m_s - M) l_s,
 * out = sum_s exp(m_s - M) acc_s / L (each lane over its splits, then one tree over the lanes
 * merging (max, sum, values) pairs), logSumExp = M + log(L), exactly the one-pass kernel's outputs
 * (empty rows 0 and -Infinity, NaN sums propagated).
 */
import { OptionFlags } from '../../src/contract';
import { NEG_BIG, optionHelpers } from './attention_wgsl';
import { unroll } from './program';
import { paddedVec4, vec4Count } from './tiles';
import { keyRangeWGSL, PASS_NAMES } from './wgsl_fragments';

/** Geometry of the split pass: query rows per workgroup, keys per tile, threads. */
export interface DecodeTiles {
  /** Query rows (of one kv head's group) per workgroup: a power of two <= threads. */
  rows: number;
  /** Keys per streamed tile; a split is a whole number of tiles. */
  cols: number;
  threads: number;
  /**
   * Rows merged per round at the end of a split (register and subgroup passes: mergeRoundsWGSL);
   * the staged pass ignores it (1).
   */
  mergeRows: number;
}

/** Threads per row in the row phase (at most 16: the tile max is combined by a serial loop). */
export const rowThreadsOf = (t: DecodeTiles) => Math.min(t.threads / t.rows, 16);

/**
 * (pairs, keyParts, perThread) of the accumulate phase: ROWS x DV4 vec4 accumulators; when there
 * are fewer than threads, the keys of a tile are dealt round-robin to keyParts threads per
 * accumulator (reduced once at the end of the split), otherwise a thread owns perThread of them.
 */
export function accumulateLayout(t: DecodeTiles, headDimV: number) {
  const pairs = t.rows * vec4Count(headDimV);
  const keyParts = pairs >= t.threads ? 1 : Math.floor(t.threads / pairs);
  return { pairs, keyParts, perThread: Math.ceil(pairs / t.threads) };
}

/** Bytes of workgroup memory of the split pass (mirrors the declarations below). */
export function decodeWorkgroupBytes(t: DecodeTiles, headDim: number, headDimV: number): number {
  const d4p = paddedVec4(headDim), dv4 = vec4Count(headDimV);
  return 16 * (t.rows * d4p + t.cols * d4p + t.cols * dv4 + t.threads) +   // q, k, v, accRed
         4 * (2 * t.rows * t.cols + 2 * t.threads + 3 * t.rows) + 16;      // s, keep, red, scorePart, alpha, final, wgId
}

/**
 * How the split pass reads K and V (compile-time; part of the shader key). Decode does little but
 * wait for these loads, so both choices are about how many bytes are in flight per thread.
 */
export interface DecodeLoads {
  /**
   * K and V bound as vec4 arrays (tfjs's variableComponents): one 16-byte load per four floats,
   * no per-element index arithmetic. Only when headDim and headDimV are multiples of 4 (tfjs
   * buffers hold exactly the tensor's floats, so a vec4 binding then covers every element).
   */
  vec4: boolean;
  /** The next key tile's loads are issued before this tile's score, row and accumulate phases. */
  prefetch: boolean;
}

/**
 * The fused and grouped split passes' value loads: thread (c4, kp) keeps value column c4 of keys
 * kp, kp + keyParts, ... of a tile in registers (vx_i), one vec4 load each, zero past the split.
 */
const V_REGISTER_LOAD = `fn vLoad(c : i32, c4 : i32, col0 : i32, hi : i32, startK : i32, kvh : i32) -> vec4<f32> {
      let j = col0 + c;
      let ok = (c < COLS) & (j < hi) & (c4 < DV4);
      return select(vec4<f32>(0.0), v[select(0, ((startK + j) * uniforms.kShape.z + kvh) * DV4 + c4, ok)], ok);
    }`;

/**
 * The key/value tile loads of the split pass: each thread holds its share of a tile in registers
 * (kx_u, vx_u: a fixed count, so a tile can be loaded one iteration ahead) and stores it into
 * kTile/vTile after the barrier that frees them. Index arithmetic is branch-free (an always-valid
 * index, then select): SwiftShader's compiler blew up on the branches of many unrolled loads.
 */
function kvTileLoads(t: DecodeTiles, headDim: number, headDimV: number, loads: DecodeLoads, withV = true) {
  const w = loads.vec4 ? 4 : 1;   // floats per load
  const parts = [
    { name: 'k', tile: 'kTile', width4: vec4Count(headDim), dim: headDim },
    { name: 'v', tile: 'vTile', width4: vec4Count(headDimV), dim: headDimV },
  ].filter(p => withV || p.name === 'k').map(p => ({ ...p, total: t.cols * p.width4 * (4 / w), count: Math.ceil(t.cols * p.width4 * (4 / w) / t.threads) }));
  const type = loads.vec4 ? 'vec4<f32>' : 'f32';
  const fns = parts.map(p => loads.vec4 ? `
    fn ${p.name}Load(e : i32, col0 : i32, hi : i32, startK : i32, kvh : i32) -> vec4<f32> {
      let r = e / ${p.width4};
      let j = col0 + r;
      let ok = (e < ${p.total}) & (j < hi);
      return select(vec4<f32>(0.0), ${p.name}[select(0, ((startK + j) * uniforms.kShape.z + kvh) * ${p.width4} + e - r * ${p.width4}, ok)], ok);
    }` : `
    fn ${p.name}Load(e : i32, col0 : i32, hi : i32, startK : i32, kvh : i32) -> f32 {
      let r = e / ${p.width4 * 4};
      let c = e - r * ${p.width4 * 4};
      let j = col0 + r;
      let ok = (e < ${p.total}) & (j < hi) & (c < ${p.dim});
      return select(0.0, ${p.name}[select(0, ((startK + j) * uniforms.kShape.z + kvh) * ${p.dim} + c, ok)], ok);
    }`).join('\n');
  const declare = parts.map(p => unroll(p.count, u => `var ${p.name}x_${u} : ${type};`, ' ')).join('\n');
  const issue = (col: string) => parts.map(p => unroll(p.count, u =>
      `${p.name}x_${u} = ${p.name}Load(tid + ${u * t.threads}, ${col}, hi, startK, kvh);`)).join('\n');
  const store = parts.map(p => unroll(p.count, u => {
    const e = `tid + ${u * t.threads}`;
    const put = loads.vec4 ? `${p.tile}[e / ${p.width4}][e % ${p.width4}] = ${p.name}x_${u};`
                           : `${p.tile}[e / ${p.width4 * 4}][(e % ${p.width4 * 4}) / 4][e % 4] = ${p.name}x_${u};`;
    return (u + 1) * t.threads <= p.total ? `{ let e = ${e}; ${put} }` : `{ let e = ${e}; if (e < ${p.total}) { ${put} } }`;
  })).join('\n');
  return { fns, declare, issue, store };
}

/**
 * The range functions of a pass: rangeQ(b), rangeK(b) = (start row, length) of sequence b, read
 * from seqRangesQ/K with seqRanges, else b's dense rows (seqQ, seqK: the pass's WGSL for them).
 */
export function rangeHelpers(f: OptionFlags, seqQ = 'uniforms.qShape.y', seqK = 'uniforms.kShape.y'): string {
  return f.seqRanges ? `
    fn rangeQ(b : i32) -> vec2<i32> { return vec2<i32>(seqRangesQ[2 * b], seqRangesQ[2 * b + 1]); }
    ${seqK ? 'fn rangeK(b : i32) -> vec2<i32> { return vec2<i32>(seqRangesK[2 * b], seqRangesK[2 * b + 1]); }' : ''}` : `
    fn rangeQ(b : i32) -> vec2<i32> { return vec2<i32>(b * ${seqQ}, ${seqQ}); }
    ${seqK ? `fn rangeK(b : i32) -> vec2<i32> { return vec2<i32>(b * ${seqK}, ${seqK}); }` : ''}`;
}

/**
 * The constants every split pass declares (its tile, head dims and NEG_BIG), then its own (`own`:
 * thread layouts), one `const` each.
 */
export function splitConstantsWGSL(t: DecodeTiles, headDim: number, headDimV: number,
                                   own: Record<string, number> = {}): string {
  const all: Record<string, number | string> = {
    ROWS: t.rows, COLS: t.cols, NT: t.threads, D: headDim, D4: vec4Count(headDim), D4P: paddedVec4(headDim),
    DV: headDimV, DV4: vec4Count(headDimV), ...own, NEG_BIG,
  };
  return Object.entries(all).map(([name, value]) => `const ${name} = ${value};`).join('\n    ');
}

/**
 * The register value loads of the fused, grouped and blocked passes: thread (c4, kp) holds value
 * column c4 of keysPerThread keys of a tile: kp, kp + KP, ... or, where `consecutive`, kp x
 * keysPerThread and the ones after it (so that a row's probabilities for them are vec4 reads:
 * vec4Probs). Keys past the tile (where KP x keysPerThread > COLS) read column COLS - 1 and count
 * as masked (inTile false). keyOf(i, part): key i of key part `part` (the blocked pass's row threads
 * own the same keys as the accumulate threads of their part).
 */
function registerKeys(t: DecodeTiles, keyParts: number, keysPerThread: number, consecutive = false) {
  const keys = (body: (i: number) => string, sep?: string) => unroll(keysPerThread, body, sep);
  const ragged = keyParts * keysPerThread > t.cols;
  const keyOf = (i: number, part = 'kp') => consecutive ? `${part} * ${keysPerThread} + ${i}` : `${part} + ${i * keyParts}`;
  const vec4Probs = consecutive && !ragged && keysPerThread % 4 === 0 && t.cols % 4 === 0;
  const col = (i: number) => ragged ? `min(${keyOf(i)}, COLS - 1)` : keyOf(i);
  const inTile = (i: number) => ragged ? `(${keyOf(i)} < COLS)` : 'true';
  return {
    keys, keyOf, col, inTile, vec4Probs,
    issueV: (col0: string) => keys(i => `vx_${i} = vLoad(${keyOf(i)}, c4, ${col0}, hi, startK, kvh);`),
    /**
     * a += p(row r, key) vx over this thread's keys, the probabilities in sTile (vec4s, sGet) from
     * index base + r x COLS: one vec4 read per 4 consecutive keys, else one read per key.
     */
    accumulate: (r: number, base: string) => vec4Probs
      ? unroll(keysPerThread / 4, j => `{ let pv = sTile[(${base} + ${r} * COLS + kp * ${keysPerThread}) / 4 + ${j}]; ` +
                                       unroll(4, e => `a += pv[${e}] * vx_${4 * j + e};`, ' ') + ' }')
      : keys(i => `a += select(0.0, sGet(${base} + ${r} * COLS + ${col(i)}), ${inTile(i)}) * vx_${i};`, ' '),
  };
}

/** sTile as vec4s (for vec4 reads of consecutive probabilities) and its scalar accessors. */
const scoreTileWGSL = (floats: number) => `var<workgroup> sTile : array<vec4<f32>, ${Math.ceil(floats / 4)}>;
    fn sGet(i : i32) -> f32 { return sTile[i >> 2u][i & 3]; }
    fn sSet(i : i32, x : f32) { sTile[i >> 2u][i & 3] = x; }`;

const touch = (names: string[]) => names.map(n => `_ = ${n}[0];`).join(' ');
const UNIFORM_WG = `
      if (localIndex == 0u) { sharedWorkgroupId = workgroupId; }
      let wgId = workgroupUniformLoad(&sharedWorkgroupId);
      let tid = i32(localIndex);`;

/** Threads per score: a power of two with one pass over the tile's scores (ROWS x COLS <= NT / SP). */
function scoreThreadsOf(t: DecodeTiles, d4: number): number {
  let sp = 1;
  while (sp * 2 <= d4 && t.rows * t.cols * sp * 2 <= t.threads) sp *= 2;
  return sp;
}

/**
 * The start of a split-pass workgroup: its split, kv head, block of query rows and sequence, the
 * keys [lo, hi) it covers (the split cut to what the block's rows can see), from tile firstCol;
 * then `firstLoads` (a pass's first key and value loads, so that they are in flight while the query
 * rows are read; H200, 2026-12-03 08:16 UTC: no change measured at GQA 16/2 B 1 8k keys, one tile
 * a split), then the block's query rows into qTile where stageQ (scale folded in, as the one-pass
 * forward does).
 */
function splitSetupWGSL(f: OptionFlags, stageQ: boolean, firstLoads: string): string {
  return `
      let split = i32(wgId.x);
      let heads = uniforms.qShape.z;
      let kvHeads = uniforms.kShape.z;
      let group = heads / kvHeads;
      let rowBlocks = (group * uniforms.nqMax + ROWS - 1) / ROWS;
      let kvh = i32(wgId.y) / rowBlocks;
      let rowBlock = i32(wgId.y) % rowBlocks;
      let b = i32(wgId.z);
      let rq = rangeQ(b);
      let rk = rangeK(b);
      let startQ = rq.x; let lenQ = rq.y;
      let startK = rk.x; let lenK = rk.y;
      let off = lenK - lenQ;
      let gr0 = rowBlock * ROWS;
      let grEnd = min(gr0 + ROWS, group * uniforms.nqMax);

      let iLo = select(0, gr0 % uniforms.nqMax, gr0 / uniforms.nqMax == (grEnd - 1) / uniforms.nqMax);
      let iHi = select(uniforms.nqMax, (grEnd - 1) % uniforms.nqMax + 1, gr0 / uniforms.nqMax == (grEnd - 1) / uniforms.nqMax);
      ${keyRangeWGSL(f, 'iLo', 'min(iHi, lenQ)', { ...PASS_NAMES, seqQ: 'lenQ', seqK: 'lenK', offset: 'off' })}
      let splitBegin = split * uniforms.splitKeys;
      let splitEnd = min(splitBegin + uniforms.splitKeys, lenK);
      let lo = max(colBegin, splitBegin);
      let hi = min(colEnd, splitEnd);
      let firstCol = splitBegin + ((lo - splitBegin) / COLS) * COLS;
      ${firstLoads}
${stageQ ? `
      for (var e = tid; e < ROWS * D4 * 4; e += NT) {
        let r = e / (D4 * 4);
        let c = e - r * (D4 * 4);
        let gr = gr0 + r;
        let i = gr % uniforms.nqMax;
        var x = 0.0;
        if (gr < grEnd && i < lenQ && c < D) {
          x = q[((startQ + i) * heads + kvh * group + gr / uniforms.nqMax) * D + c] * uniforms.scale;
        }
        qTile[r][c / 4][c % 4] = x;
      }` : ''}`;
}

/**
 * The start of a split pass's entry point: every binding touched (so none is dropped from the
 * layout), the workgroup id read uniformly, then splitSetupWGSL (firstLoads: the pass's first
 * loads of K and V; stageQ: the block's query rows into qTile; a pass that reads them itself says
 * false). The body and closing brace follow.
 */
export const splitMainWGSL = (variableNames: string[], f: OptionFlags, stageQ = true, firstLoads = '') => `fn main() {
      ${touch(variableNames)}
      ${UNIFORM_WG}
      ${splitSetupWGSL(f, stageQ, firstLoads)}`;

/**
 * Writes this split's partial of query row g (the layout the combine pass reads): accumulator vec4
 * c4 and, from the c4 == 0 thread, the row's max and sum (numSplits and rowsAll in scope).
 */
const writePartialWGSL = (acc: string, rowMax: string, rowSum: string) => `let base = (g * numSplits + split) * DV + c4 * 4;
        ${unroll(4, e => `result[base + ${e}] = ${acc}[${e}];`, ' ')}
        if (c4 == 0) {
          let ml = rowsAll * numSplits * DV + (g * numSplits + split) * 2;
          result[ml] = ${rowMax};
          result[ml + 1] = ${rowSum};
        }`;

/** The register passes' value-column thread: value vec4 c4 of keys kp, kp + KP, ... (kp < KP). */
const VALUE_COLUMN_THREAD = `let c4 = tid % DV4;
      let kp = tid / DV4;
      let accThread = kp < KP;`;

/**
 * Score phase (kTile and qTile to sTile/keepTile, through its closing barrier): SP threads per
 * score (each a strided share of the head dim), so that a few query rows still keep every thread
 * busy; the shares meet in workgroup memory. Masks, biases and the keep bit per score.
 */
function scorePhaseWGSL(sp: number): string {
  const finishScore = `{
          let r = e / COLS;
          let c = e - r * COLS;
          let gr = gr0 + r;
          let i = gr % uniforms.nqMax;
          let h = min(kvh * group + gr / uniforms.nqMax, heads - 1);
          let j = col0 + c;
          let kept = (gr < grEnd) & (j < hi) & isKept(b, h, i, j, lenQ, lenK, off);
          keepTile[r][c] = select(0u, 1u, kept);
          sTile[r][c] = select(NEG_BIG, scoreOf(dotSum, i, j, off, slopeOf(h)), kept);
        }`;
  return `
        for (var e = tid / SP; e < ROWS * COLS; e += NT / SP) {
          let r = e / COLS;
          let c = e - r * COLS;
          var dotSum = 0.0;
          for (var x = tid % SP; x < D4; x += SP) { dotSum += dot(qTile[r][x], kTile[c][x]); }
          ${sp > 1 ? 'scorePart[tid] = dotSum;' : finishScore}
        }
        ${sp > 1 ? `workgroupBarrier();
        for (var e = tid; e < ROWS * COLS; e += NT) {
          var dotSum = 0.0;
          ${unroll(sp, u => `dotSum += scorePart[e * SP + ${u}];`, ' ')}
          ${finishScore}
        }` : ''}
        workgroupBarrier();`;
}

export function splitPassWGSL(variableNames: string[], t: DecodeTiles, f: OptionFlags,
                              headDim: number, headDimV: number, loads: DecodeLoads): string {
  const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
  const kv = kvTileLoads(t, headDim, headDimV, loads);
  const rt = rowThreadsOf(t);
  const acc = accumulateLayout(t, headDimV);
  const each = (body: (u: number) => string) => unroll(acc.perThread, body);
  const sp = scoreThreadsOf(t, d4);
  const pairOf = (u: number) => acc.keyParts > 1 ? 'tid % PAIRS' : `tid + ${u * t.threads}`;
  return `
    ${splitConstantsWGSL(t, headDim, headDimV, { RT: rt, PAIRS: acc.pairs, KP: acc.keyParts, SP: sp })}
    var<workgroup> sharedWorkgroupId : vec3<u32>;
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, COLS>;
    var<workgroup> vTile : array<array<vec4<f32>, DV4>, COLS>;
    // Scores, then (in place) the probabilities times the dropout factor.
    var<workgroup> sTile : array<array<f32, COLS>, ROWS>;
    var<workgroup> keepTile : array<array<u32, COLS>, ROWS>;
    var<workgroup> red : array<f32, NT>;
    var<workgroup> rowAlpha : array<f32, ROWS>;
    var<workgroup> rowFinal : array<vec2<f32>, ROWS>;
    var<workgroup> accRed : array<vec4<f32>, NT>;
    ${sp > 1 ? 'var<workgroup> scorePart : array<f32, NT>;' : ''}
    ${optionHelpers(f)}
    ${rangeHelpers(f)}

    ${kv.fns}

    ${splitMainWGSL(variableNames, f, true, `${kv.declare}
      ${loads.prefetch ? kv.issue('firstCol') : ''}`)}

      // The row phase's row (RT threads each) and its running max, sum and dropout key.
      let rr = tid / RT;
      let sub = tid % RT;
      let rowThread = tid < ROWS * RT;
      let myGr = gr0 + min(rr, ROWS - 1);
      let myI = myGr % uniforms.nqMax;
      let myH = min(kvh * group + myGr / uniforms.nqMax, heads - 1);
      var m = NEG_BIG;
      var l = 0.0;
      let rowKey = dropoutRowKey(b * heads + myH, myI);
      ${each(u => `var acc_${u} = vec4<f32>(0.0);`)}
      let kp = tid / PAIRS;

      for (var col0 = firstCol; col0 < hi; col0 += COLS) {
        ${loads.prefetch ? '' : kv.issue('col0')}
        workgroupBarrier();   // the previous tile is consumed
        ${kv.store}
        workgroupBarrier();
        ${loads.prefetch ? `// The next tile's loads, in flight while this one is used (zeros past hi).
        ${kv.issue('col0 + COLS')}` : ''}

        ${scorePhaseWGSL(sp)}

        // Row phase: the tile's row max, then probabilities under the new running max.
        var part = NEG_BIG;
        if (rowThread) {
          for (var c = sub; c < COLS; c += RT) {
            let x = sTile[rr][c];
            part = max(part, select(x, NEG_BIG, poisons(x)));
          }
          red[tid] = part;
        }
        workgroupBarrier();
        if (rowThread) {
          var tileMax = NEG_BIG;
          for (var u = 0; u < RT; u++) { tileMax = max(tileMax, red[rr * RT + u]); }
          // Both maxima are finite (NaN and +inf scores are left out), so alpha is never NaN.
          let newMax = max(m, tileMax);
          let alpha = exp(m - newMax);
          m = newMax;
          l *= alpha;
          for (var c = sub; c < COLS; c += RT) {
            let x = sTile[rr][c];
            // As the one-pass kernel: masked 0 by the keep bit, a kept NaN/+inf score a NaN.
            let p = select(select(0.0, exp(x - newMax), keepTile[rr][c] != 0u), quietNaN(x), poisons(x));
            l += p;   // the normaliser ignores dropout
            sTile[rr][c] = p * dropoutScale(rowKey, col0 + c);
          }
          if (sub == 0) { rowAlpha[rr] = alpha; }
        }
        workgroupBarrier();

        // Accumulate phase.
        ${each(u => `{
          let pair = ${pairOf(u)};
          if (pair < PAIRS && kp < KP) {
            let r = pair / DV4;
            let c4 = pair % DV4;
            var a = acc_${u} * rowAlpha[r];
            for (var c = ${acc.keyParts > 1 ? 'kp' : '0'}; c < COLS; c += KP) { a += sTile[r][c] * vTile[c][c4]; }
            acc_${u} = a;
          }
        }`)}
      }

      // The split's row sums (combined across the row's threads) and accumulators.
      workgroupBarrier();
      if (rowThread) { red[tid] = l; }
      ${acc.keyParts > 1 ? 'if (kp < KP) { accRed[tid] = acc_0; }' : ''}
      workgroupBarrier();
      if (rowThread && sub == 0) {
        var rowSum = 0.0;
        for (var u = 0; u < RT; u++) { rowSum += red[rr * RT + u]; }
        rowFinal[rr] = vec2<f32>(m, rowSum);
      }
      workgroupBarrier();
      let numSplits = uniforms.numSplits;
      let rowsAll = uniforms.batchSeqs * heads * uniforms.nqMax;
      ${each(u => `{
        let pair = ${pairOf(u)};
        if (pair < PAIRS && ${acc.keyParts > 1 ? 'kp == 0' : 'true'}) {
          let r = pair / DV4;
          let c4 = pair % DV4;
          let gr = gr0 + r;
          if (gr < grEnd) {
            let g = (b * heads + kvh * group + gr / uniforms.nqMax) * uniforms.nqMax + gr % uniforms.nqMax;
            ${acc.keyParts > 1 ? `var a = vec4<f32>(0.0);
            for (var p = 0; p < KP; p++) { a += accRed[p * PAIRS + pair]; }` : `let a = acc_${u};`}
            let base = (g * numSplits + split) * DV;
            ${unroll(4, e => `if (c4 * 4 + ${e} < DV) { result[base + c4 * 4 + ${e}] = a[${e}]; }`)}
            if (c4 == 0) {
              let ml = rowsAll * numSplits * DV + (g * numSplits + split) * 2;
              result[ml] = rowFinal[r].x;
              result[ml + 1] = rowFinal[r].y;
            }
          }
        }
      }`)}
    }`;
}

/**
 * The end of a split in the register and subgroup passes: each row's parts (one per key part or
 * lane group: an accumulator, and a running max and sum where parts have their own scale) merged in
 * part order (deterministic) into the partials the combine pass reads, t.mergeRows rows a round,
 * two barriers a round. One row a round with DV4 threads merging it took 2 barriers and a serial
 * loop per row: at a tile or two a split (short caches) that end was a large share of the pass.
 * store(r, slot): this thread's parts of row r into merge slot `slot`; merge: WGSL declaring a,
 * rowMax, rowSum for row r, merge slot `slot`, value vec4 c4 (in scope).
 */
export function mergeRoundsWGSL(t: DecodeTiles, store: (r: number, slot: number) => string, merge: string): string {
  const per = Math.max(1, Math.min(t.mergeRows, t.rows));
  return `
      let numSplits = uniforms.numSplits;
      let rowsAll = uniforms.batchSeqs * heads * uniforms.nqMax;
      ${unroll(Math.ceil(t.rows / per), k => {
        const n = Math.min(per, t.rows - k * per);
        return `
      workgroupBarrier();
      ${unroll(n, slot => store(k * per + slot, slot))}
      workgroupBarrier();
      for (var e = tid; e < ${n} * DV4; e += NT) {
        let slot = e / DV4;
        let c4 = e - slot * DV4;
        let r = ${k * per} + slot;
        let gr = gr0 + r;
        if (gr < grEnd) {
          ${merge}
          let g = (b * heads + kvh * group + gr / uniforms.nqMax) * uniforms.nqMax + gr % uniforms.nqMax;
          ${writePartialWGSL('a', 'rowMax', 'rowSum')}
        }
      }`;
      })}`;
}

/**
 * mergeRoundsWGSL's merge of `parts` parts with their own scales (the fused and blocked passes' key
 * parts, the subgroup pass's lane groups): running max partM, sum partL (part p of row r at index
 * part('r', 'p')), accumulator of part p at accAt (slot, p and c4 in scope).
 */
export const scaledPartsMerge = (part: (r: string, p: string) => string, parts: string, accAt: string) => `
          var rowMax = NEG_BIG;
          for (var p = 0; p < ${parts}; p++) { rowMax = max(rowMax, partM[${part('r', 'p')}]); }
          var rowSum = 0.0;
          var a = vec4<f32>(0.0);
          for (var p = 0; p < ${parts}; p++) {
            let w = exp(partM[${part('r', 'p')}] - rowMax);
            rowSum += w * partL[${part('r', 'p')}];
            a += w * ${accAt};
          }`;

/** The register passes' merge of their KP accumulator parts (thread tid = kp * DV4 + c4 holds part kp). */
const registerPartsMerge = (part: (r: string, p: string) => string) =>
  scaledPartsMerge(part, 'KP', 'accRed[slot * NT + p * DV4 + c4]');
const storeRegisterPart = (r: number, slot: number) => `if (accThread) { accRed[${slot} * NT + tid] = acc_${r}; }`;

/** Most query rows per workgroup of the fused split pass (each thread keeps one accumulator per row). */
export const FUSED_MAX_ROWS = 8;

/**
 * (keyParts, keysPerThread) of the fused split pass: thread tid owns value column c4 = tid % DV4 of
 * every row and the tile's keys c = kp, kp + KP, ... (kp = tid / DV4 < KP).
 */
export function fusedLayout(t: DecodeTiles, headDimV: number) {
  const keyParts = Math.max(1, Math.floor(t.threads / vec4Count(headDimV)));
  return { keyParts, keysPerThread: Math.ceil(t.cols / keyParts) };
}

/** Bytes of workgroup memory of the fused split pass (mirrors the declarations below). */
export function decodeFusedWorkgroupBytes(t: DecodeTiles, headDim: number, headDimV: number): number {
  const d4p = paddedVec4(headDim), { keyParts } = fusedLayout(t, headDimV);
  return 16 * (t.rows * d4p + t.cols * d4p + t.mergeRows * t.threads) +   // q, k, accRed
         4 * (2 * t.rows * t.cols + t.threads + 2 * keyParts * t.rows) + 16;   // s, keep, scorePart, partM/L, wgId
}

/**
 * The fused split pass (vec4 K and V, at most FUSED_MAX_ROWS rows): as the split pass, but values
 * are never staged and there is no row phase. The key tile goes through workgroup memory (the
 * score phase shares a dot product among threads); each thread then reads its own keys' value
 * vec4s straight into registers (loaded a tile ahead, coalesced: neighbouring threads read
 * neighbouring columns of one key) and keeps its own running max, sum and accumulator per row
 * (online softmax over its keys c = kp, kp + KP, ...; the DV4 threads of one kp compute the same
 * max and sum in lockstep). At the end of the split the KP parts of each row are combined in kp
 * order (deterministic) into the same partials the combine pass reads.
 */
export function splitPassFusedWGSL(variableNames: string[], t: DecodeTiles, f: OptionFlags,
                                   headDim: number, headDimV: number, loads: DecodeLoads): string {
  const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV);
  const kLoads = kvTileLoads(t, headDim, headDimV, { ...loads, vec4: true }, false);
  const sp = scoreThreadsOf(t, d4);
  const { keyParts, keysPerThread } = fusedLayout(t, headDimV);
  const rows = (body: (r: number) => string) => unroll(t.rows, body);
  const { keys, col, inTile, issueV } = registerKeys(t, keyParts, keysPerThread);
  return `
    ${splitConstantsWGSL(t, headDim, headDimV, { KP: keyParts, SP: sp })}
    var<workgroup> sharedWorkgroupId : vec3<u32>;
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, COLS>;
    var<workgroup> sTile : array<array<f32, COLS>, ROWS>;
    var<workgroup> keepTile : array<array<u32, COLS>, ROWS>;
    var<workgroup> accRed : array<vec4<f32>, ${t.mergeRows * t.threads}>;
    var<workgroup> partM : array<f32, ${keyParts * t.rows}>;
    var<workgroup> partL : array<f32, ${keyParts * t.rows}>;
    ${sp > 1 ? 'var<workgroup> scorePart : array<f32, NT>;' : ''}
    ${optionHelpers(f)}
    ${rangeHelpers(f)}

    ${kLoads.fns}
    ${V_REGISTER_LOAD}

    ${splitMainWGSL(variableNames, f, true, `${VALUE_COLUMN_THREAD}
      ${keys(i => `var vx_${i} : vec4<f32>;`)}
      ${kLoads.declare}
      ${loads.prefetch ? kLoads.issue('firstCol') : ''}
      ${issueV('firstCol')}`)}

      ${rows(r => `var m_${r} = NEG_BIG; var l_${r} = 0.0; var acc_${r} = vec4<f32>(0.0);
      let rowKey_${r} = dropoutRowKey(b * heads + min(kvh * group + (gr0 + ${r}) / uniforms.nqMax, heads - 1), (gr0 + ${r}) % uniforms.nqMax);`)}

      for (var col0 = firstCol; col0 < hi; col0 += COLS) {
        ${loads.prefetch ? '' : kLoads.issue('col0')}
        workgroupBarrier();   // the previous key tile and scores are consumed
        ${kLoads.store}
        workgroupBarrier();
        ${loads.prefetch ? kLoads.issue('col0 + COLS') : ''}
        ${scorePhaseWGSL(sp)}

        // Accumulate: per row, this thread's max over its keys of the tile, then probabilities
        // under the new running max (as the one-pass kernel: masked 0 by the keep bit, a kept
        // NaN/+inf score a NaN; both maxima finite, so alpha is never NaN).
        if (accThread) {
          ${rows(r => `{
            var tileMax = NEG_BIG;
            ${keys(i => `{ let x = sTile[${r}][${col(i)}]; tileMax = max(tileMax, select(select(x, NEG_BIG, poisons(x)), NEG_BIG, !${inTile(i)})); }`)}
            let newMax = max(m_${r}, tileMax);
            let alpha = exp(m_${r} - newMax);
            m_${r} = newMax;
            var l = l_${r} * alpha;
            var a = acc_${r} * alpha;
            ${keys(i => `{
              let x = sTile[${r}][${col(i)}];
              let p = select(select(0.0, exp(x - newMax), (keepTile[${r}][${col(i)}] != 0u) & ${inTile(i)}), quietNaN(x), poisons(x) & ${inTile(i)});
              l += p;   // the normaliser ignores dropout
              a += (p * dropoutScale(rowKey_${r}, col0 + kp + ${i * keyParts})) * vx_${i};
            }`)}
            l_${r} = l;
            acc_${r} = a;
          }`)}
        }
        // This thread's values of the next tile, in flight through the next score phase.
        ${issueV('col0 + COLS')}
      }

      // The split's KP parts of each row, combined in kp order.
      if (accThread && c4 == 0) {
        ${rows(r => `partM[kp * ROWS + ${r}] = m_${r}; partL[kp * ROWS + ${r}] = l_${r};`)}
      }
      ${mergeRoundsWGSL(t, storeRegisterPart, registerPartsMerge((r, p) => `${p} * ROWS + ${r}`))}
    }`;
}

/**
 * (scoreThreads, rowThreads, keyParts, keysPerThread) of the grouped split pass: SPK threads per
 * key in the score phase (each a share of the head dim), RT threads per row in the row phase, and
 * as the fused pass KP threads per value vec4 in the accumulate phase (keys kp, kp + KP, ...).
 */
export function groupedLayout(t: DecodeTiles, headDim: number, headDimV: number) {
  // A power of two (the threads of a key are tid / (NT / SPK) apart), at most the head dim's vec4s.
  let spk = 1;
  while (spk * 2 <= Math.min(t.threads / t.cols, vec4Count(headDim))) spk *= 2;
  const rowThreads = Math.min(Math.floor(t.threads / t.rows), 32, t.cols);
  return { scoreThreads: spk, rowThreads, ...fusedLayout(t, headDimV) };
}

/** Bytes of workgroup memory of the grouped split pass (mirrors the declarations below). */
export function decodeGroupedWorkgroupBytes(t: DecodeTiles, headDim: number, headDimV: number): number {
  const d4p = paddedVec4(headDim), { scoreThreads } = groupedLayout(t, headDim, headDimV);
  return 16 * (t.rows * d4p + Math.max(t.cols * d4p, t.mergeRows * t.threads)) +   // q, k (and the end's accumulators)
         4 * (scoreThreads * t.rows * t.cols + t.threads + t.rows) + 8 * t.rows + 16;   // scores, red, alpha, final, wgId
}

/**
 * The grouped split pass (vec4 K and V, 2 ... FUSED_MAX_ROWS query rows of one kv head's group): the
 * fused pass redoes each row's online softmax in every thread of a value column (DV4 times the exps
 * and the max per score, for every row), and its score phase reads each key from workgroup memory
 * once per row. Here the work per score is done once:
 *  - score phase: SPK threads per key, each over its share of the head dim, with the key vec4 read
 *    once for all ROWS rows (the query vec4s are the same address across the threads: broadcast);
 *  - row phase: RT threads per row take the tile's row max (masks, biases, the keep bit), then one
 *    probability per (row, key) under the new running max, times the dropout factor, into sTile;
 *    the row sum is kept per thread (all of a row's threads share its max) and added up at the end;
 *  - accumulate phase: as the fused pass, each thread its value vec4 of its keys from registers
 *    (loaded a tile ahead), P V for every row, no exps.
 * Deterministic (fixed orders); masked 0, a kept NaN/+inf score NaN, as the one-pass kernel.
 */
export function splitPassGroupedWGSL(variableNames: string[], t: DecodeTiles, f: OptionFlags,
                                     headDim: number, headDimV: number, loads: DecodeLoads, consecutive = false): string {
  const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV), d4p = paddedVec4(headDim);
  const kLoads = kvTileLoads(t, headDim, headDimV, { ...loads, vec4: true }, false);
  const { scoreThreads: spk, rowThreads: rt, keyParts, keysPerThread } = groupedLayout(t, headDim, headDimV);
  const keysPerRowThread = Math.ceil(t.cols / rt);
  const rows = (body: (r: number) => string, sep?: string) => unroll(t.rows, body, sep);
  const rowKeys = (body: (i: number) => string, sep?: string) => unroll(keysPerRowThread, body, sep);
  const { keys, issueV, accumulate } = registerKeys(t, keyParts, keysPerThread, consecutive);
  return `
    ${splitConstantsWGSL(t, headDim, headDimV, { KP: keyParts, SPK: spk, RT: rt })}
    var<workgroup> sharedWorkgroupId : vec3<u32>;
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    // The key tile; at the end of the split the threads' accumulators (NT vec4s).
    var<workgroup> kTile : array<array<vec4<f32>, D4P>, ${Math.max(t.cols, Math.ceil(t.mergeRows * t.threads / d4p))}>;
    // Score shares [SPK][ROWS][COLS]; share 0 then holds the probabilities (times the dropout factor).
    ${scoreTileWGSL(spk * t.rows * t.cols)}
    var<workgroup> red : array<f32, NT>;
    var<workgroup> rowAlpha : array<f32, ROWS>;
    var<workgroup> rowFinal : array<vec2<f32>, ROWS>;
    ${optionHelpers(f)}
    ${rangeHelpers(f)}

    ${kLoads.fns}
    ${V_REGISTER_LOAD}

    ${splitMainWGSL(variableNames, f, true, `// Accumulate phase: value column c4, keys kp, kp + KP, ... of every row.
      ${VALUE_COLUMN_THREAD}
      ${keys(i => `var vx_${i} : vec4<f32>;`)}
      ${kLoads.declare}
      ${loads.prefetch ? kLoads.issue('firstCol') : ''}
      ${issueV('firstCol')}`)}

      ${rows(r => `var acc_${r} = vec4<f32>(0.0);`)}
      // Row phase: row rr, keys sub, sub + RT, ...; its running max and its share of the row sum.
      let rr = min(tid / RT, ROWS - 1);
      let sub = tid % RT;
      let rowThread = tid < ROWS * RT;
      let myGr = gr0 + rr;
      let myI = myGr % uniforms.nqMax;
      let myH = min(kvh * group + myGr / uniforms.nqMax, heads - 1);
      let rowKey = dropoutRowKey(b * heads + myH, myI);
      var m = NEG_BIG;
      var l = 0.0;
      // Score phase: key sc (and sc + NT / SPK, ...), share sp of the head dim.
      let sp = tid / (NT / SPK);

      for (var col0 = firstCol; col0 < hi; col0 += COLS) {
        ${loads.prefetch ? '' : kLoads.issue('col0')}
        workgroupBarrier();   // the previous key tile and probabilities are consumed
        ${kLoads.store}
        workgroupBarrier();
        ${loads.prefetch ? kLoads.issue('col0 + COLS') : ''}

        for (var sc = tid % (NT / SPK); sp < SPK && sc < COLS; sc += NT / SPK) {
          ${rows(r => `var dot_${r} = 0.0;`, ' ')}
          for (var x = sp; x < D4; x += SPK) {
            let kx = kTile[sc][x];
            ${rows(r => `dot_${r} += dot(qTile[${r}][x], kx);`, ' ')}
          }
          ${rows(r => `sSet((sp * ROWS + ${r}) * COLS + sc, dot_${r});`, ' ')}
        }
        workgroupBarrier();

        // Row phase: the scores (shares added, masks and biases), the tile's row max.
        ${rowKeys(i => `var s_${i} = NEG_BIG; var kept_${i} = false;`, ' ')}
        var part = NEG_BIG;
        if (rowThread) {
          ${rowKeys(i => `{
            let c = sub + ${i * rt};
            if (c < COLS) {
              var dotSum = 0.0;
              ${unroll(spk, u => `dotSum += sGet((${u} * ROWS + rr) * COLS + c);`, ' ')}
              let j = col0 + c;
              kept_${i} = (myGr < grEnd) & (j < hi) & isKept(b, myH, myI, j, lenQ, lenK, off);
              s_${i} = select(NEG_BIG, scoreOf(dotSum, myI, j, off, slopeOf(myH)), kept_${i});
              part = max(part, select(s_${i}, NEG_BIG, poisons(s_${i})));
            }
          }`)}
          red[tid] = part;
        }
        workgroupBarrier();
        if (rowThread) {
          var tileMax = NEG_BIG;
          for (var u = 0; u < RT; u++) { tileMax = max(tileMax, red[rr * RT + u]); }
          // Both maxima are finite (NaN and +inf scores are left out), so alpha is never NaN.
          let newMax = max(m, tileMax);
          let alpha = exp(m - newMax);
          m = newMax;
          l *= alpha;
          ${rowKeys(i => `{
            let c = sub + ${i * rt};
            if (c < COLS) {
              let x = s_${i};
              let p = select(select(0.0, exp(x - newMax), kept_${i}), quietNaN(x), poisons(x));
              l += p;   // the normaliser ignores dropout
              sSet(rr * COLS + c, p * dropoutScale(rowKey, col0 + c));
            }
          }`)}
          if (sub == 0) { rowAlpha[rr] = alpha; }
        }
        workgroupBarrier();

        // Accumulate phase.
        if (accThread) {
          ${rows(r => `{
            var a = acc_${r} * rowAlpha[${r}];
            ${accumulate(r, '0')}
            acc_${r} = a;
          }`)}
        }
        // This thread's values of the next tile, in flight through the next score phase.
        ${issueV('col0 + COLS')}
      }

      // The split's row sums (RT shares per row) and accumulators (KP parts per value vec4, in kp order).
      workgroupBarrier();
      if (rowThread) { red[tid] = l; }
      workgroupBarrier();
      if (rowThread && sub == 0) {
        var rowSum = 0.0;
        for (var u = 0; u < RT; u++) { rowSum += red[rr * RT + u]; }
        rowFinal[rr] = vec2<f32>(m, rowSum);
      }
      ${mergeRoundsWGSL(t, (r, slot) => `if (accThread) { let e = ${slot} * NT + tid; kTile[e / D4P][e % D4P] = acc_${r}; }`, `
          var a = vec4<f32>(0.0);
          for (var p = 0; p < KP; p++) { let e = slot * NT + p * DV4 + c4; a += kTile[e / D4P][e % D4P]; }
          let rowMax = rowFinal[r].x;
          let rowSum = rowFinal[r].y;`)}
    }`;
}

/**
 * (scoreShares, keyShareVec4s, keysPerScoreThread, keyParts, keysPerThread) of the blocked split
 * pass: SPK threads per key in the score phase, each KX consecutive vec4s of the key (in registers,
 * loaded a tile ahead) for KS keys of the tile; KP key parts in the accumulate phase as the fused
 * pass (thread (c4, kp): value column c4, keys kp, kp + KP, ...), and one row thread per (row, kp)
 * with its own running max and sum over those same keys.
 */
export function blockedLayout(t: DecodeTiles, headDim: number, headDimV: number) {
  const d4 = vec4Count(headDim);
  // Key shares of at most 8 vec4s (32 registers a key), a power of two that divides the threads.
  let spk = 1;
  while (Math.ceil(d4 / spk) > 8 && spk * 2 <= t.threads) spk *= 2;
  const keyGroups = t.threads / spk;
  return {
    scoreShares: spk, keyShareVec4s: Math.ceil(d4 / spk), keysPerScoreThread: Math.max(1, Math.ceil(t.cols / keyGroups)),
    ...fusedLayout(t, headDimV),
  };
}

/** Bytes of workgroup memory of the blocked split pass (mirrors the declarations below). */
export function decodeBlockedWorkgroupBytes(t: DecodeTiles, headDim: number, headDimV: number): number {
  const { scoreShares, keyParts } = blockedLayout(t, headDim, headDimV);
  return 16 * (t.rows * paddedVec4(headDim) + t.mergeRows * t.threads) +     // q, accRed
         4 * (2 * scoreShares * t.rows * t.cols + 2 * t.rows * keyParts + 2 * t.rows * keyParts) + 16;   // scores x2, alpha x2, m, l, wgId
}

/**
 * The blocked split pass (vec4 K and V, 2 ... FUSED_MAX_ROWS rows of one kv head's group): the
 * grouped pass's work per score done once, with two barriers a tile instead of five.
 *  - No key tile in workgroup memory: each score thread holds its share of its keys in registers
 *    (loaded a tile ahead, as the values are), so no store and no barrier before the scores; the
 *    query vec4 a warp reads is the same for all its lanes (broadcast).
 *  - No row reduction: the row thread (r, kp) keeps its own running max and sum over keys kp,
 *    kp + KP, ... (the keys of accumulate threads (c4, kp)), so each part has its own scale (alpha
 *    per (row, kp)) and the KP parts are combined once at the end of the split, as the fused pass's.
 *  - Scores and probabilities double-buffered by tile parity: tile t + 2 writes the buffer tile t
 *    read only after every thread has passed tile t + 1's first barrier (after its tile-t work).
 * Deterministic (fixed orders); masked 0, a kept NaN/+inf score NaN, as the one-pass kernel.
 */
export function splitPassBlockedWGSL(variableNames: string[], t: DecodeTiles, f: OptionFlags,
                                     headDim: number, headDimV: number, loads: DecodeLoads, consecutive = false): string {
  const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV), d4p = paddedVec4(headDim);
  const { scoreShares: spk, keyShareVec4s: kx, keysPerScoreThread: ks, keyParts, keysPerThread } = blockedLayout(t, headDim, headDimV);
  const keyGroups = t.threads / spk;
  const rows = (body: (r: number) => string, sep?: string) => unroll(t.rows, body, sep);
  const { keys, keyOf, issueV, accumulate, vec4Probs } = registerKeys(t, keyParts, keysPerThread, consecutive);
  // Where a row thread's keys are consecutive whole vec4s: its score shares read and its probabilities written as vec4s.
  const shareSum = (i: number) => vec4Probs ? `sv_${i >> 2}[${i & 3}]`
      : unroll(spk, u => `sGet(sBase + ${u} * SHARE + r * COLS + c)`, ' + ');
  const raggedShare = spk * kx > d4;
  const issueK = (col0: string) => unroll(ks, u => unroll(kx, x =>
      `kx_${u}_${x} = kLoadB(kq + ${u * keyGroups}, sp * KX + ${x}, ${col0}, hi, startK, kvh);`, ' '));
  return `
    ${splitConstantsWGSL(t, headDim, headDimV, { KP: keyParts, SPK: spk, KX: kx, SHARE: t.rows * t.cols })}
    var<workgroup> sharedWorkgroupId : vec3<u32>;
    var<workgroup> qTile : array<array<vec4<f32>, D4P>, ROWS>;
    // Per tile parity: score shares [SPK][ROWS][COLS]; share 0 then holds the probabilities (times the dropout factor).
    ${scoreTileWGSL(2 * spk * t.rows * t.cols)}
    var<workgroup> alphaTile : array<f32, ${2 * t.rows * keyParts}>;
    // Running max and sum per (row, kp) (each only its row thread's), then the split's parts.
    var<workgroup> partM : array<f32, ${t.rows * keyParts}>;
    var<workgroup> partL : array<f32, ${t.rows * keyParts}>;
    var<workgroup> accRed : array<vec4<f32>, ${t.mergeRows * t.threads}>;
    ${optionHelpers(f)}
    ${rangeHelpers(f)}

    fn kLoadB(c : i32, x : i32, col0 : i32, hi : i32, startK : i32, kvh : i32) -> vec4<f32> {
      let j = col0 + c;
      let ok = (c < COLS) & (j < hi) & (x < D4);
      return select(vec4<f32>(0.0), k[select(0, ((startK + j) * uniforms.kShape.z + kvh) * D4 + x, ok)], ok);
    }
    ${V_REGISTER_LOAD}

    ${splitMainWGSL(variableNames, f, true, `// Accumulate phase: value column c4, keys kp, kp + KP, ... of every row.
      ${VALUE_COLUMN_THREAD}
      ${keys(i => `var vx_${i} : vec4<f32>;`, ' ')}
      // Score phase: keys kq, kq + NT / SPK, ..., vec4s sp * KX ... sp * KX + KX - 1 of each.
      let kq = tid % ${keyGroups};
      let sp = tid / ${keyGroups};
      ${unroll(ks, u => unroll(kx, x => `var kx_${u}_${x} : vec4<f32>;`, ' '), ' ')}
      ${issueK('firstCol')}
      ${issueV('firstCol')}`)}

      ${rows(r => `var acc_${r} = vec4<f32>(0.0);`, ' ')}
      for (var e = tid; e < ROWS * KP; e += NT) { partM[e] = NEG_BIG; partL[e] = 0.0; }
      workgroupBarrier();   // qTile written

      var parity = 0;
      for (var col0 = firstCol; col0 < hi; col0 += COLS) {
        let sBase = parity * SPK * SHARE;
        let aBase = parity * ROWS * KP;
        ${unroll(ks, u => `{
          let c = kq + ${u * keyGroups};
          ${rows(r => `var dot_${r} = 0.0;`, ' ')}
          ${unroll(kx, x => `{
            let xq = ${raggedShare ? `min(sp * KX + ${x}, D4 - 1)` : `sp * KX + ${x}`};
            ${rows(r => `dot_${r} += dot(qTile[${r}][xq], kx_${u}_${x});`, ' ')}
          }`)}
          if (c < COLS) {
            ${rows(r => `sSet(sBase + sp * SHARE + ${r} * COLS + c, dot_${r});`, ' ')}
          }
        }`)}
        // This thread's keys of the next tile, in flight through the row and accumulate phases.
        ${issueK('col0 + COLS')}
        workgroupBarrier();

        // Row phase: row thread (r, p) over keys p, p + KP, ...: the scores (shares added, masks and
        // biases), its running max and sum, the probabilities under its new max.
        for (var e = tid; e < ROWS * KP; e += NT) {
          let r = e / KP;
          let p = e - r * KP;
          let gr = gr0 + r;
          let i = gr % uniforms.nqMax;
          let h = min(kvh * group + gr / uniforms.nqMax, heads - 1);
          let m = partM[e];
          var tileMax = NEG_BIG;
          ${keys(i => `var s_${i} = NEG_BIG; var kept_${i} = false;`, ' ')}
          ${vec4Probs ? `let rowAt = (sBase + r * COLS + p * ${keysPerThread}) / 4;
          ${unroll(keysPerThread / 4, j => `let sv_${j} = ${unroll(spk, u => `sTile[rowAt + ${u} * SHARE / 4 + ${j}]`, ' + ')};`, ' ')}` : ''}
          ${keys(i => `{
            let c = ${keyOf(i, 'p')};
            if (c < COLS) {
              let dotSum = ${shareSum(i)};
              let j = col0 + c;
              kept_${i} = (gr < grEnd) & (j < hi) & isKept(b, h, i, j, lenQ, lenK, off);
              s_${i} = select(NEG_BIG, scoreOf(dotSum, i, j, off, slopeOf(h)), kept_${i});
              tileMax = max(tileMax, select(s_${i}, NEG_BIG, poisons(s_${i})));
            }
          }`)}
          // Both maxima are finite (NaN and +inf scores are left out), so alpha is never NaN.
          let newMax = max(m, tileMax);
          let alpha = exp(m - newMax);
          var l = partL[e] * alpha;
          let rowKey = dropoutRowKey(b * heads + h, i);
          ${keys(i => `var pd_${i} = 0.0;`, ' ')}
          ${keys(i => `{
            let c = ${keyOf(i, 'p')};
            if (c < COLS) {
              let x = s_${i};
              let prob = select(select(0.0, exp(x - newMax), kept_${i}), quietNaN(x), poisons(x));
              l += prob;   // the normaliser ignores dropout
              pd_${i} = prob * dropoutScale(rowKey, col0 + c);
              ${vec4Probs ? '' : `sSet(sBase + r * COLS + c, pd_${i});`}
            }
          }`)}
          ${vec4Probs ? unroll(keysPerThread / 4, j => `sTile[rowAt + ${j}] = vec4<f32>(${unroll(4, e => `pd_${4 * j + e}`, ', ')});`, ' ') : ''}
          partM[e] = newMax;
          partL[e] = l;
          alphaTile[aBase + e] = alpha;
        }
        workgroupBarrier();

        // Accumulate phase: each part on its own scale.
        if (accThread) {
          ${rows(r => `{
            var a = acc_${r} * alphaTile[aBase + ${r} * KP + kp];
            ${accumulate(r, 'sBase')}
            acc_${r} = a;
          }`)}
        }
        // This thread's values of the next tile, in flight through the next score and row phases.
        ${issueV('col0 + COLS')}
        parity = 1 - parity;
      }

      // The split's KP parts of each row, combined in kp order (as the fused pass).
      ${mergeRoundsWGSL(t, storeRegisterPart, registerPartsMerge((r, p) => `${r} * KP + ${p}`))}
    }`;
}

/**
 * How a combine workgroup divides its work (combineLayout): `cols` value vec4 columns of one query
 * row (a row's columns are dealt to colBlocks workgroups), splitLanes lanes per column, each summing
 * up to splitsPerLane splits (sl, sl + SL, ...); every thread reads up to statsPerThread splits'
 * (max, sum).
 */
export interface CombineLayout {
  threads: number;
  /** Value vec4 columns a workgroup writes, and workgroups per query row (DV4 / COLS rounded up). */
  cols: number;
  colBlocks: number;
  /** Split lanes per column, and the splits each lane reads. */
  splitLanes: number;
  splitsPerLane: number;
  /** Splits whose (max, sum) each thread of the logSumExp program reads. */
  statsPerThread: number;
}

/** The largest power of two <= n (1 for n < 2). */
export const pow2AtMost = (n: number) => 2 ** Math.floor(Math.log2(Math.max(1, n)));

/** The combine layout of numSplits splits: threads and cols powers of two (tree reductions). */
export function combineLayout(headDimV: number, numSplits: number, threadsWanted: number, cols: number): CombineLayout {
  const dv4 = vec4Count(headDimV);
  const threads = pow2AtMost(threadsWanted);
  const c = Math.min(pow2AtMost(cols), pow2AtMost(dv4), threads);
  const splitLanes = threads / c;
  return {
    threads, cols: c, colBlocks: Math.ceil(dv4 / c), splitLanes,
    splitsPerLane: Math.ceil(numSplits / splitLanes), statsPerThread: Math.ceil(numSplits / threads),
  };
}

/**
 * The combine pass writes one of the two outputs (`part`): out [rowsQ, H, DV] (each workgroup COLS
 * vec4 columns of one row) or logSumExp (problem.ts's layout; one workgroup a row). Two small
 * dispatches instead of one packed buffer and two unpack copies: under per-program timing every
 * dispatch costs microseconds even when it moves nothing. A lane (out: split lane sl of value
 * column c, threads tid = sl x COLS + c; logSumExp: every thread) issues all its loads at the start
 * (its splits' max, sum and, for out, partial values), merges its splits under their own max, then
 * one tree over the lanes merges (max, sum, values) pairs, each rescaled to the pair's max: log2
 * lanes barriers in all. A max tree, then a sum tree and a value tree took three times as many
 * (H200, 2026-12-03 08:16 UTC: combine-out 4.69 -> 3.62 us at 64 splits, 5.59 -> 4.45 at 256).
 * Fixed orders: deterministic.
 */
export function combinePassWGSL(variableNames: string[], f: OptionFlags, headDimV: number, layout: CombineLayout,
                                part: 'out' | 'lse'): string {
  const out = part === 'out';
  const { threads, cols, splitLanes } = layout;
  const perLane = out ? layout.splitsPerLane : layout.statsPerThread;
  const values = (code: string) => (out ? code : '');
  return `
    const DV = ${headDimV};
    const DV4 = ${vec4Count(headDimV)};
    const NT = ${threads};
    const COLS = ${out ? cols : 1};
    const LANES = ${out ? splitLanes : threads};
    const COL_BLOCKS = ${out ? layout.colBlocks : 1};
    const NEG_BIG = ${NEG_BIG};
    var<workgroup> sharedWorkgroupId : vec3<u32>;
    var<workgroup> redM : array<f32, NT>;
    var<workgroup> redL : array<f32, NT>;
    ${values('var<workgroup> red4 : array<vec4<f32>, NT>;')}
    ${optionHelpers({ ...f, mask: false, dropout: false, alibi: false, softcap: false, window: false })}
    ${rangeHelpers(f, 'uniforms.nqMax', '')}

    fn main() {
      ${touch(variableNames)}
      ${UNIFORM_WG}
      let i = i32(wgId.x) / COL_BLOCKS;
      let cb = i32(wgId.x) % COL_BLOCKS;
      let h = i32(wgId.y);
      let b = i32(wgId.z);
      let heads = uniforms.heads;
      let nqMax = uniforms.nqMax;
      let numSplits = uniforms.numSplits;
      let rq = rangeQ(b);
      let startQ = rq.x;
      ${f.packed ? `
      // Packed rows past this sequence's length belong to the next sequence: not ours to write
      // (a uniform branch: the whole workgroup returns).
      if (i >= rq.y) { return; }` : ''}
      let g = (b * heads + h) * nqMax + i;
      let mlBase = uniforms.batchSeqs * heads * nqMax * numSplits * DV + g * numSplits * 2;
      // This lane's splits lane, lane + LANES, ... (past numSplits: max NEG_BIG, sum 0, values 0).
      let lane = tid / COLS;
      ${values(`let c4 = cb * COLS + tid % COLS;
      let accBase = g * numSplits * DV + c4 * 4;`)}
      ${unroll(perLane, u => `let s${u} = lane + ${u} * LANES;
      let in${u} = s${u} < numSplits;
      let m${u} = select(NEG_BIG, partials[select(0, mlBase + 2 * s${u}, in${u})], in${u});
      let l${u} = select(0.0, partials[select(0, mlBase + 2 * s${u} + 1, in${u})], in${u});
      ${values(`let x${u} = vec4<f32>(${[0, 1, 2, 3].map(e => `select(0.0, partials[select(0, accBase + s${u} * DV + ${e}, in${u} & (c4 * 4 + ${e} < DV))], in${u} & (c4 * 4 + ${e} < DV))`).join(', ')});`)}`)}
      // Every max is finite (the split pass leaves NaN and +inf scores out of it), so no weight is NaN.
      var rowMax = NEG_BIG;
      ${unroll(perLane, u => `rowMax = max(rowMax, m${u});`, ' ')}
      var rowSum = 0.0;
      ${values('var o = vec4<f32>(0.0);')}
      ${unroll(perLane, u => `{ let w = exp(m${u} - rowMax); rowSum += w * l${u};${values(` o += w * x${u};`)} }`)}
      // Lane lane + w merged into lane lane (w = LANES / 2, ..., 1).
      redM[tid] = rowMax;
      redL[tid] = rowSum;
      ${values('red4[tid] = o;')}
      workgroupBarrier();
      for (var w = LANES / 2; w > 0; w /= 2) {
        if (lane < w) {
          let other = tid + w * COLS;
          let m2 = redM[other];
          let merged = max(rowMax, m2);
          let a1 = exp(rowMax - merged);
          let a2 = exp(m2 - merged);
          rowMax = merged;
          rowSum = a1 * rowSum + a2 * redL[other];
          redM[tid] = rowMax;
          redL[tid] = rowSum;
          ${values(`o = a1 * o + a2 * red4[other];
          red4[tid] = o;`)}
        }
        workgroupBarrier();
      }
      // Query rows past the sequence's length (padded layout) have no kept key: out 0, lse -inf.
      // A row with no kept key has sum exactly 0 (even where its values hold 0 * NaN); a NaN sum is
      // not empty and propagates.
      let empty = rowSum == 0.0 || i >= rq.y;
      ${out ? `if (lane == 0 && c4 < DV4) {
        let inv = 1.0 / select(rowSum, 1.0, empty);
        ${unroll(4, e => `if (c4 * 4 + ${e} < DV) { result[((startQ + i) * heads + h) * DV + c4 * 4 + ${e}] = select(o[${e}] * inv, 0.0, empty); }`)}
      }` : `if (tid == 0) {
        // log(NaN) is not NaN everywhere (SwiftShader: +inf), so a NaN sum is passed on itself.
        let lse = select(rowMax + log(rowSum), rowSum, poisons(rowSum));
        result[startQ * uniforms.lseStartStride + h * uniforms.lseHeadStride + i] = select(lse, -uniforms.INFINITY, empty);
      }`}
    }`;
}
