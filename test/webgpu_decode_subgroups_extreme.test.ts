/**
 * The subgroup split pass (kernels/webgpu/decode_subgroup_wgsl.ts, forced on, on the opt-in
 * subgroups device) at the ends of what the op accepts, against the float64 reference and the
 * one-pass kernel (forward out and logSumExp < 1e-5 relative, absolute where the reference is 0,
 * -Infinity exactly; no tensor or GPU buffer left behind): softcaps from 1e-3 to 3e38; windows of
 * 0 keys either side, ending at split edges, past the sequence's ends and near 2^31; scales of 0,
 * ±1e-30 and up to ±1e30 (exp of the raw scores overflows float32); ALiBi slopes of 0, ±1e-30, up
 * to ±1e30 and 3e36; dropout rates from 1e-12 to 1 - 2^-32; masks that hide whole rows, whole
 * splits, all but one key, everything (empty rows: out exactly 0, logsumexp -Infinity); sequence
 * ranges of length 0 and 1; NaN and ±Infinity inside masked splits and at a window's only key.
 * Small workgroups and 4 splits of 80 keys (SPLITS), or 128 of 16 (MANY), make a split easy to mask
 * entirely; GQA shapes (8 rows a workgroup, 1, 2 and 4 lanes a key: no shuffle, one and two
 * reduce-scatter steps) and an MHA one (1 row, 4 lanes: all-reduce only) take the pass's butterfly
 * forms.
 */
import * as tf from '@tensorflow/tfjs';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { attentionProblem } from '../src/contract';
import { decodeCalls, DecodeOverride, decodePlan, setDecodeOverride } from '../kernels/webgpu/flash_decode_webgpu';
import { deviceLimits } from '../kernels/webgpu/program';
import { caseAttrs, CaseData, caseData, CaseSpec, describeCase, reference } from './helpers/attention_case';
import { expectClose, Forward, nonFiniteProblems, rangedRun } from './helpers/decode_case';
import { dims, expectAccurate, forward, isSubgroupSplit, SMALL, useSubgroupsDevice } from './helpers/decode_subgroups';
import { SOFTCAPS, WIDE, WIDE_WINDOWS } from './helpers/extreme_values';
import { gpuTest, takeUncapturedErrors, withProgramsRun } from './helpers/webgpu_env';

const COMPILE_HEAVY_MS = 600000;
/** 2 sequences, 3 query rows, 4 heads on 2 kv heads (a workgroup: 8 rows, 6 of them used), head dim 8: 2 lanes a key. */
const GQA = dims(2, 3, 300, 4, 2, 8);
/** One query row, 2 heads, head dim 16: 1 row a workgroup, 4 lanes a key. */
const MHA = dims(1, 1, 300, 2, 2, 16);
/** 2 query rows, 8 heads on 2 kv heads, head dims 32 and 16: 8 rows a workgroup, 4 lanes a key (two reduce-scatter steps). */
const GQA4 = dims(1, 2, 300, 8, 2, 32, 16);
/** As GQA with head dim 4: 1 lane a key (no shuffles). */
const GQA1 = dims(2, 3, 300, 4, 2, 4);
/** 4 splits of 80 keys over 300 ([0, 80), [80, 160), [160, 240), [240, 300)) on these shapes (of 96 on GQA1). */
const SPLITS: DecodeOverride = { ...SMALL, numSplits: 4 };
/** 2048 keys, 2 heads on 1 kv head: with MANY, 128 splits of 16 keys (at most one split a workgroup step). */
const LONG = dims(1, 1, 2048, 2, 1, 8);
const MANY: DecodeOverride = { ...SMALL, numSplits: 256 };
/** GQA's diagonal: key j = i + 297 for query row i (bottom-right aligned). */
const OFF = 297;

/**
 * The rows with no kept key in the reference (logsumexp -Infinity): the documented result, out
 * exactly 0 and logsumexp -Infinity, in every result given. Returns how many there were.
 */
function expectEmptyRowsExact(c: CaseSpec, want: { lse: ArrayLike<number> }, results: Forward[]): number {
  const { batch: B, seqQ, heads: H, headDimV: DV } = c.dims;
  let empty = 0;
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let i = 0; i < seqQ; i++) {
    if (want.lse[(b * H + h) * seqQ + i] !== -Infinity) continue;
    empty++;
    for (const got of results) {
      expect(got.lse[(b * H + h) * seqQ + i]).toBe(-Infinity);
      const row = Array.from(got.out.subarray(((b * seqQ + i) * H + h) * DV, ((b * seqQ + i) * H + h + 1) * DV));
      expect(row.map(Math.abs)).toEqual(new Array(DV).fill(0));   // 0 or -0
    }
  }
  return empty;
}

