/**
 * The decode sweep's parts that need no GPU (bench/decode.ts): split-pass variants from the
 * command line, the peak yardstick taken as the best read bandwidth of the run, and the flags.
 */
import { DecodeRow, finishYardsticks, variantOverride } from '../bench/decode';
import { parseArgs } from '../bench/options';

describe('split-pass variants (--decode-variants)', () => {
  test('each key sets its decode override, the split-KV path forced on', () => {
    expect(variantOverride('vec4=0+prefetch=0')).toEqual({ mode: 'on', vec4: false, prefetch: false });
    expect(variantOverride('fused=1+mintiles=1+target=256+threads=512+cols=64')).toEqual({
      mode: 'on', fused: true, minTilesPerSplit: 1, targetWorkgroups: 256, tiles: { threads: 512, cols: 64 },
    });
  });
  test('an unknown key or a value that is not a number is an error naming the flag', () => {
    expect(() => variantOverride('rows=4')).toThrow(/--decode-variants: unknown key 'rows'/);
    expect(() => variantOverride('fused=yes')).toThrow(/--decode-variants: 'fused=yes' needs key=number/);
  });
  test('the flags: variants split on commas, baselines, warm-up', () => {
    const o = parseArgs(['--decode', '--decode-variants=fused=0,vec4=0+prefetch=0', '--decode-baselines=0', '--decode-warm-ms=5']);
    expect(o).toMatchObject({ decode: true, decodeVariants: ['fused=0', 'vec4=0+prefetch=0'], decodeBaselines: false, decodeWarmMs: 5 });
    const d = parseArgs(['--decode']);
    expect(d).toMatchObject({ decodeVariants: [], decodeBaselines: true });
    expect(d.decodeWarmMs).toBeUndefined();
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
