/**
 * The WebGPU kernels (kernels/webgpu/) against the float64 reference and against the cpu
 * backend's kernel, on Dawn (SwiftShader in CI). Pipeline compiles dominate the run time here, so
 * cases are grouped to reuse compiled variants: the option combinations share one small tile
 * geometry and head dim; tile-boundary and head-dim cases use the geometry this device picks.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { setTileConfigOverride, TileConfig } from '../kernels/webgpu/tiles';
import { checkBindingSizes, DeviceLimits } from '../kernels/webgpu/program';
import {
  CaseSpec, caseData, compare, comboCase, describeCase, F32_TOLERANCE, OPTION_NAMES,
  optionPowerset, OpResult, reference, relError, runOp,
} from './helpers/attention_case';
import {
  destroyWebGPU, gpuBytesInUse, gpuTest, HAS_GPU, takeUncapturedErrors, useWebGPU,
} from './helpers/webgpu_env';

/**
 * Small geometries: cheap to compile on SwiftShader (compile time grows with the unrolled
 * per-thread work), and many tiles even for short sequences.
 */
const tiles = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number): TileConfig =>
    ({ rows, cols, rowsPerThread, colsPerThread, unroll: 1 });
const allPasses = (t: TileConfig) => ({ forward: t, dq: t, dkdv: t });
const TINY = allPasses(tiles(8, 8, 1, 4));
/** Wide head dims: more thread columns (fewer accumulators each), 4-row tiles to fit 32 KiB. */
const TINY_WIDE = allPasses(tiles(4, 8, 1, 2));
/** Pipeline compiles on SwiftShader take seconds each, more on a loaded CI machine. */
const COMPILE_HEAVY_MS = 600000;

/** Runs a case on webgpu and on the cpu kernel; returns both results and the reference. */
async function runOnBoth(c: CaseSpec, grads = true) {
  const d = caseData(c);
  const gpu = await runOp(c, d, grads);
  await tf.setBackend('cpu');
  const cpu = await runOp(c, d, grads);
  await tf.setBackend('webgpu');
  return { gpu, cpu, want: reference(c, d) };
}

function cpuDifferences(gpu: OpResult, cpu: OpResult, grads: boolean): Record<string, number> {
  const keys = grads ? ['out', 'lse', 'dq', 'dk', 'dv'] as const : ['out', 'lse'] as const;
  return Object.fromEntries(keys.map(k => [k, relError(gpu[k], cpu[k])]));
}

/** Asserts forward < 1e-5 and gradients < 1e-4 relative error, against reference and cpu. */
function expectAccurate(c: CaseSpec, r: Awaited<ReturnType<typeof runOnBoth>>, grads = true) {
  expect(takeUncapturedErrors()).toEqual([]);
  const errs = { reference: compare(r.gpu, r.want, grads), cpu: cpuDifferences(r.gpu, r.cpu, grads) };
  for (const against of Object.values(errs)) {
    for (const [k, e] of Object.entries(against)) {
      const tol = k === 'out' || k === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads;
      if (!(e < tol)) throw new Error(`${describeCase(c)}: ${k} relative error ${e} >= ${tol}\n${JSON.stringify(errs)}`);
    }
  }
}

if (HAS_GPU) {
  beforeAll(async () => { await useWebGPU(); });
  afterAll(() => { setTileConfigOverride({}); destroyWebGPU(); });
}

describe('every option combination matches the reference and the cpu kernel', () => {
  beforeAll(() => setTileConfigOverride(TINY));
  afterAll(() => setTileConfigOverride({}));
  // causal and window compile to the same switch, so the 64 subsets give 32 distinct programs.
  const subsets = optionPowerset();
  for (const withMask of [false, true]) {
    const group = subsets.filter(s => s.has('mask') === withMask);
    gpuTest(`${group.length} subsets of ${OPTION_NAMES.filter(n => n !== 'mask').join(', ')}` +
            `${withMask ? ', with mask' : ''}: forward, logsumexp, dq, dk, dv`, async () => {
      for (const set of group) {
        const c = comboCase(set, 1000 + subsets.indexOf(set));
        c.dims.headDim = 8; c.dims.headDimV = 8;   // one head-dim pair: each subset compiles once
        expectAccurate(c, await runOnBoth(c));
      }
    }, COMPILE_HEAVY_MS);
  }
});

describe('tile boundaries, sequence lengths and head dims (the device-chosen tiles)', () => {
  const dims = (seqQ: number, seqK: number, headDim = 16, headDimV = headDim, heads = 2, kvHeads = 1, batch = 1) =>
      ({ batch, seqQ, seqK, heads, kvHeads, headDim, headDimV });
  // SwiftShader (32 KiB, 256 invocations) picks 32-row forward tiles, the 64 x 64 dQ tile and
  // the 64 x 32 dK/dV tile for these head dims.
  const cases: CaseSpec[] = [
    { dims: dims(1, 1), seed: 1 },
    { dims: dims(31, 33), seed: 2 },
    { dims: dims(33, 31), seed: 3, causal: true },
    { dims: dims(65, 64), seed: 4 },
    { dims: dims(64, 129, 16, 16, 4, 2, 2), seed: 5, causal: true },
    { dims: dims(1, 70), seed: 6, causal: true },
    { dims: dims(70, 1), seed: 7, causal: true },   // most rows fully masked: out 0, lse -Infinity
  ];
  gpuTest('seq = tile +- 1, seq 1, seqQ != seqK, GQA, batch 2', async () => {
    for (const c of cases) expectAccurate(c, await runOnBoth(c));
  }, COMPILE_HEAVY_MS);
  gpuTest('headDim 64', async () => {
    const c: CaseSpec = { dims: dims(40, 33, 64, 64, 2, 2), seed: 9, causal: true };
    expectAccurate(c, await runOnBoth(c));
  }, COMPILE_HEAVY_MS);
});

