/**
 * The subgroup split pass of the split-KV forward (flash_decode_webgpu.ts), for the opt-in
 * subgroups device (subgroups.ts) with vec4 K and V: no workgroup memory and no barrier in the key
 * loop. The other split passes stage each key tile through workgroup memory with 4-6 barriers per
 * tile; decode does about 1 FLOP per byte of K/V (MHA) to 4 (GQA 16/2), so those barriers and
 * that traffic, not the loads, set their pace.
 *
 * A workgroup owns the same (split, kv head x row block, batch) as the other split passes
 * (splitSetupWGSL: key range, query rows) and writes the same partials, so the combine pass is
 * reused unchanged. Inside it:
 *  - lane groups of LANES consecutive invocations (a power of two, at most the device's smallest
 *    subgroup: an aligned run of lanes lies in one subgroup, see subgroups.ts) each own one key at
 *    a time; lane x holds vec4s x, x + LANES, ... of every query row of the block (ROWS rows,
 *    registers, read by the lane itself: no staging, no barrier before the first keys), loads
 *    the same vec4s of the key (the lanes read one contiguous key row) and of the value row;
 *  - the ROWS partial dot products are summed across the lanes by a reduce-scatter butterfly
 *    (subgroupShuffleXor; ROWS - 1 shuffles instead of ROWS log2(LANES)), which leaves each lane
 *    the whole scores of OWN = max(1, ROWS / LANES) rows: the masks, biases, running max, sum and
 *    probabilities of a row are worked out once per key, by the lanes that own it;
 *  - an all-gather butterfly (the reverse) hands every lane each row's rescale factor and
 *    probabilities (times the dropout factor), and every lane updates its share of each row's
 *    accumulator (DV4 / LANES vec4s per row) in registers;
 *  - UNROLL keys per lane group per step, their loads issued first (many loads in flight), one
 *    rescale per step; the lane groups take keys interleaved (group g: keys g, g + G, ...), so a
 *    step of the workgroup reads G x UNROLL consecutive keys.
 * At the end of the split the lane groups' (max, sum, accumulator) of each row are merged in group
 * order through workgroup memory (deterministic). Masked 0, a kept NaN/+inf score NaN, as the
 * one-pass kernel.
 */
import { OptionFlags } from '../../src/contract';
import { NEG_BIG, optionHelpers } from './attention_wgsl';
import {
  DecodeTiles, FUSED_MAX_ROWS, mergeRoundsWGSL, pow2AtMost, rangeHelpers, scaledPartsMerge, splitConstantsWGSL, splitMainWGSL,
} from './decode_wgsl';
import { unroll } from './program';
import { paddedVec4, vec4Count } from './tiles';

/**
 * Threads of a subgroup split-pass workgroup: 128 where it owns 2 or more query rows, 256 for one
 * (MHA decode). H200, 8k-64k keys, d 64 and 128 (BENCHMARKS.md, "Subgroup split pass", 2026-12-02
 * 12:56 UTC, SM clock low for most of the run): one row, 256 threads 8-15 % faster than 128 in
 * 12 of 13 shapes (the 13th noisy, equal when measured again), 64 threads 32-56 % slower; 8 rows
 * (GQA 16/2), 256 from 10 % faster to 24 % slower (slower by more than 2 % in 8 of 16 shapes).
 */
export const SUBGROUP_THREADS = 128;
export const SUBGROUP_THREADS_ONE_ROW = 256;
/**
 * Keys per lane group per step (their K and V loads in flight together). H200 (same run): 2 was
 * 5-31 % slower than 4 in every shape but a noisy one; 8 from 13 % faster (one row) to 19 % slower (GQA).
 * At full clocks (2026-12-03 09:08 UTC, bench/results/h200-decode-2026-12-03-0858/unroll), 8 against
 * 4: 8-15 % slower for every MHA shape, 3-26 % slower for GQA 16/2 at batch 8 and at batch 1 from
 * 32k keys (d 128) and 64k (d 64); 11-17 % faster only at batch 1 with 16k-32k keys (d 64) and 8k
 * (d 128), shapes over issue 13's bar either way; its batch-1 GQA figures repeated to within 1 % at
 * 10:23 UTC (bench/results/h200-decode-b1-rows-2026-12-03).
 */
