/**
 * Tile geometry of the three tiled passes, chosen from the device's limits.
 *
 * A workgroup owns a tile of `rows` (query rows in the forward and dQ passes, key rows in the
 * dK/dV pass) and streams tiles of `cols` through workgroup memory. Its threads form a
 * (rows / rowsPerThread) x (cols / colsPerThread) grid: a thread computes rowsPerThread x
 * colsPerThread scores (columns strided by the thread-column count, so neighbouring threads read
 * neighbouring padded rows without bank conflicts) and owns the same rows of the accumulators.
 */
import { DeviceLimits } from './program';

export type Pass = 'forward' | 'dq' | 'dkdv';

export interface TileConfig {
  rows: number;
  cols: number;
  rowsPerThread: number;
  colsPerThread: number;
  /** vec4 steps per iteration of the head-dim dot-product loop (it must divide the loop). */
  unroll: number;
  /**
   * Backward passes: head-dim columns staged through workgroup memory per step of the score
   * products (S, dP). Default 16; chooseTiles halves it (and accumulateDepth) until the stages fit
   * the device's workgroup memory and MAX_PREFETCH_PER_THREAD.
   */
  depth?: number;
  /** Backward passes: value rows staged per step of the accumulating products (default depth; divides cols). */
  accumulateDepth?: number;
  /**
   * Forward only: K and V take turns in one workgroup tile (V is stored once the scores are
   * computed), so wide head dims fit tiles with more rows. Checked against float64; on the H200
   * (2026-12-02, a sweep with too short a warm-up, BENCHMARKS.md) it read 4.5-7.6x faster at
   * headDim 256 (32 x 8 and 16 x 16 tiles against 16 x 8) and 8.9 against 11.6 ms at 128 (64 x 16),
   * slower at 64: not among the candidates until a clean sweep confirms it.
   */
  sharedKV?: boolean;
  /**
   * Forward only: the staged forward (the backward's chunked products: Q and K staged DEPTH
   * head-dim columns at a time, V ACC_DEPTH rows at a time, P through workgroup memory), whose
   * workgroup memory does not grow with the head dim. depth/accumulateDepth as the backward's.
   */
  staged?: boolean;
}

export const vec4Count = (n: number) => Math.ceil(n / 4);
/** Row length in vec4s of a tile read across threads: odd, so strided rows hit distinct banks. */
export const paddedVec4 = (n: number) => vec4Count(n) | 1;

export function threadsOf(t: TileConfig): number {
  return (t.rows / t.rowsPerThread) * (t.cols / t.colsPerThread);
}

/** Bytes of workgroup memory the pass's program declares (mirrors the WGSL declarations). */
export function workgroupBytes(pass: Pass, t: TileConfig, headDim: number, headDimV: number): number {
  const dv4 = vec4Count(headDimV), cols4 = t.cols / 4;
  const threadCols = t.cols / t.colsPerThread;
  return 16 + passBytes();   // 16: the workgroup id passed through workgroup memory
  function passBytes(): number {
    const d4p = paddedVec4(headDim), dv4p = paddedVec4(headDimV), cols4p = cols4 | 1;
    switch (pass) {
      case 'forward':
        if (t.staged) {   // as the dQ pass (P^T in place of dS^T), plus the row partials
          const l = backwardLayout(t, headDim, headDimV);
          return 16 * (2 * l.stageVec4s + t.cols * l.rows4p) + 4 * t.rows * (threadCols | 1);
        }
        // q [rows][d4p], k [cols][d4p], v [cols][dv4] (or k/v in turn), p [rows][cols4p], row partials
        return 16 * (t.rows * d4p + (t.sharedKV ? t.cols * Math.max(d4p, dv4) : t.cols * (d4p + dv4)) +
                     t.rows * cols4p) + 4 * t.rows * (threadCols | 1);
      case 'dq':        // two staging buffers [depth][stage4], dS^T [cols][rows4p]
      case 'dkdv': {    // two staging buffers, P^T and dS^T [cols][rows4p]
        const l = backwardLayout(t, headDim, headDimV);
        return 16 * (2 * l.stageVec4s + (pass === 'dq' ? 1 : 2) * t.cols * l.rows4p);
      }
    }
  }
}

