/**
 * What the WebGPU kernels must get right with variable lengths (issue 12) beyond test/varlen.test.ts
 * (every option combination on every backend): sequences that end on, inside and past 8-row
 * tiles, padding rows written even into reused buffers, and non-finite values in and out of the
 * lengths. Padded batches (seqLensQ/K) and packed sequences (flashAttentionVarlen) through the op
 * against the float64 reference run on each sequence alone (helpers/varlen_cases.ts), on Dawn
 * (SwiftShader in CI); every test checks forward, logsumexp, dq, dk and dv.
 */
import * as tf from '@tensorflow/tfjs';
import { CaseData, F32_TOLERANCE, OpResult, relError } from './helpers/cases';
import {
  describeVarlen, runVarlenOp, sequenceRows, varlenCase, varlenData, varlenReference, VarlenLayout, VarlenSpec,
} from './helpers/varlen_case';
import { setTileConfigOverride } from '../kernels/webgpu/tiles';
import { gpuTest, takeUncapturedErrors, TINY_STAGED_TILES, TINY_TILES, useBackendForSuite } from './helpers/webgpu_env';

/** Pipeline compiles on SwiftShader take seconds each. */
const COMPILE_HEAVY_MS = 600000;

/** Relative error per output; NaN where the reference has NaN must be NaN, and is left out. */
function errors(got: OpResult, want: ReturnType<typeof varlenReference>): Record<string, number> {
  const keys = ['out', 'lse', 'dq', 'dk', 'dv'] as const;
  return Object.fromEntries(keys.map(key => {
    const g = got[key], w = want[key];
    if (g.length !== w.length) return [key, Infinity];
    const finite = (x: ArrayLike<number>) => Array.from(x, (v, i) => (Number.isNaN(w[i]) ? 0 : v));
    const nanMismatch = Array.from(w).some((v, i) => Number.isNaN(v) !== Number.isNaN(g[i]));
    return [key, nanMismatch ? Infinity : relError(finite(g), finite(w))];
  }));
}

function expectAccurate(c: VarlenSpec, got: OpResult, want: ReturnType<typeof varlenReference>) {
  expect(takeUncapturedErrors()).toEqual([]);
  const e = errors(got, want);
  for (const [key, err] of Object.entries(e)) {
    const tol = key === 'out' || key === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads;
    if (!(err < tol)) throw new Error(`${describeVarlen(c)}: ${key} relative error ${err} >= ${tol}\n${JSON.stringify(e)}`);
  }
}

async function checkCase(c: VarlenSpec, d: CaseData = varlenData(c)) {
  expectAccurate(c, await runVarlenOp(c, d), varlenReference(c, d));
}

/**
 * Leaves NaN-filled buffers of the sizes the kernels write in the backend's buffer pool, so the
 * case's outputs reuse them: a row a kernel fails to write (padding rows: 0, -Infinity, zero
 * gradients) shows as NaN instead of a fresh buffer's zeros.
 */
async function poisonBufferPool(c: VarlenSpec) {
  const { batch, heads, kvHeads, headDim, headDimV } = c.dims;
  const { rowsQ, rowsK } = sequenceRows(c);
  const floats = [rowsQ * heads * (headDimV + 1),           // out and logsumexp
                  2 * rowsQ * heads + 4 * batch,            // the backward's stats
                  rowsK * kvHeads * (headDim + headDimV),   // dk and dv
                  rowsQ * heads * headDim];                 // dq
  const poison = floats.map(n => tf.fill([n], NaN));
  await Promise.all(poison.map(t => t.data()));
  tf.dispose(poison);
  const flush = tf.add(tf.scalar(1), tf.scalar(1));   // a submit: disposed buffers return to the pool
  await flush.data();
  flush.dispose();
}

/** Rows of q (layout rows) past each sequence's length in a padded batch. */
function paddingRows(lens: number[], seqLen: number): number[] {
  return lens.flatMap((l, b) => Array.from({ length: seqLen - l }, (_, i) => b * seqLen + l + i));
}

function fillRows(x: Float32Array, rows: number[], width: number, value: number) {
  for (const r of rows) x.fill(value, r * width, (r + 1) * width);
}

/** A case with the given lengths; the other fields from varlenCase's random shape and options. */
function withLengths(c: VarlenSpec, lensQ: number[], lensK: number[], layout: VarlenLayout = c.layout): VarlenSpec {
  const batch = lensQ.length;
  const dims = layout === 'packed'
    ? { ...c.dims, batch, seqQ: Math.max(...lensQ), seqK: Math.max(...lensK) }
    : { ...c.dims, batch, seqQ: Math.max(c.dims.seqQ, ...lensQ), seqK: Math.max(c.dims.seqK, ...lensK) };
  return { ...c, layout, lensQ, lensK, dims, maskShape: undefined };
}

