/**
 * NaN and ±Infinity in q, k or v propagate through flashAttention as they do through the plain
 * composite (matMul, softmax, matMul), on every backend of this process: WebGPU, the cpu kernel
 * and the blockwise fallback. Nothing non-finite is ever silently dropped (a NaN query row is not
 * "fully masked"), and a fully masked row still gives 0, logsumexp -Infinity and zero dq.
 *
 * What "as the composite" means for each element comes from a float64 evaluation of the
 * composite's arithmetic in two forms that differ only in products with an exactly-zero weight:
 *  - strict: the composite literally: every (query, key) pair enters the products, a masked or
 *    zero-probability one with weight 0, so 0 * NaN and 0 * Infinity give NaN;
 *  - skipping: pairs that are masked, have zero probability or are dropped never enter.
 * A tiled kernel skips whole tiles the mask hides, so it sits between the two. Where both forms
 * agree on an element (NaN, +Inf, -Inf or finite), the backend must give exactly that; where they
 * differ, either is accepted. Finite results must match the finite value under the usual
 * tolerances. A NaN a kept pair carries can never be dropped: both forms propagate it.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import {
  CaseData, caseData, CaseSpec, comboCase, describeCase, F32_TOLERANCE, OpResult, reference, runOp,
} from './helpers/attention_case';
import { checkOutput, compositeFloat64, kind, SPECIAL, withNonFinite } from './helpers/nonfinite';
import { CPU_PATHS, registerFallbackBackend } from './helpers/backends';
import { setTileConfigOverride } from '../kernels/webgpu/tiles';
import {
  gpuTest, takeUncapturedErrors, TINY_STAGED_TILES, TINY_TILES, useBackendForSuite,
} from './helpers/webgpu_env';

registerFallbackBackend();

const FORWARD = ['out', 'lse'] as const, GRADIENTS = ['dq', 'dk', 'dv'] as const;

/** What is wrong with a backend's outputs for data d (`finite`: the same case before NaN/Inf went in). */
function problems(got: OpResult, c: CaseSpec, d: CaseData, finite: CaseData,
                  names: ReadonlyArray<keyof OpResult>): string[] {
  const strict = compositeFloat64(c, d, true), skipping = compositeFloat64(c, d, false);
  const scale = compositeFloat64(c, finite, false);
  return names.flatMap(n => checkOutput(n, got[n], strict[n], skipping[n],
                                        n === 'out' || n === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads,
                                        scale[n].reduce((m, x) => (Number.isFinite(x) ? Math.max(m, Math.abs(x)) : m), 0)));
}

/** Option sets (causal and window share a compiled program on WebGPU, as do the rest pairwise). */
const OPTION_SETS: Array<{ label: string; flags: string[] }> = [
  { label: 'no options', flags: [] },
  { label: 'causal', flags: ['causal'] },
  { label: 'window + ALiBi', flags: ['window', 'alibi'] },
  { label: 'mask', flags: ['mask'] },
  { label: 'softcap', flags: ['softcap'] },
  { label: 'dropout', flags: ['dropout'] },
  { label: 'every option', flags: ['causal', 'window', 'softcap', 'alibi', 'mask', 'dropout'] },
];

/** Cases of one option set: NaN in each of q, k, v, then ±Infinity in each, at random places. */
function nonFiniteCases(flags: string[], setIndex: number): Array<{ c: CaseSpec; d: CaseData; finite: CaseData; label: string }> {
  const out: Array<{ c: CaseSpec; d: CaseData; finite: CaseData; label: string }> = [];
  (['q', 'k', 'v'] as const).forEach((where, w) => {
    for (const [label, values] of [['NaN', [NaN]], ['±Infinity', [Infinity, -Infinity]], ['NaN and ±Infinity', SPECIAL]] as const) {
      const seed = 5000 + 100 * setIndex + 10 * w + out.length;
      const c = comboCase(new Set(flags), seed, 20);
      c.dims.headDim = 8; c.dims.headDimV = 8;   // one head-dim pair: each option set compiles once
      const finite = caseData(c);
      out.push({ c, d: withNonFinite(finite, where, [...values], seed), finite, label: `${label} in ${where}` });
    }
  });
  return out;
}

