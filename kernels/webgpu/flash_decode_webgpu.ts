/**
 * WebGPU split-KV forward ("flash-decoding"): for a few query rows over many keys. The one-pass
 * forward gives such a call only batch x heads workgroups, far too few to fill a GPU; this splits
 * the keys of each (sequence, kv head) across workgroups (split pass) and combines the partial
 * results by their logsumexp in a fixed order (combine pass, one program for the output and one
 * for the logsumexp, so a call is three dispatches; two where logSumExp is not needed, i.e. no
 * gradient can be taken and the caller did not ask for it, as in generation): same outputs as the
 * one-pass kernel, deterministic. One kv head's split serves every query head of its group
 * (GQA/MQA), so the keys and values are read once, not once per query head: decode's cost is
 * reading them. Every option is supported (ALiBi, window/causal, softcap, mask, dropout, padded
 * and packed sequence ranges); the gradient is the regular backward (this is a forward choice).
 *
 * The split pass (decode_wgsl.ts) is the fused one where headDim and headDimV are multiples of 4
 * (K and V bound as vec4 arrays, values straight into registers, at most 8 rows a workgroup, a
 * thread per value vec4 at least); where a workgroup owns 2 or more query rows, the blocked one
 * (keys in registers too, two barriers a tile) below headDimV 128 and the grouped one from there;
 * the staged one otherwise; all load the next key tile while working on the current one. On the
 * opt-in subgroups device (subgroups.ts) the subgroup split pass (decode_subgroup_wgsl.ts: no
 * workgroup memory, no barrier in the key loop) replaces them where K and V are vec4 loads.
 *
 * When it is picked (decodePlan): at most DECODE_MAX_SEQ_Q query rows per sequence and at least
 * DECODE_MIN_SEQ_K keys. On the H200 (BENCHMARKS.md, decode; steady-clock run, 2026-12-02 09:33
 * UTC) it was faster than the one-pass forward (2.8x to 90x) and than the composite (1.14x to 21x)
 * in every shape measured (1k-64k keys); at full clocks (13:25 UTC, 8k-64k keys, these defaults)
 * 4.4x to 124x and 2.3x to 35x. The split count targets DECODE_TARGET_WORKGROUPS workgroups in the split pass (WebGPU
 * does not expose the number of compute units, so the target is tuned on a large GPU), with no
 * split shorter than DECODE_MIN_TILES_PER_SPLIT tiles. The tile (keys per tile) is the largest
 * that fits the device's workgroup memory; the thread count follows the rows a workgroup owns
 * (DECODE_THREADS*).
 */
import { TensorInfo, util } from '@tensorflow/tfjs-core';
import { AttentionProblem, attentionProblem, FlashAttentionAttrs, FlashAttentionInputs } from '../../src/contract';
import {
  blockedLayout, CombineLayout, combineLayout, combinePassWGSL, decodeBlockedWorkgroupBytes, decodeFusedWorkgroupBytes, decodeGroupedWorkgroupBytes,
  DecodeLoads, DecodeTiles, decodeWorkgroupBytes, FUSED_MAX_ROWS, splitPassBlockedWGSL, splitPassFusedWGSL,
  splitPassGroupedWGSL, splitPassWGSL,
} from './decode_wgsl';
import {
  splitPassSubgroupWGSL, SUBGROUP_MERGE_ALL_MAX_STEPS, SUBGROUP_MIN_SPLIT_STEPS, SUBGROUP_TARGET_WORKGROUPS, subgroupDecodeLayout, SubgroupLayout,
} from './decode_subgroup_wgsl';
import { subgroupMinSizeOf } from './subgroups';
import { vec4Count } from './tiles';
import {
  checkBindingSizes, checkDispatch, DeviceLimits, deviceLimits, FlashProgram, inputsByName, logSumExpNotComputed, optionalInputNames,
  runProgram, shaderKeyOf,
  Uniform, WebGPUBackend, withDeviceErrorCheck,
} from './program';
import { optionUniforms } from './uniforms';