export const SUBGROUP_UNROLL = 4;
/**
 * Whether a step's key and value loads are issued during the step before it (two steps' loads in
 * registers; a split of one step gains nothing) rather than at the step's start. H200 (2026-12-03
 * 08:59 UTC, bench/results/h200-decode-2026-12-03-0858, the whole sweep): 7-10 % slower for every
 * MHA shape, GQA 16/2 within 3 % either way.
 */
export const SUBGROUP_PREFETCH = false;
/**
 * Split-pass workgroups the split count aims for on this pass (small workgroups, several per
 * compute unit). H200 (same run): 2048 from 10 % faster to 29 % slower than 512.
 */
export const SUBGROUP_TARGET_WORKGROUPS = 512;
/**
 * A split covers at least this many steps (fewer: more partials for the combine pass than work).
 * H200, GQA 16/2, B 1, 8k keys, d 64 (2026-12-03 08:21 UTC, bench/results/h200-decode-b1-2026-12-03,
 * one-tree combine): 2 steps of 32 keys (128 splits a kv head) 10.8 us against 13.7 us at one step
 * (256 splits); at 16k keys 256 splits of 2 steps either way. At d 128 a step is 16 keys, so 2
 * steps are the 32 keys of before (2026-12-02 16:20 UTC, bench/results/h200-decode-wide-combine:
 * 32 keys instead of 256 made the call 24 % faster at d 128, 8 % at d 64).
 */
export const SUBGROUP_MIN_SPLIT_STEPS = 2;
/**
 * Splits of at most this many steps merge all their rows in one round at the end (mergeRows =
 * rows); longer ones one row a round. H200, GQA 16/2 (2026-12-03 03:37 UTC,
 * bench/results/h200-decode-merge): all rows against one, B 1: 1 step (8k keys, d 64) 0.0151 vs
 * 0.0164 ms, 2 steps 0.0174 vs 0.0196 (16k, d 64) and 0.0185 vs 0.0186 (8k, d 128); 4 steps (16k,
 * d 128) 0.0249 vs 0.0238; 8 and 16 steps (64k) 0.0409 vs 0.0370 (d 64), 0.0706 vs 0.0575 (d 128);
 * B 8, 64k: 0.216 vs 0.182 and 0.438 vs 0.353. (Its 16 KiB of workgroup memory, against 2 KiB, may
 * cost resident workgroups where the key loop, not the end, sets the pace.)
 */
export const SUBGROUP_MERGE_ALL_MAX_STEPS = 2;
/**
 * Most threads: subgroupsAreLinear (subgroups.ts) checks the lane layout the shuffles rely on for
 * workgroups of up to 256 invocations.
 */
const SUBGROUP_MAX_THREADS = 256;

/** Geometry of the subgroup split pass (besides DecodeTiles: cols = keys per workgroup step). */
export interface SubgroupLayout {
  /** Lanes per key: a power of two, at most the device's smallest subgroup. */
  lanes: number;
  /** Keys per lane group per step. */
  unroll: number;
  /** The next step's loads issued during this one (SUBGROUP_PREFETCH). */
  prefetch: boolean;
}

/** The subgroup pass's hooks (a subset of flash_decode_webgpu.ts's DecodeOverride). */
export interface SubgroupOverride {
  lanes?: number;
  unroll?: number;
  subgroupPrefetch?: boolean;
  tiles?: Partial<DecodeTiles>;
}

/** Bytes of workgroup memory of the subgroup split pass (mirrors the declarations below). */
export function decodeSubgroupWorkgroupBytes(t: DecodeTiles, lanes: number, headDim: number, headDimV: number): number {
  const groups = t.threads / lanes;
  return 16 * t.mergeRows * groups * vec4Count(headDimV) + 4 * 2 * groups * t.rows + 16;
}