/**
 * Workgroup-memory layout of the backward passes (flash_attention_grad_webgpu.ts): score-tile
 * operands staged transposed ([depth][rows or cols], padded by one vec4 so the column-wise stores
 * spread over banks), value rows staged as [depth][width4], P^T/dS^T as [cols][rows4p].
 */
export function backwardLayout(t: TileConfig, headDim: number, headDimV: number) {
  const rows4p = vec4Count(t.rows) + 1, cols4p = vec4Count(t.cols) + 1;
  const depth = t.depth ?? 16, accumulateDepth = t.accumulateDepth ?? depth;
  const stageVec4s = Math.max(depth * Math.max(rows4p, cols4p), accumulateDepth * Math.max(vec4Count(headDim), vec4Count(headDimV)));
  return { depth, accumulateDepth, rows4p, cols4p, stageVec4s };
}

const cfg = (rows: number, cols: number, rowsPerThread: number, colsPerThread = 4, unroll = 2): TileConfig =>
    ({ rows, cols, rowsPerThread, colsPerThread, unroll });

const bwd = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number, depth = 16): TileConfig =>
    ({ rows, cols, rowsPerThread, colsPerThread, unroll: 1, depth });

/**
 * The staged forward's candidates, best first (H200, 2026-12-02, fwd2's sweep at N = 4096 in
 * BENCHMARKS.md: 64 x 64 at 4 x 4 ahead of 128 x 64 at 8 x 4 at every head dim).
 */
export const STAGED_FORWARD: TileConfig[] = [
  { ...bwd(64, 64, 4, 4), staged: true }, { ...bwd(32, 32, 2, 2), staged: true }, { ...bwd(16, 16, 2, 2), staged: true },
];
/**
 * The tiled forward's candidates that rank before the staged ones where the staged forward is not
 * preferred: the staged 64 x 64 tile still beats every smaller tiled tile, which is all that fits
 * past headDim ~170 (d = 256: 13.2 against 150 ms, both devices, N = 4096).
 */
const TILED_FORWARD_LEADERS = 6;

/** Which forward the tile choice takes: as measured (auto), or one variant forced (bench, tuning). */
export type ForwardVariant = 'auto' | 'tiled' | 'staged';
let forwardVariant: ForwardVariant = 'auto';

export function setForwardVariant(v: ForwardVariant): void {
  forwardVariant = v;
}

/**
 * Head widths (max(headDim, headDimV), inclusive ranges) where the staged forward ranks first,
 * per device path: 'subgroups' where the row max and sum use subgroup shuffles, 'default' where
 * they go through workgroup memory. As measured on the H200 (2026-12-02 05:53 UTC, one process per
 * device path, head dim and variant, 500 ms warm-up, median of 10, GPU ms, 16 heads; full / causal;
 * kernels/webgpu/tune/forward_h200.sh, BENCHMARKS.md "WebGPU forward on the H200"):
 *
 *   d    N       default: tiled        staged          subgroups: tiled      staged
 *   32   4096    2.39 / 1.28      2.72 / 1.45         2.39 / 1.27      2.59 / 1.40   tiled (also at 1024, 16384)
 *   64   4096    3.78 / 2.03      3.62 / 1.93         3.69 / 1.98      3.46 / 1.88   staged (also at 1024, 16384)
 *   128  4096   11.62 / 6.26      6.48 / 3.49        11.54 / 6.09      6.28 / 3.42   staged (1.7-1.8x at 1024, 16384)
 *   256  4096  149.4 / 84.6      13.10 / 7.50       149.1 / 84.6     13.34 / 7.41   staged
 *
 * Between 64 and 256 both measured neighbours favour the staged forward; below 64 only d = 32 was
 * measured (tiled), so head widths 33-63 keep the tiled forward.
 */
