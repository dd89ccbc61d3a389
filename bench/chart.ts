/**
 * The benchmark's chart, drawn pixel by pixel into a PNG with pngjs: TFLOP/s against sequence
 * length, one panel per pass × head dim × mask, flash against the composite, wall time solid and
 * GPU time dashed, and a marked cross where a case ran out of memory or could not run.
 */
import { PNG } from 'pngjs';
import { Pass } from './cases';
import { ADVANCE, GLYPH_HEIGHT, GLYPH_WIDTH, glyph } from './font';
import { CaseResult, RunRecord } from './report';

type RGB = [number, number, number];

const WHITE: RGB = [255, 255, 255];
const INK: RGB = [40, 40, 40];
const GRID: RGB = [225, 225, 225];
const FLASH: RGB = [31, 119, 180];
const COMPOSITE: RGB = [230, 120, 20];
const FAILURE: RGB = [200, 30, 30];
const SKIPPED: RGB = [150, 150, 150];

/** An RGBA raster with the few primitives a line chart needs. */
export class Raster {
  readonly png: PNG;

  constructor(readonly width: number, readonly height: number) {
    this.png = new PNG({ width, height });
    this.fillRect(0, 0, width, height, WHITE);
  }

  setPixel(x: number, y: number, [r, g, b]: RGB): void {
    x = Math.round(x); y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const i = (y * this.width + x) * 4;
    this.png.data[i] = r; this.png.data[i + 1] = g; this.png.data[i + 2] = b; this.png.data[i + 3] = 255;
  }

  getPixel(x: number, y: number): RGB {
    const i = (y * this.width + x) * 4;
    return [this.png.data[i], this.png.data[i + 1], this.png.data[i + 2]];
  }

  fillRect(x: number, y: number, w: number, h: number, color: RGB): void {
    for (let yy = Math.round(y); yy < Math.round(y + h); yy++) {
      for (let xx = Math.round(x); xx < Math.round(x + w); xx++) this.setPixel(xx, yy, color);
    }
  }

  disc(cx: number, cy: number, radius: number, color: RGB): void {
    const r = Math.max(radius, 0.5);
    for (let y = Math.floor(cy - r); y <= Math.ceil(cy + r); y++) {
      for (let x = Math.floor(cx - r); x <= Math.ceil(cx + r); x++) {
        if ((x - cx) ** 2 + (y - cy) ** 2 <= r * r) this.setPixel(x, y, color);
      }
    }
  }

  /** A line of the given width; dash > 0 draws dash pixels on, dash pixels off. */
  line(x0: number, y0: number, x1: number, y1: number, color: RGB, width = 1, dash = 0): void {
    const length = Math.hypot(x1 - x0, y1 - y0);
    const steps = Math.max(1, Math.ceil(length * 2));
    for (let s = 0; s <= steps; s++) {
      const t = s / steps;
      if (dash > 0 && Math.floor((t * length) / dash) % 2 === 1) continue;
      const x = x0 + (x1 - x0) * t, y = y0 + (y1 - y0) * t;
      if (width <= 1) this.setPixel(x, y, color);
      else this.disc(x, y, width / 2, color);
    }
  }

  /** Text with its top-left corner at (x, y), each font pixel drawn scale × scale. */
  text(x: number, y: number, s: string, color: RGB, scale = 2): void {
    [...s].forEach((ch, n) => {
      glyph(ch).forEach((bits, row) => {
        for (let col = 0; col < GLYPH_WIDTH; col++) {
          if (bits & (1 << (GLYPH_WIDTH - 1 - col))) {
            this.fillRect(x + (n * ADVANCE + col) * scale, y + row * scale, scale, scale, color);
          }
        }
      });
    });
  }

  encode(): Buffer {
    return PNG.sync.write(this.png);
  }
}

export const textWidth = (s: string, scale = 2) => [...s].length * ADVANCE * scale - scale;
const TEXT_HEIGHT = GLYPH_HEIGHT * 2;

