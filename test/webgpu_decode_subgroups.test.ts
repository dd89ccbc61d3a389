/**
 * The subgroup split pass of the split-KV forward (kernels/webgpu/decode_subgroup_wgsl.ts) on the
 * opt-in subgroups device (useWebGPUWithSubgroups; SwiftShader: 4-lane subgroups): against the
 * float64 reference and against the one-pass kernel, over decode shapes (1 to 16 query rows, up to
 * a few thousand keys), every option, GQA groups 2/4/8 and MQA, head dims 8/32/64/128, sequence
 * ranges (padded and packed), NaN/Inf inputs, buffers reused across shapes; that it is the pass
 * that ran (its pipeline), and that the plan picks it exactly on that device with vec4 K and V.
 */
import * as tf from '@tensorflow/tfjs';
import { attentionProblem } from '../src/contract';
import { decodeCalls, DecodeOverride, decodePlan, setDecodeOverride } from '../kernels/webgpu/flash_decode_webgpu';
import { SUBGROUP_THREADS, SUBGROUP_THREADS_ONE_ROW } from '../kernels/webgpu/decode_subgroup_wgsl';
import { variantOverride } from '../bench/decode';
import { DeviceLimits } from '../kernels/webgpu/program';
import { caseAttrs, caseData, CaseSpec, describeCase, OPTION_NAMES, reference, rng } from './helpers/attention_case';
import { decodeCase, expectClose, Forward, lengths, nonFiniteProblems, rangedRun } from './helpers/decode_case';
import { dims, expectAccurate, forward, SMALL, subgroupPipelines, useSubgroupsDevice } from './helpers/decode_subgroups';
import { SPECIAL, withNonFinite } from './helpers/nonfinite';
import { gpuBytesInUse, gpuTest, takeUncapturedErrors } from './helpers/webgpu_env';

const COMPILE_HEAVY_MS = 600000;

const H200: DeviceLimits = {
  maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024,
  maxStorageBufferBindingSize: 2 ** 31 - 4, maxComputeWorkgroupsPerDimension: 65535,
};
const noData = { q: new Float32Array(0), k: new Float32Array(0), v: new Float32Array(0), dy: new Float32Array(0) };

