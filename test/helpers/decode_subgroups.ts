/**
 * The subgroup split pass's test machinery, shared by its suites (webgpu_decode_subgroups*.test.ts,
 * layer_decode_subgroups.test.ts): the opt-in subgroups device for a describe block, the programs a
 * call ran (so a test knows that pass ran, not another), the forward with the decode hook set, and
 * the check against the float64 reference and the one-pass kernel.
 */
import * as tf from '@tensorflow/tfjs';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { useWebGPUWithSubgroups } from '../../src/index';
import { decodeCalls, DecodeOverride, setDecodeOverride } from '../../kernels/webgpu/flash_decode_webgpu';
import { subgroupMinSizeOf } from '../../kernels/webgpu/subgroups';
import { CaseData, caseData, CaseSpec, describeCase, F32_TOLERANCE, reference, relError, runOp } from './attention_case';
import { Forward } from './decode_case';
import { destroyWebGPU, gpuBytesInUse, HAS_GPU, takeUncapturedErrors, useWebGPU, withProgramsRun } from './webgpu_env';

/** A small workgroup (4 lane groups on 4-lane subgroups) and 2 keys a step: many steps and splits on short sequences. */
export const SMALL: DecodeOverride = { tiles: { threads: 16 }, unroll: 2 };

export const dims = (batch: number, seqQ: number, seqK: number, heads: number, kvHeads: number, headDim = 8, headDimV = headDim) =>
    ({ batch, seqQ, seqK, heads, kvHeads, headDim, headDimV });

/**
 * Runs the enclosing describe block on the subgroups device (useWebGPUWithSubgroups, with the
 * uncaptured-error log) and frees it afterwards. Returns a getter of the device's smallest subgroup.
 */
export function useSubgroupsDevice(): () => number {
  let minSize = 0;
  if (HAS_GPU) {
    beforeAll(async () => {
      expect(await useWebGPUWithSubgroups()).toBe(true);
      await useWebGPU();
      minSize = subgroupMinSizeOf(tf.backend() as WebGPUBackend);
    });
    afterAll(() => { setDecodeOverride({}); destroyWebGPU(); });
  }
  return () => minSize;
}

/** The subgroup split pipelines compiled so far (their shader keys). */
export const subgroupPipelines = () => Object.keys((tf.backend() as unknown as { pipelineCache: object }).pipelineCache)
    .filter(isSubgroupSplit);

/** Whether a shader key is the subgroup split pass's (a split pass with lanes per key > 0). */
export const isSubgroupSplit = (key: string) => key.startsWith('flashDecodeSplit') && !key.includes('_subgroupLanes=0_');

export interface DecodeForward extends Forward {
  /** Calls of the split-KV kernel. */
  decoded: number;
  /** Split-pass programs run that were the subgroup pass. */
  subgroupPasses: number;
}

/**
 * The forward with the decode hook set as given; the split-KV kernel's calls and subgroup passes
 * counted; no tensor or GPU buffer left behind.
 */
export async function forward(c: CaseSpec, d: CaseData, o: DecodeOverride): Promise<DecodeForward> {
  setDecodeOverride(o);
  const before = decodeCalls(), tensors = tf.memory().numTensors, bytes = gpuBytesInUse();
  try {
    const { result: { out, lse }, programs } = await withProgramsRun(() => runOp(c, d, false));
    expect([tf.memory().numTensors, gpuBytesInUse()]).toEqual([tensors, bytes]);
    return { out, lse, decoded: decodeCalls() - before, subgroupPasses: programs.filter(isSubgroupSplit).length };
  } finally {
    setDecodeOverride({});
  }
}

/**
 * The subgroup pass (each hook in turn, forced on) against the float64 reference and the one-pass
 * kernel: forward < 1e-5 (absolute where the reference is 0, -Infinity matched exactly); and that
 * pass ran (one decode call, one subgroup split program). Returns the subgroup pass's results.
 */
export async function expectAccurate(c: CaseSpec, runs: DecodeOverride[] = [{}], d: CaseData = caseData(c)): Promise<Forward[]> {
  const want = reference(c, d);
  const onePass = await forward(c, d, { mode: 'off' });
  expect(onePass.decoded).toBe(0);
  const results: Forward[] = [];
  for (const o of runs) {
    const got = await forward(c, d, { mode: 'on', ...o });
    expect(takeUncapturedErrors()).toEqual([]);
    expect([got.decoded, got.subgroupPasses]).toEqual([1, 1]);
    const errs = {
      out: relError(got.out, want.out), lse: relError(got.lse, want.lse),
      outVsOnePass: relError(got.out, onePass.out), lseVsOnePass: relError(got.lse, onePass.lse),
    };
    for (const [k, e] of Object.entries(errs)) {
      if (!(e < F32_TOLERANCE.forward)) {
        throw new Error(`${describeCase(c)} ${JSON.stringify(o)}: ${k} relative error ${e}\n${JSON.stringify(errs)}`);
      }
    }
    results.push(got);
  }
  return results;
}