/** Longest query sequence the automatic choice sends to the split-KV kernel. */
export const DECODE_MAX_SEQ_Q = 16;
/** Shortest key sequence the automatic choice sends to it. */
export const DECODE_MIN_SEQ_K = 256;
/**
 * Split-pass workgroups the split count aims for. H200 (BENCHMARKS.md, decode): 128 was the
 * fastest or as fast as 256 ... 4096 in every tuned shape (GQA 16/2 at 64k keys: 0.30 against 0.33
 * ms at 512); more splits only add partials to combine. Rechecked for the fused pass (tuning run
 * 2026-12-02 08:49 UTC, bench/results/h200-decode-tuning): 256 no faster anywhere. Steady-clock run
 * (09:33 UTC, bench/results/h200-decode-steady): 64 and 256 slower or within 2 % in every GQA shape
 * (GQA 16/2, B 1, 64k keys, d 64: 0.144 and 0.140 ms against 0.114), also where the whole call is a
 * few microseconds of reading.
 */
export const DECODE_TARGET_WORKGROUPS = 128;
/**
 * A split covers at least this many key tiles. H200 (fused pass, 128-key tiles at d 64): 2 and 4
 * were within noise on long caches; 2 gives small caches more workgroups (GQA 16/2 at 2k keys,
 * B = 8, d 128: 0.055 ms against 0.099 with 4).
 */
export const DECODE_MIN_TILES_PER_SPLIT = 2;
/**
 * Split-pass threads (more threads: more loads of K and V in flight per workgroup). H200, d 128,
 * 64k keys: one query row per workgroup (MHA decode) 512 threads 1.47 ms, 256 1.86, 128 3.31;
 * eight rows (GQA 16/2) 256 threads 0.33 ms, 512 0.31, at 16k keys 0.096 against 0.110 (staged
 * pass). Fused pass, same 64k MHA shape (tuning run 08:49 UTC): 512 threads 0.64-0.70 ms, 256
 * 0.87, 1024 1.41; 1024 was the slowest in every shape. One row, 256 threads with twice the workgroups
 * (target 256: two per SM if registers allow), run of 2026-12-02 12:46 UTC (SM clock mostly 345 MHz,
 * within-shape ratios): 16-30 % slower than 512 threads at target 128 in all 6 MHA shapes.
 */
const DECODE_THREADS = 256;
const DECODE_THREADS_FEW_ROWS = 512;
/**
 * Whether the split pass loads the next key tile while it works on the current one (decode_wgsl.ts,
 * DecodeLoads). Measured only together with vec4 loads on the staged pass (H200: staged + vec4 +
 * prefetch 1.2x faster than staged scalar loads without prefetch on MHA, e.g. 64k keys d 128 0.617
 * against 0.743 ms); the tuning run's fused-pass comparison was confounded by clock drift.
 */
const DECODE_PREFETCH = true;
/** Whether the fused split pass runs where it applies (vec4 loads): see decode_wgsl.ts. */
const DECODE_FUSED = true;
/**
 * Whether the grouped split pass replaces the fused one where a workgroup owns 2 or more query rows
 * (GQA/MQA, or several query rows): one exp per (row, key) instead of one per (row, key, value vec4).
 */
const DECODE_GROUPED = true;
/**
 * ... from this value head dim on: the fused pass repeats each row's softmax once per value vec4
 * (headDimV / 4 times), so the grouped pass gains with the head dim. H200, GQA 16/2, seqK >= 8192
 * (BENCHMARKS.md, 2026-12-02 09:33 UTC): d 128 grouped 4-12 % faster in all 8 shapes; d 64 it was
 * 4-12 % slower in 6 of 8 (faster only at B = 8, 32k and 64k keys).
 */
