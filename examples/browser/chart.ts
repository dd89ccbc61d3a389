/**
 * A small line chart on a <canvas>, so the demo needs no chart library (and no network).
 * Redrawn from scratch on every update: the demo adds one point at a time.
 */
export interface Series {
  name: string;
  color: string;
  points: Array<[number, number]>;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** log2 x axis with a tick per power of two: sequence lengths double from point to point. */
  log2X?: boolean;
  /** log10 y axis: a loss curve spans decades. */
  logY?: boolean;
}

const PAD = { left: 64, right: 16, top: 46, bottom: 44 };

function niceStep(range: number, ticks: number): number {
  const raw = range / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
}

function formatTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-2 ? v.toExponential(0) : String(Number(v.toPrecision(3)));
}

export function drawChart(canvas: HTMLCanvasElement, series: Series[], opts: ChartOptions): void {
  // Size the backing store to the CSS box times devicePixelRatio so lines stay sharp.
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 560, cssH = canvas.clientHeight || 300;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  const ctx = canvas.getContext('2d')!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, cssW, cssH);
  ctx.font = '12px system-ui, sans-serif';
  ctx.fillStyle = '#1d2330';
  ctx.textAlign = 'left';
  ctx.fillText(opts.title, PAD.left, 18);

  const fx = (x: number) => opts.log2X ? Math.log2(x) : x;
  const fy = (y: number) => opts.logY ? Math.log10(y) : y;
  const pts = series.flatMap(s => s.points).filter(([x, y]) => Number.isFinite(fx(x)) && Number.isFinite(fy(y)));
  const w = cssW - PAD.left - PAD.right, h = cssH - PAD.top - PAD.bottom;
  ctx.strokeStyle = '#9aa4b5';
  ctx.strokeRect(PAD.left, PAD.top, w, h);
  if (pts.length === 0) {
    ctx.fillStyle = '#8a93a3';
    ctx.fillText('waiting for data…', PAD.left + 12, PAD.top + 24);
    return;
  }

  let [x0, x1] = [Math.min(...pts.map(p => fx(p[0]))), Math.max(...pts.map(p => fx(p[0])))];
  let [y0, y1] = [Math.min(...pts.map(p => fy(p[1]))), Math.max(...pts.map(p => fy(p[1])))];
  if (!opts.logY) y0 = Math.min(0, y0);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= opts.logY ? 1 : Math.abs(y0) || 1; y1 += opts.logY ? 1 : Math.abs(y1) || 1; }
  const px = (x: number) => PAD.left + (fx(x) - x0) / (x1 - x0) * w;
  const py = (y: number) => PAD.top + h - (fy(y) - y0) / (y1 - y0) * h;

  // Grid and tick labels.
  ctx.fillStyle = '#5b6577';
  ctx.strokeStyle = '#eef0f4';
  ctx.textAlign = 'right';
  const yTicks: number[] = [];
  if (opts.logY) {
    // Decades, with 2x and 5x in between when the range spans less than three decades.
    const mantissas = y1 - y0 < 3 ? [1, 2, 5] : [1];
    for (let e = Math.floor(y0); e <= Math.ceil(y1); e++) {
      for (const m of mantissas) {
        const v = Math.log10(m) + e;
        if (v >= y0 && v <= y1) yTicks.push(10 ** v);
      }
    }
    if (yTicks.length < 2) yTicks.push(10 ** y0, 10 ** y1);
  } else {
    const step = niceStep(y1 - y0, 5);
    for (let v = Math.ceil(y0 / step) * step; v <= y1 + 1e-9 * step; v += step) yTicks.push(v);
  }
  for (const v of yTicks) {
    const y = py(v);
    ctx.beginPath(); ctx.moveTo(PAD.left, y); ctx.lineTo(PAD.left + w, y); ctx.stroke();
    ctx.fillText(formatTick(v), PAD.left - 6, y + 4);
  }
  ctx.textAlign = 'center';
  const xTicks = opts.log2X
      ? Array.from({ length: Math.floor(x1) - Math.ceil(x0) + 1 }, (_, i) => 2 ** (Math.ceil(x0) + i))
      : Array.from({ length: 6 }, (_, i) => x0 + (x1 - x0) * i / 5);
  for (const v of xTicks) ctx.fillText(formatTick(Math.round(v)), px(v), PAD.top + h + 16);
  ctx.fillText(opts.xLabel, PAD.left + w / 2, cssH - 8);
  ctx.save();
  ctx.translate(14, PAD.top + h / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(opts.yLabel, 0, 0);
  ctx.restore();

  // Lines, with a dot per point (a single point is still visible), then the legend.
  ctx.lineWidth = 2;
  for (const s of series) {
    const ok = s.points.filter(([x, y]) => Number.isFinite(fx(x)) && Number.isFinite(fy(y)));
    ctx.strokeStyle = ctx.fillStyle = s.color;
    ctx.beginPath();
    ok.forEach(([x, y], i) => i === 0 ? ctx.moveTo(px(x), py(y)) : ctx.lineTo(px(x), py(y)));
    ctx.stroke();
    if (ok.length <= 64) {
      for (const [x, y] of ok) { ctx.beginPath(); ctx.arc(px(x), py(y), 3, 0, 2 * Math.PI); ctx.fill(); }
    }
  }
  ctx.textAlign = 'left';
  let lx = PAD.left;
  for (const s of series) {
    ctx.fillStyle = s.color;
    ctx.fillRect(lx, 25, 12, 12);
    ctx.fillStyle = '#1d2330';
    ctx.fillText(s.name, lx + 16, 35);
    lx += ctx.measureText(s.name).width + 32;
  }
}
