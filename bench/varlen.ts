/**
 * The variable-length cases of the benchmark (issue 12), run with --varlen: what ragged batches
 * and packed documents cost with lengths, beside the same work written with a dense bool mask and
 * beside dense attention over the whole padded shape.
 *
 *  ragged: batch 8, lengths spread evenly over [N/8, N] (queries and keys alike):
 *    lengths = flashAttention with seqLensQ/K; mask = the same lengths as a [8, 1, N, N] bool mask
 *    (query and key inside the length: the same results); dense = flashAttention on all 8·N².
 *  packed: documents totalling N rows: lengths = flashAttentionVarlen with cuSeqLensQ/K;
 *    mask = one [1, N] call with a block-diagonal [1, 1, N, N] mask; dense = one [1, N] call.
 * Causal, where on, applies inside each sequence (for the dense variants: over the whole N).
 * Work is counted in score pairs: Σ len² for the sequences against 8·N² (ragged) or N² (packed);
 * a kernel whose cost follows the lengths takes about (Σ len²) / (dense pairs) of dense's time.
 */
import type * as tfc from '@tensorflow/tfjs-core';
import type { flashAttention as FlashAttentionFn } from '../src/flash_attention';
import type { flashAttentionVarlen as FlashAttentionVarlenFn } from '../src/flash_attention_varlen';
import { deviceRandom, TF } from './attention';
import { Pass } from './cases';
import { ErrorScopes, timeCall, TimingPlan } from './measure';

type Tensor = tfc.Tensor;

export type VarlenLayout = 'ragged' | 'packed';
export type VarlenVariant = 'lengths' | 'mask' | 'dense';
export const VARLEN_LAYOUTS: readonly VarlenLayout[] = ['ragged', 'packed'];
export const VARLEN_VARIANTS: readonly VarlenVariant[] = ['lengths', 'mask', 'dense'];
/** Sequences of a ragged batch. */
export const RAGGED_BATCH = 8;
/** Relative sizes of the packed documents (the last takes what rounding leaves). */
const DOCUMENT_WEIGHTS = [4, 1, 3, 2, 5, 1];

/** RAGGED_BATCH lengths spread evenly over [N/8, N] (rounded; at least 1). */
export function raggedLengths(n: number, batch = RAGGED_BATCH): number[] {
  const low = Math.max(1, Math.round(n / 8));
  return Array.from({ length: batch }, (_, b) => Math.round(low + (b * (n - low)) / Math.max(1, batch - 1)));
}

/** Document lengths (DOCUMENT_WEIGHTS) summing to n; documents left empty by rounding are dropped. */
export function documentLengths(n: number): number[] {
  const total = DOCUMENT_WEIGHTS.reduce((a, b) => a + b, 0);
  const lens = DOCUMENT_WEIGHTS.slice(0, -1).map(w => Math.floor((n * w) / total));
  lens.push(n - lens.reduce((a, b) => a + b, 0));
  return lens.filter(l => l > 0);
}

export interface VarlenShape {
  layout: VarlenLayout;
  seq: number;
  heads: number;
  headDim: number;
  causal: boolean;
}

export interface VarlenCase extends VarlenShape {
  variant: VarlenVariant;
  pass: Pass;
}

/** The sequences' lengths of a shape: its ragged batch or its documents. */
export const lengthsOf = (s: VarlenShape) => (s.layout === 'ragged' ? raggedLengths(s.seq) : documentLengths(s.seq));

/**
 * Score pairs: those inside the sequences (Σ len², about half with causal) and those dense
 * attention over the padded shape computes (8·N² or N², halved likewise with causal).
 */
export function scorePairs(s: VarlenShape): { sequences: number; dense: number } {
  const pairs = (n: number) => (s.causal ? (n * (n + 1)) / 2 : n * n);
  const sequences = lengthsOf(s).reduce((a, l) => a + pairs(l), 0);
  return { sequences, dense: (s.layout === 'ragged' ? RAGGED_BATCH : 1) * pairs(s.seq) };
}

/** Bytes of the dense variants' bool mask on WebGPU (tfjs keeps bool as 4-byte int32). */
export const maskBytes = (s: VarlenShape) => 4 * (s.layout === 'ragged' ? RAGGED_BATCH : 1) * s.seq * s.seq;

