/**
 * Small-tile geometries forced on a small head dim so SwiftShader can run them (the forward's
 * headDim-128 tile on a 48 KiB device, 32 x 16 at 2 x 2 scores per thread, and a backward 16 x 16
 * at 1 x 2, the kind small devices fall back to): forward and gradients against the float64
 * reference. Then the backward's tile choice from device limits (no GPU needed).
 */
import {
  chooseTiles, MAX_PREFETCH_PER_THREAD, setForwardVariant, setTileConfigOverride, STAGED_FORWARD_FIRST, threadsOf, TileConfig,
  workgroupBytes,
} from '../kernels/webgpu/tiles';
import { CaseSpec, caseData, compare, F32_TOLERANCE, reference, runOp } from './helpers/attention_case';
import { destroyWebGPU, gpuTest, useWebGPU, HAS_GPU } from './helpers/webgpu_env';

const tile = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number): TileConfig =>
  ({ rows, cols, rowsPerThread, colsPerThread, unroll: 2 });

/** Each case's forward on its forced tile geometry matches the float64 reference. */
async function expectForwardsMatch(cases: Array<[TileConfig, CaseSpec]>): Promise<void> {
    for (const [forward, c] of cases) {
      setTileConfigOverride({ forward });
      const d = caseData(c);
      const e = compare(await runOp(c, d, false), reference(c, d), false);
      expect(Math.max(e.out, e.lse)).toBeLessThan(F32_TOLERANCE.forward);
    }
}

describe('tile geometries forced on small head dims', () => {
  beforeAll(async () => { if (HAS_GPU) await useWebGPU(); });
  afterAll(() => { setTileConfigOverride({}); if (HAS_GPU) destroyWebGPU(); });

  gpuTest('forward 32x16 (2x2 per thread) and backward 16x16 (1x2), causal + softcap + GQA', async () => {
    setTileConfigOverride({ forward: tile(32, 16, 2, 2), dq: tile(16, 16, 1, 2), dkdv: tile(16, 16, 1, 2) });
    const c: CaseSpec = { dims: { batch: 1, seqQ: 37, seqK: 45, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8 }, seed: 5, causal: true, softcap: 2 };
    const d = caseData(c);
    const e = compare(await runOp(c, d), reference(c, d));
    expect(Math.max(e.out, e.lse)).toBeLessThan(F32_TOLERANCE.forward);
    expect(Math.max(e.dq, e.dk, e.dv)).toBeLessThan(F32_TOLERANCE.grads);
  }, 300000);

  gpuTest('forward with K and V taking turns in one tile (sharedKV), prefetched and loaded directly', async () => {
    const cases: Array<[TileConfig, CaseSpec]> = [
      // The headDim-256 forward tile of a 48 KiB device, here on headDim 8.
      [{ ...tile(32, 8, 2, 2), sharedKV: true },
       { dims: { batch: 1, seqQ: 37, seqK: 45, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8 }, seed: 6, causal: true, softcap: 2 }],
      // headDimV wider than headDim; 64 floats of V per thread: no register prefetch, direct loads.
      [{ ...tile(8, 16, 2, 4), sharedKV: true },
       { dims: { batch: 2, seqQ: 19, seqK: 23, heads: 2, kvHeads: 1, headDim: 4, headDimV: 32 }, seed: 7, alibi: true,
         maskShape: [1, 2, 19, 23], dropoutRate: 0.2 }],
    ];
    await expectForwardsMatch(cases);
  }, 300000);

  const staged = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number, depth: number,
                  accumulateDepth: number): TileConfig =>
    ({ rows, cols, rowsPerThread, colsPerThread, unroll: 1, depth, accumulateDepth, staged: true });

  gpuTest('the staged forward (the backward\'s chunked products) on large-device geometries, across tile and chunk boundaries, every option', async () => {
    const cases: Array<[TileConfig, CaseSpec]> = [
      // The H200's 64 x 64 tile at 4 x 4 per thread; head dims not multiples of the chunk depth
      // nor of 4; sequences ending mid-tile; causal with paired query tiles; GQA; dropout.
      [staged(64, 64, 4, 4, 4, 8),
       { dims: { batch: 1, seqQ: 70, seqK: 131, heads: 4, kvHeads: 2, headDim: 10, headDimV: 18 }, seed: 21, causal: true,
         softcap: 3, dropoutRate: 0.1 }],
      // 32 x 32 at 2 x 2: window (paired tiles, skipped tiles), ALiBi, a broadcast mask, seqQ > seqK.
      [staged(32, 32, 2, 2, 8, 4),
       { dims: { batch: 2, seqQ: 77, seqK: 40, heads: 2, kvHeads: 1, headDim: 3, headDimV: 5 }, seed: 22,
         windowSize: [9, 4], alibi: true, maskShape: [1, 2, 77, 40] }],
      // 16 x 16 at 2 x 2 with one-row value steps; headDimV narrower than headDim.
      [staged(16, 16, 2, 2, 16, 1),
       { dims: { batch: 1, seqQ: 33, seqK: 17, heads: 3, kvHeads: 3, headDim: 20, headDimV: 4 }, seed: 23 }],
    ];
    await expectForwardsMatch(cases);
  }, 300000);
});

