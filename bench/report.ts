/**
 * Results: the JSON record of a run and its Markdown rendering (one table per pass, head dim and
 * mask, flash and composite side by side).
 */
import { attentionFlops, attentionMinBytes, BenchCase, Ceilings, floorMs, Impl, Pass, Sweep } from './cases';

export type Status = 'ok' | 'wrong' | 'OOM' | 'too large' | 'validation' | 'device lost' | 'error' | 'skipped';

export interface CaseResult extends BenchCase {
  status: Status;
  /** Why a case is not 'ok' (the WebGPU error, the estimate that skipped it, ...). */
  note?: string;
  flops: number;
  minBytes: number;
  wallMs?: number;
  wallAllMs?: number[];
  gpuMs?: number | null;
  tflopsWall?: number;
  tflopsGpu?: number | null;
  /** Most WebGPU buffer bytes live at once, inputs included; null off WebGPU. */
  peakBytes?: number | null;
  /** Relative error of the checked rows of out (fwd) or dq (fwd+bwd) against float64. */
  relErr?: number;
  /** WebGPU bytes live when the case started (its inputs; more would mean a leak upstream). */
  liveBeforeBytes?: number | null;
  headsPerChunk?: number;
  warmupCalls?: number;
  /** onnxruntime: GPU ms per run of its programs other than FlashAttention (CopyKVCache). */
  otherGpuMs?: Record<string, number>;
}

export interface RunMeta {
  date: string;
  backend: string;
  /** GPUAdapterInfo fields, or the backend name off WebGPU. */
  adapter: Record<string, unknown> | null;
  /** nvidia-smi's one-line description where the machine has one. */
  nvidiaSmi: string | null;
  tfjsVersion: string;
  node: string;
  gitCommit: string | null;
  argv: string[];
  ceilings: Ceilings;
  /** Seconds the whole run took. */
  elapsedS?: number;
  /** The onnxruntime peer's package and execution provider, where it ran. */
  onnxruntime?: string;
}

export interface RunRecord {
  meta: RunMeta;
  results: CaseResult[];
}

/** A result with its FLOP and byte counts filled in from its shape. */
export function baseResult(c: BenchCase, status: Status, note?: string): CaseResult {
  return {
    ...c, status, ...(note ? { note } : {}),
    flops: attentionFlops(c, c.pass), minBytes: attentionMinBytes(c, c.pass),
  };
}

const MiB = 2 ** 20;
const fmt = (x: number | null | undefined, digits: number) =>
  x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(digits);
/** Three significant digits: tiny CPU-sized throughputs stay readable next to GPU ones. */
const sig = (x: number | null | undefined) =>
  x === null || x === undefined || !Number.isFinite(x) ? '–' : x >= 100 ? x.toFixed(0) : x.toPrecision(3);
const fmtMs = (x: number | null | undefined) =>
  x === null || x === undefined ? '–' : x < 10 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(1);

/** "ms (GPU ms)" for an ok case, else its status in capitals-first words. */
function timeCell(r: CaseResult | undefined): string {
  if (!r) return '–';
  if (r.status !== 'ok' && r.status !== 'wrong') return r.status === 'skipped' ? 'skipped' : `**${r.status}**`;
  const wrong = r.status === 'wrong' ? ' **WRONG**' : '';
  return `${fmtMs(r.wallMs)} (${fmtMs(r.gpuMs)})${wrong}`;
}

function tflopsCell(r: CaseResult | undefined): string {
  if (!r || (r.status !== 'ok' && r.status !== 'wrong')) return '–';
  return `${sig(r.tflopsWall)} (${sig(r.tflopsGpu)})`;
}

function ratio(a: number | null | undefined, b: number | null | undefined): string {
  return a && b ? `${(a / b).toFixed(2)}×` : '–';
}

function peakCell(r: CaseResult | undefined): string {
  if (!r || r.peakBytes === undefined || r.peakBytes === null) return '–';
  return fmt(r.peakBytes / MiB, 0);
}

