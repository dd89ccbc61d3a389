/**
 * Counter-based dropout mask shared by every backend (TypeScript here, WGSL in
 * kernels/webgpu/, CUDA in kernels/cuda/): the keep decision for element (b, h, i, j) is a pure
 * function of (seed, b*heads + h, i, j), so the forward and backward passes agree and every
 * backend draws the same mask for the same seed, with no mask tensor stored.
 *
 * All arithmetic is uint32 with wrap-around:
 *   mix32(x):  x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
 *   rowKey  = mix32(mix32(mix32(seed ^ 0x9e3779b9) ^ bh) ^ i)
 *   bits    = mix32(rowKey ^ j)
 *   keep    = bits >= threshold,   threshold = min(floor(rate * 2^32), 2^32 - 1)
 * Kept probabilities are scaled by 1 / (1 - rate).
 */

// Module-level aliases: a global lookup (Math) in a hot loop is ~40x slower inside
// jest's vm sandbox, where the tests run these loops.
const { floor, imul, min } = Math;

/** A 32-bit integer finaliser (the "lowbias32" constants); returns a uint32. */
export function mix32(x: number): number {
  x ^= x >>> 16;
  x = imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

export function dropoutRowKey(seed: number, bh: number, i: number): number {
  return mix32(mix32(mix32((seed ^ 0x9e3779b9) >>> 0) ^ bh) ^ i);
}

export function dropoutBits(rowKey: number, j: number): number {
  return mix32(rowKey ^ j);
}

export function dropoutThreshold(rate: number): number {
  return min(floor(rate * 4294967296), 4294967295);
}

/** True when element (bh, i, j) survives dropout. */
export function dropoutKeep(seed: number, bh: number, i: number, j: number, rate: number): boolean {
  return dropoutBits(dropoutRowKey(seed, bh, i), j) >= dropoutThreshold(rate);
}
