/**
 * The demo's live charts: charts/specs.ts's figures shown with vega-embed (tooltips on hover, an
 * export menu for SVG and PNG), fed new rows as the benchmark and the training go. Everything is
 * bundled into demo.js, so the page fetches nothing from a CDN.
 */
import embed from 'vega-embed';
import type { TopLevelSpec } from 'vega-lite';
import { DATA } from '../../charts/specs';

export interface LiveChart {
  /** Replaces the chart's rows (the figure's dataset, as its spec builder makes them) and redraws. */
  update(rows: readonly object[]): Promise<void>;
}

export async function mountChart(element: HTMLElement, spec: TopLevelSpec): Promise<LiveChart> {
  // resize: the axes and legends grow as data comes in, and the layout follows them.
  const { view } = await embed(element, { ...spec, autosize: { type: 'pad', resize: true } } as TopLevelSpec, {
    renderer: 'svg',
    // Export only: the editor link would leave the page, and the source is this file's caller.
    actions: { export: true, source: false, compiled: false, editor: false },
  });
  return {
    async update(rows) {
      view.data(DATA, rows as object[]);
      await view.runAsync();
    },
  };
}