/** A round step (1, 2 or 5 × 10^k) that splits [0, max] into at most about five intervals. */
export function niceStep(max: number): number {
  if (!(max > 0)) return 1;
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map(m => m * p).find(s => s >= raw)!;
}

/** TFLOP/s on GPUs; GFLOP/s or MFLOP/s where a CPU-sized run would print only zeros. */
export function throughputUnit(maxTflops: number): { name: string; factor: number } {
  if (maxTflops >= 0.1 || maxTflops === 0) return { name: 'TFLOP/s', factor: 1 };
  if (maxTflops * 1e3 >= 0.1) return { name: 'GFLOP/s', factor: 1e3 };
  return { name: 'MFLOP/s', factor: 1e6 };
}

const seqLabel = (n: number) => (n >= 1024 && n % 1024 === 0 ? `${n / 1024}K` : String(n));
const STATUS_MARK: Record<string, string> = {
  OOM: 'OOM', 'too large': '>2GB', validation: 'ERR', 'device lost': 'LOST', error: 'ERR', wrong: 'WRONG',
};

interface Panel { pass: Pass; headDim: number; causal: boolean; }

/** Renders the chart of a run; panels are laid out with passes as rows, (d, mask) as columns. */
export function renderChart(run: RunRecord): Buffer {
  const results = run.results;
  const passes = [...new Set(results.map(r => r.pass))].sort();
  const columns = [...new Map(results.map(r => [`${r.headDim}/${r.causal}`, { headDim: r.headDim, causal: r.causal }])).values()]
      .sort((a, b) => a.headDim - b.headDim || Number(a.causal) - Number(b.causal));
  const seqs = [...new Set(results.map(r => r.seq))].sort((a, b) => a - b);

  const panelW = 340, left = 20, top = 118, panelH = 300;
  const width = Math.max(1040, left * 2 + panelW * Math.max(columns.length, 1));
  const height = top + panelH * Math.max(passes.length, 1) + 30;
  const img = new Raster(width, height);

  const allRates = results.flatMap(r => [r.tflopsWall ?? 0, r.tflopsGpu ?? 0]);
  const unit = throughputUnit(Math.max(0, ...allRates));
  const a = run.meta.adapter;
  const device = run.meta.nvidiaSmi?.split(',')[0] ??
      (a ? [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' ') : 'cpu');
  const fit = (s: string) => s.slice(0, Math.floor((width - 2 * left) / (ADVANCE * 2)));
  img.text(left, 10, fit(`flashAttention vs tfjs composite: ${unit.name} (B=${results[0]?.batch ?? 1}, ` +
                         `H=${results[0]?.heads ?? '?'})`), INK);
  const variant = a?.subgroups ? ' (subgroups device)' : '';
  img.text(left, 32, fit(`${run.meta.backend}${variant} on ${device}, ${run.meta.date.slice(0, 10)}`), INK);
  let lx = left;
  for (const [name, color] of [['flash', FLASH], ['composite', COMPOSITE]] as const) {
    img.line(lx, 65, lx + 30, 65, color, 3);
    img.text(lx + 38, 58, name, INK);
    lx += 38 + textWidth(name) + 30;
  }
  img.text(lx, 58, 'X: could not run (OOM; >2GB: over the binding limit)', FAILURE);
  img.text(left, 80, 'solid: from wall time; dashed: from GPU time', INK);
  img.text(left + textWidth('solid: from wall time; dashed: from GPU time') + 30, 80,
           'SKIP: not run (deadline, too slow)', SKIPPED);

  passes.forEach((pass, row) => {
    const inRow = results.filter(r => r.pass === pass);
    const yMax = Math.max(1e-12, ...inRow.flatMap(r => [r.tflopsWall ?? 0, r.tflopsGpu ?? 0])) * unit.factor;
    const step = niceStep(yMax);
    const yTop = Math.ceil(yMax / step) * step;
    columns.forEach((col, c) => {
      drawPanel(img, { pass, ...col }, inRow.filter(r => r.headDim === col.headDim && r.causal === col.causal),
                seqs, unit.factor, yTop, step, left + c * panelW, top + row * panelH, panelW, panelH);
    });
  });
  return img.encode();
}