const DECODE_GROUPED_MIN_HEAD_DIM_V = 128;
/**
 * Below DECODE_GROUPED_MIN_HEAD_DIM_V the blocked split pass (decode_wgsl.ts: keys in registers, a
 * softmax per (row, key part), two barriers a tile) replaces the fused pass where a workgroup owns 2
 * or more rows; from there on the grouped pass stays. H200 (BENCHMARKS.md, "The blocked split pass";
 * bench/results/h200-decode-blocked; both runs with the SM clock at 345 MHz most of the time, so
 * within-shape ratios only), GQA 16/2: d 64, against the fused pass, with one tile a split (below),
 * whole call 12-21 % faster at 8k B 8, 64k B 1 and 64k B 8 (0.923 vs 1.171 ms at 64k B 8) and 3 %
 * faster at 8k B 1 (0.134 vs 0.138); d 128, against the grouped pass, within 7 % either way (faster
 * at 8k B 1 by 7 % and 64k B 8 by 2 %, slower at 64k B 1 by 3 % and 8k B 8 by 4 %): not a winner
 * there, an override (blocked).
 * For one row (MHA) it was 1.5-19 % slower than the fused pass (override grouped + blocked).
 */
const DECODE_BLOCKED_BELOW_HEAD_DIM_V = DECODE_GROUPED_MIN_HEAD_DIM_V;
/**
 * Whether an accumulate thread of the grouped and blocked split passes owns consecutive keys of a
 * tile (its probabilities of a row read as vec4s: a quarter of the workgroup-memory reads) rather
 * than keys KP apart (decode_wgsl.ts, registerKeys). H200, default device (2026-12-03 05:28 UTC,
 * bench/results/h200-decode-2026-12-03): 5-13 % faster in all 16 GQA 16/2 shapes at 8k-64k keys
 * (B 8 64k d 64 0.291 vs 0.330 ms; B 1 8k d 128 0.0186 vs 0.0199).
 */
const DECODE_CONSECUTIVE_KEYS = true;
/**
 * The blocked pass's least tiles a split: its tiles are wide (128 keys at d 64), so 2 left GQA at 8k
 * keys, B 1 with 64 workgroups; 1 gives 128 (same run: 0.134 vs 0.148 ms; at 64k and at d 128 equal).
 */
const DECODE_MIN_TILES_PER_SPLIT_BLOCKED = 1;
/**
 * The combine pass: value vec4 columns a workgroup writes (a row's columns are dealt to
 * DV4 / COMBINE_COLS workgroups, so many splits are read by many threads at once), and its most
 * threads (fewer where there are few splits: COMBINE_COLS x the split count, at least a warp).
 * Before (2026-12-02 15:48 UTC run, bench/results/h200-decode-gqa-b1): one 128-thread workgroup a
 * row, each split lane reading its splits one after another: combine-out alone took 10.7 us (d 64)
 * and 17.2 us (d 128) at 256 splits (GQA 16/2, B 1, 64k keys), 4.5-7.1 us at 32-64 splits, so
 * calls with many short splits lost in the combine what they gained in the split pass. This
 * layout (16:16 UTC, bench/results/h200-decode-wide-combine): 5.7 and 5.8 us at 256 splits, 4.8 us
 * at 64; 8 columns a workgroup within 2 % of 4.
 */
const COMBINE_COLS = 4;
const COMBINE_MAX_THREADS = 256;
const COMBINE_MIN_THREADS = 32;
/** Most splits (each a partial the combine pass reads: more splits than this only add partials). */
export const DECODE_MAX_SPLITS = 256;
/**
 * Query rows per split-pass workgroup at most (rows of one kv head's group). The register passes
 * take the whole group (up to FUSED_MAX_ROWS) in one workgroup, so each split's keys and values are
 * read once: H200, GQA 16/2, B 8, 16k and 64k keys (BENCHMARKS.md, "GQA 16/2 with fewer query rows
 * per workgroup", 14:27 UTC), 4 or 2 rows a workgroup (256 or 128 threads) were 1.4-6.9x slower.
 */
