/**
 * The WebGPU split-KV ("flash-decoding") forward (kernels/webgpu/flash_decode_webgpu.ts): against
 * the float64 reference and against the one-pass kernel (forced on and off with the decode test
 * hook), over decode shapes (1 to 16 query rows, up to a few thousand keys), every option, GQA,
 * sequence ranges (padded and packed), NaN/Inf inputs and buffers reused across shapes; and the
 * automatic choice picks it where its header says. SwiftShader compiles are slow, so the option
 * combinations share one small geometry and head dim.
 */
import * as tf from '@tensorflow/tfjs';
import { flashAttention } from '../src/index';
import { attentionProblem } from '../src/contract';
import {
  DECODE_MAX_SEQ_Q, DECODE_MIN_SEQ_K, decodeCalls, DecodeOverride, decodePlan, setDecodeOverride,
} from '../kernels/webgpu/flash_decode_webgpu';
import { blockedLayout, decodeBlockedWorkgroupBytes, FUSED_MAX_ROWS } from '../kernels/webgpu/decode_wgsl';
import { DeviceLimits } from '../kernels/webgpu/program';
import { setTileConfigOverride } from '../kernels/webgpu/tiles';
import {
  CaseData, caseAttrs, caseData, CaseSpec, compare, describeCase, F32_TOLERANCE, OPTION_NAMES, reference, relError, rng, runOp,
} from './helpers/attention_case';
import { decodeCase, expectClose, Forward, lengths, nonFiniteProblems, rangedRun, sequenceReference } from './helpers/decode_case';
import { SPECIAL, withNonFinite } from './helpers/nonfinite';
import { destroyWebGPU, gpuBytesInUse, gpuTest, HAS_GPU, takeUncapturedErrors, TINY_TILES, useWebGPU } from './helpers/webgpu_env';

/**
 * The automatic choice with the grouped pass family at any head dim (the blocked pass by default;
 * with it off the grouped pass only from headDimV 128), so that the tests' small head dims run it
 * wherever a workgroup owns 2 or more rows.
 */
const GROUPED_AT_ANY_HEAD_DIM: DecodeOverride = { groupedMinHeadDimV: 0 };
/** The grouped pass itself (the blocked one replaces it by default), at any head dim. */
const GROUPED_NOT_BLOCKED: DecodeOverride = { groupedMinHeadDimV: 0, blocked: false };
/** The split passes in turn (decode_wgsl.ts): the choice above (blocked for 2 or more rows), staged, fused. */
const PASS_TURNS: DecodeOverride[] = [GROUPED_AT_ANY_HEAD_DIM, { fused: false }, { grouped: false }];
/** Small decode tiles (8-key tiles, 32 threads): many tiles and splits even for short sequences. */
const TINY_DECODE = { cols: 8, threads: 32 };
/**
 * 64-key tiles, 32 threads: at head dim 8 the grouped and blocked passes' 16 key parts each own 4
 * consecutive keys of a tile, so their probabilities are vec4 reads (TINY_DECODE's tiles are ragged:
 * scalar reads). Cases on them need 2 or more rows a workgroup (withRows).
 */
const VEC4_PROBS_DECODE = { cols: 64, threads: 32 };
/** A case with at least 2 query rows per sequence (so a workgroup owns 2 or more rows: grouped or blocked pass). */
const withRows = (c: CaseSpec) => { c.dims.seqQ = Math.max(2, c.dims.seqQ); return c; };
/** What decodePlan says of such a run (decodePlanOf). */
const VEC4_PROBS_PLAN = { grouped: true, consecutive: true, tiles: { cols: 64, threads: 32 } };
const COMPILE_HEAVY_MS = 600000;
const TOL = F32_TOLERANCE.forward;


/** The forward on webgpu with the decode hook set as given (the one-pass kernel uses tiny tiles). */
async function forward(c: CaseSpec, d: CaseData, o: DecodeOverride): Promise<Forward> {
  setDecodeOverride({ tiles: TINY_DECODE, ...GROUPED_AT_ANY_HEAD_DIM, ...o });
  try {
    const { out, lse } = await runOp(c, d, false);
    return { out, lse };
  } finally {
    setDecodeOverride({});
  }
}

/** Decode (at the given split counts) against the reference and the one-pass kernel: forward < 1e-5. */
async function expectDecodeAccurate(c: CaseSpec, splits: Array<number | undefined> = [undefined], o: DecodeOverride = {}) {
  const d = caseData(c);
  const want = reference(c, d);
  const onePass = await forward(c, d, { mode: 'off' });
  for (const numSplits of splits) {
    const got = await forward(c, d, { mode: 'on', numSplits, ...o });
    expect(takeUncapturedErrors()).toEqual([]);
    const errs = {
      out: relError(got.out, want.out), lse: relError(got.lse, want.lse),
      outVsOnePass: relError(got.out, onePass.out), lseVsOnePass: relError(got.lse, onePass.lse),
    };
    for (const [k, e] of Object.entries(errs)) {
      if (!(e < TOL)) throw new Error(`${describeCase(c)} splits ${numSplits ?? 'auto'}: ${k} relative error ${e}\n${JSON.stringify(errs)}`);
    }
  }
}

if (HAS_GPU) {
  beforeAll(async () => {
    await useWebGPU();
    setTileConfigOverride({ forward: TINY_TILES, dq: TINY_TILES, dkdv: TINY_TILES });
  });
  afterAll(() => { setTileConfigOverride({}); setDecodeOverride({}); destroyWebGPU(); });
}

