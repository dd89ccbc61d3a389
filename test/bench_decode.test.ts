/**
 * The decode sweep's parts that need no GPU (bench/decode.ts): split-pass variants from the
 * command line, the peak yardstick taken as the best read bandwidth of the run, and the flags.
 */
import {
  decodeMarkdown, DecodeRow, fastestOfTwoRounds, finishYardsticks, perCallPasses, repsFor, roundTimes, variantOverride,
} from '../bench/decode';
import { parseArgs } from '../bench/options';

describe('split-pass variants (--decode-variants)', () => {
  test('each key sets its decode override, the split-KV path forced on', () => {
    expect(variantOverride('vec4=0+prefetch=0')).toEqual({ mode: 'on', vec4: false, prefetch: false });
    expect(variantOverride('fused=1+mintiles=1+target=256+threads=512+cols=64+rows=4+mrows=2')).toEqual({
      mode: 'on', fused: true, minTilesPerSplit: 1, targetWorkgroups: 256, tiles: { threads: 512, cols: 64, rows: 4, mergeRows: 2 },
    });
    expect(variantOverride('grouped=0')).toEqual({ mode: 'on', grouped: false });
    expect(variantOverride('blocked=1+gmin=0+cthreads=64+ccols=2')).toEqual({
      mode: 'on', blocked: true, groupedMinHeadDimV: 0, combineThreads: 64, combineCols: 2,
    });
  });
  test('an unknown key or a value that is not a number is an error naming the flag', () => {
    expect(() => variantOverride('tile=4')).toThrow(/--decode-variants: unknown key 'tile'/);
    expect(() => variantOverride('fused=yes')).toThrow(/--decode-variants: 'fused=yes' needs key=number/);
  });
  test('the flags: variants split on commas, baselines, warm-up', () => {
    const o = parseArgs(['--decode', '--decode-variants=fused=0,vec4=0+prefetch=0', '--decode-baselines=0', '--decode-warm-ms=5']);
    expect(o).toMatchObject({ decode: true, decodeVariants: ['fused=0', 'vec4=0+prefetch=0'], decodeBaselines: false, decodeWarmMs: 5 });
    const d = parseArgs(['--decode']);
    expect(d).toMatchObject({ decodeVariants: [], decodeBaselines: true });
    expect(d.decodeWarmMs).toBeUndefined();
    expect(d.decodeRounds).toBeUndefined();
    expect(parseArgs(['--decode', '--decode-rounds=3']).decodeRounds).toBe(3);
    expect(() => parseArgs(['--decode', '--decode-rounds=0'])).toThrow(/--decode-rounds needs positive integers/);
    // The kv head counts of the sweep and the per-program timings.
    expect(parseArgs(['--decode', '--decode-kv-heads=16,2', '--decode-passes=1'])).toMatchObject({ decodeKvHeads: [16, 2], decodePasses: true });
    expect(parseArgs(['--decode', '--decode-passes=default']).decodePasses).toBe('default');
    expect(d.decodeKvHeads).toBeUndefined();
    expect(d.decodePasses).toBe(false);
    expect(() => parseArgs(['--decode', '--decode-kv-heads=0'])).toThrow(/--decode-kv-heads needs positive integers/);
  });
});

describe('the peak yardstick', () => {
  const row = (kvBytes: number, gpuMs: number, readOnceMs: number | null): DecodeRow => ({
    seqK: 8192, batch: 1, heads: 16, kvHeads: 16, headDim: 64, impl: 'decode', gpuMs, wallMs: 1, kvBytes, gbPerS: null,
    floorMs: null, vsFloor: null, readOnceMs, status: 'ok',
  });
  const meta = { copyGbPerS: 1000, peakReadGbPerS: 1000 };

  test('is the best read bandwidth of the run: a row read faster than the start probe raises it for every row', () => {
    // 2e9 bytes read once in 1 ms: 2000 GB/s, above the start's 1000.
    const r = finishYardsticks({ meta, rows: [row(1e9, 1, 0.8), row(2e9, 2, 1)] });
    expect(r.meta.peakReadGbPerS).toBeCloseTo(2000);
    expect(r.meta.peakStartGbPerS).toBe(1000);
    expect(r.rows.map(x => x.peakFloorMs)).toEqual([0.5, 1]);
    expect(r.rows.map(x => x.vsPeak)).toEqual([2, 2]);
  });
  test('stays the start probe when no row read faster; rows without a read-once keep the start', () => {
    const r = finishYardsticks({ meta, rows: [row(1e9, 4, 2), row(1e9, 3, null)] });
    expect(r.meta.peakReadGbPerS).toBe(1000);
    expect(r.rows.map(x => x.vsPeak)).toEqual([4, 3]);
  });
});