const DECODE_MAX_ROWS = 32;

export interface DecodePlan {
  /** Whether the split-KV kernel runs (false: the one-pass forward). */
  use: boolean;
  tiles: DecodeTiles;
  /** Workgroups over a kv head's group of query rows, and splits of the keys. */
  rowBlocks: number;
  numSplits: number;
  /** Keys per split (a whole number of tiles). */
  splitKeys: number;
  /** How the split pass loads K and V. */
  loads: DecodeLoads;
  /** The fused split pass (values straight into registers, no row phase; vec4 loads only). */
  fused: boolean;
  /** The grouped split pass (as fused, with one probability per (row, key) shared through workgroup memory). */
  grouped: boolean;
  /** The subgroup split pass (decode_subgroup_wgsl.ts; subgroups device, vec4 loads), else null. */
  subgroup: SubgroupLayout | null;
  /** The blocked split pass in the grouped pass's place (keys in registers, per-part softmax). */
  blocked: boolean;
  /** The grouped or blocked pass's accumulate threads own consecutive keys (false for the other passes). */
  consecutive: boolean;
  /** How the combine pass divides a row's splits and value columns. */
  combine: CombineLayout;
}

/** Test and tuning hooks: force the decode path on or off, fix the split count or the tile. */
export interface DecodeOverride {
  mode?: 'auto' | 'on' | 'off';
  numSplits?: number;
  tiles?: Partial<DecodeTiles>;
  targetWorkgroups?: number;
  minTilesPerSplit?: number;
  /** Off: scalar K/V loads even where vec4 loads apply; off: no prefetch of the next tile. */
  vec4?: boolean;
  prefetch?: boolean;
  /** Off: the staged split pass even where the fused one applies. */
  fused?: boolean;
  /** Off: the fused split pass even where the grouped one applies (on: also for one row). */
  grouped?: boolean;
  /** The smallest headDimV the automatic choice gives the grouped pass (tests: 0). */
  groupedMinHeadDimV?: number;
  /** Off: not the subgroup split pass even on the subgroups device; its lanes per key and keys per step. */
  subgroup?: boolean;
  lanes?: number;
  unroll?: number;
  /** On: the subgroup pass issues each step's loads during the step before (SUBGROUP_PREFETCH). */
  subgroupPrefetch?: boolean;
  /** On: the blocked split pass where the grouped one would run (off: the grouped one). */
  blocked?: boolean;
  /** Off: the grouped and blocked passes' accumulate threads own keys KP apart, not consecutive ones. */
  consecutive?: boolean;
  /** The combine pass's threads (a power of two) and value vec4 columns per workgroup. */
  combineThreads?: number;
  combineCols?: number;
}
let override: DecodeOverride = {};

/** Sets the decode hooks (tests, bench); {} goes back to the automatic choice. */
export function setDecodeOverride(o: DecodeOverride): void {
  override = { ...o };
}

let calls = 0;
/** How many calls ran the split-KV kernel in this process (tests and the bench check the choice). */
export const decodeCalls = () => calls;

const nextPow2 = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));

/** Whether K and V can be bound as vec4 arrays (decode_wgsl.ts, DecodeLoads) and are. */
const vec4Loads = (s: AttentionProblem) => (override.vec4 ?? true) && s.headDim % 4 === 0 && s.headDimV % 4 === 0;

/** The split pass a plan runs (decode_wgsl.ts). */
export type SplitPassKind = 'staged' | 'fused' | 'grouped' | 'blocked';

/**
 * The decode geometry for this device: the widest key tile that fits its workgroup memory (the
 * fused and grouped split passes stage no values, so their tiles are wider), rows capped for them.
 */
