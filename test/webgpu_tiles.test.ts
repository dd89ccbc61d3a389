/**
 * The tile geometries that headDim 128 gets on a 48 KiB device (forward 32 x 16 at 2 x 2 scores
 * per thread, backward 16 x 16 at 1 x 2), forced here on a small head dim so SwiftShader can run
 * them: forward and gradients against the float64 reference.
 */
import { setTileConfigOverride, TileConfig } from '../kernels/webgpu/tiles';
import { CaseSpec, caseData, compare, F32_TOLERANCE, reference, runOp } from './helpers/attention_case';
import { destroyWebGPU, gpuTest, useWebGPU, HAS_GPU } from './helpers/webgpu_env';

const tile = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number): TileConfig =>
  ({ rows, cols, rowsPerThread, colsPerThread, unroll: 2 });

describe('the headDim-128 tile geometries', () => {
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
    for (const [forward, c] of cases) {
      setTileConfigOverride({ forward });
      const d = caseData(c);
      const e = compare(await runOp(c, d, false), reference(c, d), false);
      expect(Math.max(e.out, e.lse)).toBeLessThan(F32_TOLERANCE.forward);
    }
  }, 300000);
});