describe('steady-clock timing (steadyTime, interleavedTimes)', () => {
  test('a timed batch holds about batchMs of GPU work: many calls of a few microseconds, one of a long call', () => {
    expect(repsFor(0.005, 2, 200)).toBe(200);
    expect(repsFor(0.02, 2, 200)).toBe(100);
    expect(repsFor(5, 2, 200)).toBe(1);
    expect(repsFor(0, 2, 50)).toBe(50);   // no timestamp: the most calls
  });
  test("tf.time's per-program list becomes GPU ms per program and call", () => {
    const profile = 'DecodeSplitProgram: 0.02, DecodeCombineProgram: 0.004, DecodeCombineProgram: 0.002, ' +
                    'DecodeSplitProgram: 0.03, DecodeCombineProgram: 0.006, DecodeCombineProgram: 0.002';
    expect(perCallPasses(profile, 2)).toBe('DecodeSplitProgram: 0.0250, DecodeCombineProgram: 0.0070');
    expect(perCallPasses('', 3)).toBe('');
  });
  test('rounds: the fastest (reported), the median and the spread (max / min - 1)', () => {
    const t = (ms: number) => ({ ms, reps: 10, passes: `P: ${ms}` });
    const r = roundTimes([t(1.0), t(1.1), t(1.02)]);
    expect(r.ms).toBe(1.0);
    expect(r.medianMs).toBe(1.02);
    expect(r.spread).toBeCloseTo(0.1);
    expect(r.all).toEqual([1.0, 1.1, 1.02]);
    expect(roundTimes([t(2)])).toMatchObject({ ms: 2, spread: 0, reps: 10 });
  });
  test('a two-round record that held medians: the fastest round recovered from median and spread, ratios with it', () => {
    const row: DecodeRow = { seqK: 8192, batch: 1, heads: 16, kvHeads: 2, headDim: 64, impl: 'decode', gpuMs: 0.075, wallMs: null,
                             kvBytes: 8e6, gbPerS: 0, floorMs: 0.01, vsFloor: 7.5, readOnceMs: 0.0062, readOnceSpread: 1.0, status: 'ok', spread: 0.5 };
    // Rounds 0.06 and 0.09 (median 0.075, spread 0.5); read-once 0.00413 and 0.00827 (median 0.0062, spread 1).
    const r = fastestOfTwoRounds({ meta: { copyGbPerS: 1, peakReadGbPerS: 1, sweep: { rounds: 2 } }, rows: [row] }).rows[0];
    expect(r.gpuMs).toBeCloseTo(0.06, 12);
    expect(r.medianMs).toBe(0.075);
    expect(r.readOnceMs).toBeCloseTo(0.0062 * 2 / 3, 12);
    expect(r.vsReadOnce).toBeCloseTo(0.06 / (0.0062 * 2 / 3), 9);
    expect(r.vsFloor).toBeCloseTo(6, 9);
    expect(r.gbPerS).toBeCloseTo(8e6 / 0.06 / 1e6, 6);
    // Records of other round counts, and rows already holding their median, stay as they are.
    expect(fastestOfTwoRounds({ meta: { copyGbPerS: 1, peakReadGbPerS: 1, sweep: { rounds: 3 } }, rows: [row] }).rows[0]).toBe(row);
    const fresh = { ...row, medianMs: 0.08 };
    expect(fastestOfTwoRounds({ meta: { copyGbPerS: 1, peakReadGbPerS: 1, sweep: { rounds: 2 } }, rows: [fresh] }).rows[0]).toBe(fresh);
  });
  test('the peak counts the end probe too; the table shows R, the spread, the repeated row and the end probe', () => {
    const row: DecodeRow = { seqK: 8192, batch: 1, heads: 16, kvHeads: 2, headDim: 64, impl: 'decode', gpuMs: 0.01, wallMs: null,
                             kvBytes: 8e6, gbPerS: 800, floorMs: 0.005, vsFloor: 2, readOnceMs: 0.008, status: 'ok', reps: 200, spread: 0.03 };
    const r = finishYardsticks({ meta: { copyGbPerS: 1000, peakReadGbPerS: 3000, peakEndGbPerS: 4000 }, rows: [row, { ...row, repeat: true, spread: 0.01 }] });
    expect(r.meta.peakReadGbPerS).toBe(4000);
    const md = decodeMarkdown(r.rows, r.meta);
    expect(md).toContain('at the start: 3000, at the end: 4000');
    expect(md).toContain('| 8192 | 1 | 16/2 | 64 | decode | 0.0100 | 200 | 3.0 % |');
    expect(md).toContain('| decode (repeat) |');
    expect(md).toMatch(/median 3\.0 %/);
  });
});