export function chooseDecodeTiles(limits: DeviceLimits, s: AttentionProblem, kind: SplitPassKind | boolean = 'staged'): DecodeTiles {
  const t = fittingDecodeTiles(limits, s, kind);
  if (t) return t;
  throw new Error(`Error in flashAttention: no decode tile fits this WebGPU device for headDim ${s.headDim}, ` +
      `headDimV ${s.headDimV} (workgroup storage ${limits.maxComputeWorkgroupStorageSize} bytes)`);
}

/** chooseDecodeTiles, or null where no tile of that pass fits the device's workgroup memory. */
function fittingDecodeTiles(limits: DeviceLimits, s: AttentionProblem, kind: SplitPassKind | boolean): DecodeTiles | null {
  const pass: SplitPassKind = kind === true ? 'fused' : kind === false ? 'staged' : kind;
  const registers = pass !== 'staged';
  const rowsWanted = Math.min(nextPow2(s.group * s.seqQ), registers ? FUSED_MAX_ROWS : DECODE_MAX_ROWS);
  const threads = Math.min(override.tiles?.threads ?? (rowsWanted <= 2 ? DECODE_THREADS_FEW_ROWS : DECODE_THREADS),
                           limits.maxComputeInvocationsPerWorkgroup);
  const rows = Math.min(override.tiles?.rows ?? rowsWanted, threads, registers ? FUSED_MAX_ROWS : threads);
  const bytes = { staged: decodeWorkgroupBytes, fused: decodeFusedWorkgroupBytes, grouped: decodeGroupedWorkgroupBytes,
                  blocked: decodeBlockedWorkgroupBytes }[pass];
  // The blocked pass: at most one key per score thread and 8 value vec4s per accumulate thread (registers).
  const blockedCols = (t: DecodeTiles) => {
    const l = blockedLayout({ ...t, cols: 1 }, s.headDim, s.headDimV);
    return Math.min(t.threads / l.scoreShares, 8 * l.keyParts);
  };
  const widest = pass === 'blocked' ? blockedCols({ rows, cols: 1, threads, mergeRows: 1 }) : 128;
  // Rows merged a round at the end of a split: all of them where workgroup memory allows (the
  // widest tile first; the merge's memory is only used after the key loop). H200, GQA 16/2
  // (2026-12-03 03:36 UTC, bench/results/h200-decode-merge), against one row a round: B 1 8k keys
  // 0.0143 vs 0.0180 ms (d 64, 4 rows a round) and 0.0189 vs 0.0226 (d 128, 8); 64k 0.0503 vs
  // 0.0538 and 0.0870 vs 0.0907.
  const mergeRowsOptions = !registers ? [1] : override.tiles?.mergeRows ? [override.tiles.mergeRows]
      : [8, 4, 2, 1].filter(m => m <= rows || m === 1);
  for (const cols of override.tiles?.cols ? [override.tiles.cols] : [128, 64, 32, 16, 8, 4].slice(registers ? 0 : 1).filter(c => c <= widest)) {
    for (const mergeRows of mergeRowsOptions) {
      const t = { rows, cols, threads, mergeRows };
      if (bytes(t, s.headDim, s.headDimV) <= limits.maxComputeWorkgroupStorageSize) return t;
    }
  }
  return null;
}

/**
 * Whether and how the split-KV kernel runs this problem (see the file header); subgroupMinSize:
 * subgroupMinSizeOf the backend (> 0 on the subgroups device: the subgroup split pass where K and
 * V are vec4 loads, unless switched off).
 */