describe('head dims 1 and 256, and headDimV != headDim (small tiles)', () => {
  afterAll(() => setTileConfigOverride({}));
  gpuTest('headDim 1', async () => {
    setTileConfigOverride(TINY);
    const c: CaseSpec = { dims: { batch: 1, seqQ: 9, seqK: 12, heads: 2, kvHeads: 1, headDim: 1, headDimV: 1 }, seed: 8 };
    expectAccurate(c, await runOnBoth(c));
  }, COMPILE_HEAVY_MS);
  gpuTest('headDim 256 and headDim 3 with headDimV 256', async () => {
    setTileConfigOverride(TINY_WIDE);
    for (const c of [{ dims: { batch: 1, seqQ: 5, seqK: 7, heads: 1, kvHeads: 1, headDim: 256, headDimV: 256 }, seed: 10 },
                     { dims: { batch: 1, seqQ: 6, seqK: 9, heads: 1, kvHeads: 1, headDim: 3, headDimV: 256 }, seed: 11 }]) {
      expectAccurate(c, await runOnBoth(c));
    }
  }, COMPILE_HEAVY_MS);
});

describe('the large-device tile geometry (64-row tiles) on a small head dim', () => {
  // The H100 defaults use 512 threads in the forward pass; SwiftShader allows 256, so its forward
  // runs the same 64 x 32 tile with 4 columns per thread instead of 2. The H200's backward tiles
  // (dQ 128 x 64 at 8 x 4 per thread, dK/dV 64 x 64 at 4 x 4) need 42 KiB of workgroup memory;
  // SwiftShader has 32 KiB, so the same register blocks run here with half as many columns.
  beforeAll(() => setTileConfigOverride({
    forward: { rows: 64, cols: 32, rowsPerThread: 2, colsPerThread: 4, unroll: 2 },
    dq: { rows: 128, cols: 32, rowsPerThread: 8, colsPerThread: 4, unroll: 1, depth: 8 },
    dkdv: { rows: 32, cols: 64, rowsPerThread: 4, colsPerThread: 4, unroll: 1, depth: 16 },
  }));
  afterAll(() => setTileConfigOverride({}));
  gpuTest('64x32 forward, 128x32 dQ and 32x64 dK/dV tiles, causal with seqQ != seqK and GQA', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 70, seqK: 97, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8 }, seed: 12, causal: true };
    expectAccurate(c, await runOnBoth(c));
  }, COMPILE_HEAVY_MS);
  gpuTest('several head-dim chunks with a partial last one (headDim 20, headDimV 36), window, GQA, past a block edge', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 130, seqK: 67, heads: 4, kvHeads: 2, headDim: 20, headDimV: 36 }, seed: 15,
                          windowSize: [40, 9] };
    expectAccurate(c, await runOnBoth(c));
  }, COMPILE_HEAVY_MS);
});

describe('backward is deterministic', () => {
  beforeAll(() => setTileConfigOverride(TINY));
  afterAll(() => setTileConfigOverride({}));
  gpuTest('same inputs give the same bits (GQA sums over the group in a fixed order)', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 40, seqK: 40, heads: 4, kvHeads: 1, headDim: 16, headDimV: 16 }, seed: 13, dropoutRate: 0.2 };
    const d = caseData(c);
    const [a, b] = [await runOp(c, d), await runOp(c, d)];
    for (const k of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
      expect(Buffer.from(a[k].buffer).equals(Buffer.from(b[k].buffer))).toBe(true);
    }
  }, COMPILE_HEAVY_MS);
});

describe('no leaks', () => {
  gpuTest('tensors and GPU buffers are flat across many forward and backward calls', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 20, seqK: 20, heads: 2, kvHeads: 1, headDim: 16, headDimV: 16 }, seed: 14, causal: true };
    const d = caseData(c);
    await runOp(c, d);                                   // compile and warm the buffer pools
    const before = { tensors: tf.memory().numTensors, bytes: gpuBytesInUse() };
    for (let i = 0; i < 5; i++) await runOp(c, d);
    // tf.grads leaves one tensor per call (tfjs-facts.md); nothing else may remain.
    expect(tf.memory().numTensors - before.tensors).toBeLessThanOrEqual(5);
    expect(gpuBytesInUse()).toBeLessThanOrEqual(before.bytes + 5 * 4 * 20 * 2 * 16);
  }, COMPILE_HEAVY_MS);
});

describe('work past the device limits is refused with a clear error', () => {
  const limits: DeviceLimits = {
    maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256,
    maxStorageBufferBindingSize: 1 << 20, maxComputeWorkgroupsPerDimension: 65535,
  };
  test('a binding over maxStorageBufferBindingSize', () => {
    expect(() => checkBindingSizes(limits, [['q', [1, 4096, 16, 64]]]))
        .toThrow(/^Error in flashAttention: q of shape \[1, 4096, 16, 64\] needs 16777216 bytes, more than .*maxStorageBufferBindingSize \(1048576\)/);
  });
});
