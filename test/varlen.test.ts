/**
 * Variable-length sequences (issue 12) on every TypeScript backend: a padded batch with
 * flashAttention's seqLensQ/K and packed sequences with flashAttentionVarlen, against the float64
 * reference run on each sequence alone (helpers/varlen_cases.ts): forward, logsumexp and all
 * three gradients, random lengths including 0, 1 and full, every option combination, GQA,
 * seqQ != seqK; packed results equal running each sequence alone.
 */
import * as tf from '@tensorflow/tfjs';
import { flashAttention, flashAttentionVarlen } from '../src/index';
import {
  CaseSpec, caseData, F32_TOLERANCE, OPTION_NAMES, optionPowerset, OpResult, relError, runOp,
} from './helpers/attention_case';
import {
  cuSeqLens, describeVarlen, lengthsMask, runVarlenOp, sequenceRows, varlenCase, varlenData, varlenReference, VarlenSpec,
} from './helpers/varlen_case';
import { FALLBACK_BACKEND, registerFallbackBackend } from './helpers/backends';
import { gpuTest, takeUncapturedErrors, useBackendForSuite } from './helpers/webgpu_env';

registerFallbackBackend();

/** Every TypeScript backend: the cpu kernel, the blockwise fallback, the WebGPU kernels. */
const BACKENDS = ['cpu', FALLBACK_BACKEND, 'webgpu'];

/** SwiftShader compiles one pipeline per option set and head dim: the GPU runs take a while. */
const COMPILE_HEAVY_MS = 600000;
const KEYS = ['out', 'lse', 'dq', 'dk', 'dv'] as const;

function expectClose(got: OpResult, want: Record<(typeof KEYS)[number], ArrayLike<number>>, what: string,
                     tolerance = F32_TOLERANCE) {
  for (const key of KEYS) {
    const tol = key === 'out' || key === 'lse' ? tolerance.forward : tolerance.grads;
    const err = relError(got[key], want[key]);
    if (!(err < tol)) throw new Error(`${key} relative error ${err} >= ${tol} for ${what}`);
  }
}

async function expectMatchesReference(c: VarlenSpec) {
  const d = varlenData(c);
  expectClose(await runVarlenOp(c, d), varlenReference(c, d), describeVarlen(c));
}

const dims = (batch: number, seqQ: number, seqK: number, heads: number, kvHeads: number, headDim: number, headDimV = headDim) =>
  ({ batch, seqQ, seqK, heads, kvHeads, headDim, headDimV });