/** A mask whose first query row is all false, and NaN in that row of q, in k and in v. */
function fullyMaskedRowCase(): { c: CaseSpec; d: CaseData; finite: CaseData } {
  const c: CaseSpec = { dims: { batch: 1, seqQ: 9, seqK: 11, heads: 2, kvHeads: 1, headDim: 8, headDimV: 8 }, seed: 77, maskShape: [9, 11] };
  const base = caseData(c);
  const mask = Uint8Array.from(base.mask!, (m, idx) => (idx < 11 ? 0 : m));
  const q = Float32Array.from(base.q);
  const [k, v] = [Float32Array.from(base.k), Float32Array.from(base.v)];
  q[3] = NaN;                                          // query row 0, head 0
  k[5 * 8 + 2] = NaN;                                  // key 5
  v[7 * 8 + 6] = NaN;                                  // value 7
  return { c, d: { ...base, mask, q, k, v }, finite: { ...base, mask } };
}

/** What is wrong on the current backend with the outputs `names` of option set i's non-finite cases. */
async function nonFiniteProblems(flags: string[], i: number, names: ReadonlyArray<keyof OpResult>): Promise<string[]> {
  const found: string[] = [];
  for (const { c, d, finite, label: inputs } of nonFiniteCases(flags, i)) {
    const p = problems(await runOp(c, d, names === GRADIENTS), c, d, finite, names);
    if (p.length) found.push(`${inputs}, ${describeCase(c)}:\n  ${p.join('\n  ')}`);
  }
  return found;
}

async function expectFullyMaskedRowForward(): Promise<void> {
  const { c, d, finite } = fullyMaskedRowCase();
  const got = await runOp(c, d, false);
  for (const h of [0, 1]) {
    expect(Array.from(got.out.slice(h * 8, h * 8 + 8))).toEqual(new Array(8).fill(0));
    expect(got.lse[h * 9]).toBe(-Infinity);
  }
  expect(problems(got, c, d, finite, FORWARD)).toEqual([]);
}

const COMPILE_HEAVY_MS = 600000;

const BACKENDS = [{ name: 'webgpu', backend: 'webgpu' }, ...CPU_PATHS];

describe('the float64 composite used as the oracle', () => {
  test('equals the float64 reference on finite inputs, in both forms', () => {
    for (const [i, { flags }] of OPTION_SETS.entries()) {
      const c = comboCase(new Set(flags), 900 + i, 12), d = caseData(c), want = reference(c, d);
      for (const strict of [true, false]) {
        const got = compositeFloat64(c, d, strict);
        for (const n of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
          expect(checkOutput(n, got[n], want[n], want[n], 1e-12)).toEqual([]);
        }
      }
    }
  });

  test('strict form gives the NaN/Infinity pattern of tf matMul, softmax, matMul on the cpu backend', async () => {
    await tf.setBackend('cpu');
    for (const [i, causal] of [false, true].entries()) {
      for (const [w, where] of (['q', 'k', 'v'] as const).entries()) {
        const c: CaseSpec = { dims: { batch: 1, seqQ: 6, seqK: 7, heads: 1, kvHeads: 1, headDim: 4, headDimV: 4 }, seed: 60 + i, causal };
        const d = withNonFinite(caseData(c), where, SPECIAL, 70 + 10 * i + w, 1);
        const strict = compositeFloat64(c, d, true);
        const [q, k, v, dy] = [tf.tensor2d(d.q, [6, 4]), tf.tensor2d(d.k, [7, 4]), tf.tensor2d(d.v, [7, 4]), tf.tensor2d(d.dy, [6, 4])];
        const keep = tf.tensor2d(Array.from({ length: 42 }, (_, x) => !causal || x % 7 <= Math.floor(x / 7) + 1), [6, 7], 'bool');
        const composite = (a: tf.Tensor, b: tf.Tensor, e: tf.Tensor) => {
          const s = tf.where(keep, tf.mul(tf.matMul(a, b, false, true), 0.5), tf.fill([6, 7], -Infinity));
          return tf.matMul(tf.softmax(s), e);
        };
        const out = composite(q, k, v);
        const grads = tf.grads((a: tf.Tensor, b: tf.Tensor, e: tf.Tensor) => tf.sum(tf.mul(composite(a, b, e), dy)))([q, k, v]);
        const kinds = (x: ArrayLike<number>) => Array.from(x, kind);
        expect(kinds(await out.data())).toEqual(kinds(strict.out));
        expect(kinds(await grads[0].data())).toEqual(kinds(strict.dq));
        expect(kinds(await grads[1].data())).toEqual(kinds(strict.dk));
        expect(kinds(await grads[2].data())).toEqual(kinds(strict.dv));
        tf.dispose([q, k, v, dy, keep, out, ...grads]);
      }
    }
  });
});