describe('tile choice from the device limits', () => {
  const device = (storage: number, invocations: number) => ({
    maxComputeWorkgroupStorageSize: storage, maxComputeInvocationsPerWorkgroup: invocations,
    maxStorageBufferBindingSize: 2 ** 31 - 4, maxComputeWorkgroupsPerDimension: 65535,
  });
  test('the H200 (48 KiB, 1024 invocations) gets the tuned tiles; headDim 128 stages fewer value rows per step', () => {
    const h200 = device(48 * 1024, 1024);
    expect(chooseTiles('dq', h200, 64, 64)).toMatchObject({ rows: 128, cols: 64, rowsPerThread: 8, colsPerThread: 4, depth: 8 });
    expect(chooseTiles('dkdv', h200, 64, 64)).toMatchObject({ rows: 64, cols: 64, depth: 16, accumulateDepth: 16 });
    expect(chooseTiles('dkdv', h200, 128, 128)).toMatchObject({ rows: 64, cols: 64, depth: 16, accumulateDepth: 8 });
  });
  test('every head dim 1..256 gets a backward tile that fits 16, 32 and 48 KiB devices and the prefetch cap', () => {
    for (const limits of [device(16384, 256), device(32768, 256), device(48 * 1024, 1024)]) {
      for (const pass of ['dq', 'dkdv'] as const) {
        for (const [d, dv] of [[1, 1], [3, 256], [8, 8], [20, 36], [32, 32], [64, 64], [128, 128], [256, 256]]) {
          const t = chooseTiles(pass, limits, d, dv);
          expect(workgroupBytes(pass, t, d, dv)).toBeLessThanOrEqual(limits.maxComputeWorkgroupStorageSize);
          expect(threadsOf(t)).toBeLessThanOrEqual(limits.maxComputeInvocationsPerWorkgroup);
          expect(t.cols % t.accumulateDepth!).toBe(0);
          // Prefetched floats per thread per chunk (more made SwiftShader's compiler run out of memory).
          const width = Math.max(Math.ceil(d / 4), Math.ceil(dv / 4)) * 4;
          expect(Math.ceil(t.depth! * Math.max(t.rows, t.cols) / threadsOf(t))).toBeLessThanOrEqual(MAX_PREFETCH_PER_THREAD);
          expect(Math.ceil(t.accumulateDepth! * width / threadsOf(t))).toBeLessThanOrEqual(MAX_PREFETCH_PER_THREAD);
        }
      }
    }
  });

  test('the forward takes the staged tiles exactly where they measured faster on the H200, per device path', () => {
    setTileConfigOverride({});
    const h200 = device(48 * 1024, 1024);
    const staged64 = { rows: 64, cols: 64, rowsPerThread: 4, colsPerThread: 4, staged: true };
    for (const [path, subgroupSize] of [['default', 0], ['subgroups', 32]] as const) {
      for (const width of [16, 32, 48, 64, 96, 128, 160]) {
        const first = STAGED_FORWARD_FIRST[path].some(([lo, hi]) => width >= lo && width <= hi);
        const t = chooseTiles('forward', h200, width, width, subgroupSize);
        expect([path, width, !!t.staged]).toEqual([path, width, first]);
        if (first) expect(t).toMatchObject(staged64);
      }
      // As measured: the tiled forward at 32, the staged one from 64.
      expect(chooseTiles('forward', h200, 32, 32, subgroupSize).staged).toBeUndefined();
      expect(chooseTiles('forward', h200, 64, 64, subgroupSize)).toMatchObject(staged64);
      expect(chooseTiles('forward', h200, 128, 128, subgroupSize)).toMatchObject(staged64);
      // Past headDim ~170 none of the leading tiled tiles fits 48 KiB: the staged 64 x 64 beats the
      // smaller tiled ones there on both paths (d = 256: 13.2 against 150 ms).
      expect(chooseTiles('forward', h200, 256, 256, subgroupSize)).toMatchObject({ ...staged64, depth: 16, accumulateDepth: 8 });
    }
  });

  test('forced variants: tiled never stages, staged always does; every head dim 1..256 fits 16-48 KiB devices', () => {
    setTileConfigOverride({});
    const h200 = device(48 * 1024, 1024);
    try {
      setForwardVariant('tiled');
      expect(chooseTiles('forward', h200, 256, 256, 32)).toMatchObject({ rows: 32, cols: 8, sharedKV: true });
      setForwardVariant('staged');
      expect(chooseTiles('forward', h200, 32, 32)).toMatchObject({ rows: 64, cols: 64, staged: true });
      for (const variant of ['auto', 'tiled', 'staged'] as const) {
        setForwardVariant(variant);
        for (const limits of [device(16384, 256), device(32768, 256), h200]) {
          for (let d = 1; d <= 256; d++) {
            for (const dv of [d, 1 + (d * 7) % 256]) {
              const t = chooseTiles('forward', limits, d, dv, d % 2 === 0 ? 32 : 0);
              expect(variant !== 'tiled' || !t.staged).toBe(true);
              expect(workgroupBytes('forward', t, d, dv)).toBeLessThanOrEqual(limits.maxComputeWorkgroupStorageSize);
              expect(threadsOf(t)).toBeLessThanOrEqual(limits.maxComputeInvocationsPerWorkgroup);
            }
          }
        }
      }
    } finally {
      setForwardVariant('auto');
    }
  });
});