export const STAGED_FORWARD_FIRST: Record<'default' | 'subgroups', Array<[number, number]>> = {
  default: [[64, 256]],
  subgroups: [[64, 256]],
};

function forwardCandidates(headDim: number, headDimV: number, rowShuffles: boolean): TileConfig[] {
  const tiled = CANDIDATES.forward, width = Math.max(headDim, headDimV);
  if (forwardVariant === 'tiled') return tiled;
  const first = forwardVariant === 'staged' ||
      STAGED_FORWARD_FIRST[rowShuffles ? 'subgroups' : 'default'].some(([lo, hi]) => width >= lo && width <= hi);
  if (first) return [...STAGED_FORWARD, ...tiled];
  return [...tiled.slice(0, TILED_FORWARD_LEADERS), ...STAGED_FORWARD, ...tiled.slice(TILED_FORWARD_LEADERS)];
}

/**
 * Preferred first; the first that fits the device wins; the last (2 x 4 tiles) fit headDim 256
 * in WebGPU's minimum 16 KiB of workgroup storage.
 * The leaders were measured on an H100 (48 KiB workgroup storage, 1024 invocations), seq 4096,
 * 16 heads, headDim 64 (kernels/webgpu/tune/): the forward with 4 x 4 scores per thread and the
 * backward passes with 256 threads per workgroup. At headDim 128 none of those fits 48 KiB; there
 * the next candidates with more threads for the same tile bytes measured 12x faster than the
 * 32-thread tiles that followed (forward 32 x 16 at 2 x 2 per thread: 140 -> 11.3 ms; backward
 * 16 x 16 at 1 x 2: forward + backward 670 -> 85 ms; H100, seq 4096, 16 heads, GPU time).
 * Near headDim 256 only the tiled forward's sharedKV 32 x 8 tile (64 threads) fits before 16 x 8
 * (16 threads): H200, seq 4096, 16 heads, 149 against 1137 ms (BENCHMARKS.md, WebGPU forward on the
 * H200); the staged forward (forwardCandidates) ranks before both there.
 */
const CANDIDATES: Record<Pass, TileConfig[]> = {
  forward: [cfg(64, 32, 4, 4, 4), cfg(64, 32, 2, 2), cfg(64, 32, 2), cfg(32, 32, 4), cfg(32, 16, 2, 2), cfg(32, 16, 4),
            cfg(16, 16, 2), { ...cfg(32, 8, 2, 2), sharedKV: true }, cfg(16, 8, 2), cfg(8, 8, 1), cfg(4, 4, 1), cfg(2, 4, 1)],
  // Backward (H200, N = 4096, 16 heads, GPU time; kernels/webgpu/tune/backward.sh): the dQ pass at
  // 128 x 64 with 8 x 4 per thread (d 64: 4.32 ms against 5.00 for 64 x 64 at 4 x 4; d 128: 9.04
  // against 9.48), the dK/dV pass at 64 x 64 with 4 x 4 (d 64: 6.57 ms; 64 x 32, 32 x 64, 8 x 4 and
  // 4 x 8 per thread all slower, 7.4 to 10.7 ms).
  dq: [bwd(128, 64, 8, 4, 8), bwd(64, 64, 4, 4), bwd(64, 32, 4, 4), bwd(32, 32, 4, 4), bwd(32, 32, 2, 2),
       bwd(16, 16, 2, 2), bwd(16, 8, 2, 2), bwd(8, 8, 1, 2), bwd(4, 4, 1, 1)],
  dkdv: [bwd(64, 64, 4, 4), bwd(64, 32, 4, 4), bwd(32, 32, 4, 4), bwd(32, 32, 2, 2), bwd(16, 16, 2, 2), bwd(16, 8, 2, 2),
         bwd(8, 8, 1, 2), bwd(4, 4, 1, 1)],
};