describe('the split-KV forward equals the reference and the one-pass kernel', () => {
  gpuTest('plain attention over 1..16 query rows, GQA, several split counts', async () => {
    for (let seed = 0; seed < 3; seed++) {
      await expectDecodeAccurate(decodeCase(new Set(), 100 + seed), [1, 2, 3, undefined]);
    }
  }, COMPILE_HEAVY_MS);

  // Each option alone, then together (causal and window share a compiled switch, so do the rest
  // pairwise): the powerset is covered for the one-pass kernel in webgpu_kernels.test.ts, and each
  // subset here costs two SwiftShader compiles.
  const OPTION_SETS = [
    ['causal'], ['window'], ['softcap'], ['alibi'], ['mask'], ['dropout'],
    ['causal', 'alibi', 'softcap'], ['window', 'mask', 'dropout'], [...OPTION_NAMES],
  ];
  gpuTest(`each option and their combinations: ${OPTION_SETS.map(s => s.join('+')).join(', ')}`, async () => {
    for (const [n, set] of OPTION_SETS.entries()) await expectDecodeAccurate(decodeCase(new Set(set), 2000 + n), [3]);
  }, COMPILE_HEAVY_MS);

  // extreme_options.test.ts's values, through the split-KV path (its cases are too short to take
  // it): window edges near and past 2^31 act as unbounded (no int32 wrap against the key offset),
  // softcap at its ends stays exact.
  const WIDE = 2 ** 31 - 1;
  const EXTREMES: Array<Pick<CaseSpec, 'windowSize' | 'softcap'>> = [
    { windowSize: [-1, WIDE], softcap: 1e-3 }, { windowSize: [WIDE, -1], softcap: 3e38 },
    { windowSize: [-1, 2 ** 32], softcap: 1e8 }, { windowSize: [2 ** 40, 2 ** 40] }, { windowSize: [2 ** 32, 3] },
  ];
  gpuTest('extreme windows (2^31 - 1, 2^32, 2^40) and softcaps (1e-3, 1e8, 3e38)', async () => {
    for (const [n, extreme] of EXTREMES.entries()) {
      const c: CaseSpec = { dims: { batch: 2, seqQ: 1 + (n % 3), seqK: 150, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8 },
                            seed: 800 + n, ...extreme };
      await expectDecodeAccurate(c, [4]);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('the gradient of a decode forward is the regular backward: dq, dk, dv against the reference', async () => {
    const c: CaseSpec = { dims: { batch: 2, seqQ: 3, seqK: 90, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8 }, seed: 91, causal: true, softcap: 3 };
    const d = caseData(c), want = reference(c, d);
    setDecodeOverride({ mode: 'on', tiles: TINY_DECODE, numSplits: 4 });
    const before = decodeCalls();
    const got = await runOp(c, d, true);
    const calls = decodeCalls() - before;
    setDecodeOverride({});
    expect(calls).toBeGreaterThan(0);
    expect(takeUncapturedErrors()).toEqual([]);
    const errs = compare(got, want);
    for (const [k, e] of Object.entries(errs)) {
      expect([k, e < (k === 'out' || k === 'lse' ? TOL : F32_TOLERANCE.grads)]).toEqual([k, true]);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('a few thousand keys: MHA, GQA and MQA, causal and windowed', async () => {
    const cases: CaseSpec[] = [
      { dims: { batch: 1, seqQ: 1, seqK: 3000, heads: 4, kvHeads: 4, headDim: 8, headDimV: 8 }, seed: 31 },
      { dims: { batch: 2, seqQ: 5, seqK: 2500, heads: 6, kvHeads: 2, headDim: 8, headDimV: 8 }, seed: 32, causal: true },
      { dims: { batch: 1, seqQ: 16, seqK: 2048, heads: 4, kvHeads: 1, headDim: 8, headDimV: 8 }, seed: 33, windowSize: [700, 0], alibi: true },
    ];
    for (const c of cases) await expectDecodeAccurate(c, [undefined, 7]);
  }, COMPILE_HEAVY_MS);

  gpuTest("the device's own decode tile, head dims 20/12", async () => {
    const cases: CaseSpec[] = [
      { dims: { batch: 2, seqQ: 3, seqK: 600, heads: 4, kvHeads: 2, headDim: 20, headDimV: 12 }, seed: 42, causal: true, softcap: 2 },
    ];
    for (const c of cases) {
      const d = caseData(c), want = reference(c, d);
      setDecodeOverride({ mode: 'on' });
      const got = await runOp(c, d, false);
      setDecodeOverride({});
      expect(takeUncapturedErrors()).toEqual([]);
      expect(relError(got.out, want.out)).toBeLessThan(TOL);
      expect(relError(got.lse, want.lse)).toBeLessThan(TOL);
    }
  }, COMPILE_HEAVY_MS);
});

describe('the grouped split pass: one probability per (row, key) for a kv head\'s group of query rows', () => {
  // The default where a workgroup owns 2 or more query rows on vec4 loads: GQA groups 2, 4 and 8,
  // MQA, several query rows per head (row blocks of FUSED_MAX_ROWS), one split and several, on the
  // tiny tile (2 score threads per key) and on the device's own tile; against the float64 reference
  // and the one-pass kernel.
  gpuTest('GQA groups 2, 4, 8 and MQA; one split and several; several query rows per head', async () => {
    const cases: CaseSpec[] = [
      { dims: { batch: 2, seqQ: 1, seqK: 300, heads: 8, kvHeads: 4, headDim: 8, headDimV: 8 }, seed: 701 },
      { dims: { batch: 1, seqQ: 1, seqK: 260, heads: 8, kvHeads: 2, headDim: 8, headDimV: 12 }, seed: 702, causal: true },
      { dims: { batch: 2, seqQ: 1, seqK: 333, heads: 8, kvHeads: 1, headDim: 8, headDimV: 8 }, seed: 703, alibi: true, softcap: 2 },
      { dims: { batch: 1, seqQ: 3, seqK: 200, heads: 8, kvHeads: 2, headDim: 12, headDimV: 8 }, seed: 704, windowSize: [60, 0] },
    ];
    for (const c of cases) {
      expect(decodePlanOf(c, { mode: 'on', tiles: TINY_DECODE, ...GROUPED_NOT_BLOCKED })).toMatchObject({ fused: true, grouped: true, blocked: false });
      await expectDecodeAccurate(c, [1, 5], GROUPED_NOT_BLOCKED);
    }
    // The device's own tile (256 threads, wide key tiles): one split and the automatic count.
    const own: CaseSpec = { dims: { batch: 1, seqQ: 2, seqK: 1100, heads: 8, kvHeads: 1, headDim: 16, headDimV: 16 }, seed: 705, causal: true, dropoutRate: 0.2 };
    const d = caseData(own), want = reference(own, d);
    for (const numSplits of [1, undefined]) {
      setDecodeOverride({ mode: 'on', numSplits, ...GROUPED_NOT_BLOCKED });
      const got = await runOp(own, d, false);
      setDecodeOverride({});
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${describeCase(own)} own tile, splits ${numSplits ?? 'auto'}`, got, want);
    }
  }, COMPILE_HEAVY_MS);

  test('with the blocked pass off: picked for 2 or more rows a workgroup on vec4 loads from headDimV 128 on; the fused pass for one row, d 64 or when switched off', () => {
    const c = (heads: number, kvHeads: number, seqQ = 1, d = 128): CaseSpec =>
      ({ dims: { batch: 1, seqQ, seqK: 512, heads, kvHeads, headDim: d, headDimV: d }, seed: 1 });
    const OFF: DecodeOverride = { blocked: false };
    expect(decodePlanOf(c(16, 2), OFF)).toMatchObject({ fused: true, grouped: true });
    expect(decodePlanOf(c(8, 1), OFF)).toMatchObject({ fused: true, grouped: true });
    expect(decodePlanOf(c(8, 4), OFF)).toMatchObject({ fused: true, grouped: true });
    expect(decodePlanOf(c(4, 4, 2), OFF)).toMatchObject({ fused: true, grouped: true });
    expect(decodePlanOf(c(4, 4), OFF)).toMatchObject({ fused: true, grouped: false });
    expect(decodePlanOf(c(16, 2, 1, 64), OFF)).toMatchObject({ fused: true, grouped: false });
    expect(decodePlanOf(c(16, 2, 1, 64), GROUPED_NOT_BLOCKED)).toMatchObject({ fused: true, grouped: true });
    expect(decodePlanOf(c(8, 1), { ...OFF, grouped: false })).toMatchObject({ fused: true, grouped: false });
    expect(decodePlanOf(c(8, 1), { ...OFF, fused: false })).toMatchObject({ fused: false, grouped: false });
    expect(decodePlanOf(c(8, 1, 1, 6), GROUPED_NOT_BLOCKED)).toMatchObject({ fused: false, grouped: false });
    expect(decodePlanOf(c(4, 4), { ...OFF, grouped: true })).toMatchObject({ fused: true, grouped: true });
  });
});

describe("the blocked split pass and the combine's layouts: keys in registers, one softmax per (row, key part)", () => {
  // Where the grouped pass runs (2 or more rows a workgroup, vec4 loads): the same cases, every
  // option alone and together, padded and packed ranges, NaN/Inf, the device's own tile, against
  // the float64 reference and the one-pass kernel; with a narrow combine (32 threads, 2 value
  // columns a workgroup: several splits per thread and per split lane, a last column block only
  // partly used where headDimV / 4 is odd) and a wide one (256 split lanes of one column).
  const BLOCKED: DecodeOverride = { blocked: true, combineThreads: 32, combineCols: 2 };
  const WIDE_COMBINE: DecodeOverride = { blocked: true, combineThreads: 256, combineCols: 1 };
  gpuTest('GQA groups 2, 4, 8 and MQA, several query rows per head; every option; one split and several', async () => {
    const cases: CaseSpec[] = [
      { dims: { batch: 2, seqQ: 1, seqK: 300, heads: 8, kvHeads: 4, headDim: 8, headDimV: 8 }, seed: 901 },
      { dims: { batch: 1, seqQ: 1, seqK: 260, heads: 8, kvHeads: 2, headDim: 8, headDimV: 12 }, seed: 902, causal: true },
      { dims: { batch: 2, seqQ: 1, seqK: 333, heads: 8, kvHeads: 1, headDim: 20, headDimV: 8 }, seed: 903, alibi: true, softcap: 2 },
      { dims: { batch: 1, seqQ: 3, seqK: 200, heads: 8, kvHeads: 2, headDim: 12, headDimV: 8 }, seed: 904, windowSize: [60, 0] },
    ];
    for (const c of cases) {
      expect(decodePlanOf(c, { mode: 'on', tiles: TINY_DECODE, ...GROUPED_AT_ANY_HEAD_DIM, ...BLOCKED }))
          .toMatchObject({ fused: true, grouped: true, blocked: true, combine: { threads: 32, cols: 2, splitLanes: 16 } });
      await expectDecodeAccurate(c, [1, 5, 13]);
    }
    for (const [n, set] of [[...OPTION_NAMES], ['mask', 'dropout'], ['window', 'alibi']].entries()) {
      const c = decodeCase(new Set(set), 2900 + n);
      c.dims.kvHeads = 1;
      const d = caseData(c), want = reference(c, d), onePass = await forward(c, d, { mode: 'off' });
      const got = await forward(c, d, { mode: 'on', numSplits: 3, ...(n === 1 ? WIDE_COMBINE : BLOCKED) });
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${describeCase(c)} blocked`, got, want);
      expectClose(`${describeCase(c)} blocked vs one-pass`, got, onePass);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest("the device's own tile (256 threads): one split and the automatic count, dropout; one row; narrow and wide combines", async () => {
    const own: CaseSpec = { dims: { batch: 1, seqQ: 2, seqK: 1100, heads: 8, kvHeads: 1, headDim: 16, headDimV: 16 }, seed: 905, causal: true, dropoutRate: 0.2 };
    const mha: CaseSpec = { dims: { batch: 1, seqQ: 1, seqK: 2100, heads: 2, kvHeads: 2, headDim: 16, headDimV: 16 }, seed: 906, alibi: true };
    for (const c of [own, mha]) {
      const d = caseData(c), want = reference(c, d);
      // 200 splits asked (8-key tiles; 132 result): the narrow combine's threads read 5 splits' (max, sum) and its 16 split lanes 9 splits each.
      for (const numSplits of [1, 9, 200, undefined]) {
        // 200 splits also with the wide combine, and with the automatic layout.
        for (const o of numSplits === 200 ? [BLOCKED, WIDE_COMBINE, { blocked: true }] : [BLOCKED]) {
        setDecodeOverride({ mode: 'on', numSplits, ...GROUPED_AT_ANY_HEAD_DIM, ...o, ...(numSplits === 200 ? { tiles: { cols: 8 } } : {}) });
        const got = await runOp(c, d, false);
        setDecodeOverride({});
        expect(takeUncapturedErrors()).toEqual([]);
        expectClose(`${describeCase(c)} own tile, splits ${numSplits ?? 'auto'} ${JSON.stringify(o)}`, got, want);
        }
      }
    }
    // 263 tiles of 8 keys in splits of 2 tiles: 132 splits.
    expect(decodePlanOf(mha, { mode: 'on', numSplits: 200, tiles: { cols: 8 }, ...BLOCKED }))
        .toMatchObject({ numSplits: 132, combine: { threads: 32, cols: 2, colBlocks: 2, splitLanes: 16, splitsPerLane: 9, statsPerThread: 5 } });
    expect(decodePlanOf(mha, { mode: 'on', numSplits: 200, tiles: { cols: 8 }, ...WIDE_COMBINE }))
        .toMatchObject({ numSplits: 132, combine: { threads: 256, cols: 1, colBlocks: 4, splitLanes: 256, splitsPerLane: 1, statsPerThread: 1 } });
  }, COMPILE_HEAVY_MS);

  gpuTest('padded and packed ranges; NaN and ±Infinity; bitwise deterministic on reused buffers', async () => {
    for (const layout of ['padded', 'packed'] as const) {
      const c = decodeCase(new Set(layout === 'padded' ? ['mask', 'causal', 'dropout'] : ['window', 'softcap', 'alibi']), 3900, 120);
      c.dims.batch = 3;
      if (c.maskShape) c.maskShape = [3, c.dims.heads, c.dims.seqQ, c.dims.seqK];
      const d = caseData(c), r = rng(c.seed);
      const lensQ = lengths(r, 3, c.dims.seqQ).map(x => (layout === 'packed' ? Math.max(x, 1) : x)), lensK = lengths(r, 3, c.dims.seqK);
      setDecodeOverride({ mode: 'on', tiles: TINY_DECODE, numSplits: 4, ...GROUPED_AT_ANY_HEAD_DIM, ...BLOCKED });
      const { got, want } = await rangedRun(c, d, lensQ, lensK, layout);
      setDecodeOverride({});
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${describeCase(c)} ${layout} lensQ ${lensQ} lensK ${lensK}`, got, want);
    }
    const found: string[] = [];
    for (const where of ['q', 'k', 'v'] as const) {
      const c = decodeCase(new Set(['causal', 'alibi']), 5900 + where.charCodeAt(0), 60);
      c.dims.kvHeads = 1;
      const finite = caseData(c), d = withNonFinite(finite, where, SPECIAL, c.seed, 2);
      const got = await forward(c, d, { mode: 'on', numSplits: 3, ...BLOCKED });
      found.push(...nonFiniteProblems(c, finite, d, got, where));
    }
    expect(found).toEqual([]);
    const big = decodeCase(new Set(['causal']), 5961, 300), small = decodeCase(new Set(), 5962, 40);
    big.dims.kvHeads = 1; small.dims.kvHeads = 1;
    const tensorsBefore = tf.memory().numTensors, bytesBefore = gpuBytesInUse();
    const results: Forward[] = [];
    for (const c of [big, small, big]) results.push(await forward(c, caseData(c), { mode: 'on', ...BLOCKED }));
    expect(Array.from(results[2].out)).toEqual(Array.from(results[0].out));
    expect(Array.from(results[2].lse)).toEqual(Array.from(results[0].lse));
    expectClose(describeCase(big), results[0], reference(big, caseData(big)));
    expectClose(describeCase(small), results[1], reference(small, caseData(small)));
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(gpuBytesInUse()).toBe(bytesBefore);
    expect(takeUncapturedErrors()).toEqual([]);
  }, COMPILE_HEAVY_MS);

  test('the default for 2 or more rows a workgroup on vec4 loads below headDimV 128 (one tile a split at least); not for one row; register-sized tiles', () => {
    const c = (heads: number, kvHeads: number, d = 128, seqK = 512): CaseSpec =>
      ({ dims: { batch: 1, seqQ: 1, seqK, heads, kvHeads, headDim: d, headDimV: d }, seed: 1 });
    // Rows merged a round: as many as workgroup memory allows beside the widest tile (4 of 8 for the blocked pass at d 64, all 8 for the grouped at d 128).
    expect(decodePlanOf(c(16, 2, 64), {})).toMatchObject({ grouped: true, blocked: true, tiles: { rows: 8, cols: 128, threads: 256, mergeRows: 4 } });
    expect(decodePlanOf(c(16, 2), {}).tiles).toMatchObject({ rows: 8, cols: 64, mergeRows: 8 });
    // GQA 16/2 at 8k keys, B 1: 64 tiles of 128 keys, one a split: 2 kv heads x 64 splits; the
    // combine: 4 value vec4s a workgroup (4 workgroups a row), a split lane per split.
    expect(decodePlanOf(c(16, 2, 64, 8192), {})).toMatchObject({
      blocked: true, numSplits: 64, combine: { threads: 256, cols: 4, colBlocks: 4, splitLanes: 64, splitsPerLane: 1, statsPerThread: 1 } });
    // One split: the combine's least threads (a warp).
    expect(decodePlanOf(c(16, 16, 64, 512), { numSplits: 1 })).toMatchObject({ combine: { threads: 32, cols: 4, splitLanes: 8, splitsPerLane: 1 } });
    expect(decodePlanOf(c(16, 2, 8), {})).toMatchObject({ grouped: true, blocked: true });
    expect(decodePlanOf(c(16, 2), {})).toMatchObject({ grouped: true, blocked: false });
    expect(decodePlanOf(c(16, 2), { blocked: true })).toMatchObject({ grouped: true, blocked: true, tiles: { rows: 8, cols: 64, threads: 256 } });
    expect(decodePlanOf(c(16, 16, 64), {})).toMatchObject({ fused: true, grouped: false, blocked: false });
    expect(decodePlanOf(c(16, 2, 64), { grouped: false })).toMatchObject({ grouped: false, blocked: false });
    expect(decodePlanOf(c(16, 2, 64), { blocked: false })).toMatchObject({ grouped: false, blocked: false });
    expect(decodePlanOf(c(16, 16, 64), { grouped: true, blocked: true })).toMatchObject({ grouped: true, blocked: true, tiles: { rows: 1 } });
  });

  gpuTest('accumulate threads own consecutive keys (vec4 reads of probabilities, and a ragged tile) or keys KP apart: grouped and blocked passes', async () => {
    const c: CaseSpec = { dims: { batch: 2, seqQ: 1, seqK: 300, heads: 8, kvHeads: 1, headDim: 8, headDimV: 8 }, seed: 910, softcap: 4, dropoutRate: 0.1 };
    const d = caseData(c), want = reference(c, d);
    // 32 threads, head dim 8: 16 key parts; 64-key tiles give each part 4 consecutive keys (vec4
    // reads), 8-key tiles 1 of 16 parts' keys past the tile (ragged, scalar reads).
    expect(blockedLayout({ rows: 8, cols: 64, threads: 32, mergeRows: 8 }, 8, 8)).toMatchObject({ keyParts: 16, keysPerThread: 4 });
    for (const pass of [{ blocked: true }, GROUPED_NOT_BLOCKED]) {
      for (const cols of [64, 8]) {
        for (const consecutive of [true, false]) {
          for (const numSplits of [1, 3]) {
            const o = { mode: 'on' as const, numSplits, ...pass, consecutive, tiles: { cols, threads: 32 } };
            expect(decodePlanOf(c, { ...GROUPED_AT_ANY_HEAD_DIM, ...o })).toMatchObject({ grouped: true, consecutive, tiles: { cols } });
            expectClose(`${describeCase(c)} ${JSON.stringify(o)}`, await forward(c, d, o), want);
            expect(takeUncapturedErrors()).toEqual([]);
          }
        }
      }
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('the end of a split merges its parts in rounds of 1, 3 (a last round part full) or all 8 rows: the same bits in each register pass', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 1, seqK: 300, heads: 8, kvHeads: 1, headDim: 8, headDimV: 12 }, seed: 907, causal: true, alibi: true };
    const d = caseData(c), want = reference(c, d);
    for (const pass of [{ blocked: true }, GROUPED_NOT_BLOCKED, { grouped: false }]) {
      const runs: Forward[] = [];
      for (const mergeRows of [1, 3, 8]) {
        const o = { mode: 'on' as const, numSplits: 3, ...pass, tiles: { ...TINY_DECODE, mergeRows } };
        expect(decodePlanOf(c, { ...GROUPED_AT_ANY_HEAD_DIM, ...o }).tiles).toMatchObject({ rows: 8, mergeRows });
        runs.push(await forward(c, d, o));
        expect(takeUncapturedErrors()).toEqual([]);
        expectClose(`${describeCase(c)} ${JSON.stringify(pass)} merge rows ${mergeRows}`, runs[runs.length - 1], want);
      }
      for (const r of runs.slice(1)) {
        expect(Array.from(r.out)).toEqual(Array.from(runs[0].out));
        expect(Array.from(r.lse)).toEqual(Array.from(runs[0].lse));
      }
    }
  }, COMPILE_HEAVY_MS);
});

/** decodePlan for a case on an H200's limits with the decode hook set as given. */
function decodePlanOf(c: CaseSpec, o: DecodeOverride) {
  const limits: DeviceLimits = {
    maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024,
    maxStorageBufferBindingSize: 2 ** 31 - 4, maxComputeWorkgroupsPerDimension: 65535,
  };
  const { batch, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  setDecodeOverride(o);
  try {
    return decodePlan(limits, attentionProblem([batch, seqQ, heads, headDim], [batch, seqK, kvHeads, headDim], [batch, seqK, kvHeads, headDimV],
        caseAttrs(c, { q: new Float32Array(0), k: new Float32Array(0), v: new Float32Array(0), dy: new Float32Array(0) })));
  } finally {
    setDecodeOverride({});
  }
}

describe('the split pass variants: fused or staged, vec4 or scalar loads, prefetched or not', () => {
  // Head dims 8 and 20/12 above take the fused pass on vec4 loads, the next tile prefetched (the default).
  gpuTest('head dims not a multiple of 4 (scalar loads): MHA and GQA, options, several split counts', async () => {
    const cases: CaseSpec[] = [
      { dims: { batch: 2, seqQ: 1, seqK: 150, heads: 4, kvHeads: 4, headDim: 6, headDimV: 10 }, seed: 501 },
      { dims: { batch: 1, seqQ: 5, seqK: 130, heads: 6, kvHeads: 2, headDim: 10, headDimV: 6 }, seed: 502, causal: true, alibi: true, softcap: 2 },
    ];
    for (const c of cases) await expectDecodeAccurate(c, [1, 4, undefined]);
  }, COMPILE_HEAVY_MS);

  gpuTest('vec4-capable head dims: fused or staged pass, vec4 loads or prefetch switched off', async () => {
    const c: CaseSpec = { dims: { batch: 2, seqQ: 3, seqK: 140, heads: 4, kvHeads: 2, headDim: 8, headDimV: 12 }, seed: 503, windowSize: [50, 0], maskShape: [2, 1, 3, 140], dropoutRate: 0.3 };
    const d = caseData(c), want = reference(c, d);
    // The grouped pass (the default here: 2 rows per kv head's group... 6 rows) with and without
    // prefetch and with a wider tile (cols 16: 1 score thread per key, 16 key parts x 1 key), the
    // fused pass the same three ways, the staged pass on vec4 loads, the staged pass on scalar loads.
    const variants: DecodeOverride[] = [
      { prefetch: false }, { tiles: { cols: 16, threads: 32 } }, { grouped: false }, { grouped: false, prefetch: false },
      { grouped: false, tiles: { cols: 16, threads: 32 } }, { fused: false }, { fused: false, prefetch: false },
      { vec4: false }, { vec4: false, prefetch: false }, { blocked: false }, { blocked: false, prefetch: false },
    ];
    for (const loads of variants) {
      const got = await forward(c, d, { mode: 'on', numSplits: 3, ...loads });
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${describeCase(c)} ${JSON.stringify(loads)}`, got, want);
    }
  }, COMPILE_HEAVY_MS);

  test('vec4 loads and the fused pass exactly where headDim and headDimV are multiples of 4 and not switched off; prefetch by default', () => {
    const limits: DeviceLimits = {
      maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024,
      maxStorageBufferBindingSize: 2 ** 31 - 4, maxComputeWorkgroupsPerDimension: 65535,
    };
    const loads = (d: number, dv: number, seqQ = 1, heads = 4, kvHeads = 2) => decodePlan(limits, attentionProblem(
        [1, seqQ, heads, d], [1, 512, kvHeads, d], [1, 512, kvHeads, dv],
        caseAttrs({ dims: { batch: 1, seqQ, seqK: 512, heads, kvHeads, headDim: d, headDimV: dv }, seed: 1 },
                  { q: new Float32Array(0), k: new Float32Array(0), v: new Float32Array(0), dy: new Float32Array(0) })));
    expect(loads(64, 64)).toMatchObject({ loads: { vec4: true, prefetch: true }, fused: true });
    expect(loads(6, 8)).toMatchObject({ loads: { vec4: false }, fused: false });
    expect(loads(8, 10)).toMatchObject({ loads: { vec4: false }, fused: false });
    setDecodeOverride({ vec4: false, prefetch: false });
    expect(loads(64, 64)).toMatchObject({ loads: { vec4: false, prefetch: false }, fused: false });
    setDecodeOverride({ fused: false });
    expect(loads(64, 64)).toMatchObject({ loads: { vec4: true }, fused: false });
    setDecodeOverride({});
    // Fewer threads than value vec4s (d 64: 16): the staged pass.
    setDecodeOverride({ tiles: { threads: 8 } });
    expect(loads(64, 64)).toMatchObject({ loads: { vec4: true }, fused: false, tiles: { threads: 8 } });
    setDecodeOverride({});
    // The fused pass keeps one accumulator per row in registers: at most FUSED_MAX_ROWS rows a workgroup.
    expect(loads(64, 64, 16, 16, 1).tiles.rows).toBe(FUSED_MAX_ROWS);
    expect(loads(64, 64, 16, 16, 1).rowBlocks).toBe(16 * 16 / FUSED_MAX_ROWS);
  });
});

describe('sequence ranges (seqLensK of a filled cache, packed sequences)', () => {
  gpuTest('padded: lengths 0, 1, full and random; every option; splits past a length do no work', async () => {
    for (const [n, flags] of [[], ['causal', 'alibi'], ['window', 'softcap', 'dropout'], ['mask', 'causal'], ['window', 'alibi']].entries()) {
      const c = n === 4 ? withRows(decodeCase(new Set(flags), 3000 + n, 400)) : decodeCase(new Set(flags), 3000 + n, 120);
      c.dims.batch = 3;
      if (c.maskShape) c.maskShape = [3, c.dims.heads, c.dims.seqQ, c.dims.seqK];
      const d = caseData(c), r = rng(c.seed);
      const lensQ = lengths(r, 3, c.dims.seqQ), lensK = lengths(r, 3, c.dims.seqK);
      // The sets in turn on the default pass (blocked, or fused for one row), the staged and the fused
      // pass; the last on the blocked pass with vec4 probabilities.
      const o: DecodeOverride = { mode: 'on', tiles: n === 4 ? VEC4_PROBS_DECODE : TINY_DECODE, numSplits: 4,
                                  ...(n === 4 ? GROUPED_AT_ANY_HEAD_DIM : PASS_TURNS[n % 3]) };
      if (n === 4) expect(decodePlanOf(c, o)).toMatchObject({ ...VEC4_PROBS_PLAN, blocked: true });
      setDecodeOverride(o);
      const { got, want } = await rangedRun(c, d, lensQ, lensK, 'padded');
      setDecodeOverride({});
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${describeCase(c)} lensQ ${lensQ} lensK ${lensK}`, got, want);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('through the op: flashAttention(q, k, v, { seqLensK }) over a cache filled to different lengths, picked without a hook', async () => {
    const c: CaseSpec = { dims: { batch: 3, seqQ: 1, seqK: 700, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8 }, seed: 81, causal: true, alibi: true };
    const d = caseData(c);
    const lensK = [700, 1, 300];
    const [q, k, v] = [tf.tensor4d(d.q, [3, 1, 4, 8]), tf.tensor4d(d.k, [3, 700, 2, 8]), tf.tensor4d(d.v, [3, 700, 2, 8])];
    const before = decodeCalls();
    const { output, logSumExp } = flashAttention(q, k, v, { causal: true, alibiSlopes: Array.from(d.slopes!), seqLensK: lensK, returnLogSumExp: true });
    const got = { out: await output.data() as Float32Array, lse: await logSumExp.data() as Float32Array };
    expect(decodeCalls()).toBe(before + 1);
    tf.dispose([q, k, v, output, logSumExp]);
    const want = { out: new Float64Array(3 * 4 * 8), lse: new Float64Array(3 * 4) };
    lensK.forEach((lenK, b) => {
      const r = sequenceReference(c, d, b, 1, lenK);
      want.out.set(r.out, b * 4 * 8);
      want.lse.set(r.lse, b * 4);
    });
    expect(takeUncapturedErrors()).toEqual([]);
    expectClose(`seqLensK ${lensK}`, got, want);
  }, COMPILE_HEAVY_MS);

  gpuTest('packed: sequences back to back, every option but the mask', async () => {
    for (const [n, flags] of [[], ['causal', 'alibi', 'softcap'], ['window', 'dropout'], ['causal', 'dropout']].entries()) {
      const c = n === 3 ? withRows(decodeCase(new Set(flags), 4000 + n, 400)) : decodeCase(new Set(flags), 4000 + n, 120);
      c.dims.batch = 3;
      const d = caseData(c), r = rng(c.seed);
      const lensQ = lengths(r, 3, c.dims.seqQ).map(x => Math.max(x, 1)), lensK = lengths(r, 3, c.dims.seqK);
      // The last set on the grouped pass (not blocked) with vec4 probabilities.
      const o: DecodeOverride = { mode: 'on', tiles: n === 3 ? VEC4_PROBS_DECODE : TINY_DECODE, numSplits: 3,
                                  ...(n === 3 ? GROUPED_NOT_BLOCKED : PASS_TURNS[n % 3]) };
      if (n === 3) expect(decodePlanOf(c, o)).toMatchObject({ ...VEC4_PROBS_PLAN, blocked: false });
      setDecodeOverride(o);
      const { got, want } = await rangedRun(c, d, lensQ, lensK, 'packed');
      setDecodeOverride({});
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(`${describeCase(c)} lensQ ${lensQ} lensK ${lensK}`, got, want);
    }
  }, COMPILE_HEAVY_MS);
});

describe('NaN and Infinity, determinism, buffers', () => {
  gpuTest('NaN and ±Infinity in q, k, v propagate as in the float64 composite', async () => {
    const found: string[] = [];
    // Set 3 runs on the scalar loads (head dim 6, the staged pass), the others on vec4 loads; set 4
    // on vec4 probabilities (the blocked pass, the grouped one for NaN in k).
    for (const [n, flags] of [[], ['causal', 'alibi'], ['mask', 'softcap'], ['causal'], ['causal', 'alibi', 'softcap']].entries()) {
      for (const where of ['q', 'k', 'v'] as const) {
        const c = decodeCase(new Set(flags), 5000 + 10 * n + where.charCodeAt(0), n === 4 ? 300 : 60);
        if (n === 3) { c.dims.headDim = 6; c.dims.headDimV = 6; }
        if (n === 4) withRows(c);
        const finite = caseData(c), d = withNonFinite(finite, where, SPECIAL, c.seed, 2);
        // Set 1 on the fused pass, the others on the default (blocked where 2 or more rows).
        const vec4Probs = { tiles: VEC4_PROBS_DECODE, ...(where === 'k' ? GROUPED_NOT_BLOCKED : {}) };
        if (n === 4) expect(decodePlanOf(c, { ...GROUPED_AT_ANY_HEAD_DIM, numSplits: 3, ...vec4Probs })).toMatchObject(VEC4_PROBS_PLAN);
        const got = await forward(c, d, { mode: 'on', numSplits: 3, ...(n === 1 ? { grouped: false } : n === 4 ? vec4Probs : {}) });
        found.push(...nonFiniteProblems(c, finite, d, got, where));
      }
    }
    expect(takeUncapturedErrors()).toEqual([]);
    expect(found).toEqual([]);
  }, COMPILE_HEAVY_MS);

  gpuTest('the same call gives bitwise the same result; shapes in turn reuse buffers and leak nothing', async () => {
    // A vec4-path shape, then scalar-path and smaller ones on buffers the pool hands back (stale
    // contents past a tensor's end must never be read), then the first again.
    const scalar = decodeCase(new Set(), 63, 200);
    scalar.dims.headDim = 6; scalar.dims.headDimV = 6;
    const shapes = [decodeCase(new Set(['causal']), 61, 300), decodeCase(new Set(), 62, 40), scalar, decodeCase(new Set(['causal']), 61, 300)];
    const tensorsBefore = tf.memory().numTensors, bytesBefore = gpuBytesInUse();
    const results: Forward[] = [];
    for (const c of shapes) results.push(await forward(c, caseData(c), { mode: 'on' }));
    expect(Array.from(results[3].out)).toEqual(Array.from(results[0].out));
    expect(Array.from(results[3].lse)).toEqual(Array.from(results[0].lse));
    for (const [n, c] of shapes.entries()) expectClose(describeCase(c), results[n], reference(c, caseData(c)));
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(gpuBytesInUse()).toBe(bytesBefore);
  }, COMPILE_HEAVY_MS);
});

describe('when the split-KV forward is chosen', () => {
  const H200: DeviceLimits = {
    maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024,
    maxStorageBufferBindingSize: 2 ** 31 - 4, maxComputeWorkgroupsPerDimension: 65535,
  };
  const plan = (seqQ: number, seqK: number, batch = 1, heads = 16, kvHeads = 16) => {
    const attrs = caseAttrs({ dims: { batch, seqQ, seqK, heads, kvHeads, headDim: 64, headDimV: 64 }, seed: 1 },
                            { q: new Float32Array(0), k: new Float32Array(0), v: new Float32Array(0), dy: new Float32Array(0) });
    return decodePlan(H200, attentionProblem([batch, seqQ, heads, 64], [batch, seqK, kvHeads, 64], [batch, seqK, kvHeads, 64], attrs));
  };

  test(`1..${DECODE_MAX_SEQ_Q} query rows over long keys: split in several`, () => {
    for (const seqQ of [1, 4, DECODE_MAX_SEQ_Q]) {
      const p = plan(seqQ, 8192);
      expect(p.use).toBe(true);
      expect(p.numSplits).toBeGreaterThan(1);
      expect(p.numSplits * p.splitKeys).toBeGreaterThanOrEqual(8192);
      expect((p.numSplits - 1) * p.splitKeys).toBeLessThan(8192);
    }
  });
  test('not for more query rows, nor for short keys', () => {
    expect(plan(DECODE_MAX_SEQ_Q + 1, 8192).use).toBe(false);
    expect(plan(1, DECODE_MIN_SEQ_K - 1).use).toBe(false);
  });
  test('a grid already full of (batch, head) workgroups: one split, fewer splits the fewer keys', () => {
    expect(plan(1, 1024, 8, 16, 16)).toMatchObject({ use: true, numSplits: 1 });
    expect(plan(1, 65536, 8, 16, 2).numSplits).toBe(8);
    expect(plan(1, 65536, 1, 16, 2).numSplits).toBeGreaterThan(plan(1, 4096, 1, 16, 2).numSplits);
  });
  test('a small workgroup memory (SwiftShader: 32 KiB) and tiny head dims: the next register pass that fits, never an error', () => {
    // The blocked pass keeps per-(row, key part) state in workgroup memory: at headDimV 4 (256 key
    // parts) it outgrows 32 KiB whatever the tile, so the grouped (or fused) pass takes its place.
    const small: DeviceLimits = { ...H200, maxComputeWorkgroupStorageSize: 32768 };
    for (const [seqQ, d] of [[8, 4], [1, 4], [12, 8], [16, 4]]) {
      const attrs = caseAttrs({ dims: { batch: 2, seqQ, seqK: 12, heads: 4, kvHeads: 2, headDim: d, headDimV: d }, seed: 1 },
                              { q: new Float32Array(0), k: new Float32Array(0), v: new Float32Array(0), dy: new Float32Array(0) });
      const p = decodePlan(small, attentionProblem([2, seqQ, 4, d], [2, 12, 2, d], [2, 12, 2, d], attrs));
      expect(p.fused).toBe(true);
      expect(decodeBlockedWorkgroupBytes(p.tiles, d, d) <= 32768 || !p.blocked).toBe(true);
    }
    expect(decodeBlockedWorkgroupBytes({ rows: 8, cols: 4, threads: 256, mergeRows: 1 }, 4, 4)).toBeGreaterThan(32768);
  });
  test('the mode hook forces it on and off', () => {
    setDecodeOverride({ mode: 'off' });
    expect(plan(1, 8192).use).toBe(false);
    setDecodeOverride({ mode: 'on' });
    expect(plan(64, 64).use).toBe(true);
    setDecodeOverride({});
  });
  gpuTest('the WebGPU kernel runs it for a decode call without any hook (same bits as forced on)', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 1, seqK: 2048, heads: 2, kvHeads: 1, headDim: 8, headDimV: 8 }, seed: 71 };
    const d = caseData(c);
    setDecodeOverride({});
    const auto = await runOp(c, d, false);
    const before = decodeCalls();
    setDecodeOverride({ mode: 'on' });
    const on = await runOp(c, d, false);
    setDecodeOverride({});
    expect(decodeCalls()).toBe(before + 1);
    expect(Array.from(auto.out)).toEqual(Array.from(on.out));
    const again = decodeCalls();
    await runOp(c, d, false);
    expect(decodeCalls()).toBe(again + 1);
  }, COMPILE_HEAVY_MS);
});
