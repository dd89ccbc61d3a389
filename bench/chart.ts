/**
 * The benchmark's chart: TFLOP/s against sequence length, a panel per pass (rows) × head dim and
 * mask (columns), a line per implementation in results.json (flash, composite, and whatever peers
 * a run measured), solid from wall time and dashed from GPU time, and a cross with its reason where
 * a case could not run. The figure is charts/specs.ts's length sweep; charts/render.ts draws it.
 */
import type { TopLevelSpec } from 'vega-lite';
import { ChartFiles, writeChart } from '../charts/render';
import { SweepFailure, SweepPoint, sweepSpec } from '../charts/specs';
import { CaseResult, RunRecord } from './report';

/** TFLOP/s on GPUs; GFLOP/s or MFLOP/s where a CPU-sized run would print only zeros. */
export function throughputUnit(maxTflops: number): { name: string; factor: number } {
  if (maxTflops >= 0.1 || maxTflops === 0) return { name: 'TFLOP/s', factor: 1 };
  if (maxTflops * 1e3 >= 0.1) return { name: 'GFLOP/s', factor: 1e3 };
  return { name: 'MFLOP/s', factor: 1e6 };
}

/** The short reason under a cross. */
export const STATUS_MARK: Record<string, string> = {
  OOM: 'OOM', 'too large': '>2GB', validation: 'ERR', 'device lost': 'LOST', error: 'ERR', wrong: 'WRONG', skipped: 'SKIP',
};
export const TIMINGS = ['wall time', 'GPU time'] as const;
const PASS_LABEL: Record<string, string> = { fwd: 'forward', 'fwd+bwd': 'forward + backward' };
const panelRow = (r: CaseResult) => PASS_LABEL[r.pass] ?? r.pass;
const panelColumn = (r: CaseResult) => `d = ${r.headDim}, ${r.causal ? 'causal' : 'no mask'}`;
const ms = (x: number | null | undefined) => (x === null || x === undefined ? '–' : `${x.toPrecision(3)} ms`);

/** flash and composite first, then the other implementations in the order the run measured them. */
export function implementations(results: readonly CaseResult[]): string[] {
  const seen = [...new Set(results.map(r => r.impl as string))];
  const known = ['flash', 'composite'].filter(i => seen.includes(i));
  return [...known, ...seen.filter(i => !known.includes(i))];
}

/** The chart of a run as a Vega-Lite spec. */
export function benchChartSpec(run: RunRecord): TopLevelSpec {
  const { meta, results } = run;
  const unit = throughputUnit(Math.max(0, ...results.flatMap(r => [r.tflopsWall ?? 0, r.tflopsGpu ?? 0])));
  const series = implementations(results);
  const passOrder = (p: string) => (p === 'fwd' ? 0 : 1);
  const sorted = [...results].sort((a, b) => passOrder(a.pass) - passOrder(b.pass) || a.headDim - b.headDim ||
                                             Number(a.causal) - Number(b.causal) || a.seq - b.seq);
  const points: SweepPoint[] = [];
  const failures: SweepFailure[] = [];
  for (const r of sorted) {
    const where = { seq: r.seq, series: r.impl, row: panelRow(r), column: panelColumn(r) };
    if (r.status === 'ok') {
      const detail = `${ms(r.wallMs)} wall, ${ms(r.gpuMs)} GPU`;
      if (r.tflopsWall) points.push({ ...where, timing: TIMINGS[0], value: r.tflopsWall * unit.factor, detail });
      if (r.tflopsGpu) points.push({ ...where, timing: TIMINGS[1], value: r.tflopsGpu * unit.factor, detail });
    } else {
      failures.push({ ...where, label: STATUS_MARK[r.status] ?? r.status, skipped: r.status === 'skipped',
                      detail: r.note?.slice(0, 120) });
    }
  }
  const a = meta.adapter as Record<string, unknown> | null;
  const device = meta.nvidiaSmi?.split(',')[0] ??
      (a ? [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' ') : 'cpu');
  const variant = a?.subgroups ? ' (subgroups device)' : '';
  const first = results[0];
  return sweepSpec(points, failures, {
    title: `${series.join(' vs ')}: ${unit.name} against sequence length (B = ${first?.batch ?? 1}, H = ${first?.heads ?? '?'})`,
    subtitle: [
      `${meta.backend}${variant} on ${device}, ${meta.date.slice(0, 10)}${meta.gitCommit ? `, commit ${meta.gitCommit}` : ''}`,
      'solid lines, dots: from wall time (median, dispatch to readback); dashed lines, circles: from GPU time (kernel timestamps)',
      'crosses: could not run (OOM: out of memory; >2GB: over the binding limit); SKIP: not run (deadline, too slow)',
    ],
    yTitle: unit.name,
    series,
    timings: TIMINGS,
    rows: [...new Set(sorted.map(panelRow))],
    columns: [...new Set([...sorted].sort((x, y) => x.headDim - y.headDim || Number(x.causal) - Number(y.causal))
                                    .map(panelColumn))],
    seqs: [...new Set(results.map(r => r.seq))],
    width: 260,
    height: 200,
  });
}

/** Writes chart.svg and chart.png (where the PNG renderer loads) into dir. */
export function writeBenchChart(run: RunRecord, dir: string): Promise<ChartFiles> {
  return writeChart(benchChartSpec(run), `${dir}/chart`);
}
