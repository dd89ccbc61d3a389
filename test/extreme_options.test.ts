/**
 * Option values at the ends of what the op accepts, on every backend of this process (WebGPU, the
 * cpu kernel, the blockwise fallback), against the float64 reference:
 *  - softcap from 1e-3 to 3e38: float32 results stay under 1e-5 relative error (WebGPU's tanh
 *    lost digits for small arguments: 2.3e-5 at softcap 1e3, 1.5e-2 at 1e6, garbage at 1e8);
 *  - windowSize entries near and past 2^31: no int32 wrap (WebGPU gave all-zero outputs for
 *    [-1, 2^31 - 1], dK = dV = 0 for [2^31 - 1, -1], causal for [-1, 2^32]).
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { caseData, CaseSpec, compare, describeCase, F32_TOLERANCE, reference, runOp } from './helpers/attention_case';
import { CPU_PATHS, registerFallbackBackend } from './helpers/backends';
import { SOFTCAPS, WIDE_WINDOWS } from './helpers/extreme_values';
import { gpuTest, takeUncapturedErrors, useBackendForSuite } from './helpers/webgpu_env';

registerFallbackBackend();

const COMPILE_HEAVY_MS = 600000;
const dims = { batch: 1, seqQ: 13, seqK: 17, heads: 2, kvHeads: 1, headDim: 8, headDimV: 8 };

/** Runs the cases and returns every error at or over its tolerance, with its case. */
async function errorsOverTolerance(cases: CaseSpec[]): Promise<string[]> {
  const over: string[] = [];
  for (const c of cases) {
    const d = caseData(c);
    for (const [k, e] of Object.entries(compare(await runOp(c, d), reference(c, d)))) {
      const tol = k === 'out' || k === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads;
      if (!(e < tol)) over.push(`${describeCase(c)}: ${k} relative error ${e} >= ${tol}`);
    }
  }
  return over;
}

describe.each([{ name: 'webgpu', backend: 'webgpu' }, ...CPU_PATHS])('extreme option values on the $name', ({ backend }) => {
  const run = backend === 'webgpu' ? gpuTest : test;
  useBackendForSuite(backend);

  run(`softcap ${SOFTCAPS.join(', ')}: forward < 1e-5, gradients < 1e-4`, async () => {
    const cases = SOFTCAPS.map((softcap, i): CaseSpec => ({ dims, seed: 40 + i, softcap, causal: i % 2 === 1 }));
    expect(await errorsOverTolerance(cases)).toEqual([]);
    if (backend === 'webgpu') expect(takeUncapturedErrors()).toEqual([]);
  }, COMPILE_HEAVY_MS);

  run(`windowSize ${WIDE_WINDOWS.map(w => `[${w}]`).join(', ')}: as unbounded where wider than the sequences`, async () => {
    const cases = WIDE_WINDOWS.map((windowSize, i): CaseSpec => ({ dims, seed: 60 + i, windowSize }));
    expect(await errorsOverTolerance(cases)).toEqual([]);
    if (backend === 'webgpu') expect(takeUncapturedErrors()).toEqual([]);
  }, COMPILE_HEAVY_MS);
});