/**
 * Columns after flash's and the composite's. onnxruntime's wall time includes copying q, k, v
 * from the host and the output back (session.run), so only its GPU time is compared.
 */
const EXTRA_COLUMNS: ReadonlyArray<{ impl: Impl; label: string; short: string; gpuOnly: boolean }> = [
  { impl: 'flash-subgroups', label: 'flash, subgroups device,', short: 'subgroups wall (GPU)', gpuOnly: false },
  { impl: 'onnxruntime-f32', label: 'onnxruntime f32', short: 'ort f32 (GPU)', gpuOnly: true },
  { impl: 'onnxruntime-f16', label: 'onnxruntime f16', short: 'ort f16 (GPU)', gpuOnly: true },
];

/** The Markdown report: a heading, how to read it, then one table per pass × head dim × mask. */
export function markdownReport(run: RunRecord): string {
  const { meta, results } = run;
  const adapter = meta.adapter ? Object.entries(meta.adapter).filter(([, v]) => v !== '' && v !== undefined)
                                   .map(([k, v]) => `${k}: ${v}`).join(', ') : 'none';
  const lines: string[] = [
    `Run ${meta.date}, backend **${meta.backend}**, adapter ${adapter}` +
    (meta.nvidiaSmi ? `; nvidia-smi: ${meta.nvidiaSmi}` : '') +
    `; tfjs ${meta.tfjsVersion}, Node ${meta.node}${meta.gitCommit ? `, commit ${meta.gitCommit}` : ''}.`,
    '',
    'Cells: wall ms = median of dispatch + 1-element readback, (GPU ms) = sum of kernel timestamps ' +
    '(tf.time); TFLOP/s from wall (and GPU) time with forward = 4·B·H·N²·d, halved for causal, ' +
    'forward+backward = 3.5× forward; speed-up = composite ÷ flash; peak = most WebGPU buffer ' +
    'MiB live at once, inputs included. "flash, subgroups device": flash on the opt-in device of ' +
    'useWebGPUWithSubgroups. onnxruntime: its WebGPU MultiHeadAttention (forward only), GPU ms = its ' +
    "profiler's FlashAttention program; its wall ms include session.run's host copies, so only GPU " +
    `time is compared${meta.onnxruntime ? ` (${meta.onnxruntime})` : ''}. Floor = max(FLOPs ÷ ${meta.ceilings.tflops} TFLOP/s, ` +
    `bytes ÷ ${meta.ceilings.gbPerS} GB/s).`,
  ];
  const groups: Array<{ pass: Pass; headDim: number; causal: boolean; heads: number; batch: number }> = [];
  for (const r of results) {
    if (!groups.some(g => g.pass === r.pass && g.headDim === r.headDim && g.causal === r.causal &&
                          g.heads === r.heads && g.batch === r.batch)) {
      groups.push({ pass: r.pass, headDim: r.headDim, causal: r.causal, heads: r.heads, batch: r.batch });
    }
  }
  const passOrder = (p: Pass) => (p === 'fwd' ? 0 : 1);
  groups.sort((a, b) => passOrder(a.pass) - passOrder(b.pass) || a.headDim - b.headDim ||
                        Number(a.causal) - Number(b.causal));
  for (const g of groups) {
    const inGroup = results.filter(r => r.pass === g.pass && r.headDim === g.headDim && r.causal === g.causal &&
                                        r.heads === g.heads && r.batch === g.batch);
    // The other implementations of this table (subgroups device, the onnxruntime peer), each with
    // its ratio to the composite.
    const extras = EXTRA_COLUMNS.filter(e => inGroup.some(r => r.impl === e.impl));
    lines.push('', `### ${g.pass === 'fwd' ? 'Forward' : 'Forward + backward'}, d = ${g.headDim}, ` +
               `${g.causal ? 'causal' : 'no mask'} (B = ${g.batch}, H = ${g.heads})`, '',
               '| N | GFLOP | floor ms | flash ms (GPU) | composite ms (GPU) | speed-up wall (GPU) | ' +
               extras.map(e => `${e.label} ms (GPU) | composite ÷ ${e.short} | `).join('') +
               'flash TFLOP/s | composite TFLOP/s | flash peak MiB | composite peak MiB |',
               `|${'---:|'.repeat(10 + 2 * extras.length)}`);
    const seqs = [...new Set(inGroup.map(r => r.seq))].sort((a, b) => a - b);
    for (const seq of seqs) {
      const shape = { ...g, seq, impl: 'flash' as const };
      const find = (impl: Impl) => inGroup.find(r => r.impl === impl && r.seq === seq);
      const flash = find('flash');
      const comp = find('composite');
      const okFlash = flash?.status === 'ok', okComp = comp?.status === 'ok';
      const extraCells = extras.map(e => {
        const r = find(e.impl);
        const ok = r?.status === 'ok' && okComp;
        const speedup = !ok ? '–' : e.gpuOnly ? `(${ratio(comp!.gpuMs, r!.gpuMs)})`
                                              : `${ratio(comp!.wallMs, r!.wallMs)} (${ratio(comp!.gpuMs, r!.gpuMs)})`;
        return `${timeCell(r)} | ${speedup} | `;
      }).join('');
      lines.push(`| ${seq} | ${fmt(attentionFlops(shape, g.pass) / 1e9, 1)} | ` +
                 `${fmtMs(floorMs(shape, g.pass, meta.ceilings))} | ${timeCell(flash)} | ${timeCell(comp)} | ` +
                 `${okFlash && okComp ? `${ratio(comp!.wallMs, flash!.wallMs)} (${ratio(comp!.gpuMs, flash!.gpuMs)})` : '–'} | ` +
                 extraCells +
                 `${tflopsCell(flash)} | ${tflopsCell(comp)} | ${peakCell(flash)} | ${peakCell(comp)} |`);
    }
  }
  const notes = results.filter(r => r.note);
  if (notes.length) {
    lines.push('', 'Notes:', '');
    for (const r of notes) {
      lines.push(`- ${r.impl} ${r.pass} N=${r.seq} d=${r.headDim} ${r.causal ? 'causal' : 'full'}: ` +
                 `${r.status} — ${r.note}`);
    }
  }
  return lines.join('\n') + '\n';
}