/**
 * The subgroup pass's tiles and layout for a problem on a device whose smallest subgroup is
 * `subgroupMinSize` (> 0): rows the kv head's group (a power of two, at most FUSED_MAX_ROWS; H200,
 * GQA 16/2, B 1, 2026-12-03 10:23 UTC, bench/results/h200-decode-b1-rows-2026-12-03: 4 rows a
 * workgroup from 8 % faster to 15 % slower, 2 rows 15-63 % slower, 8 lanes instead of 16 8-118 % slower),
 * lanes the widest power of two the head dims and the subgroup allow, threads SUBGROUP_THREADS
 * (SUBGROUP_THREADS_ONE_ROW for one row; fewer where workgroup memory is short), cols one
 * workgroup step (lane groups x unroll keys).
 */
export function subgroupDecodeLayout(s: { group: number; seqQ: number; headDim: number; headDimV: number },
                                     subgroupMinSize: number, maxWorkgroupBytes: number, maxThreads: number,
                                     o: SubgroupOverride = {}): { tiles: DecodeTiles; layout: SubgroupLayout } {
  const widest = Math.max(vec4Count(s.headDim), vec4Count(s.headDimV));
  const lanes = pow2AtMost(Math.min(o.lanes ?? widest, subgroupMinSize, widest));
  const rows = pow2AtMost(Math.min(o.tiles?.rows ?? 2 ** Math.ceil(Math.log2(Math.max(1, s.group * s.seqQ))), FUSED_MAX_ROWS));
  const unrollKeys = Math.max(1, Math.floor(o.unroll ?? SUBGROUP_UNROLL));
  const wanted = o.tiles?.threads ?? (rows === 1 ? SUBGROUP_THREADS_ONE_ROW : SUBGROUP_THREADS);
  let threads = Math.max(lanes, pow2AtMost(Math.min(wanted, maxThreads, SUBGROUP_MAX_THREADS)));
  let mergeRows = pow2AtMost(Math.min(o.tiles?.mergeRows ?? rows, rows));
  const tilesOf = (n: number): DecodeTiles => ({ rows, threads: n, cols: (n / lanes) * unrollKeys, mergeRows });
  while (mergeRows > 1 && decodeSubgroupWorkgroupBytes(tilesOf(threads), lanes, s.headDim, s.headDimV) > maxWorkgroupBytes) mergeRows /= 2;
  while (threads > lanes && decodeSubgroupWorkgroupBytes(tilesOf(threads), lanes, s.headDim, s.headDimV) > maxWorkgroupBytes) threads /= 2;
  if (decodeSubgroupWorkgroupBytes(tilesOf(threads), lanes, s.headDim, s.headDimV) > maxWorkgroupBytes) {
    throw new Error(`Error in flashAttention: no subgroup decode tile fits this WebGPU device for headDim ${s.headDim}, ` +
                    `headDimV ${s.headDimV} (workgroup storage ${maxWorkgroupBytes} bytes)`);
  }
  return { tiles: tilesOf(threads), layout: { lanes, unroll: unrollKeys, prefetch: o.subgroupPrefetch ?? SUBGROUP_PREFETCH } };
}

/**
 * The butterflies over the LANES lanes of a lane group (lane bit s pairs lanes lane ^ 2^s), for
 * ROWS values per lane. Reduce-scatter steps s < S = log2(min(ROWS, LANES)) halve the values a lane
 * holds (bit 0 keeps the lower half); then, where LANES > ROWS, plain all-reduce steps. A lane
 * ends with the sums of rows rowBase + o, o < OWN (rowBase: its low S lane bits, see rowBaseWGSL).
 * The all-gather runs the reduce-scatter's steps backwards.
 */
