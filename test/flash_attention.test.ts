/**
 * The flashAttention op's contract on the CPU kernel and on the blockwise fallback: forward,
 * logsumexp and all three gradients against the float64 reference, for every option combination,
 * edge shapes and tile boundaries; gradients against finite differences.
 */
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { TILE_K, TILE_Q } from '../kernels/cpu/attention_problem';
import { KEY_BLOCK } from '../kernels/fallback/blockwise';
import {
  CaseSpec, caseData, compare, comboCase, describeCase, F32_TOLERANCE, optionPowerset, reference, runOp,
} from './helpers/attention_case';
import { CPU_PATHS, registerFallbackBackend } from './helpers/backends';

registerFallbackBackend();

async function expectMatchesReference(c: CaseSpec, withGrads = true) {
  const d = caseData(c);
  const errors = compare(await runOp(c, d, withGrads), reference(c, d), withGrads);
  for (const [name, err] of Object.entries(errors)) {
    const tol = name === 'out' || name === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads;
    if (!(err < tol)) throw new Error(`${name} relative error ${err} >= ${tol} for ${describeCase(c)}`);
  }
}

const dims = (batch: number, seqQ: number, seqK: number, heads: number, kvHeads: number, headDim: number, headDimV = headDim) =>
  ({ batch, seqQ, seqK, heads, kvHeads, headDim, headDimV });

describe.each(CPU_PATHS)('flashAttention on the $name', ({ backend }) => {
  beforeAll(async () => { await tf.setBackend(backend); });

  describe('matches the float64 reference for every option combination', () => {
    const combos = optionPowerset();
    test.each(combos.map((flags, i) => ({ label: [...flags].join('+') || 'no options', flags, i })))(
      '$label', async ({ flags, i }) => {
        for (const seed of [1000 + i, 2000 + i]) await expectMatchesReference(comboCase(flags, seed));
      });
  });

  describe('handles edge shapes', () => {
    const cases: [string, CaseSpec][] = [
      ['a single query', { dims: dims(1, 1, 9, 2, 2, 8), seed: 1 }],
      ['a single key', { dims: dims(2, 6, 1, 2, 1, 8), seed: 2 }],
      ['one query and one key', { dims: dims(1, 1, 1, 1, 1, 3), seed: 3, causal: true }],
      ['headDim 1', { dims: dims(1, 5, 7, 2, 2, 1), seed: 4 }],
      ['headDimV != headDim', { dims: dims(1, 5, 7, 2, 1, 12, 5), seed: 5, causal: true }],
      ['multi-query (kvHeads = 1)', { dims: dims(2, 7, 9, 4, 1, 6), seed: 6, alibi: true }],
      ['grouped-query (heads 6, kvHeads 2)', { dims: dims(1, 9, 11, 6, 2, 6), seed: 7, softcap: 3 }],
      ['seqQ > seqK with causal: early rows see no key', { dims: dims(1, 12, 5, 2, 1, 4), seed: 8, causal: true }],
      ['a window that leaves rows empty', { dims: dims(1, 9, 4, 1, 1, 4), seed: 9, windowSize: [0, 0] }],
      ['an explicit scale', { dims: dims(1, 5, 6, 1, 1, 4), seed: 10, scale: 0.9 }],
      ['headDim 256', { dims: dims(1, 3, 5, 1, 1, 256, 256), seed: 11 }],
    ];
    test.each(cases)('%s', async (_, c) => { await expectMatchesReference(c); });
  });

  describe('is exact across tile boundaries', () => {
    const sizes = [TILE_Q - 1, TILE_Q + 1, TILE_K - 1, TILE_K + 1, KEY_BLOCK + 1];
    test.each(sizes)('seq %i', async (n) => {
      await expectMatchesReference({ dims: dims(1, n, n, 1, 1, 4), seed: n, causal: true });
      await expectMatchesReference({ dims: dims(1, n, n + 3, 2, 1, 3), seed: n + 1, windowSize: [7, 2], softcap: 2 });
    });
  });
});

describe('gradients agree with finite differences', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  // Central differences of L = sum(out * dy) in float32 are only good to ~1e-2 relative: this
  // checks the analytical gradients independently of the reference's own backward formulas.
  test.each([
    ['plain', {}],
    ['causal + softcap + alibi', { causal: true, softcap: 1.5, alibi: true }],
    ['window + mask + dropout', { windowSize: [2, 1] as [number, number], maskShape: [1, 1, 4, 5], dropoutRate: 0.3 }],
  ])('%s', async (_, extra) => {
    const c: CaseSpec = { dims: dims(1, 4, 5, 2, 1, 3), seed: 77, ...extra };
    const d = caseData(c);
    const analytic = await runOp(c, d);
    const loss = (dd: typeof d) => {
      const want = reference(c, dd);
      let s = 0;
      for (let i = 0; i < want.out.length; i++) s += want.out[i] * dd.dy[i];
      return s;
    };
    const eps = 1e-3;
    for (const [name, grad] of [['q', analytic.dq], ['k', analytic.dk], ['v', analytic.dv]] as const) {
      const x = d[name];
      for (let idx = 0; idx < x.length; idx += 3) {
        const orig = x[idx];
        x[idx] = orig + eps; const up = loss(d);
        x[idx] = orig - eps; const down = loss(d);
        x[idx] = orig;
        const fd = (up - down) / (2 * eps);
        expect(Math.abs(grad[idx] - fd)).toBeLessThan(2e-3 * Math.max(1, Math.abs(fd)));
      }
    }
  });
});