/**
 * The floor of a sweep before anything runs: useful FLOPs, the fewest bytes, and the time neither
 * can beat at the given ceilings (causal halves the FLOPs, not the bytes).
 */
export function floorTable(w: Sweep, c: Ceilings): string {
  const lines = [
    `Floor at ${c.tflops} TFLOP/s and ${c.gbPerS} GB/s (B = ${w.batch}, H = ${w.heads}); ` +
    'causal halves GFLOP and compute time.', '',
    '| d | N | fwd GFLOP | fwd min MB | fwd floor ms | fwd+bwd GFLOP | fwd+bwd min MB | fwd+bwd floor ms | bound by |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const headDim of w.headDims) {
    for (const seq of w.seqs) {
      const s = { batch: w.batch, heads: w.heads, seq, headDim, causal: false };
      const computeBound = attentionFlops(s, 'fwd') / (c.tflops * 1e9) >= attentionMinBytes(s, 'fwd') / (c.gbPerS * 1e6);
      const cells = (['fwd', 'fwd+bwd'] as const).map(p =>
          `${fmt(attentionFlops(s, p) / 1e9, 1)} | ${fmt(attentionMinBytes(s, p) / 1e6, 1)} | ${fmtMs(floorMs(s, p, c))}`);
      lines.push(`| ${headDim} | ${seq} | ${cells.join(' | ')} | ${computeBound ? 'FLOPs' : 'bytes'} |`);
    }
  }
  return lines.join('\n') + '\n';
}
