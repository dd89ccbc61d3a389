/** The loss curve of a training run: charts/specs.ts's loss figure, drawn by charts/render.ts. */
import type { TopLevelSpec } from 'vega-lite';
import { ChartFiles, writeChart } from '../../charts/render';
import { lossSpec } from '../../charts/specs';

export function lossChartSpec(losses: readonly number[]): TopLevelSpec {
  return lossSpec(losses, { title: `Training loss, ${losses.length} steps`, yTitle: 'loss (nats per token)' });
}

/** Writes <base>.svg and <base>.png (where the PNG renderer loads); base is a path without extension. */
export function writeLossChart(base: string, losses: readonly number[]): Promise<ChartFiles> {
  return writeChart(lossChartSpec(losses), base);
}
