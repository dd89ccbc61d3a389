/**
 * The project's figures as Vega-Lite specs, one definition per figure, shared by every place that
 * shows it: the length sweep (the bench's chart.png and the demo's time and memory charts) and
 * the loss curve (the training example's loss.png and the demo's live loss). Plain data in, a spec
 * out: no Node and no DOM here, so the demo bundles this file and Node renders the same specs
 * (charts/render.ts).
 */
import type { TopLevelSpec } from 'vega-lite';

/** The name of every spec's dataset: a live chart replaces its rows through view.data(DATA, rows). */
export const DATA = 'points';

/** Colours of the series that appear in more than one figure; other series take the palette. */
export const SERIES_COLORS: Record<string, string> = {
  flash: '#1f77b4', composite: '#ff7f0e', stock: '#d62728', onnxruntime: '#2ca02c', loss: '#2ca02c',
};
const PALETTE = ['#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];
const FAILURE = '#c81e1e';

/** A colour per series, in the given order: the known ones from SERIES_COLORS, the rest from a palette. */
export function seriesColors(series: readonly string[]): string[] {
  let next = 0;
  return series.map(s => SERIES_COLORS[s] ?? PALETTE[next++ % PALETTE.length]);
}

/** A log axis with a few labelled ticks (1, 2, 5 per decade at most) instead of a grid line per digit. */
const LOG_AXIS = { tickCount: 4, format: '~g' } as const;

/** 512, 1K, 2K, ..., as sequence lengths are usually written. */
export const SEQ_LABEL_EXPR = "datum.value >= 1024 && datum.value % 1024 == 0 ? (datum.value / 1024) + 'K' : '' + datum.value";

/** One measured point of a length sweep: a series' value at a sequence length (in one panel). */
export interface SweepPoint {
  seq: number;
  series: string;
  value: number;
  /** How the value was measured when a series has more than one line (the bench: wall, GPU). */
  timing?: string;
  /** Facet labels (the bench: pass as rows, head dim and mask as columns). */
  row?: string;
  column?: string;
  /** Shown on hover only. */
  detail?: string;
}

/** A point where a series could not run (drawn as a cross with its reason) or was skipped. */
export interface SweepFailure {
  seq: number;
  series: string;
  /** Short label under the cross: OOM, >2GB, ... */
  label: string;
  skipped?: boolean;
  row?: string;
  column?: string;
  detail?: string;
}

export interface SweepOptions {
  title: string;
  subtitle?: string | string[];
  yTitle: string;
  /** Log y where values span decades (time and memory); linear for throughput. */
  logY?: boolean;
  /** Every series, in legend order. */
  series: readonly string[];
  /** Their colours; by default seriesColors(series). */
  colors?: readonly string[];
  /** The timing kinds, in legend order: the first is drawn solid with dots, the others dashed. */
  timings?: readonly string[];
  /** Facet orders; omitted for a single panel. */
  rows?: readonly string[];
  columns?: readonly string[];
  /** The x ticks: the sequence lengths of the sweep. */
  seqs: readonly number[];
  /** One panel's size in pixels. */
  width?: number;
  height?: number;
}

/**
 * The length sweep: a value against sequence length (log2 x, one tick per length), a line per
 * series (and per timing kind, solid or dashed), and a cross where a series could not run.
 */
export function sweepSpec(points: readonly SweepPoint[], failures: readonly SweepFailure[],
                          o: SweepOptions): TopLevelSpec {
  const faceted = !!(o.rows?.length || o.columns?.length);
  const timings = o.timings ?? [];
  const seqs = [...o.seqs].sort((a, b) => a - b);
  const x = {
    field: 'seq', type: 'quantitative', title: 'sequence length N',
    scale: { type: 'log', base: 2, domain: seqs.length ? [seqs[0], seqs[seqs.length - 1]] : undefined, nice: false, padding: 12 },
    axis: { values: seqs, labelExpr: SEQ_LABEL_EXPR, labelOverlap: 'parity', grid: true },
  } as const;
  const y = {
    field: 'value', type: 'quantitative', title: o.yTitle, scale: o.logY ? { type: 'log' } : { zero: true },
    axis: o.logY ? LOG_AXIS : {},
  } as const;
  const color = {
    field: 'series', type: 'nominal', title: null,
    scale: { domain: [...o.series], range: o.colors ?? seriesColors(o.series) },
    legend: { orient: 'top', direction: 'horizontal', symbolType: 'stroke', symbolStrokeWidth: 3 },
  } as const;
  const tooltip = [
    { field: 'series', title: 'series' }, { field: 'seq', title: 'N' },
    ...(timings.length ? [{ field: 'timing', title: 'from' }] : []),
    { field: 'value', title: o.yTitle, format: '.4~g' }, { field: 'detail', title: 'detail' },
  ];
  const strokeDash = timings.length > 1 ? {
    strokeDash: {
      field: 'timing', type: 'nominal', title: null,
      scale: { domain: [...timings], range: timings.map((_, i) => (i === 0 ? [1, 0] : [5, 4])) },
      legend: { orient: 'top', direction: 'horizontal', symbolStrokeColor: '#444', symbolSize: 400 },
    },
  } : {};
  const firstTiming = timings.length ? `datum.timing === ${JSON.stringify(timings[0])}` : 'true';
  const layer = [
    {
      transform: [{ filter: 'datum.kind === "point"' }],
      mark: { type: 'line', strokeWidth: 2.5, clip: true },
      encoding: {
        x, y, color, ...strokeDash, tooltip,
        detail: { field: 'timing' },
        // Thin lines for the other timing kinds: the first kind is the headline.
        strokeWidth: timings.length > 1 ? {
          condition: { test: firstTiming, value: 2.5 }, value: 1.25,
        } : { value: 2.5 },
      },
    },
    {
      transform: [{ filter: `datum.kind === "point" && ${firstTiming}` }],
      mark: { type: 'point', filled: true, size: 40 },
      encoding: { x, y, color, tooltip },
    },
    // Open dots for the other timing kinds, so a sweep of a single length still shows them.
    ...(timings.length > 1 ? [{
      transform: [{ filter: `datum.kind === "point" && !(${firstTiming})` }],
      mark: { type: 'point', filled: false, size: 30, strokeWidth: 1.5, opacity: 1 },
      encoding: { x, y, color, tooltip },
    }] : []),
    {
      transform: [{ filter: 'datum.kind === "failure"' }],
      mark: { type: 'point', shape: 'M-1,-1L1,1M-1,1L1,-1', filled: false, size: 90, strokeWidth: 3, color: FAILURE, opacity: 1 },
      encoding: { x, y, tooltip: [{ field: 'series' }, { field: 'seq', title: 'N' }, { field: 'label', title: 'status' }, { field: 'detail' }] },
    },
    {
      transform: [{ filter: 'datum.kind === "failure" || datum.kind === "skipped"' }],
      mark: { type: 'text', dy: -13, fontSize: 11, fontWeight: 'bold' },
      encoding: {
        x, y, text: { field: 'label' },
        color,
        // Skipped is not a failure: the label alone, lighter.
        opacity: { condition: { test: 'datum.kind === "skipped"', value: 0.6 }, value: 1 },
      },
    },
  ];
  const base = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: o.title, subtitle: o.subtitle, anchor: 'start', fontSize: 15, subtitleFontSize: 12 },
    data: { name: DATA, values: sweepRows(points, failures, o) },
    config: { view: { stroke: '#ccc' }, axis: { titleFontSize: 12, labelFontSize: 11 }, legend: { labelFontSize: 12 } },
  } as const;
  const size = { width: o.width ?? 280, height: o.height ?? 220 };
  if (!faceted) return { ...base, ...size, layer } as unknown as TopLevelSpec;
  return {
    ...base,
    facet: {
      ...(o.rows?.length ? { row: { field: 'row', type: 'nominal', title: null, sort: [...o.rows], header: { labelFontSize: 13, labelFontWeight: 'bold' } } } : {}),
      ...(o.columns?.length ? { column: { field: 'column', type: 'nominal', title: null, sort: [...o.columns], header: { labelFontSize: 13, labelFontWeight: 'bold' } } } : {}),
    },
    spec: { ...size, layer },
  } as unknown as TopLevelSpec;
}