describe('WebGPU kernels with sequence lengths', () => {
  useBackendForSuite('webgpu');   // 8 x 8 tiles in every pass
  const one = (names: string[]) => new Set(names);

  // Both forward variants (the backward passes are the same programs in both).
  for (const [variant, forward] of [['tiled', TINY_TILES], ['staged', TINY_STAGED_TILES]] as const) {
    gpuTest(`${variant} forward: lengths on and around 8-row tile boundaries, seqQ != seqK, causal offsets of both signs`, async () => {
      setTileConfigOverride({ forward, dq: TINY_TILES, dkdv: TINY_TILES });
      try {
        const base = varlenCase(one([]), 7, 'padded');
        base.dims = { ...base.dims, heads: 4, kvHeads: 2, headDim: 8, headDimV: 8, seqQ: 17, seqK: 17 };
        await checkCase(withLengths(base, [0, 1, 7, 8, 9, 16, 17], [17, 9, 8, 7, 16, 1, 0]));
        const causal = { ...base, causal: true };
        await checkCase(withLengths(causal, [8, 9, 17, 3, 16], [17, 9, 8, 16, 3]));
        await checkCase(withLengths(causal, [9, 8, 17, 3, 16, 1, 0], [17, 9, 8, 16, 3, 0, 5], 'packed'));
        const options = { ...causal, alibi: true, dropoutRate: 0.3, softcap: 2 };
        await checkCase(withLengths(options, [9, 8, 17, 3, 16, 1, 0], [17, 9, 8, 16, 3, 0, 5], 'packed'));
      } finally {
        setTileConfigOverride({ forward: TINY_TILES, dq: TINY_TILES, dkdv: TINY_TILES });
      }
    }, COMPILE_HEAVY_MS);
  }

  gpuTest('buffers reused across shapes and layouts in one process: padding rows are written, not left over', async () => {
    const base = varlenCase(one(['causal']), 11, 'padded');
    base.dims = { ...base.dims, heads: 2, kvHeads: 1, headDim: 8, headDimV: 8 };
    const cases = [withLengths(base, [5, 0, 12], [12, 3, 7]), withLengths(base, [3, 17], [9, 2]),
                   withLengths(base, [4, 13, 1, 6], [6, 1, 13, 4], 'packed'), withLengths(base, [2, 9], [16, 9], 'packed'),
                   withLengths(base, [5, 0, 12], [12, 3, 7])];
    for (const c of cases) {
      await poisonBufferPool(c);
      await checkCase(c);
    }
  }, COMPILE_HEAVY_MS);

  gpuTest('NaN and Infinity in padding rows change nothing; NaN inside a sequence reaches only that sequence', async () => {
    const base = varlenCase(one([]), 13, 'padded');
    base.dims = { ...base.dims, heads: 2, kvHeads: 2, headDim: 8, headDimV: 8, seqQ: 12, seqK: 10 };
    const c = withLengths(base, [7, 9, 0, 12], [10, 4, 6, 9]);
    const { heads, kvHeads, headDim, headDimV, seqQ, seqK } = c.dims;
    const d = varlenData(c);
    const padQ = paddingRows(c.lensQ, seqQ), padK = paddingRows(c.lensK, seqK);
    fillRows(d.q, padQ, heads * headDim, NaN);
    fillRows(d.dy, padQ, heads * headDimV, Infinity);
    fillRows(d.k, padK, kvHeads * headDim, Infinity);
    fillRows(d.v, padK, kvHeads * headDimV, NaN);
    const finite = varlenReference(c, d);
    expect([finite.out, finite.lse.filter(Number.isFinite), finite.dq, finite.dk, finite.dv].every(
        x => Array.from(x).every(Number.isFinite))).toBe(true);
    await checkCase(c, d);
    // Key row 2 and query row 5 of sequence 1 (every pair is kept: no options): NaN reaches
    // sequence 1 only, and not its keys past lenK (4), in the key tile it shares with key 2.
    d.k[(1 * seqK + 2) * kvHeads * headDim] = NaN;
    d.q[(1 * seqQ + 5) * heads * headDim] = NaN;
    const poisoned = varlenReference(c, d);
    expect(poisoned.out.some(Number.isNaN)).toBe(true);
    expect(poisoned.out.subarray(0, seqQ * heads * headDimV).some(Number.isNaN)).toBe(false);
    expectAccurate(c, await runVarlenOp(c, d), poisoned);
  }, COMPILE_HEAVY_MS);
});
