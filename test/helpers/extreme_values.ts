/**
 * Option values at the ends of what the op accepts, shared by the extreme-value suites
 * (extreme_options.test.ts, webgpu_decode_subgroups_extreme.test.ts).
 */

/** Scores in the suites are around ±3 after scaling, so small softcaps saturate and large ones barely bend. */
export const SOFTCAPS = [1e-3, 0.5, 50, 1e3, 1e6, 1e8, 1e20, 3e38];
/** The largest int32. */
export const WIDE = 2 ** 31 - 1;
/** windowSize entries near and past 2^31 (the contract turns those wider than the sequences into -1). */
export const WIDE_WINDOWS: Array<[number, number]> = [
  [-1, WIDE], [WIDE, -1], [WIDE, WIDE], [WIDE, 0], [0, WIDE], [-1, 2 ** 31], [-1, 2 ** 32], [2 ** 32, 3], [2 ** 40, 2 ** 40],
];