describe.each(BACKENDS)('variable lengths on %s', backend => {
  useBackendForSuite(backend);
  const onBackend = backend === 'webgpu' ? gpuTest : test;
  afterEach(() => { if (backend === 'webgpu') expect(takeUncapturedErrors()).toEqual([]); });
  /** One head-dim pair on WebGPU, so each option set compiles once; random ones elsewhere. */
  const shaped = (c: VarlenSpec) => {
    if (backend === 'webgpu') { c.dims.headDim = 8; c.dims.headDimV = 8; }
    return c;
  };
  /** Two random cases per option set; one on WebGPU, where each costs SwiftShader time in CI. */
  const seeds = (base: number) => (backend === 'webgpu' ? [base] : [base, base + 1000]);

  describe('match the float64 reference for every option combination', () => {
    const subsets = optionPowerset();
    for (const withMask of [false, true]) {
      const group = subsets.filter(s => s.has('mask') === withMask);
      onBackend(`padded (seqLensQ/K): ${group.length} subsets of ${OPTION_NAMES.filter(n => n !== 'mask').join(', ')}` +
                `${withMask ? ', with mask' : ''}`, async () => {
        for (const set of group) {
          for (const seed of seeds(3000 + subsets.indexOf(set))) {
            await expectMatchesReference(shaped(varlenCase(set, seed, 'padded')));
          }
        }
      }, COMPILE_HEAVY_MS);
    }
    const unmasked = subsets.filter(s => !s.has('mask'));
    onBackend(`packed (flashAttentionVarlen): ${unmasked.length} subsets of ${OPTION_NAMES.filter(n => n !== 'mask').join(', ')}`,
              async () => {
      for (const set of unmasked) {
        for (const seed of seeds(5000 + subsets.indexOf(set))) {
          await expectMatchesReference(shaped(varlenCase(set, seed, 'packed')));
        }
      }
    }, COMPILE_HEAVY_MS);
  });

  describe('handle edge lengths', () => {
    const cases: [string, VarlenSpec][] = [
      ['lengths 0, 1 and full with causal', {
        dims: dims(3, 9, 11, 2, 1, 8), layout: 'padded', lensQ: [0, 1, 9], lensK: [11, 1, 0], causal: true, seed: 1 }],
      ['a query side longer than its keys (early rows see no key)', {
        dims: dims(2, 12, 12, 2, 2, 8), layout: 'padded', lensQ: [12, 7], lensK: [3, 7], causal: true, alibi: true, seed: 2 }],
      ['only seqLensK (queries full length)', {
        dims: dims(2, 6, 13, 4, 2, 8), layout: 'padded', lensQ: [6, 6], lensK: [5, 13], windowSize: [3, 1], seed: 3 }],
      ['a window and a padding mask aligned to the lengths', {
        dims: dims(2, 10, 10, 2, 1, 8), layout: 'padded', lensQ: [4, 10], lensK: [9, 2], windowSize: [2, 0],
        maskShape: [2, 1, 1, 10], seed: 4 }],
      ['packed: empty sequences on either side, GQA, seqQ != seqK', {
        dims: dims(5, 7, 9, 6, 2, 8), layout: 'packed', lensQ: [3, 0, 7, 1, 2], lensK: [9, 4, 0, 1, 5], causal: true,
        softcap: 2, seed: 5 }],
      ['packed: one sequence', {
        dims: dims(1, 13, 17, 2, 1, 8, 4), layout: 'packed', lensQ: [13], lensK: [17], alibi: true, dropoutRate: 0.3, seed: 6 }],
      ['lengths across several tiles (33 and 65 rows)', {
        dims: dims(2, 65, 70, 2, 1, 8), layout: 'padded', lensQ: [33, 65], lensK: [70, 66], causal: true, seed: 7 }],
      ['packed sequences across several tiles', {
        dims: dims(3, 40, 70, 2, 1, 8), layout: 'packed', lensQ: [40, 9, 33], lensK: [70, 9, 1], windowSize: [20, 4], seed: 8 }],
      // The extreme option values of extreme_options.test.ts, now with lengths: a window edge near
      // or past 2^31 must act as unbounded (no int32 wrap against a sequence's offset), softcap
      // at its ends must stay exact.
      ['padded: window [2^31 - 1, -1] with softcap 1e-3', {
        dims: dims(3, 9, 11, 2, 1, 8), layout: 'padded', lensQ: [5, 0, 9], lensK: [9, 3, 11], windowSize: [2 ** 31 - 1, -1],
        softcap: 1e-3, seed: 9 }],
      ['padded: window [-1, 2^40] with softcap 3e38, more queries than keys', {
        dims: dims(2, 12, 7, 2, 2, 8), layout: 'padded', lensQ: [12, 4], lensK: [7, 6], windowSize: [-1, 2 ** 40],
        softcap: 3e38, seed: 10 }],
      ['packed: window [2^32, 3] with softcap 1e8', {
        dims: dims(3, 10, 12, 4, 2, 8), layout: 'packed', lensQ: [4, 0, 6], lensK: [5, 7, 0], windowSize: [2 ** 32, 3],
        softcap: 1e8, seed: 11 }],
      ['packed: window [2^31 - 1, 0] with ALiBi', {
        dims: dims(2, 9, 9, 2, 1, 8), layout: 'packed', lensQ: [9, 2], lensK: [3, 9], windowSize: [2 ** 31 - 1, 0],
        alibi: true, seed: 12 }],
    ];
    onBackend('lengths 0, 1 and full; queries past their keys; tile boundaries; extreme windows and softcaps', async () => {
      for (const [what, c] of cases) {
        try { await expectMatchesReference(c); } catch (e) { throw new Error(`${what}: ${(e as Error).message}`); }
      }
    }, COMPILE_HEAVY_MS);
  });

  onBackend('packed sequences give what each sequence gives alone', async () => {
    const c: VarlenSpec = {
      dims: dims(4, 11, 14, 4, 2, 8), layout: 'packed', lensQ: [11, 0, 5, 3], lensK: [14, 6, 0, 3], causal: true,
      windowSize: [6, -1], alibi: true, softcap: 3, seed: 21,
    };
    const d = varlenData(c);
    const packed = await runVarlenOp(c, d);
    const rows = sequenceRows(c);
    const { heads, kvHeads, headDim, headDimV } = c.dims;
    const expected = { out: new Float32Array(packed.out.length), lse: new Float32Array(packed.lse.length).fill(-Infinity),
                       dq: new Float32Array(packed.dq.length), dk: new Float32Array(packed.dk.length),
                       dv: new Float32Array(packed.dv.length) };
    for (let s = 0; s < c.dims.batch; s++) {
      const [startQ, lenQ] = rows.q[s], [startK, lenK] = rows.k[s];
      if (lenQ === 0 || lenK === 0) continue;          // no keys: out 0, lse -Infinity, zero gradients
      const alone: CaseSpec = { ...c, dims: dims(1, lenQ, lenK, heads, kvHeads, headDim, headDimV) };
      const q = (x: Float32Array, w: number) => x.slice(startQ * w, (startQ + lenQ) * w);
      const k = (x: Float32Array, w: number) => x.slice(startK * w, (startK + lenK) * w);
      const r = await runOp(alone, {
        q: q(d.q, heads * headDim), k: k(d.k, kvHeads * headDim), v: k(d.v, kvHeads * headDimV),
        dy: q(d.dy, heads * headDimV), slopes: d.slopes,
      });
      expected.out.set(r.out, startQ * heads * headDimV);
      for (let h = 0; h < heads; h++) expected.lse.set(r.lse.subarray(h * lenQ, (h + 1) * lenQ), h * rows.rowsQ + startQ);
      expected.dq.set(r.dq, startQ * heads * headDim);
      expected.dk.set(r.dk, startK * kvHeads * headDim);
      expected.dv.set(r.dv, startK * kvHeads * headDimV);
    }
    expectClose(packed, expected, describeVarlen(c), { forward: 1e-6, grads: 1e-6 });
  }, COMPILE_HEAVY_MS);

  onBackend('padding rows may hold anything, NaN included: they do not exist', async () => {
    const c: VarlenSpec = {
      dims: dims(3, 9, 12, 4, 2, 8), layout: 'padded', lensQ: [5, 0, 9], lensK: [7, 3, 12], alibi: true, seed: 23,
    };
    const d = varlenData(c);
    const rows = sequenceRows(c);
    const { seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
    const poison = (x: Float32Array, seq: number, width: number, lens: number[]) =>
      lens.forEach((len, b) => x.fill(NaN, (b * seq + len) * width, (b + 1) * seq * width));
    poison(d.q, seqQ, heads * headDim, c.lensQ);
    poison(d.k, seqK, kvHeads * headDim, c.lensK);
    poison(d.v, seqK, kvHeads * headDimV, c.lensK);
    expect(rows.q.length).toBe(3);
    expectClose(await runVarlenOp(c, d), varlenReference(c, d), describeVarlen(c));
  }, COMPILE_HEAVY_MS);

  onBackend('lengths give what the equivalent explicit mask gives', async () => {
    for (const [i, flags] of [[], ['causal'], ['window', 'softcap'], ['causal', 'dropout']].entries()) {
      const c = shaped(varlenCase(new Set(flags), 70 + i, 'padded'));
      const d = varlenData(c);
      const { causal: _c, windowSize: _w, ...plain } = c;
      const masked: CaseSpec = { ...plain, maskShape: [c.dims.batch, 1, c.dims.seqQ, c.dims.seqK] };
      expectClose(await runVarlenOp(c, d), await runOp(masked, { ...d, mask: lengthsMask(c, d) }), describeVarlen(c));
    }
  }, COMPILE_HEAVY_MS);

  onBackend('full lengths give what no lengths give', async () => {
    const c: VarlenSpec = {
      dims: dims(2, 7, 10, 2, 1, 8), layout: 'padded', lensQ: [7, 7], lensK: [10, 10], causal: true, alibi: true,
      dropoutRate: 0.2, seed: 22,
    };
    const d = varlenData(c);
    expectClose(await runVarlenOp(c, d), await runOp(c, d), describeVarlen(c), { forward: 1e-6, grads: 1e-6 });
  }, COMPILE_HEAVY_MS);

  onBackend('lengths leave no tensor behind', async () => {
    const padded = varlenCase(new Set(['causal']), 31, 'padded');
    const packed = varlenCase(new Set(['alibi']), 32, 'packed');
    for (const c of [padded, packed]) {
      shaped(c);
      const d = varlenData(c);
      for (const form of ['array', 'int32array', 'tensor'] as const) await runVarlenOp(c, d, true, form);   // warm
      const before = tf.memory().numTensors;
      for (const form of ['array', 'int32array', 'tensor'] as const) await runVarlenOp(c, d, true, form);
      // tf.grads leaves one tensor per call (notes/tfjs-facts.md); nothing else may remain.
      expect(tf.memory().numTensors - before).toBeLessThanOrEqual(3);
    }
  }, COMPILE_HEAVY_MS);

  // Node's WebGPU has no synchronous read of GPU-resident data (tfjs reads through an
  // OffscreenCanvas there): such lengths stay on the device, clamped to [0, seq] there.
  // (Inside the webgpu suite: the suite's afterAll removes the backend for later describes.)
  if (backend === 'webgpu') gpuTest('lengths in a GPU-resident tensor give the same result as lengths read on the host; out-of-range values are clamped', async () => {
    const q = tf.randomNormal([2, 4, 1, 8]);
    const onHost = flashAttention(q, q, q, { seqLensK: [3, 1], seqLensQ: [4, 2] });
    // Computed on the GPU (small ops would otherwise run on the CPU): GPU-resident.
    tf.env().set('WEBGPU_CPU_FORWARD', false);
    const onGpuK = tf.add(tf.tensor1d([3, 1], 'int32'), tf.scalar(0, 'int32')) as tf.Tensor1D;
    const onGpuQ = tf.maximum(tf.add(tf.tensor1d([9, 7], 'int32'), tf.scalar(-5, 'int32')), tf.scalar(0, 'int32')) as tf.Tensor1D;  // [4, 2]
    const tooLong = tf.add(tf.tensor1d([7, 2], 'int32'), tf.scalar(0, 'int32')) as tf.Tensor1D;
    tf.env().set('WEBGPU_CPU_FORWARD', true);
    expect(() => onGpuK.dataSync()).toThrow();        // the case this covers: no synchronous read
    const before = tf.memory().numTensors;
    const onDevice = flashAttention(q, q, q, { seqLensK: onGpuK, seqLensQ: onGpuQ });
    expect(Array.from(await onDevice.data())).toEqual(Array.from(await onHost.data()));
    const clamped = flashAttention(q, q, q, { seqLensK: tooLong });          // 7 > seqK = 4: read as 4
    const full = flashAttention(q, q, q, { seqLensK: [4, 2] });
    expect(Array.from(await clamped.data())).toEqual(Array.from(await full.data()));
    tf.dispose([onDevice, clamped, full]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([q, onHost, onGpuK, onGpuQ, tooLong]);
  }, COMPILE_HEAVY_MS);
});

describe('flashAttentionVarlen', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  // On the CommonJS tf namespace: test/package.test.ts (jest's module registry hides it here).
  it('returns [totalQ, heads, headDimV] and logSumExp [heads, totalQ]', () => {
    const q = tf.randomNormal([7, 4, 8]), k = tf.randomNormal([9, 2, 8]), v = tf.randomNormal([9, 2, 5]);
    const options = { cuSeqLensQ: cuSeqLens([3, 4]), cuSeqLensK: cuSeqLens([2, 7]), causal: true };
    const { output, logSumExp } = flashAttentionVarlen(q, k, v, { ...options, returnLogSumExp: true });
    expect(output.shape).toEqual([7, 4, 5]);
    expect(logSumExp.shape).toEqual([4, 7]);
    const plain = flashAttentionVarlen(q, k, v, options);
    expect(plain.shape).toEqual([7, 4, 5]);
    expect(Array.from(plain.dataSync())).toEqual(Array.from(output.dataSync()));
    tf.dispose([q, k, v, output, logSumExp, plain]);
  });

  it('a padded batch and packed sequences draw the same dropout mask', async () => {
    // Sequence index and local positions drive the dropout hash in both layouts.
    const packed: VarlenSpec = { dims: dims(2, 6, 5, 2, 1, 4), layout: 'packed', lensQ: [6, 3], lensK: [5, 4],
                                 dropoutRate: 0.4, causal: true, seed: 41 };
    const padded: VarlenSpec = { ...packed, layout: 'padded', dims: dims(2, 6, 5, 2, 1, 4) };
    const dp = varlenData(packed);
    const dPad = caseData(padded);
    const rowsP = sequenceRows(packed), rowsPad = sequenceRows(padded);
    const place = (from: Float32Array, to: Float32Array, width: number, src: [number, number][], dst: [number, number][]) => {
      src.forEach(([start, len], s) => to.set(from.subarray(start * width, (start + len) * width), dst[s][0] * width));
    };
    const { heads, kvHeads, headDim, headDimV } = packed.dims;
    place(dp.q, dPad.q, heads * headDim, rowsP.q, rowsPad.q);
    place(dp.dy, dPad.dy, heads * headDimV, rowsP.q, rowsPad.q);
    place(dp.k, dPad.k, kvHeads * headDim, rowsP.k, rowsPad.k);
    place(dp.v, dPad.v, kvHeads * headDimV, rowsP.k, rowsPad.k);
    const [a, b] = [await runVarlenOp(packed, dp), await runVarlenOp(padded, dPad)];
    const outPacked = new Float32Array(dPad.q.length / headDim * headDimV);
    place(a.out, outPacked, heads * headDimV, rowsP.q, rowsPad.q);
    expect(relError(b.out, outPacked)).toBeLessThan(1e-6);
    const dqPacked = new Float32Array(dPad.q.length);
    place(a.dq, dqPacked, heads * headDim, rowsP.q, rowsPad.q);
    expect(relError(b.dq, dqPacked)).toBeLessThan(1e-6);
  });
});
