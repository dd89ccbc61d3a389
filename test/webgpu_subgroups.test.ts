/**
 * The opt-in subgroup path (kernels/webgpu/subgroups.ts): useWebGPUWithSubgroups replaces the
 * 'webgpu' backend, so it has its own file. On SwiftShader (CI) subgroups have 4 lanes, so tile
 * geometries whose rows span 2, 4 and 8 threads cover rows reduced wholly by shuffles and rows
 * that need shuffles plus workgroup memory.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { useWebGPUWithSubgroups } from '../src/index';
import { subgroupMinSizeOf } from '../kernels/webgpu/subgroups';
import { rowShuffleWidth } from '../kernels/webgpu/wgsl_fragments';
import { setTileConfigOverride, TileConfig } from '../kernels/webgpu/tiles';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { CaseSpec, caseData, compare, describeCase, F32_TOLERANCE, reference, runOp } from './helpers/attention_case';
import { destroyWebGPU, gpuTest, HAS_GPU, takeUncapturedErrors } from './helpers/webgpu_env';

const COMPILE_HEAVY_MS = 600000;
const tiles = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number): TileConfig =>
    ({ rows, cols, rowsPerThread, colsPerThread, unroll: 1 });

/** Asserts forward < 1e-5 and gradients < 1e-4 relative error against the float64 reference. */
async function expectMatchesReference(c: CaseSpec) {
  const d = caseData(c);
  const errs = compare(await runOp(c, d), reference(c, d));
  expect(takeUncapturedErrors()).toEqual([]);
  for (const [k, e] of Object.entries(errs)) {
    const tol = k === 'out' || k === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads;
    if (!(e < tol)) throw new Error(`${describeCase(c)}: ${k} relative error ${e} >= ${tol}\n${JSON.stringify(errs)}`);
  }
}

const pipelineKeys = () => Object.keys((tf.backend() as unknown as { pipelineCache: object }).pipelineCache);

describe('rowShuffleWidth: how many threads of a row reduce by shuffles', () => {
  const threadCols = (n: number) => tiles(8, 4 * n, 1, 4);
  test('0 (no subgroups) means workgroup memory only', () => {
    expect(rowShuffleWidth(threadCols(8), 0)).toBe(1);
  });
  test('never more than the smallest subgroup, never more than the row', () => {
    expect(rowShuffleWidth(threadCols(8), 4)).toBe(4);
    expect(rowShuffleWidth(threadCols(8), 32)).toBe(8);
    expect(rowShuffleWidth(threadCols(2), 4)).toBe(2);
    expect(rowShuffleWidth(threadCols(1), 32)).toBe(1);
  });
  test('only aligned runs: the largest power of two dividing the row', () => {
    expect(rowShuffleWidth(threadCols(6), 32)).toBe(2);
  });
});

describe('useWebGPUWithSubgroups changes nothing where it cannot be done', () => {
  test('an adapter without the subgroups feature', async () => {
    const saved = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
    const before = tf.getBackend();
    Object.defineProperty(globalThis, 'navigator', {
      value: { gpu: { requestAdapter: async () => ({ features: new Set<string>(), info: {}, limits: {} }) } },
      configurable: true, writable: true,
    });
    try {
      expect(await useWebGPUWithSubgroups()).toBe(false);
    } finally {
      if (saved) Object.defineProperty(globalThis, 'navigator', saved);
      else delete (globalThis as { navigator?: unknown }).navigator;
    }
    expect(tf.getBackend()).toBe(before);
  });
});

describe('with a subgroups device, forward and gradients match the float64 reference', () => {
  let minSize = 0;
  if (HAS_GPU) {
    beforeAll(async () => {
      expect(await useWebGPUWithSubgroups()).toBe(true);
      minSize = subgroupMinSizeOf(tf.backend() as WebGPUBackend);
    });
    afterAll(() => { setTileConfigOverride({}); destroyWebGPU(); });
  }

  gpuTest('the backend is the subgroups device and the adapter\'s minimum subgroup size is used', async () => {
    expect(tf.getBackend()).toBe('webgpu');
    const adapter = await navigator.gpu.requestAdapter();
    expect(adapter!.features.has('subgroups')).toBe(true);
    expect(minSize).toBe((adapter!.info as { subgroupMinSize?: number }).subgroupMinSize ?? 4);
  });

  const dims = (seqQ: number, seqK: number, heads: number, kvHeads: number, batch = 1) =>
      ({ batch, seqQ, seqK, heads, kvHeads, headDim: 8, headDimV: 8 });
  // One head-dim pair, so each geometry compiles one program per option set.
  const cases: CaseSpec[] = [
    { dims: dims(21, 30, 4, 2, 2), seed: 21, causal: true },                              // causal, GQA, batch 2
    { dims: dims(19, 26, 3, 1), seed: 22, maskShape: [1, 3, 19, 26], dropoutRate: 0.3 },  // mask, dropout, GQA
    { dims: dims(33, 17, 2, 2), seed: 23, windowSize: [5, 2], softcap: 2.5, alibi: true },
    { dims: dims(40, 9, 1, 1), seed: 24, causal: true },                                 // most rows fully masked
  ];
  // Threads per row (cols / colsPerThread): 2 and 4 fit a 4-lane subgroup; 8 needs shuffles plus
  // workgroup memory there (and on the H100, 32 lanes, shuffles only).
  const geometries: Array<[string, TileConfig]> = [
    ['2 threads per row', tiles(8, 8, 1, 4)],
    ['4 threads per row, 2 rows each', tiles(16, 16, 2, 4)],
    ['8 threads per row', tiles(8, 16, 1, 2)],
  ];
  for (const [name, t] of geometries) {
    gpuTest(`${name}: causal, GQA, mask, dropout, window, softcap, ALiBi`, async () => {
      setTileConfigOverride({ forward: t, dq: t, dkdv: t });
      for (const c of cases) await expectMatchesReference(c);
      // The subgroup program ran, not the workgroup-memory one.
      const width = rowShuffleWidth(t, minSize);
      expect(width).toBeGreaterThan(1);
      expect(pipelineKeys().some(k => k.startsWith('flashAttentionForward') &&
                                      k.includes(`_rows=${t.rows}_`) && k.includes(`_shuffleWidth=${width}`))).toBe(true);
    }, COMPILE_HEAVY_MS);
  }
});