export function decodePlan(limits: DeviceLimits, s: AttentionProblem, subgroupMinSize = 0): DecodePlan {
  const mode = override.mode ?? 'auto';
  const sg = subgroupMinSize > 0 && vec4Loads(s) && (override.subgroup ?? true)
    ? subgroupDecodeLayout(s, subgroupMinSize, limits.maxComputeWorkgroupStorageSize, limits.maxComputeInvocationsPerWorkgroup, override)
    : null;
  // The fused and grouped passes give each value column (vec4) of a row its own thread: not with
  // fewer threads. None of them runs where the subgroup pass does.
  const registers = !sg && vec4Loads(s) && (override.fused ?? DECODE_FUSED);
  const wantBlocked = override.blocked ?? s.headDimV < DECODE_BLOCKED_BELOW_HEAD_DIM_V;
  const groupedMinHeadDimV = override.groupedMinHeadDimV ?? (wantBlocked ? 0 : DECODE_GROUPED_MIN_HEAD_DIM_V);
  const grouped = registers && (override.grouped ?? (DECODE_GROUPED && s.group * s.seqQ >= 2 && s.headDimV >= groupedMinHeadDimV));
  // The register passes in order of preference, the first whose tile fits the device: the blocked
  // pass keeps a running max and sum per (row, key part) in workgroup memory, which at small value
  // head dims (many key parts) outgrows it whatever the tile (SwiftShader's 32 KiB at headDimV 4).
  const candidates: SplitPassKind[] = !registers ? [] : grouped && wantBlocked ? ['blocked', 'grouped', 'fused'] : grouped ? ['grouped', 'fused'] : ['fused'];
  let registerPass: SplitPassKind = 'staged';
  let registerTiles: DecodeTiles | null = null;
  for (const kind of candidates) {
    registerTiles = fittingDecodeTiles(limits, s, kind);
    if (registerTiles) { registerPass = kind; break; }
  }
  const blocked = registerPass === 'blocked';
  const fused = registerTiles !== null && vec4Count(s.headDimV) <= registerTiles.threads;
  const tiles = sg ? sg.tiles : fused ? registerTiles! : chooseDecodeTiles(limits, s, 'staged');
  const rowBlocks = Math.ceil(s.group * s.seqQ / tiles.rows);
  const keyTiles = Math.max(1, Math.ceil(s.seqK / tiles.cols));
  const base = s.batch * s.kvHeads * rowBlocks;
  const target = override.targetWorkgroups ?? (sg ? SUBGROUP_TARGET_WORKGROUPS : DECODE_TARGET_WORKGROUPS);
  const minTiles = override.minTilesPerSplit ?? (sg ? SUBGROUP_MIN_SPLIT_STEPS
      : fused && blocked ? DECODE_MIN_TILES_PER_SPLIT_BLOCKED : DECODE_MIN_TILES_PER_SPLIT);
  let numSplits = override.numSplits ??
      Math.min(Math.ceil(target / base), Math.max(1, Math.floor(keyTiles / minTiles)));
  numSplits = Math.max(1, Math.min(numSplits, keyTiles, DECODE_MAX_SPLITS, limits.maxComputeWorkgroupsPerDimension));
  const tilesPerSplit = Math.ceil(keyTiles / numSplits);
  numSplits = Math.ceil(keyTiles / tilesPerSplit);
  // The subgroup pass merges all rows in one round only at the end of short splits.
  const planTiles = sg && override.tiles?.mergeRows === undefined && tilesPerSplit > SUBGROUP_MERGE_ALL_MAX_STEPS
    ? { ...tiles, mergeRows: 1 } : tiles;
  const auto = s.seqQ <= DECODE_MAX_SEQ_Q && s.seqK >= DECODE_MIN_SEQ_K;
  return {
    use: mode === 'on' || (mode === 'auto' && auto),
    tiles: planTiles, rowBlocks, numSplits, splitKeys: tilesPerSplit * tiles.cols,
    loads: { vec4: vec4Loads(s), prefetch: override.prefetch ?? DECODE_PREFETCH },
    fused, grouped: fused && (registerPass === 'grouped' || blocked), blocked: fused && blocked,
    consecutive: fused && (registerPass === 'grouped' || blocked) && (override.consecutive ?? DECODE_CONSECUTIVE_KEYS),
    subgroup: sg?.layout ?? null,
    combine: combineLayout(s.headDimV, numSplits, override.combineThreads ?? combineThreadsFor(numSplits, s.headDimV),
                           override.combineCols ?? COMBINE_COLS),
  };
}