/** Cases in run order: by layout, size, head dim, pass and mask, the three variants side by side. */
export function varlenCases(o: { seqs: number[]; headDims: number[]; heads: number; causal: boolean[]; passes: Pass[] }): VarlenCase[] {
  const cases: VarlenCase[] = [];
  for (const layout of VARLEN_LAYOUTS) for (const seq of o.seqs) for (const headDim of o.headDims) {
    for (const pass of o.passes) for (const causal of o.causal) for (const variant of VARLEN_VARIANTS) {
      cases.push({ layout, seq, heads: o.heads, headDim, causal, pass, variant });
    }
  }
  return cases;
}

export type VarlenStatus = 'ok' | 'wrong' | 'too large' | 'OOM' | 'validation' | 'device lost' | 'error' | 'skipped';

export interface VarlenResult extends VarlenCase {
  status: VarlenStatus;
  note?: string;
  lengths: number[];
  pairs: number;
  densePairs: number;
  wallMs?: number;
  gpuMs?: number | null;
  /** lengths and mask only: max |lengths - mask| / max |mask| of out (fwd) or dq (fwd+bwd). */
  relErrVsMask?: number;
}

/** Above this the lengths and mask variants disagree beyond float32 round-off. */
const WRONG_REL_ERR = 1e-4;

interface Inputs { q: tfc.Tensor4D; k: tfc.Tensor4D; v: tfc.Tensor4D; dOut: tfc.Tensor4D; }

/**
 * One variant of a shape made runnable: returns out (fwd) or [dq, dk, dv] (fwd+bwd), in the
 * [B, N, H, D] layout of the inputs, so the lengths and mask variants compare element by element.
 */
function runnableOf(tf: TF, flash: typeof FlashAttentionFn, flashVarlen: typeof FlashAttentionVarlenFn,
                    c: VarlenCase, x: Inputs, mask: Tensor | null): () => Tensor | Tensor[] {
  const lens = lengthsOf(c);
  const n = c.seq;
  let attend: (q: Tensor, k: Tensor, v: Tensor) => Tensor;
  if (c.variant === 'lengths' && c.layout === 'packed') {
    const cu = lens.reduce((acc, l) => [...acc, acc[acc.length - 1] + l], [0]);
    const flat = (t: Tensor) => tf.reshape(t, [n, c.heads, c.headDim]);
    attend = (q, k, v) => tf.reshape(flashVarlen(flat(q), flat(k), flat(v), { cuSeqLensQ: cu, cuSeqLensK: cu, causal: c.causal }),
                                     [1, n, c.heads, c.headDim]);
  } else {
    const options = c.variant === 'lengths' ? { seqLensQ: lens, seqLensK: lens }
                  : c.variant === 'mask' ? { mask: mask! } : {};
    attend = (q, k, v) => flash(q as tfc.Tensor4D, k as tfc.Tensor4D, v as tfc.Tensor4D, { ...options, causal: c.causal });
  }
  if (c.pass === 'fwd') return () => attend(x.q, x.k, x.v);
  const grads = tf.grads(attend);
  return () => grads([x.q, x.k, x.v], x.dOut);
}

/** The dense variants' mask: inside each sequence's length (ragged) or document (packed). */
function makeMask(tf: TF, s: VarlenShape): Tensor {
  const lens = lengthsOf(s);
  return tf.tidy(() => {
    const r = tf.range(0, s.seq, 1, 'int32');
    if (s.layout === 'ragged') {
      const inside = tf.less(tf.reshape(r, [1, 1, s.seq]), tf.tensor(lens, [RAGGED_BATCH, 1, 1], 'int32'));   // [B, 1, N]
      return tf.reshape(tf.logicalAnd(tf.reshape(inside, [RAGGED_BATCH, 1, s.seq, 1]), tf.reshape(inside, [RAGGED_BATCH, 1, 1, s.seq])),
                        [RAGGED_BATCH, 1, s.seq, s.seq]);
    }
    const doc = tf.tensor(lens.flatMap((l, d) => new Array<number>(l).fill(d)), [s.seq], 'int32');
    return tf.reshape(tf.equal(tf.reshape(doc, [s.seq, 1]), tf.reshape(doc, [1, s.seq])), [1, 1, s.seq, s.seq]);
  });
}

async function relativeDifference(tf: TF, got: Tensor, want: Tensor): Promise<number> {
  const [diff, scale] = tf.tidy(() => [tf.max(tf.abs(tf.sub(got, want))), tf.max(tf.abs(want))]);
  const [d, m] = [(await diff.data())[0], (await scale.data())[0]];
  tf.dispose([diff, scale]);
  return m === 0 ? d : d / m;
}

