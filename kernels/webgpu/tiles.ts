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
   * Forward only: K and V take turns in one workgroup tile (V is stored once the scores are
   * computed), so wide head dims fit tiles with more rows. Checked against float64; on the H200
   * (2026-12-02, a sweep with too short a warm-up, BENCHMARKS.md) it read 4.5-7.6x faster at
   * headDim 256 (32 x 8 and 16 x 16 tiles against 16 x 8) and 8.9 against 11.6 ms at 128 (64 x 16),
   * slower at 64: not among the candidates until a clean sweep confirms it.
   */
  sharedKV?: boolean;
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
      case 'forward':   // q [rows][d4p], k [cols][d4p], v [cols][dv4] (or k/v in turn), p [rows][cols4p], row partials
        return 16 * (t.rows * d4p + (t.sharedKV ? t.cols * Math.max(d4p, dv4) : t.cols * (d4p + dv4)) +
                     t.rows * cols4p) + 4 * t.rows * (threadCols | 1);
      case 'dq':        // q, dO [rows][..p], k, v [cols][..p], dS [rows][cols4p]
        return 16 * ((t.rows + t.cols) * (d4p + dv4p) + t.rows * cols4p);
      case 'dkdv':      // k, v [rows][..p], q, dO [cols][..p], P/dS [rows][cols4p], lse, D, dropout keys
        return 16 * ((t.rows + t.cols) * (d4p + dv4p) + t.rows * cols4p) + 12 * t.cols;
    }
  }
}

const cfg = (rows: number, cols: number, rowsPerThread: number, colsPerThread = 4, unroll = 2): TileConfig =>
    ({ rows, cols, rowsPerThread, colsPerThread, unroll });

/**
 * Preferred first; the first that fits the device wins; the last (2 x 4 tiles) fit headDim 256
 * in WebGPU's minimum 16 KiB of workgroup storage.
 * The leaders were measured on an H100 (48 KiB workgroup storage, 1024 invocations), seq 4096,
 * 16 heads, headDim 64 (kernels/webgpu/tune/): the forward with 4 x 4 scores per thread and the
 * backward passes with 256 threads per workgroup. At headDim 128 none of those fits 48 KiB; there
 * the next candidates with more threads for the same tile bytes measured 12x faster than the
 * 32-thread tiles that followed (forward 32 x 16 at 2 x 2 per thread: 140 -> 11.3 ms; backward
 * 16 x 16 at 1 x 2: forward + backward 670 -> 85 ms; H100, seq 4096, 16 heads, GPU time).
 * Near headDim 256 only the forward's sharedKV 32 x 8 tile (64 threads) fits before 16 x 8 (16
 * threads): H200, seq 4096, 16 heads, 149 against 1137 ms (BENCHMARKS.md, WebGPU forward on the H200).
 */
const CANDIDATES: Record<Pass, TileConfig[]> = {
  forward: [cfg(64, 32, 4, 4, 4), cfg(64, 32, 2, 2), cfg(64, 32, 2), cfg(32, 32, 4), cfg(32, 16, 2, 2), cfg(32, 16, 4),
            cfg(16, 16, 2), { ...cfg(32, 8, 2, 2), sharedKV: true }, cfg(16, 8, 2), cfg(8, 8, 1), cfg(4, 4, 1), cfg(2, 4, 1)],
  dq: [cfg(64, 16, 2, 2), cfg(32, 32, 2), cfg(32, 32, 4), cfg(32, 16, 4), cfg(16, 16, 1, 2), cfg(16, 16, 2), cfg(16, 8, 2),
       cfg(8, 8, 1), cfg(4, 4, 1), cfg(2, 4, 1)],
  dkdv: [cfg(64, 16, 2, 2), cfg(32, 32, 2), cfg(32, 32, 4), cfg(32, 16, 4), cfg(16, 16, 1, 2), cfg(16, 16, 2), cfg(16, 8, 2),
         cfg(8, 8, 1), cfg(4, 4, 1), cfg(2, 4, 1)],
};

let override: Partial<Record<Pass, TileConfig>> = {};

/**
 * Forces a pass's tile geometry (tests and tuning: to exercise a large-device geometry on a small
 * device with a small head dim, or to compare geometries). Pass {} to go back to automatic.
 */
export function setTileConfigOverride(o: Partial<Record<Pass, TileConfig>>): void {
  override = { ...o };
}

export function chooseTiles(pass: Pass, limits: DeviceLimits, headDim: number, headDimV: number): TileConfig {
  const fits = (t: TileConfig) =>
      t.rowsPerThread * t.colsPerThread <= 32 &&   // one bit per element in a u32 keep mask
      workgroupBytes(pass, t, headDim, headDimV) <= limits.maxComputeWorkgroupStorageSize &&
      threadsOf(t) <= limits.maxComputeInvocationsPerWorkgroup;
  const forced = override[pass];
  const chosen = forced ?? CANDIDATES[pass].find(fits);
  if (!chosen || !fits(chosen)) {
    throw new Error(`Error in flashAttention: no ${pass} tile fits this WebGPU device for headDim ` +
        `${headDim}, headDimV ${headDimV} (workgroup storage ${limits.maxComputeWorkgroupStorageSize} bytes)`);
  }
  // The unrolled dot-product steps must divide the vec4 count of every dot product in the pass.
  const dots = pass === 'forward' ? [vec4Count(headDim)] : [vec4Count(headDim), vec4Count(headDimV)];
  let unroll = chosen.unroll;
  while (unroll > 1 && dots.some(n => n % unroll !== 0)) unroll--;
  return { ...chosen, unroll };
}