/** The combine's threads: COMBINE_COLS columns x a lane per split, a power of two in [COMBINE_MIN_THREADS, COMBINE_MAX_THREADS]. */
const combineThreadsFor = (numSplits: number, headDimV: number) =>
  Math.min(COMBINE_MAX_THREADS, Math.max(COMBINE_MIN_THREADS, nextPow2(numSplits * Math.min(COMBINE_COLS, vec4Count(headDimV)))));

/** Split pass: partial accumulators [rows, splits, DV], then (max, sum) [rows, splits, 2]. */
export class DecodeSplitProgram extends FlashProgram {
  variableNames: string[];
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms: string;
  /** K and V (inputs 1 and 2) as vec4 arrays on the vec4 path. */
  variableComponents?: number[];

  constructor(private s: AttentionProblem, private plan: DecodePlan) {
    super();
    this.variableNames = ['q', 'k', 'v', ...optionalInputNames(s.flags)];
    if (plan.loads.vec4) this.variableComponents = this.variableNames.map(n => (n === 'k' || n === 'v' ? 4 : 1));
    this.uniforms = `${optionUniforms(s).fields} numSplits : i32, splitKeys : i32, nqMax : i32, batchSeqs : i32,`;
    const rows = s.batch * s.heads * s.seqQ;
    this.outputShape = [rows * plan.numSplits * (s.headDimV + 2)];
    this.workgroupSize = [plan.tiles.threads, 1, 1];
    this.dispatch = [plan.numSplits, s.kvHeads * plan.rowBlocks, s.batch];
    this.shaderKey = shaderKeyOf('flashDecodeSplit', { headDim: s.headDim, headDimV: s.headDimV, ...plan.tiles, ...plan.loads, fused: plan.fused, grouped: plan.grouped,
                                                       blocked: plan.blocked, consecutive: plan.consecutive, subgroupLanes: plan.subgroup?.lanes ?? 0, subgroupUnroll: plan.subgroup?.unroll ?? 0,
                                                       subgroupPrefetch: plan.subgroup?.prefetch ?? false, ...s.flags });
  }

  getUserCode(): string {
    if (this.plan.subgroup) {
      return splitPassSubgroupWGSL(this.variableNames, this.plan.tiles, this.s.flags, this.s.headDim, this.s.headDimV, this.plan.subgroup);
    }
    const { plan, s } = this;
    const args = [this.variableNames, plan.tiles, s.flags, s.headDim, s.headDimV, plan.loads] as const;
    if (plan.grouped) return (plan.blocked ? splitPassBlockedWGSL : splitPassGroupedWGSL)(...args, plan.consecutive);
    return (plan.fused ? splitPassFusedWGSL : splitPassWGSL)(...args);
  }

  uniformData(): Uniform[] {
    const { s, plan } = this;
    return [...optionUniforms(s).data, ...[plan.numSplits, plan.splitKeys, s.seqQ, s.batch]
        .map(x => ({ type: 'int32' as const, data: [x] }))];
  }
}

/**
 * Combine pass, one program per output (decode_wgsl.ts, combinePassWGSL): out [rowsQ, H, DV] or
 * logSumExp (problem.ts's layout), each straight into its own tensor.
 */
export class DecodeCombineProgram extends FlashProgram {
  variableNames: string[];
  outputShape: number[];
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  uniforms = 'numSplits : i32, nqMax : i32, heads : i32, rowsQ : i32, batchSeqs : i32, lseStartStride : i32, lseHeadStride : i32,';

  constructor(private s: AttentionProblem, private plan: DecodePlan, private part: 'out' | 'lse') {
    super();
    this.variableNames = ['partials', ...optionalInputNames(s.flags).filter(n => n === 'seqRangesQ')];
    this.outputShape = part === 'out' ? s.outShape : s.logSumExpShape;
    this.workgroupSize = [plan.combine.threads, 1, 1];
    this.dispatch = [s.seqQ * (part === 'out' ? plan.combine.colBlocks : 1), s.heads, s.batch];
    this.shaderKey = shaderKeyOf('flashDecodeCombine', { headDimV: s.headDimV, seqRanges: s.flags.seqRanges, packed: s.flags.packed, part, ...plan.combine });
  }

