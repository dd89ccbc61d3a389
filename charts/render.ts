/**
 * Renders the Vega-Lite specs of charts/specs.ts in Node: Vega draws SVG without a browser or a
 * native canvas (so it also runs inside the GPU kit's bundle), and resvg rasterises the SVG to a
 * PNG with real fonts. resvg is a native addon: where it cannot load (the kit carries no
 * node_modules) only the SVG is written, and `npm run chart -- <results.json>` draws the PNG later.
 *
 * vega and vega-lite are ES modules with top-level await, so they are loaded with import(): a
 * CommonJS build (examples/run.js) leaves that to Node, an ESM bundle (the bench) inlines them.
 */
import { mkdirSync, writeFileSync } from 'fs';
import { createRequire } from 'module';
import { dirname, join } from 'path';
import type { TopLevelSpec } from 'vega-lite';

/** DejaVu Sans is on every Debian with fontconfig (chromium pulls it in); Liberation comes with chromium. */
export const CHART_FONT = 'DejaVu Sans, Liberation Sans, Arial, sans-serif';
/** Device pixels per SVG pixel in the PNGs: sharp on high-density screens and in zoomed-in docs. */
const PNG_SCALE = 2;

/**
 * Text width in DejaVu Sans, in em, by character class. Without a canvas Vega estimates every
 * character at 0.8 em, which leaves wide empty margins after long titles; these classes are within
 * a few per cent of the font's advances, enough for layout (the browser measures with its canvas).
 */
export function textWidthEm(text: string, bold = false): number {
  let em = 0;
  for (const ch of text) {
    em += ' .,:;|!\'ijlI'.includes(ch) ? 0.3 : 'ft()[]/-r'.includes(ch) ? 0.4
        : 'mwMW%'.includes(ch) ? 0.95 : '=+<>~'.includes(ch) ? 0.84
        : /[A-Z]/.test(ch) ? 0.72 : /[0-9]/.test(ch) ? 0.64 : 0.61;
  }
  return em * (bold ? 1.1 : 1) * 1.03;   // a little over: a clipped title is worse than a margin
}

/** vega-scenegraph's textMetrics, exported by vega but missing from its typings. */
interface TextMetrics {
  width(item: { fontSize?: number; fontWeight?: string | number }, text: string | string[]): number;
}

/** The spec drawn as SVG, in the charts' font on white. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  // Vega's hook for measuring without a canvas (vl-convert sets it too).
  (vega as unknown as { textMetrics: TextMetrics }).textMetrics.width = (item, text) => {
    const bold = item.fontWeight === 'bold' || Number(item.fontWeight) >= 600;
    const lines = Array.isArray(text) ? text : [String(text ?? '')];
    return Math.max(0, ...lines.map(l => textWidthEm(l, bold) * (item.fontSize ?? 11)));
  };
  const themed = { ...spec, config: { font: CHART_FONT, background: 'white', ...spec.config } } as TopLevelSpec;
  const view = new vega.View(vega.parse(vegaLite.compile(themed).spec), { renderer: 'none' });
  // Clip ids count from 1 in every file, so that a re-rendered chart differs only where its data does.
  vega.resetSVGDefIds();
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

type Resvg = typeof import('@resvg/resvg-js');
let resvg: Resvg | Error | undefined;

/**
 * The PNG renderer, or why it is not there. Required from the working directory's node_modules
 * (the bench's bundle runs from a temp folder) through createRequire, which bundlers leave alone.
 */
export function loadPngRenderer(): Resvg | Error {
  if (resvg === undefined) {
    try {
      resvg = createRequire(join(process.cwd(), 'package.json'))('@resvg/resvg-js') as Resvg;
    } catch (err) {
      resvg = err instanceof Error ? err : new Error(String(err));
    }
  }
  return resvg;
}

/** The SVG as a PNG on white; throws where the PNG renderer cannot load. */
export function svgToPng(svg: string): Buffer {
  const renderer = loadPngRenderer();
  if (renderer instanceof Error) throw renderer;
  const image = new renderer.Resvg(svg, {
    background: 'white',
    fitTo: { mode: 'zoom', value: PNG_SCALE },
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' },
  });
  return image.render().asPng();
}

export interface ChartFiles {
  svg: string;
  /** null where the PNG renderer could not load; `reason` says why. */
  png: string | null;
  reason?: string;
}

/** Writes <base>.svg and, where resvg loads, <base>.png; base is a path without extension. */
export async function writeChart(spec: TopLevelSpec, base: string): Promise<ChartFiles> {
  mkdirSync(dirname(base), { recursive: true });
  const svg = await renderSvg(spec);
  const files: ChartFiles = { svg: `${base}.svg`, png: null };
  writeFileSync(files.svg, svg);
  const renderer = loadPngRenderer();
  if (renderer instanceof Error) {
    files.reason = `the PNG renderer @resvg/resvg-js does not load here (${renderer.message.split('\n')[0]})`;
    return files;
  }
  files.png = `${base}.png`;
  writeFileSync(files.png, svgToPng(svg));
  return files;
}
