/** The loss curve as a PNG (pngjs): axes, a light grid every 0.5 nats, the loss as a line. */
import * as fs from 'fs';
import { PNG } from 'pngjs';
import { ADVANCE, glyph, GLYPH_HEIGHT, GLYPH_WIDTH } from '../../bench/font';

type RGB = [number, number, number];

export function writeLossPng(file: string, losses: number[], width = 720, height = 360): void {
  const png = new PNG({ width, height });
  png.data.fill(255);
  const set = (x: number, y: number, [r, g, b]: RGB) => {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    const i = (Math.round(y) * width + Math.round(x)) * 4;
    png.data[i] = r; png.data[i + 1] = g; png.data[i + 2] = b; png.data[i + 3] = 255;
  };
  const line = (x0: number, y0: number, x1: number, y1: number, color: RGB) => {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    for (let s = 0; s <= steps; s++) set(x0 + (x1 - x0) * s / steps, y0 + (y1 - y0) * s / steps, color);
  };
  /** Text in the bench charts' 5x7 bitmap font, scaled 2x; x is the left edge, y the top. */
  const text = (str: string, x: number, y: number, color: RGB = [60, 60, 60]) => {
    [...str].forEach((ch, n) => glyph(ch).forEach((bits, row) => {
      for (let col = 0; col < GLYPH_WIDTH; col++) {
        if (!(bits & (1 << (GLYPH_WIDTH - 1 - col)))) continue;
        for (let d = 0; d < 4; d++) set(x + (n * ADVANCE + col) * 2 + (d & 1), y + row * 2 + (d >> 1), color);
      }
    }));
  };
  const textWidth = (str: string) => str.length * ADVANCE * 2 - 2;
  const [left, right, top, bottom] = [56, width - 20, 34, height - 34];
  const finite = losses.filter(Number.isFinite);
  const lo = Math.floor(Math.min(...finite, 0) * 2) / 2;
  const hi = Math.ceil(Math.max(...finite, lo + 0.5) * 2) / 2;
  const xAt = (i: number) => left + (right - left) * (losses.length > 1 ? i / (losses.length - 1) : 0.5);
  const yAt = (loss: number) => bottom - (bottom - top) * (loss - lo) / (hi - lo);

  for (let v = lo; v <= hi + 1e-9; v += 0.5) line(left, yAt(v), right, yAt(v), v % 1 === 0 ? [205, 205, 205] : [232, 232, 232]);
  line(left, top, left, bottom, [0, 0, 0]);
  line(left, bottom, right, bottom, [0, 0, 0]);
  for (let v = Math.ceil(lo); v <= hi + 1e-9; v++) text(String(v), left - 8 - textWidth(String(v)), yAt(v) - GLYPH_HEIGHT);
  text('LOSS (NATS/TOKEN)', left, 10);
  const lastStep = `STEP ${losses.length}`;
  text('STEP 1', left, bottom + 10);
  text(lastStep, right - textWidth(lastStep), bottom + 10);
  for (let i = 0; i < losses.length; i++) {
    if (!Number.isFinite(losses[i])) continue;
    if (i > 0 && Number.isFinite(losses[i - 1])) line(xAt(i - 1), yAt(losses[i - 1]), xAt(i), yAt(losses[i]), [31, 94, 196]);
    for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++) set(xAt(i) + dx, yAt(losses[i]) + dy, [31, 94, 196]);
  }
  fs.writeFileSync(file, PNG.sync.write(png));
}
