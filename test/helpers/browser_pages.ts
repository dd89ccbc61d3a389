/**
 * What the browser test runs inside the page. runFlashInPage is serialised by Playwright
 * (page.evaluate), so it must be self-contained: it sees only its argument and the page's global
 * tf, never this module's imports.
 */
import type * as tfTypes from '@tensorflow/tfjs';
import { CaseData, CaseSpec } from './attention_case';

/** A page that loads tfjs, the WebGPU backend and our <script> build, as a user's page would. */
export const CHECK_PAGE_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>flashAttention check</title></head>
<body>
<script src="vendor/tf.min.js"></script>
<script src="vendor/tf-backend-webgpu.min.js"></script>
<script src="dist/tfjs-flash-attention.min.js"></script>
</body></html>`;

/** An empty page on the test server, for scripts the test injects itself. */
export const BLANK_PAGE_HTML = '<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body></body></html>';

/** A case in plain data, as it crosses into the page. */
export interface PageCase {
  backend: string;
  shapes: { q: number[]; k: number[]; v: number[] };
  q: number[]; k: number[]; v: number[]; dy: number[];
  options: {
    causal?: boolean; windowSize?: [number, number]; softcap?: number; alibiSlopes?: number[];
    dropoutRate?: number; scale?: number; seed: number;
  };
  mask?: { values: number[]; shape: number[] };
}

export interface PageResult {
  backend: string;
  /** Whether the backend has our fused kernel (else flashAttention took the blockwise fallback). */
  fusedKernel: boolean;
  out: number[]; lse: number[]; dq: number[]; dk: number[]; dv: number[];
}

export function toPageCase(backend: string, c: CaseSpec, d: CaseData): PageCase {
  const { batch: B, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
  const options: PageCase['options'] = { seed: c.seed };
  if (c.causal) options.causal = true;
  if (c.windowSize) options.windowSize = c.windowSize;
  if (c.softcap) options.softcap = c.softcap;
  if (d.slopes) options.alibiSlopes = Array.from(d.slopes);
  if (c.dropoutRate) options.dropoutRate = c.dropoutRate;
  if (c.scale !== undefined) options.scale = c.scale;
  return {
    backend,
    shapes: { q: [B, seqQ, heads, headDim], k: [B, seqK, kvHeads, headDim], v: [B, seqK, kvHeads, headDimV] },
    q: Array.from(d.q), k: Array.from(d.k), v: Array.from(d.v), dy: Array.from(d.dy),
    options,
    mask: d.mask ? { values: Array.from(d.mask), shape: c.maskShape! } : undefined,
  };
}

/** Runs in the page: flashAttention forward and tf.grads of sum(out * dy) on pc.backend. */
export async function runFlashInPage(pc: PageCase): Promise<PageResult> {
  const tf = (globalThis as unknown as { tf: typeof tfTypes & { flashAttention: Function } }).tf;
  if (!(await tf.setBackend(pc.backend))) throw new Error(`setBackend('${pc.backend}') failed in the page`);
  await tf.ready();
  const q = tf.tensor(pc.q, pc.shapes.q), k = tf.tensor(pc.k, pc.shapes.k), v = tf.tensor(pc.v, pc.shapes.v);
  const dy = tf.tensor(pc.dy, [...pc.shapes.q.slice(0, 3), pc.shapes.v[3]]);
  const mask = pc.mask ? tf.tensor(pc.mask.values, pc.mask.shape, 'bool') : undefined;
  const options = mask ? { ...pc.options, mask } : pc.options;
  try {
    const { output, logSumExp } = tf.flashAttention(q, k, v, { ...options, returnLogSumExp: true });
    const grads = tf.grads((a: tfTypes.Tensor, b: tfTypes.Tensor, c: tfTypes.Tensor) =>
        tf.sum(tf.mul(tf.flashAttention(a, b, c, options), dy)));
    const [dq, dk, dv] = grads([q, k, v]);
    const read = async (t: tfTypes.Tensor) => Array.from(await t.data() as Float32Array);
    const result: PageResult = {
      backend: tf.getBackend(),
      fusedKernel: tf.getKernel('FlashAttention', tf.getBackend()) != null,
      out: await read(output), lse: await read(logSumExp),
      dq: await read(dq), dk: await read(dk), dv: await read(dv),
    };
    tf.dispose([output, logSumExp, dq, dk, dv]);
    return result;
  } finally {
    tf.dispose([q, k, v, dy, ...(mask ? [mask] : [])]);
  }
}