/** expectAccurate, then the empty rows checked exactly; returns how many rows were empty. */
async function expectAccurateWithEmptyRows(c: CaseSpec, runs: DecodeOverride[], d: CaseData = caseData(c)): Promise<number> {
  const results = await expectAccurate(c, runs, d);
  return expectEmptyRowsExact(c, reference(c, d), results);
}

/** A bool mask of the case's maskShape, element m (in row-major order) kept where keep(...index) holds. */
function maskOf(c: CaseSpec, keep: (...index: number[]) => boolean): Uint8Array {
  const shape = c.maskShape!;
  const out = new Uint8Array(shape.reduce((a, x) => a * x, 1));
  for (let m = 0; m < out.length; m++) {
    let rest = m;
    const index = shape.map((_, a) => {
      const stride = shape.slice(a + 1).reduce((x, y) => x * y, 1);
      const at = Math.floor(rest / stride);
      rest -= at * stride;
      return at;
    });
    out[m] = keep(...index) ? 1 : 0;
  }
  return out;
}

describe('the subgroup split pass at extreme option values equals the reference and the one-pass kernel', () => {
  const minSizeOf = useSubgroupsDevice();

  gpuTest('the split geometry the cases rely on: 4 splits of 80 keys (96, 128 of 16); rows a workgroup and lanes a key', () => {
    const backend = tf.backend() as WebGPUBackend;
    for (const [shape, o, splits, rows, lanes] of [
      [GQA, SPLITS, [4, 80], 8, 2], [MHA, SPLITS, [4, 80], 1, 4], [GQA4, SPLITS, [4, 80], 8, 4], [GQA1, SPLITS, [4, 96], 8, 1],
      [LONG, MANY, [128, 16], 2, 2],
    ] as const) {
      const { batch, seqQ, seqK, heads, kvHeads, headDim, headDimV } = shape;
      const c: CaseSpec = { dims: shape, seed: 1 };
      setDecodeOverride({ mode: 'on', ...o });
      try {
        const plan = decodePlan(deviceLimits(backend), attentionProblem(
            [batch, seqQ, heads, headDim], [batch, seqK, kvHeads, headDim], [batch, seqK, kvHeads, headDimV],
            caseAttrs(c, caseData(c))), minSizeOf());
        expect(plan.subgroup).not.toBeNull();
        expect([plan.numSplits, plan.splitKeys]).toEqual(splits);
        expect([plan.tiles.rows, plan.subgroup!.lanes]).toEqual([rows, lanes]);
      } finally {
        setDecodeOverride({});
      }
    }
  });

  gpuTest(`softcap ${SOFTCAPS.join(', ')}`, async () => {
    for (const [n, softcap] of SOFTCAPS.entries()) {
      await expectAccurate({ dims: GQA, seed: 100 + n, softcap }, [SPLITS]);
    }
    await expectAccurate({ dims: MHA, seed: 110, softcap: 1e-3 }, [SPLITS]);
    await expectAccurate({ dims: MHA, seed: 111, softcap: 3e38 }, [SPLITS]);
  }, COMPILE_HEAVY_MS);

  // Row i's diagonal is key 297 + i; split edges at 80, 160, 240.
  const WINDOWS: Array<[number, number]> = [
    [0, 0], [0, -1], [-1, 0], [0, 2], [1, 0], [57, 0], [58, 0], [137, 0], [138, 0], [217, 0], [296, 0], [297, 0],
    [299, 0], [302, -1], [302, 302], [-1, 300], [0, 302], [303, 0], [WIDE, 0], [0, WIDE], [WIDE - 1, WIDE - 1],
  ];
  gpuTest(`windowSize ${WINDOWS.map(w => `[${w}]`).join(', ')}; ${WIDE_WINDOWS.map(w => `[${w}]`).join(', ')}; ` +
          'with causal', async () => {
    for (const [n, windowSize] of [...WINDOWS, ...WIDE_WINDOWS].entries()) {
      await expectAccurate({ dims: GQA, seed: 200 + n, windowSize }, [SPLITS]);
    }
    for (const [n, windowSize] of ([[0, 0], [0, 5], [58, 3], [WIDE, WIDE]] as Array<[number, number]>).entries()) {
      await expectAccurate({ dims: GQA, seed: 240 + n, windowSize, causal: true }, [SPLITS]);
      await expectAccurate({ dims: MHA, seed: 250 + n, windowSize, causal: true }, [SPLITS]);
    }
  }, COMPILE_HEAVY_MS);

  const SCALES = [0, 1e-30, -1e-30, -1, 30, 1e3, -1e3, 1e20, 1e30, -1e30];
  gpuTest(`scale ${SCALES.join(', ')}; 1e30 and -1e3 with softcaps 1e-3 and 50; default and small workgroups`, async () => {
    for (const [n, scale] of SCALES.entries()) await expectAccurate({ dims: GQA, seed: 300 + n, scale }, [SPLITS, {}]);
    await expectAccurate({ dims: GQA, seed: 320, scale: 1e30, softcap: 1e-3 }, [SPLITS]);
    await expectAccurate({ dims: GQA, seed: 321, scale: -1e3, softcap: 50 }, [SPLITS]);
    await expectAccurate({ dims: MHA, seed: 322, scale: 1e30 }, [SPLITS]);
  }, COMPILE_HEAVY_MS);

  const SLOPES = [[0, 0, 0, 0], [1e-30, 1e-30, 1e-30, 1e-30], [1e3, 1e6, 1e20, 1e30], [-1e3, -1, -1e20, -1e30], [3e36, 0.5, -0.5, 1e-3]];
  gpuTest(`ALiBi slopes ${SLOPES.map(s => `[${s}]`).join(', ')}; with causal and a window`, async () => {
    for (const [n, slopes] of SLOPES.entries()) {
      const c: CaseSpec = { dims: GQA, seed: 400 + n, alibi: true };
      await expectAccurate(c, [SPLITS], { ...caseData(c), slopes: Float32Array.from(slopes) });
    }
    for (const [n, slopes] of SLOPES.slice(2).entries()) {
      const c: CaseSpec = { dims: GQA, seed: 410 + n, alibi: true, causal: true, windowSize: [150, 0] };
      await expectAccurate(c, [SPLITS], { ...caseData(c), slopes: Float32Array.from(slopes) });
    }
    const c: CaseSpec = { dims: MHA, seed: 420, alibi: true };
    await expectAccurate(c, [SPLITS], { ...caseData(c), slopes: Float32Array.from([1e30, -1e30]) });
  }, COMPILE_HEAVY_MS);

  const RATES = [1e-12, 1e-6, 0.5, 0.999, 1 - 1e-6, 1 - 2 ** -32];
  gpuTest(`dropout rates ${RATES.join(', ')}; seeds 0 and 2^32 - 1`, async () => {
    for (const [n, dropoutRate] of RATES.entries()) await expectAccurate({ dims: GQA, seed: 500 + n, dropoutRate }, [SPLITS]);
    await expectAccurate({ dims: GQA, seed: 0, dropoutRate: 0.3 }, [SPLITS]);
    await expectAccurate({ dims: GQA, seed: 2 ** 32 - 1, dropoutRate: 0.3 }, [SPLITS]);
    await expectAccurate({ dims: MHA, seed: 510, dropoutRate: 1 - 1e-6 }, [SPLITS]);
  }, COMPILE_HEAVY_MS);

  gpuTest('masks that hide whole rows, whole splits, all but one key, everything: empty rows give out 0, logsumexp -Infinity', async () => {
    const full = (shape: typeof GQA) => [shape.batch, shape.heads, shape.seqQ, shape.seqK];
    const cases: Array<{ c: CaseSpec; keep: (...index: number[]) => boolean; emptyRows: number }> = [
      // Keys 80..239 (splits 1 and 2) hidden from every row; rows (0, 1, 0) and (1, 3, 2) hidden
      // entirely; row (1, 0, 1) keeps key 5 alone; the rest random.
      { c: { dims: GQA, seed: 600, maskShape: full(GQA) }, emptyRows: 2,
        keep: (b, h, i, j) => !(j >= 80 && j < 240) && !(b === 0 && h === 1 && i === 0) && !(b === 1 && h === 3 && i === 2) &&
                              (b === 1 && h === 0 && i === 1 ? j === 5 : (j * 7 + i * 3 + h) % 4 !== 0) },
      // One key block inside split 1 (splits 0, 2, 3 hidden), broadcast over batch, heads and rows.
      { c: { dims: GQA, seed: 601, maskShape: [GQA.seqK] }, emptyRows: 0, keep: j => j >= 150 && j < 160 },
      // Only the last key of split 0.
      { c: { dims: GQA, seed: 602, maskShape: [1, 1, GQA.seqK] }, emptyRows: 0, keep: (_, __, j) => j === 79 },
      // Everything hidden.
      { c: { dims: GQA, seed: 603, maskShape: [1] }, emptyRows: GQA.batch * GQA.heads * GQA.seqQ, keep: () => false },
      // Whole rows hidden by a per-row mask [B, H, seqQ, 1].
      { c: { dims: GQA, seed: 604, maskShape: [GQA.batch, GQA.heads, GQA.seqQ, 1] }, emptyRows: 12, keep: (b, h, i) => (b + h + i) % 2 === 0 },
      // MHA: head 1 hidden; head 0 keeps keys of split 3 only.
      { c: { dims: MHA, seed: 605, maskShape: full(MHA) }, emptyRows: 1, keep: (_, h, __, j) => h === 0 && j >= 240 },
      // Head dim 4, one lane a key (splits of 96 keys): splits 1 and 2 hidden, and rows (b, h, h % 3).
      { c: { dims: GQA1, seed: 607, maskShape: full(GQA1) }, emptyRows: 8,
        keep: (_, h, i, j) => i !== h % 3 && !(j >= 96 && j < 288) },
    ];
    for (const { c, keep, emptyRows } of cases) {
      const d = { ...caseData(c), mask: maskOf(c, keep) };
      expect(await expectAccurateWithEmptyRows(c, [SPLITS, { ...SMALL, numSplits: 1 }, {}], d)).toBe(emptyRows);
    }
    // A window that keeps only the diagonal key and a mask that hides it: every row empty.
    const c: CaseSpec = { dims: GQA, seed: 606, windowSize: [0, 0], maskShape: [GQA.seqK] };
    expect(await expectAccurateWithEmptyRows(c, [SPLITS], { ...caseData(c), mask: maskOf(c, j => j < OFF) }))
        .toBe(GQA.batch * GQA.heads * GQA.seqQ);
  }, COMPILE_HEAVY_MS);

  gpuTest('sequence ranges of length 0 and 1 (padded and packed) with extreme options', async () => {
    const sets: Array<{ c: Omit<CaseSpec, 'dims' | 'seed'>; layout: 'padded' | 'packed'; lensQ: number[]; lensK: number[] }> = [
      { c: { causal: true, softcap: 1e-3 }, layout: 'padded', lensQ: [0, 1, 3], lensK: [300, 0, 1] },
      { c: { windowSize: [0, 0], alibi: true }, layout: 'padded', lensQ: [1, 3, 3], lensK: [1, 2, 300] },
      { c: { causal: true, dropoutRate: 1 - 1e-6, scale: 1e3 }, layout: 'padded', lensQ: [3, 0, 1], lensK: [0, 0, 81] },
      { c: { causal: true, windowSize: [WIDE, 0], softcap: 3e38 }, layout: 'packed', lensQ: [1, 1, 3], lensK: [0, 1, 300] },
      { c: { windowSize: [0, 0], alibi: true, scale: -1e3 }, layout: 'packed', lensQ: [3, 1, 2], lensK: [2, 300, 1] },
    ];
    for (const [n, { c: options, layout, lensQ, lensK }] of sets.entries()) {
      const c: CaseSpec = { dims: { ...GQA, batch: 3 }, seed: 700 + n, ...options };
      const d = caseData(c);
      if (d.slopes) d.slopes = Float32Array.from([1e20, 1, -1e20, 1e-30]);
      const label = `${layout} ${describeCase(c)} lensQ ${lensQ} lensK ${lensK}`;
      setDecodeOverride({ mode: 'off' });
      const onePass = await rangedRun(c, d, lensQ, lensK, layout);
      setDecodeOverride({ mode: 'on', ...SPLITS });
      const before = decodeCalls();
      const { result: { got, want }, programs } = await withProgramsRun(() => rangedRun(c, d, lensQ, lensK, layout));
      setDecodeOverride({});
      expect([decodeCalls() - before, programs.filter(isSubgroupSplit).length]).toEqual([1, 1]);
      expect(takeUncapturedErrors()).toEqual([]);
      expectClose(label, got, want);
      expectClose(`${label} against the one-pass kernel`, got, onePass.got);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('4 lanes a key, headDimV 16 < headDim 32: a window of 0 keys, scales ±1e30, softcap 1e-3, slopes ±1e30, ' +
          'dropout 1 - 1e-6, masks hiding splits and rows', async () => {
    const slopes = Float32Array.from([1e30, -1e30, 1e3, -1e3, 0, 1e-30, 3e36, 1]);
    const cases: Array<{ c: CaseSpec; d?: Partial<CaseData>; emptyRows: number }> = [
      { c: { dims: GQA4, seed: 900, windowSize: [0, 0] }, emptyRows: 0 },
      { c: { dims: GQA4, seed: 901, scale: 1e30 }, emptyRows: 0 },
      { c: { dims: GQA4, seed: 902, scale: -1e30, softcap: 1e-3 }, emptyRows: 0 },
      { c: { dims: GQA4, seed: 903, alibi: true, causal: true }, d: { slopes }, emptyRows: 0 },
      { c: { dims: GQA4, seed: 904, dropoutRate: 1 - 1e-6 }, emptyRows: 0 },
    ];
    const keysOfSplit1: CaseSpec = { dims: GQA4, seed: 905, maskShape: [GQA4.seqK] };
    cases.push({ c: keysOfSplit1, d: { mask: maskOf(keysOfSplit1, j => j >= 150 && j < 160) }, emptyRows: 0 });
    const rowsHidden: CaseSpec = { dims: GQA4, seed: 906, maskShape: [1, GQA4.heads, GQA4.seqQ, GQA4.seqK] };
    cases.push({ c: rowsHidden, d: { mask: maskOf(rowsHidden, (_, h, i, j) => h % 3 !== i && j >= 240) }, emptyRows: 6 });
    for (const { c, d, emptyRows } of cases) {
      expect(await expectAccurateWithEmptyRows(c, [SPLITS], { ...caseData(c), ...d })).toBe(emptyRows);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('128 splits of 16 keys, nearly all empty: a window of 0 keys, a mask keeping 3 keys of head 0 and none of head 1, ' +
          'causal with slopes ±1e30', async () => {
    const masked: CaseSpec = { dims: LONG, seed: 950, maskShape: [1, LONG.heads, 1, LONG.seqK] };
    const cases: Array<{ c: CaseSpec; d?: Partial<CaseData>; emptyRows: number }> = [
      { c: { dims: LONG, seed: 951, windowSize: [0, 0] }, emptyRows: 0 },
      { c: masked, d: { mask: maskOf(masked, (_, h, __, j) => h === 0 && (j === 0 || j === 1000 || j === 2047)) }, emptyRows: 1 },
      { c: { dims: LONG, seed: 952, alibi: true, causal: true }, d: { slopes: Float32Array.from([1e30, -1e30]) }, emptyRows: 0 },
    ];
    for (const { c, d, emptyRows } of cases) {
      expect(await expectAccurateWithEmptyRows(c, [MANY], { ...caseData(c), ...d })).toBe(emptyRows);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('NaN and ±Infinity in keys of masked splits, outside a window and at its only key', async () => {
    const found: string[] = [];
    const put = (x: Float32Array, width: number, heads: number, at: Array<[number, number, number]>, value: number) => {
      for (const [b, j, h] of at) x[((b * GQA.seqK + j) * heads + h) * width] = value;
    };
    // Window [0, 0]: key 298 is row 1's only key (NaN there: that row NaN); keys 10 and 120 are in
    // splits no row sees (either 0 * NaN = NaN or skipped).
    const c1: CaseSpec = { dims: GQA, seed: 800, windowSize: [0, 0] };
    // Mask hiding splits 1 and 2 (keys 80..239), with +Inf and NaN in them, and -Inf in a kept key.
    const c2: CaseSpec = { dims: GQA, seed: 801, maskShape: [GQA.seqK] };
    for (const [c, where, at, value] of [
      [c1, 'k', [[0, OFF + 1, 0], [1, 10, 1]], NaN], [c1, 'v', [[0, 120, 0], [1, OFF + 1, 1]], Infinity],
      [c2, 'k', [[0, 100, 0], [1, 200, 1], [0, 20, 1]], Infinity], [c2, 'v', [[0, 90, 1], [1, 250, 0]], NaN],
      [c2, 'k', [[1, 5, 0]], -Infinity],
    ] as Array<[CaseSpec, 'k' | 'v', Array<[number, number, number]>, number]>) {
      const finite = c.maskShape ? { ...caseData(c), mask: maskOf(c, j => j < 80 || j >= 240) } : caseData(c);
      const d = { ...finite, [where]: Float32Array.from(finite[where]) };
      put(d[where], where === 'k' ? GQA.headDim : GQA.headDimV, GQA.kvHeads, at, value);
      const got = await forward(c, d, { mode: 'on', ...SPLITS });
      expect([got.decoded, got.subgroupPasses]).toEqual([1, 1]);
      found.push(...nonFiniteProblems(c, finite, d, got, where));
      // Each case puts a non-finite value where some row sees it.
      if (Array.from(got.out).every(Number.isFinite)) found.push(`${where}: ${describeCase(c)}: every output finite`);
    }
    expect(takeUncapturedErrors()).toEqual([]);
    expect(found).toEqual([]);
  }, COMPILE_HEAVY_MS);
});