function butterflies(rows: number, lanes: number) {
  const steps = Math.log2(Math.min(rows, lanes));
  const own = rows >> steps;
  const xor = (v: string, s: number) => `subgroupShuffleXor(${v}, ${1 << s}u)`;
  return {
    steps, own,
    /** WGSL declaring `${out}_o` (o < OWN) as the lane-group sums of the values named vals[r]. */
    reduceScatter(vals: string[], out: string): string {
      let cur = vals, code = '';
      for (let s = 0; s < steps; s++) {
        const half = cur.length / 2;
        const next = Array.from({ length: half }, (_, i) => `${out}_s${s}_${i}`);
        code += unroll(half, i => `let ${next[i]} = select(${cur[i]}, ${cur[half + i]}, bit${s}) + ` +
                                  `${xor(`select(${cur[half + i]}, ${cur[i]}, bit${s})`, s)};`, ' ') + '\n';
        cur = next;
      }
      code += unroll(own, o => `var ${out}_${o} = ${cur[o]};`, ' ');
      for (let s = steps; s < Math.log2(lanes); s++) code += ' ' + unroll(own, o => `${out}_${o} += ${xor(`${out}_${o}`, s)};`, ' ');
      return code;
    },
    /** WGSL declaring `${out}_r` (r < ROWS) from this lane's OWN values `${own}_o` and the other lanes'. */
    allGather(ownName: string, out: string): string {
      let cur = Array.from({ length: own }, (_, o) => `${ownName}_${o}`), code = '';
      for (let s = steps - 1; s >= 0; s--) {
        const n = cur.length;
        const got = Array.from({ length: n }, (_, i) => `${out}_g${s}_${i}`);
        code += unroll(n, i => `let ${got[i]} = ${xor(cur[i], s)};`, ' ') + '\n';
        const next = Array.from({ length: 2 * n }, (_, i) => `${out}_a${s}_${i}`);
        code += unroll(n, i => `let ${next[i]} = select(${cur[i]}, ${got[i]}, bit${s}); ` +
                               `let ${next[n + i]} = select(${got[i]}, ${cur[i]}, bit${s});`, ' ') + '\n';
        cur = next;
      }
      return code + unroll(rows, r => `let ${out}_${r} = ${cur[r]};`, ' ');
    },
    /** The first row this lane owns: lane bit s (s < S) selects the upper half at step s. */
    rowBaseWGSL: `0${unroll(steps, s => ` + select(0, ${rows >> (s + 1)}, bit${s})`, '')}`,
  };
}

/**
 * The subgroup split pass (see the file header): vec4 K and V, at most FUSED_MAX_ROWS rows a
 * workgroup (a power of two), t.threads / lanes lane groups, t.cols = lane groups x unroll keys
 * per step; splitKeys a multiple of t.cols.
 */