/**
 * The dataset of sweepSpec: the points, and the failures placed along the bottom of their panel,
 * one band per series so that crosses never overlap. A live chart passes these to view.data(DATA).
 */
export function sweepRows(points: readonly SweepPoint[], failures: readonly SweepFailure[],
                          o: Pick<SweepOptions, 'logY' | 'series'>): Array<Record<string, unknown>> {
  const positive = points.filter(p => Number.isFinite(p.value) && (!o.logY || p.value > 0));
  const top = Math.max(0, ...positive.map(p => p.value));
  const bottom = Math.min(...positive.map(p => p.value));
  const markAt = (series: string) => {
    const i = Math.max(0, o.series.indexOf(series));
    if (!o.logY) return (top || 1) * (0.05 + 0.16 * i);
    const lo = Number.isFinite(bottom) ? bottom : 1, hi = top || lo * 10;
    return lo * (hi / lo) ** (0.05 + 0.16 * i) || lo;
  };
  return [
    ...points.map(p => ({ kind: 'point', ...p })),
    ...failures.map(f => ({ kind: f.skipped ? 'skipped' : 'failure', ...f, value: markAt(f.series) })),
  ];
}

export interface LossOptions {
  title: string;
  yTitle: string;
  /** Log y where the loss falls by decades (the demo's MSE); linear for nats per token. */
  logY?: boolean;
  series?: string;
  /** Dots on the line; by default while there are few steps. */
  points?: boolean;
  width?: number;
  height?: number;
}

/** The loss curve: loss against step, one line (dots while there are few steps). */
export function lossSpec(losses: readonly number[], o: LossOptions): TopLevelSpec {
  const series = o.series ?? 'loss';
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: o.title, anchor: 'start', fontSize: 15 },
    width: o.width ?? 560, height: o.height ?? 260,
    data: { name: DATA, values: lossRows(losses, series) },
    config: { view: { stroke: '#ccc' }, axis: { titleFontSize: 12, labelFontSize: 11 } },
    mark: { type: 'line', strokeWidth: 2, point: (o.points ?? losses.length <= 64) ? { filled: true, size: 30 } : false },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'step', scale: { zero: false, nice: false, padding: 8 }, axis: { tickMinStep: 1, format: 'd' } },
      y: { field: 'loss', type: 'quantitative', title: o.yTitle, scale: o.logY ? { type: 'log' } : { zero: false }, axis: o.logY ? LOG_AXIS : {} },
      color: {
        field: 'series', type: 'nominal', title: null,
        scale: { domain: [series], range: seriesColors([series]) }, legend: null,
      },
      tooltip: [{ field: 'step' }, { field: 'loss', format: '.4~g' }],
    },
  } as unknown as TopLevelSpec;
}

/** The rows of the loss curve: step from 1; a non-finite loss becomes null, where the line breaks. */
export function lossRows(losses: readonly number[], series = 'loss'): Array<{ step: number; loss: number | null; series: string }> {
  return losses.map((loss, i) => ({ step: i + 1, loss: Number.isFinite(loss) ? loss : null, series }));
}