describe.each(BACKENDS)('NaN and Infinity propagate on the $name', ({ backend }) => {
  const run = backend === 'webgpu' ? gpuTest : test;
  useBackendForSuite(backend);

  // The forward and the gradients are separate tests: on WebGPU they are separate kernels.
  for (const [i, { label, flags }] of OPTION_SETS.entries()) {
    for (const [what, names] of [['output and logsumexp', FORWARD], ['dq, dk and dv', GRADIENTS]] as const) {
      run(`${label}: ${what}`, async () => {
        const found = await nonFiniteProblems(flags, i, names);
        if (backend === 'webgpu') expect(takeUncapturedErrors()).toEqual([]);
        expect(found).toEqual([]);
      }, COMPILE_HEAVY_MS);
    }
  }

  run('a NaN query row keeps NaN: output NaN, logsumexp NaN (not 0 and -Infinity)', async () => {
    const c: CaseSpec = { dims: { batch: 1, seqQ: 5, seqK: 6, heads: 1, kvHeads: 1, headDim: 8, headDimV: 8 }, seed: 3 };
    const d = caseData(c);
    d.q[2 * 8 + 1] = NaN;                                // query row 2
    const got = await runOp(c, d, false);
    expect(Array.from(got.out.slice(16, 24)).every(Number.isNaN)).toBe(true);
    expect(Number.isNaN(got.lse[2])).toBe(true);
    expect(Array.from(got.out.slice(0, 16)).every(Number.isFinite)).toBe(true);
  }, COMPILE_HEAVY_MS);

  run('a fully masked row gives 0 and logsumexp -Infinity, even with NaN in it', expectFullyMaskedRowForward,
      COMPILE_HEAVY_MS);

  run('a fully masked row has zero dq, even with NaN in it', async () => {
    const { c, d, finite } = fullyMaskedRowCase();
    const got = await runOp(c, d);
    for (const h of [0, 1]) expect(Array.from(got.dq.slice(h * 8, h * 8 + 8))).toEqual(new Array(8).fill(0));
    expect(problems(got, c, d, finite, GRADIENTS)).toEqual([]);
  }, COMPILE_HEAVY_MS);

  if (backend === 'webgpu') {
    describe('through the staged forward', () => {
      beforeAll(() => setTileConfigOverride({ forward: TINY_STAGED_TILES, dq: TINY_TILES, dkdv: TINY_TILES }));
      afterAll(() => setTileConfigOverride({ forward: TINY_TILES, dq: TINY_TILES, dkdv: TINY_TILES }));

      for (const [i, { label, flags }] of OPTION_SETS.entries()) {
        run(`${label}: output and logsumexp`, async () => {
          const found = await nonFiniteProblems(flags, i, FORWARD);
          expect(takeUncapturedErrors()).toEqual([]);
          expect(found).toEqual([]);
        }, COMPILE_HEAVY_MS);
      }

      run('a fully masked row gives 0 and logsumexp -Infinity, even with NaN in it', expectFullyMaskedRowForward,
          COMPILE_HEAVY_MS);
    });
  }
});