export function splitPassSubgroupWGSL(variableNames: string[], t: DecodeTiles, f: OptionFlags,
                                      headDim: number, headDimV: number, sg: SubgroupLayout): string {
  const d4 = vec4Count(headDim), dv4 = vec4Count(headDimV), L = sg.lanes, U = sg.unroll;
  const kx = Math.ceil(d4 / L), vx = Math.ceil(dv4 / L);
  const bf = butterflies(t.rows, L);
  const rows = (body: (r: number) => string, sep = '\n') => unroll(t.rows, body, sep);
  const owned = (body: (o: number) => string, sep = '\n') => unroll(bf.own, body, sep);
  const keys = (body: (u: number) => string, sep = '\n') => unroll(U, body, sep);
  const kParts = (body: (x: number) => string, sep = ' ') => unroll(kx, body, sep);
  const vParts = (body: (y: number) => string, sep = ' ') => unroll(vx, body, sep);
  // Column of part x of a lane (past the head dim where LANES does not divide it: masked).
  const colOf = (x: number) => `lane + ${x * L}`;
  const colOk = (x: number, n: number) => ((x + 1) * L <= n ? 'true' : `(lane + ${x * L} < ${n})`);
  // The loads of the step at key at0: j_u, in_u (key u of this lane group, inside the split) and
  // this lane's K and V vec4s of it, zero past hi; names suffixed `n` ('N': the next step's), `decl`
  // declaring them ('let', 'var') or '' assigning them.
  const stepLoads = (at0: string, n: string, decl: 'let' | 'var' | '') => keys(u => {
    const d = decl ? `${decl} ` : '';
    const code = `${d}j${n}_${u} = ${at0} + ${u} * GROUPS + lg;
        ${d}in${n}_${u} = j${n}_${u} < hi;
        let at${n}_${u} = select(0, (startK + j${n}_${u}) * kvHeads + kvh, in${n}_${u});
        ${kParts(x => `${d}k${n}_${u}_${x} = select(vec4<f32>(0.0), k[at${n}_${u} * D4 + min(${colOf(x)}, D4 - 1)], in${n}_${u} & ${colOk(x, d4)});`)}
        ${vParts(y => `${d}v${n}_${u}_${y} = select(vec4<f32>(0.0), v[at${n}_${u} * DV4 + min(${colOf(y)}, DV4 - 1)], in${n}_${u} & ${colOk(y, dv4)});`)}`;
    return decl ? code : `{ ${code} }`;
  });
  return `
    ${splitConstantsWGSL(t, headDim, headDimV, { LANES: L, GROUPS: t.threads / L })}
    var<workgroup> sharedWorkgroupId : vec3<u32>;
    // The end of the split: each lane group's accumulators of mergeRows rows, and its max and sum of every row.
    var<workgroup> accRed : array<vec4<f32>, ${t.mergeRows * (t.threads / L) * dv4}>;
    var<workgroup> partM : array<f32, ${(t.threads / L) * t.rows}>;
    var<workgroup> partL : array<f32, ${(t.threads / L) * t.rows}>;
    ${optionHelpers(f)}
    ${rangeHelpers(f)}

    // Query vec4 x of row r of the block (scale folded in, as the one-pass forward does); zero past
    // the group's rows, the sequence's query rows or the head dim.
    fn qLoad(r : i32, x : i32, gr0 : i32, grEnd : i32, startQ : i32, lenQ : i32, kvh : i32, group : i32) -> vec4<f32> {
      let gr = gr0 + r;
      let i = gr % uniforms.nqMax;
      let ok = (gr < grEnd) & (i < lenQ) & (x < D4);
      let at = select(0, ((startQ + i) * uniforms.qShape.z + kvh * group + gr / uniforms.nqMax) * D, ok);
      var y = vec4<f32>(0.0);
      ${unroll(4, e => `y[${e}] = select(0.0, q[at + min(x * 4 + ${e}, D - 1)], ok & (x * 4 + ${e} < D));`, ' ')}
      return y * uniforms.scale;
    }

    ${splitMainWGSL(variableNames, f, false)}
      let lane = tid % LANES;
      let lg = tid / LANES;
      ${unroll(Math.log2(L), s => `let bit${s} = (lane & ${1 << s}) != 0;`, ' ')}
      // This lane's query vec4s straight from memory (no barrier: the first keys' loads are not held up).
      ${rows(r => `${kParts(x => `let q_${r}_${x} = qLoad(${r}, ${colOf(x)}, gr0, grEnd, startQ, lenQ, kvh, group);`)}
      ${vParts(y => `var acc_${r}_${y} = vec4<f32>(0.0);`)}`)}
      // The rows this lane owns after the reduce-scatter: their running max and sum, and constants.
      let rowBase = ${bf.rowBaseWGSL};
      ${owned(o => `let gr_${o} = gr0 + rowBase + ${o};
      let rowOk_${o} = gr_${o} < grEnd;
      let i_${o} = gr_${o} % uniforms.nqMax;
      let h_${o} = min(kvh * group + gr_${o} / uniforms.nqMax, heads - 1);
      let slope_${o} = slopeOf(h_${o});
      let rowKey_${o} = dropoutRowKey(b * heads + h_${o}, i_${o});
      var m_${o} = NEG_BIG;
      var l_${o} = 0.0;`)}

      ${sg.prefetch ? `// The first step's loads (key u of lane group lg: lo + u * GROUPS + lg).
      ${stepLoads('lo', 'N', 'var')}` : ''}
      for (var j0 = lo; j0 < hi; j0 += COLS) {
        ${sg.prefetch ? `// This step's loads (issued a step ahead), then the next step's, in flight through this one.
        ${keys(u => `let j_${u} = jN_${u}; let in_${u} = inN_${u};
        ${kParts(x => `let k_${u}_${x} = kN_${u}_${x};`)}
        ${vParts(y => `let v_${u}_${y} = vN_${u}_${y};`)}`)}
        ${stepLoads('j0 + COLS', 'N', '')}` : `// Every load of the step first: key u of lane group lg is j0 + u * GROUPS + lg.
        ${stepLoads('j0', '', 'let')}`}

        // Scores: this lane's share of each row's dot product, summed over the lane group.
        ${keys(u => `${rows(r => `let dot_${u}_${r} = ${kParts(x => `dot(q_${r}_${x}, k_${u}_${x})`, ' + ')};`, ' ')}
        ${bf.reduceScatter(Array.from({ length: t.rows }, (_, r) => `dot_${u}_${r}`), `raw_${u}`)}
        ${owned(o => `let kept_${u}_${o} = rowOk_${o} & in_${u} & isKept(b, h_${o}, i_${o}, j_${u}, lenQ, lenK, off);
        let s_${u}_${o} = select(NEG_BIG, scoreOf(raw_${u}_${o}, i_${o}, j_${u}, off, slope_${o}), kept_${u}_${o});`)}`)}

        // Online softmax of the owned rows (NaN and +inf scores left out of the max, so alpha is never NaN).
        ${owned(o => `var newMax_${o} = m_${o};
        ${keys(u => `newMax_${o} = max(newMax_${o}, select(s_${u}_${o}, NEG_BIG, poisons(s_${u}_${o})));`, ' ')}
        let alpha_${o} = exp(m_${o} - newMax_${o});
        m_${o} = newMax_${o};
        var l_new_${o} = l_${o} * alpha_${o};
        ${keys(u => `let p_${u}_${o} = select(select(0.0, exp(s_${u}_${o} - newMax_${o}), kept_${u}_${o}), quietNaN(s_${u}_${o}), poisons(s_${u}_${o}));
        l_new_${o} += p_${u}_${o};   // the normaliser ignores dropout
        let pd_${u}_${o} = p_${u}_${o} * dropoutScale(rowKey_${o}, j_${u});`)}
        l_${o} = l_new_${o};`)}

        // Every row's factors to every lane, then this lane's share of each row's accumulator.
        ${bf.allGather('alpha', 'rowAlpha')}
        ${keys(u => bf.allGather(`pd_${u}`, `rowP_${u}`))}
        ${rows(r => vParts(y => `acc_${r}_${y} = acc_${r}_${y} * rowAlpha_${r}${keys(u => ` + rowP_${u}_${r} * v_${u}_${y}`, '')};`))}
      }

      // The lane groups' parts of each row, merged in group order.
      if (lane < ${1 << bf.steps}) {
        ${owned(o => `partM[lg * ROWS + rowBase + ${o}] = m_${o}; partL[lg * ROWS + rowBase + ${o}] = l_${o};`)}
      }
      ${mergeRoundsWGSL(t, (r, slot) => vParts(y => `if (${colOk(y, dv4)}) { accRed[(${slot} * GROUPS + lg) * DV4 + ${colOf(y)}] = acc_${r}_${y}; }`, '\n      '),
                        scaledPartsMerge((r, p) => `${p} * ROWS + ${r}`, 'GROUPS', 'accRed[(slot * GROUPS + p) * DV4 + c4]'))}
    }`;
}