function drawPanel(img: Raster, p: Panel, results: CaseResult[], seqs: number[], factor: number, yTop: number, yStep: number,
                   x0: number, y0: number, w: number, h: number): void {
  const plot = { x: x0 + 58, y: y0 + 28, w: w - 78, h: h - 78 };
  img.text(x0 + 58, y0 + 6, `${p.pass === 'fwd' ? 'FWD' : 'FWD+BWD'} D=${p.headDim} ${p.causal ? 'CAUSAL' : 'FULL'}`, INK);
  const xOf = (seq: number) => seqs.length === 1 ? plot.x + plot.w / 2
      : plot.x + (seqs.indexOf(seq) / (seqs.length - 1)) * plot.w;
  const yOf = (v: number) => plot.y + plot.h - (v / yTop) * plot.h;

  for (let v = 0; v <= yTop + 1e-9; v += yStep) {
    const y = yOf(v);
    img.line(plot.x, y, plot.x + plot.w, y, GRID);
    const label = yStep < 1 ? v.toFixed(Math.ceil(-Math.log10(yStep))) : String(Math.round(v));
    img.text(plot.x - 8 - textWidth(label), y - TEXT_HEIGHT / 2, label, INK);
  }
  seqs.forEach((seq, i) => {
    const x = xOf(seq);
    img.line(x, plot.y, x, plot.y + plot.h, GRID);
    const label = seqLabel(seq);
    // Alternate rows of labels when they would collide.
    const crowded = seqs.length > 1 && plot.w / (seqs.length - 1) < textWidth('32K') + 6;
    img.text(x - textWidth(label) / 2, plot.y + plot.h + 8 + (crowded && i % 2 ? TEXT_HEIGHT + 2 : 0), label, INK);
  });
  img.line(plot.x, plot.y + plot.h, plot.x + plot.w, plot.y + plot.h, INK);
  img.line(plot.x, plot.y, plot.x, plot.y + plot.h, INK);
  img.text(plot.x + plot.w - textWidth('N'), plot.y + plot.h + 26 + TEXT_HEIGHT, 'N', INK);

  for (const [impl, color] of [['composite', COMPOSITE], ['flash', FLASH]] as const) {
    const mine = results.filter(r => r.impl === impl).sort((a, b) => a.seq - b.seq);
    for (const [key, width, dash] of [['tflopsGpu', 1, 5], ['tflopsWall', 3, 0]] as const) {
      let prev: [number, number] | null = null;
      for (const r of mine) {
        const v = r.status === 'ok' ? r[key] : null;
        if (v === null || v === undefined) { prev = null; continue; }
        const pt: [number, number] = [xOf(r.seq), yOf(v * factor)];
        if (prev) img.line(prev[0], prev[1], pt[0], pt[1], color, width, dash);
        if (key === 'tflopsWall') img.disc(pt[0], pt[1], 3.5, color);
        prev = pt;
      }
    }
    for (const r of mine) {
      const x = xOf(r.seq), y = plot.y + plot.h - 10 - (impl === 'flash' ? 34 : 0);
      if (r.status === 'skipped') { img.text(x - textWidth('SKIP') / 2, y - 24, 'SKIP', SKIPPED); continue; }
      const mark = STATUS_MARK[r.status];
      if (!mark) continue;
      img.line(x - 6, y - 6, x + 6, y + 6, FAILURE, 3);
      img.line(x - 6, y + 6, x + 6, y - 6, FAILURE, 3);
      img.text(x - textWidth(mark) / 2, y - 24, mark, color);
    }
  }
}