export interface VarlenEnvironment {
  tf: TF;
  flash: typeof FlashAttentionFn;
  flashVarlen: typeof FlashAttentionVarlenFn;
  scopes: ErrorScopes;
  plan: TimingPlan;
  /** The largest storage binding: a bigger mask is 'too large'. */
  maxBindingBytes: number;
  /** Compare lengths with mask (out or dq). */
  check: boolean;
  /** No case starts once this returns true. */
  pastDeadline: () => boolean;
  /** Between shapes (WebGPU: empties tfjs's buffer pool). */
  betweenShapes?: () => void;
}

/**
 * Runs the cases (varlenCases' order: the three variants of a shape together), calling onResult
 * after each. Each shape's inputs, mask and the lengths variant's first result (for the check)
 * are made once.
 */
export async function runVarlenCases(env: VarlenEnvironment, cases: VarlenCase[],
                                     onResult: (r: VarlenResult, index: number) => void): Promise<VarlenResult[]> {
  const { tf } = env;
  const results: VarlenResult[] = [];
  type Shape = { key: string; x: Inputs; mask: Tensor | null; maskWhy: string | null };
  let current = null as Shape | null;
  const drop = () => {
    if (!current) return;
    tf.dispose([current.x.q, current.x.k, current.x.v, current.x.dOut, ...(current.mask ? [current.mask] : [])]);
    current = null;
    env.betweenShapes?.();
  };
  let reference = null as { key: string; result: Tensor } | null;
  const dropReference = () => { if (reference) { reference.result.dispose(); reference = null; } };

  for (const [i, c] of cases.entries()) {
    const lens = lengthsOf(c);
    const { sequences, dense } = scorePairs(c);
    const base: VarlenResult = { ...c, status: 'ok', lengths: lens, pairs: sequences, densePairs: dense };
    const shapeKey = `${c.layout}/${c.seq}/${c.heads}/${c.headDim}`;
    const checkKey = `${shapeKey}/${c.pass}/${c.causal}`;
    let r: VarlenResult;
    if (env.pastDeadline()) {
      r = { ...base, status: 'skipped', note: 'deadline reached' };
    } else {
      if (current?.key !== shapeKey) {
        drop();
        const batch = c.layout === 'ragged' ? RAGGED_BATCH : 1;
        const shape: [number, number, number, number] = [batch, c.seq, c.heads, c.headDim];
        const tooLarge = maskBytes(c) > env.maxBindingBytes;
        current = {
          key: shapeKey,
          x: { q: deviceRandom(tf, shape, 11), k: deviceRandom(tf, shape, 23), v: deviceRandom(tf, shape, 37), dOut: deviceRandom(tf, shape, 41) },
          mask: tooLarge ? null : makeMask(tf, c),
          maskWhy: tooLarge ? `the ${(maskBytes(c) / 2 ** 30).toFixed(1)} GiB bool mask is over the ` +
                              `${(env.maxBindingBytes / 2 ** 30).toFixed(1)} GiB storage binding limit` : null,
        };
      }
      const { x, mask, maskWhy } = current!;
      if (c.variant === 'mask' && !mask) {
        r = { ...base, status: 'too large', note: maskWhy! };
      } else {
        const run = runnableOf(tf, env.flash, env.flashVarlen, c, x, mask);
        const outcome = await env.scopes.run(async () => {
          const timing = await timeCall(tf, run, env.plan);
          let relErrVsMask: number | undefined;
          if (env.check && c.variant !== 'dense') {
            const out = run();
            const first = Array.isArray(out) ? out[0] : out;
            (Array.isArray(out) ? out.slice(1) : []).forEach(t => t.dispose());
            if (c.variant === 'lengths') {
              dropReference();
              reference = { key: checkKey, result: first };
            } else {
              if (reference?.key === checkKey) relErrVsMask = await relativeDifference(tf, reference.result, first);
              first.dispose();
              dropReference();
            }
          }
          return { timing, relErrVsMask };
        });
        if (outcome.failure) {
          r = { ...base, status: outcome.failure.kind, note: outcome.failure.message };
        } else {
          const { timing, relErrVsMask } = outcome.value!;
          const wrong = relErrVsMask !== undefined && !(relErrVsMask <= WRONG_REL_ERR);
          r = { ...base, status: wrong ? 'wrong' : 'ok', wallMs: timing.wallMs, gpuMs: timing.gpuMs,
                ...(relErrVsMask !== undefined ? { relErrVsMask } : {}),
                ...(wrong ? { note: `lengths and mask differ by ${relErrVsMask} (relative)` } : {}) };
        }
      }
    }
    results.push(r);
    onResult(r, i);
  }
  dropReference();
  drop();
  return results;
}