/** decodePlan for a case on an H200's limits, a device whose smallest subgroup is `minSize`, the hook as given. */
function planOf(c: CaseSpec, minSize: number, o: DecodeOverride = {}) {
  const { batch, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  setDecodeOverride(o);
  try {
    return decodePlan(H200, attentionProblem([batch, seqQ, heads, headDim], [batch, seqK, kvHeads, headDim],
                                             [batch, seqK, kvHeads, headDimV], caseAttrs(c, noData)), minSize);
  } finally {
    setDecodeOverride({});
  }
}

describe('the plan picks the subgroup split pass on the subgroups device with vec4 K and V', () => {
  const c = (heads: number, kvHeads: number, d = 64, dv = d, seqQ = 1): CaseSpec => ({ dims: dims(1, seqQ, 8192, heads, kvHeads, d, dv), seed: 1 });
  test('picked where the device has subgroups (minimum size > 0) and headDim, headDimV are multiples of 4', () => {
    expect(planOf(c(16, 16), 32).subgroup).not.toBeNull();
    expect(planOf(c(16, 16), 32)).toMatchObject({ use: true, fused: false, grouped: false });
    expect(planOf(c(16, 16), 0).subgroup).toBeNull();
    expect(planOf(c(16, 16, 6, 8), 32).subgroup).toBeNull();
    expect(planOf(c(16, 16, 8, 10), 32).subgroup).toBeNull();
    expect(planOf(c(16, 16), 32, { subgroup: false }).subgroup).toBeNull();
    expect(planOf(c(16, 16), 32, { subgroup: false })).toMatchObject({ fused: true });
    expect(planOf(c(16, 16), 32, { vec4: false }).subgroup).toBeNull();
  });
  test('lanes per key: the widest power of two within the head dim\'s vec4s and the smallest subgroup', () => {
    expect(planOf(c(16, 16, 128), 32).subgroup!.lanes).toBe(32);
    expect(planOf(c(16, 16, 64), 32).subgroup!.lanes).toBe(16);
    expect(planOf(c(16, 16, 64), 4).subgroup!.lanes).toBe(4);
    expect(planOf(c(16, 16, 8), 32).subgroup!.lanes).toBe(2);
    expect(planOf(c(16, 16, 24), 32).subgroup!.lanes).toBe(4);
    expect(planOf(c(16, 16, 64), 32, { lanes: 4 }).subgroup!.lanes).toBe(4);
    expect(planOf(c(16, 16, 64), 4, { lanes: 16 }).subgroup!.lanes).toBe(4);
  });
  test('rows: the kv head\'s group of query rows, a power of two, at most 8; threads, keys per step and splits', () => {
    expect(planOf(c(16, 2), 32).tiles.rows).toBe(8);
    expect(planOf(c(16, 16, 64, 64, 3), 32).tiles.rows).toBe(4);
    const p = planOf(c(16, 16), 32);
    expect(p.tiles).toMatchObject({ rows: 1, threads: SUBGROUP_THREADS_ONE_ROW, cols: (SUBGROUP_THREADS_ONE_ROW / 16) * p.subgroup!.unroll });
    expect(planOf(c(16, 2), 32).tiles.threads).toBe(SUBGROUP_THREADS);
    // All rows merged in one round at the end of a split of at most SUBGROUP_MERGE_ALL_MAX_STEPS steps, else one a round.
    const gqa = (seqK: number, d: number) => planOf({ dims: dims(1, 1, seqK, 16, 2, d), seed: 1 }, 32);
    expect(gqa(8192, 64)).toMatchObject({ splitKeys: 64, tiles: { cols: 32, mergeRows: 8 } });
    expect(gqa(8192, 128)).toMatchObject({ splitKeys: 32, tiles: { cols: 16, mergeRows: 8 } });
    expect(gqa(16384, 128)).toMatchObject({ splitKeys: 64, tiles: { cols: 16, mergeRows: 1 } });
    expect(gqa(65536, 64)).toMatchObject({ splitKeys: 256, tiles: { mergeRows: 1 } });
    expect(planOf(c(16, 2), 32, { tiles: { mergeRows: 4 }, numSplits: 1 }).tiles.mergeRows).toBe(4);
    expect(p.splitKeys % p.tiles.cols).toBe(0);
    expect(p.numSplits * p.splitKeys).toBeGreaterThanOrEqual(8192);
    const q = planOf(c(16, 16), 32, { tiles: { threads: 64 }, unroll: 2, targetWorkgroups: 64 });
    expect(q.tiles).toMatchObject({ threads: 64, cols: 8 });
    expect(q.subgroup!.unroll).toBe(2);
    expect(q.numSplits).toBe(4);
    // GQA 16/2 at 8k keys, B 1: splits of 2 steps (SUBGROUP_MIN_SPLIT_STEPS): d 64 2 x 32 keys, d 128 2 x 16.
    expect(planOf(c(16, 2, 64), 32)).toMatchObject({ numSplits: 128, splitKeys: 64 });
    expect(planOf(c(16, 2, 128), 32)).toMatchObject({ numSplits: 256, splitKeys: 32 });
  });
});

test('the bench\'s --decode-variants keys for the subgroup pass', () => {
  expect(variantOverride('subgroup=0')).toEqual({ mode: 'on', subgroup: false });
  expect(variantOverride('lanes=8+unroll=2+threads=64')).toEqual({ mode: 'on', lanes: 8, unroll: 2, tiles: { threads: 64 } });
  expect(variantOverride('sgprefetch=1')).toEqual({ mode: 'on', subgroupPrefetch: true });
});

describe('with a subgroups device, the subgroup split pass equals the reference and the one-pass kernel', () => {
  const minSizeOf = useSubgroupsDevice();

  gpuTest('plain attention over 1..16 query rows, GQA; one split and several, small and default workgroups', async () => {
    expect(minSizeOf()).toBeGreaterThan(0);
    const before = subgroupPipelines().length;
    for (let seed = 0; seed < 3; seed++) {
      await expectAccurate(decodeCase(new Set(), 100 + seed, 300), [{ ...SMALL, numSplits: 1 }, { ...SMALL, numSplits: 3 }, {}]);
    }
    expect(subgroupPipelines().length).toBeGreaterThan(before);
  }, COMPILE_HEAVY_MS);

  const OPTION_SETS = [
    ['causal'], ['window'], ['softcap'], ['alibi'], ['mask'], ['dropout'],
    ['causal', 'alibi', 'softcap'], ['window', 'mask', 'dropout'], [...OPTION_NAMES],
  ];
  gpuTest(`each option and their combinations: ${OPTION_SETS.map(s => s.join('+')).join(', ')}`, async () => {
    for (const [n, set] of OPTION_SETS.entries()) await expectAccurate(decodeCase(new Set(set), 2000 + n, 200), [{ ...SMALL, numSplits: 3 }]);
  }, COMPILE_HEAVY_MS);

  gpuTest('GQA groups 2, 4, 8 and MQA, head dims 8, 32, 64, 128 (and 32/16), a few thousand keys', async () => {
    const cases: CaseSpec[] = [
      { dims: dims(2, 1, 3000, 4, 2, 32), seed: 31, causal: true },
      { dims: dims(1, 2, 2500, 8, 2, 64), seed: 32, alibi: true, softcap: 3 },
      { dims: dims(1, 1, 2048, 2, 2, 128), seed: 33, windowSize: [900, 0] },
      { dims: dims(2, 5, 1500, 4, 1, 8), seed: 34, causal: true, dropoutRate: 0.25 },
      { dims: dims(1, 16, 1200, 2, 2, 32, 16), seed: 35, causal: true },
      { dims: dims(2, 1, 1800, 16, 2, 16), seed: 36, maskShape: [2, 16, 1, 1800], softcap: 5 },
    ];
    for (const c of cases) await expectAccurate(c, [{}, { numSplits: 5 }]);
  }, COMPILE_HEAVY_MS);

  gpuTest('lanes per key, keys per step and threads overridden: 1 and 2 lanes, 1 and 3 keys a step, 4 to 64 threads', async () => {
    const c: CaseSpec = { dims: dims(2, 3, 260, 8, 2, 16, 12), seed: 41, causal: true, alibi: true, maskShape: [2, 1, 3, 260] };
    await expectAccurate(c, [
      { lanes: 1, numSplits: 2 }, { lanes: 2, unroll: 3, numSplits: 4 }, { unroll: 1, tiles: { threads: 4 } },
      { tiles: { threads: 64, rows: 2 }, unroll: 3 },
    ]);
  }, COMPILE_HEAVY_MS);

  gpuTest('the end of a split merges its lane groups in rounds of 1, 2 or all 8 rows: the same bits', async () => {
    const c: CaseSpec = { dims: dims(1, 1, 700, 8, 1, 16, 12), seed: 42, causal: true, softcap: 3 };
    const runs = await expectAccurate(c, [1, 2, 8].map(mergeRows => ({ numSplits: 3, tiles: { mergeRows } })));
    for (const r of runs.slice(1)) {
      expect(Array.from(r.out)).toEqual(Array.from(runs[0].out));
      expect(Array.from(r.lse)).toEqual(Array.from(runs[0].lse));
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('each step\'s loads issued a step ahead (subgroupPrefetch): the same bits as at the step\'s start, splits of 1 to many steps', async () => {
    // 700 keys, 4 lane groups x 2 keys a step (8 keys): one split of 88 steps (the last ragged), 3 splits, 88 of one step.
    const c: CaseSpec = { dims: dims(2, 3, 700, 8, 2, 16, 12), seed: 43, causal: true, alibi: true, softcap: 4, dropoutRate: 0.2 };
    for (const numSplits of [1, 3, 88]) {
      const small = { ...SMALL, numSplits };
      expect(planOf(c, 4, { ...small, subgroupPrefetch: true }).subgroup).toMatchObject({ prefetch: true, unroll: 2 });
      const [atStart, ahead] = await expectAccurate(c, [small, { ...small, subgroupPrefetch: true }]);
      expect(Array.from(ahead.out)).toEqual(Array.from(atStart.out));
      expect(Array.from(ahead.lse)).toEqual(Array.from(atStart.lse));
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('a head dim not a multiple of 4 falls back to the staged pass (no subgroup pipeline)', async () => {
    const c: CaseSpec = { dims: dims(1, 2, 300, 4, 2, 6, 10), seed: 51, causal: true };
    const d = caseData(c), want = reference(c, d);
    const before = subgroupPipelines().length;
    const got = await forward(c, d, { mode: 'on' });
    expect(got.decoded).toBe(1);
    expect(subgroupPipelines().length).toBe(before);
    expectClose(describeCase(c), got, want);
  }, COMPILE_HEAVY_MS);

  gpuTest('picked without a hook for a decode call: the same bits as forced on', async () => {
    const c: CaseSpec = { dims: dims(1, 1, 2048, 4, 2, 16), seed: 71 };
    const d = caseData(c);
    const keys = subgroupPipelines().length;
    const auto = await forward(c, d, {});
    expect(auto.decoded).toBe(1);
    expect(subgroupPipelines().length).toBe(keys + 1);
    const on = await forward(c, d, { mode: 'on' });
    expect(Array.from(auto.out)).toEqual(Array.from(on.out));
    expectClose(describeCase(c), auto, reference(c, d));
  }, COMPILE_HEAVY_MS);

  gpuTest('padded and packed sequence ranges: lengths 0, 1, full and random; every option', async () => {
    const sets: Array<[string[], 'padded' | 'packed']> = [
      [['causal', 'alibi'], 'padded'], [['window', 'softcap', 'dropout'], 'padded'], [['mask', 'causal'], 'padded'],
      [[], 'packed'], [['causal', 'alibi', 'softcap'], 'packed'], [['window', 'dropout'], 'packed'],
    ];
    for (const [n, [flags, layout]] of sets.entries()) {
      const c = decodeCase(new Set(flags), 3000 + n, 150);
      c.dims.batch = 3;
      if (c.maskShape) c.maskShape = [3, c.dims.heads, c.dims.seqQ, c.dims.seqK];
      const d = caseData(c), r = rng(c.seed);
      const lensQ = lengths(r, 3, c.dims.seqQ).map(x => (layout === 'packed' ? Math.max(x, 1) : x));
      const lensK = lengths(r, 3, c.dims.seqK);
      // Every other set with the loads a step ahead.
      setDecodeOverride({ mode: 'on', ...SMALL, numSplits: 4, subgroupPrefetch: n % 2 === 1 });
      const before = decodeCalls();
      const { got, want } = await rangedRun(c, d, lensQ, lensK, layout);
      const calls = decodeCalls() - before;
      setDecodeOverride({});
      expect(calls).toBe(1);
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${layout} ${describeCase(c)} lensQ ${lensQ} lensK ${lensK}`, got, want);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('NaN and ±Infinity in q, k, v propagate as in the float64 composite', async () => {
    const found: string[] = [];
    for (const [n, flags] of [[], ['causal', 'alibi'], ['mask', 'softcap']].entries()) {
      for (const where of ['q', 'k', 'v'] as const) {
        const c = decodeCase(new Set(flags), 5000 + 10 * n + where.charCodeAt(0), 80);
        const finite = caseData(c), d = withNonFinite(finite, where, SPECIAL, c.seed, 2);
        const got = await forward(c, d, { mode: 'on', ...SMALL, numSplits: 3, subgroupPrefetch: n === 1 });
        expect(got.decoded).toBe(1);
        found.push(...nonFiniteProblems(c, finite, d, got, where));
      }
    }
    expect(takeUncapturedErrors()).toEqual([]);
    expect(found).toEqual([]);
  }, COMPILE_HEAVY_MS);

  gpuTest('the same call gives bitwise the same result; many shapes in turn reuse buffers and leak nothing', async () => {
    // Larger shapes, then smaller ones on the buffers the pool hands back (stale contents past a
    // tensor's end must never be read), then the first again.
    const shapes: CaseSpec[] = [
      { dims: dims(2, 4, 700, 4, 2, 32), seed: 61, causal: true },
      decodeCase(new Set(), 62, 40), decodeCase(new Set(['alibi']), 63, 120),
      { dims: dims(1, 1, 90, 2, 1, 16), seed: 64 },
      { dims: dims(2, 4, 700, 4, 2, 32), seed: 61, causal: true },
    ];
    const tensorsBefore = tf.memory().numTensors, bytesBefore = gpuBytesInUse();
    const results: Forward[] = [];
    for (const c of shapes) {
      const r = await forward(c, caseData(c), { mode: 'on' });
      expect(r.decoded).toBe(1);
      results.push(r);
    }
    expect(Array.from(results[4].out)).toEqual(Array.from(results[0].out));
    expect(Array.from(results[4].lse)).toEqual(Array.from(results[0].lse));
    for (const [n, c] of shapes.entries()) expectClose(describeCase(c), results[n], reference(c, caseData(c)));
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(gpuBytesInUse()).toBe(bytesBefore);
  }, COMPILE_HEAVY_MS);
});