  getUserCode(): string {
    return combinePassWGSL(this.variableNames, this.s.flags, this.s.headDimV, this.plan.combine, this.part);
  }

  uniformData(): Uniform[] {
    const { s, plan } = this;
    return [plan.numSplits, s.seqQ, s.heads, s.rowsQ, s.batch, s.lseStartStride, s.lseHeadStride]
        .map(x => ({ type: 'int32' as const, data: [x] }));
  }
}

/** The split-KV forward of a problem decodePlan chose it for; same outputs as the one-pass kernel. */
export function flashDecodeWebGPU(backend: WebGPUBackend, inputs: FlashAttentionInputs, s: AttentionProblem,
                                  plan: DecodePlan): TensorInfo[] {
  const { q, k, v, mask } = inputs;
  const { split, combineOut, combineLse } = programsOf(s, plan);
  const limits = deviceLimits(backend);
  checkBindingSizes(limits, [['q', q.shape], ['k', k.shape], ['v', v.shape], ['mask', mask.shape],
                             ['the decode partials', split.outputShape], ['the output', combineOut.outputShape]]);
  checkDispatch(limits, split.dispatch);
  checkDispatch(limits, combineOut.dispatch);
  calls++;
  return withDeviceErrorCheck(backend, () => {
    const named = inputs as unknown as Record<string, TensorInfo>;
    const partials = runProgram(backend, split, inputsByName(split.variableNames, named), split.uniformData());
    const combineInputs = inputsByName(combineOut.variableNames, { ...named, partials });
    const out = runProgram(backend, combineOut, combineInputs, combineOut.uniformData());
    const logSumExp = s.computeLogSumExp ? runProgram(backend, combineLse, combineInputs, combineLse.uniformData())
        : logSumExpNotComputed(backend, s.logSumExpShape);
    backend.disposeData(partials.dataId);
    return [out, logSumExp];
  });
}

/** The three programs of a call: split pass, then the combine's out and logSumExp programs. */
const programsOf = (s: AttentionProblem, plan: DecodePlan) => ({
  split: new DecodeSplitProgram(s, plan), combineOut: new DecodeCombineProgram(s, plan, 'out'),
  combineLse: new DecodeCombineProgram(s, plan, 'lse'),
});

/** The problem and decodePlan of a call on this backend (the kernel's choice, and the bench's). */
function planOf(backend: WebGPUBackend, inputs: FlashAttentionInputs, attrs: FlashAttentionAttrs) {
  const s = attentionProblem(inputs.q.shape, inputs.k.shape, inputs.v.shape, attrs);
  return { s, plan: decodePlan(deviceLimits(backend), s, subgroupMinSizeOf(backend)) };
}

/** The three programs of a call as decodePlan chooses them now (bench/decode.ts times each alone). */
export function decodePrograms(backend: WebGPUBackend, inputs: FlashAttentionInputs, attrs: FlashAttentionAttrs) {
  const { s, plan } = planOf(backend, inputs, attrs);
  return { plan, ...programsOf(s, plan) };
}

/**
 * The hook of the WebGPU FlashAttention kernel: the split-KV outputs when decodePlan picks it for
 * this call, else null (the one-pass forward runs).
 */
export function maybeFlashDecodeWebGPU(args: { inputs: FlashAttentionInputs, backend: WebGPUBackend,
                                               attrs: FlashAttentionAttrs }): TensorInfo[] | null {
  const { inputs, backend, attrs } = args;
  const { s, plan } = planOf(backend, inputs, attrs);
  return plan.use ? flashDecodeWebGPU(backend, inputs, s, plan) : null;
}