export function varlenProgressLine(r: VarlenResult, i: number, n: number): string {
  const head = `[varlen ${String(i + 1).padStart(String(n).length)}/${n}] ${r.layout.padEnd(6)} ${r.variant.padEnd(7)} ` +
               `${r.pass.padEnd(7)} N=${String(r.seq).padEnd(5)} d=${String(r.headDim).padEnd(3)} H=${r.heads} ` +
               `${r.causal ? 'causal' : 'full  '}`;
  if (r.status !== 'ok' && r.status !== 'wrong') return `${head}  ${r.status.toUpperCase()}: ${r.note ?? ''}`;
  const gpu = r.gpuMs ? ` gpu ${r.gpuMs.toFixed(3)} ms` : '';
  const check = r.relErrVsMask !== undefined ? ` vs mask ${r.relErrVsMask.toExponential(1)}` : '';
  return `${head}  wall ${r.wallMs!.toFixed(3)} ms${gpu}${check}${r.status === 'wrong' ? '  WRONG' : ''}`;
}

const ms = (r: VarlenResult | undefined) => {
  if (!r) return '';
  if (r.status !== 'ok' && r.status !== 'wrong') return `**${r.status}**`;
  return `${r.wallMs!.toFixed(3)}${r.gpuMs ? ` (${r.gpuMs.toFixed(3)})` : ''}`;
};
const ratio = (a: VarlenResult | undefined, b: VarlenResult | undefined) =>
  a?.wallMs && b?.wallMs ? `${(a.wallMs / b.wallMs).toFixed(2)}×` : '';

/**
 * Markdown: per layout, pass and mask, one row per size and head dim with the three variants'
 * times, the mask's and dense's time over the lengths', and the pairs the lengths leave.
 */
export function varlenMarkdown(results: VarlenResult[]): string {
  const out: string[] = [];
  const groups = new Map<string, VarlenResult[]>();
  for (const r of results) {
    const key = `${r.layout}|${r.pass}|${r.causal}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(r);
  }
  for (const [key, rs] of groups) {
    const [layout, pass, causal] = key.split('|');
    const what = layout === 'ragged'
      ? `ragged batch (B = ${RAGGED_BATCH}, lengths over [N/8, N]): seqLensQ/K vs a [B, 1, N, N] bool mask vs dense`
      : 'packed documents: flashAttentionVarlen vs one call with a block-diagonal mask vs one dense call';
    out.push(`### ${pass === 'fwd' ? 'Forward' : 'Forward + backward'}, ${causal === 'true' ? 'causal' : 'no mask'}, ${what} (H = ${rs[0].heads})`,
             '',
             '| N | d | lengths | lengths ms (GPU) | mask ms (GPU) | dense ms (GPU) | mask / lengths | dense / lengths | Σ len² / dense pairs |',
             '|---|---|---|---|---|---|---|---|---|');
    const shapes = [...new Set(rs.map(r => `${r.seq}|${r.headDim}`))];
    for (const s of shapes) {
      const [seq, headDim] = s.split('|').map(Number);
      const at = (v: VarlenVariant) => rs.find(r => r.seq === seq && r.headDim === headDim && r.variant === v);
      const [l, m, d] = [at('lengths'), at('mask'), at('dense')];
      const any = l ?? m ?? d!;
      out.push(`| ${seq} | ${headDim} | ${any.lengths.join(', ')} | ${ms(l)} | ${ms(m)} | ${ms(d)} | ${ratio(m, l)} | ${ratio(d, l)} | ` +
               `${(any.pairs / any.densePairs).toFixed(3)} |`);
    }
    out.push('');
  }
  const notes = results.filter(r => r.note).map(r =>
    `- ${r.layout} ${r.variant} ${r.pass} N=${r.seq} d=${r.headDim} ${r.causal ? 'causal' : 'full'}: ${r.status} — ${r.note}`);
  if (notes.length) out.push('Notes:', '', ...notes, '');
  return out.join('\n');
}