let override: Partial<Record<Pass, TileConfig>> = {};

/**
 * Forces a pass's tile geometry (tests and tuning: to exercise a large-device geometry on a small
 * device with a small head dim, or to compare geometries). Pass {} to go back to automatic.
 */
export function setTileConfigOverride(o: Partial<Record<Pass, TileConfig>>): void {
  override = { ...o };
}

/**
 * Floats a thread prefetches into registers per staged chunk (backward) or streamed tile
 * (forward, wgsl_fragments.ts) is capped: more made SwiftShader's shader compiler run out of
 * memory (tens of GB at headDim 256 with 16 threads), and costs registers on any device.
 */
export const MAX_PREFETCH_PER_THREAD = 16;

/**
 * A backward tile with the deepest staging steps that fit the device's workgroup memory and the
 * prefetch cap: its depth with its accumulateDepth, then smaller accumulating steps (down to one
 * row), then smaller score steps (accumulateDepth must divide cols).
 */
function fitDepthFor(limits: DeviceLimits, pass: Pass, headDim: number, headDimV: number) {
  return (t: TileConfig): TileConfig => {
    const depth = t.depth ?? 16, acc = t.accumulateDepth ?? depth;
    const nt = threadsOf(t);
    const width = Math.max(vec4Count(headDim), vec4Count(headDimV)) * 4;
    const halvings = (n: number) => Array.from({ length: Math.log2(n) + 1 }, (_, i) => n >> i).filter(x => x >= 1);
    for (const d of halvings(depth)) {
      for (const a of halvings(acc)) {
        const c = { ...t, depth: d, accumulateDepth: a };
        if (t.cols % a === 0 &&
            Math.ceil(d * Math.max(t.rows, t.cols) / nt) <= MAX_PREFETCH_PER_THREAD &&
            Math.ceil(a * width / nt) <= MAX_PREFETCH_PER_THREAD &&
            workgroupBytes(pass, c, headDim, headDimV) <= limits.maxComputeWorkgroupStorageSize) return c;
      }
    }
    return { ...t, depth: 1, accumulateDepth: 1 };
  };
}

/**
 * subgroupSize: the device's smallest subgroup size when the forward's row reductions may use
 * subgroup shuffles (0: workgroup memory), which decides where the staged forward ranks.
 */
export function chooseTiles(pass: Pass, limits: DeviceLimits, headDim: number, headDimV: number,
                            subgroupSize = 0): TileConfig {
  const fits = (t: TileConfig) =>
      t.rowsPerThread * t.colsPerThread <= 32 &&   // one bit per element in a u32 keep mask
      workgroupBytes(pass, t, headDim, headDimV) <= limits.maxComputeWorkgroupStorageSize &&
      threadsOf(t) <= limits.maxComputeInvocationsPerWorkgroup;
  const fitDepth = fitDepthFor(limits, pass, headDim, headDimV);
  const forced = override[pass];
  const candidates = pass === 'forward' ? forwardCandidates(headDim, headDimV, subgroupSize >= 16) : CANDIDATES[pass];
  const chosen = (forced ? [forced] : candidates).map(t => pass !== 'forward' || t.staged ? fitDepth(t) : t).find(fits);
  if (!chosen) {
    throw new Error(`Error in flashAttention: no ${pass} tile fits this WebGPU device for headDim ` +
        `${headDim}, headDimV ${headDimV} (workgroup storage ${limits.maxComputeWorkgroupStorageSize} bytes)`);
  }
  if (pass !== 'forward' || chosen.staged) return chosen;
  // The unrolled dot-product steps must divide the vec4 count of every dot product in the pass.
  const dots = pass === 'forward' ? [vec4Count(headDim)] : [vec4Count(headDim), vec4Count(headDimV)];
  let unroll = chosen.unroll;
  while (unroll > 1 && dots.some(n => n % unroll !== 0)) unroll--;
  return { ...chosen, unroll };
}
