/**
 * The browser build (issue 4): the bundles built here with esbuild, package.json's entry points,
 * and, in headless Chromium (WebGPU and WebGL on SwiftShader), the <script> build checked against
 * the float64 reference computed in Node, plus a screenshot of the demo page.
 *
 * UPDATE_DEMO_SCREENSHOT=1 writes the screenshot to docs/images/demo.png (the README's image);
 * otherwise it goes to the OS temp dir, so test runs leave the checkout clean.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as esbuild from 'esbuild';
import * as ts from 'typescript';
import { PNG } from 'pngjs';
import type { Page } from 'playwright-core';
import { CaseSpec, caseData, compare, describeCase, F32_TOLERANCE, reference } from './helpers/attention_case';
import { findChromium, openBrowserSession, BrowserSession } from './helpers/browser_session';
import { runFlashInPage, toPageCase } from './helpers/browser_pages';

interface Bundle { text: string; metafile: esbuild.Metafile; warnings: esbuild.Message[]; }
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { buildBrowserBundles } = require('../scripts/build-browser.js') as {
  buildBrowserBundles(opts: { write: false }): Promise<{ esm: Bundle; script: Bundle }>;
};

const ROOT = path.resolve(__dirname, '..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const DEMO_HEAD_DIM = 8;   // = the demo's TRAIN.keyDim
const DEMO_STEPS = 12;     // ~0.45 s each on SwiftShader

let bundles: { esm: Bundle; script: Bundle };
// A scratch app whose node_modules holds a copy of this package as npm would install it:
// package.json, the real bundles, and placeholders for the tsc build (CommonJS and typings).
let appDir: string;
const installed = (rel: string) => path.join(appDir, 'node_modules', PKG.name, rel);

beforeAll(async () => {
  bundles = await buildBrowserBundles({ write: false });
  appDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tfjs-flash-attention-app-'));
  const files: Record<string, string> = {
    'package.json': JSON.stringify(PKG),
    'dist/browser/tfjs-flash-attention.esm.js': bundles.esm.text,
    'dist/browser/tfjs-flash-attention.min.js': bundles.script.text,
    'dist/src/index.js': 'exports.flashAttention = function flashAttention() {};\n',
    'dist/src/index.d.ts': 'export declare function flashAttention(): void;\n',
  };
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(installed(rel)), { recursive: true });
    fs.writeFileSync(installed(rel), text);
  }
});
afterAll(() => { if (appDir) fs.rmSync(appDir, { recursive: true, force: true }); });

describe('browser bundles', () => {
  const tfjsInputs = (metafile: esbuild.Metafile) =>
      Object.keys(metafile.inputs).filter(f => f.includes('@tensorflow') || f.includes('node_modules'));

  test('the ES module keeps every @tensorflow import external and bundles none of tfjs', () => {
    expect(tfjsInputs(bundles.esm.metafile)).toEqual([]);
    expect(bundles.esm.text).toMatch(/from "@tensorflow\/tfjs-core"/);
    expect(bundles.esm.warnings).toEqual([]);
  });

  test('the <script> build reads the global tf instead of bundling tfjs', () => {
    const inputs = Object.keys((bundles.script.metafile).inputs);
    expect(inputs.filter(f => f.includes('node_modules'))).toEqual([]);
    expect(inputs.filter(f => f.startsWith('tf-global:')).length).toBeGreaterThan(0);
    expect(bundles.script.text).not.toMatch(/\brequire\(/);
    expect(bundles.script.warnings).toEqual([]);
  });
});

describe('package.json entry points, resolved as bundlers, Node and TypeScript do', () => {
  const resolvedInputs = async (platform: 'browser' | 'node', contents: string) => {
    const result = await esbuild.build({
      stdin: { contents, resolveDir: appDir, loader: 'js' }, absWorkingDir: appDir, bundle: true, write: false, metafile: true,
      platform, format: platform === 'node' ? 'cjs' : 'esm', external: ['@tensorflow/*'], logLevel: 'silent',
    });
    return Object.keys(result.metafile!.inputs).filter(f => f.includes(PKG.name));
  };

  test('a browser bundler importing the package gets the ES module', async () => {
    expect(await resolvedInputs('browser', `import { flashAttention } from '${PKG.name}'; console.log(flashAttention);`))
        .toEqual([`node_modules/${PKG.name}/dist/browser/tfjs-flash-attention.esm.js`]);
  });

  test('a browser bundler requiring the package also gets the ES module (one copy, no dual package)', async () => {
    expect(await resolvedInputs('browser', `console.log(require('${PKG.name}').flashAttention);`))
        .toEqual([`node_modules/${PKG.name}/dist/browser/tfjs-flash-attention.esm.js`]);
  });

  test('Node gets the CommonJS build, for require and import alike', async () => {
    const cjs = `node_modules/${PKG.name}/dist/src/index.js`;
    expect(await resolvedInputs('node', `console.log(require('${PKG.name}').flashAttention);`)).toEqual([cjs]);
    expect(await resolvedInputs('node', `import { flashAttention } from '${PKG.name}'; console.log(flashAttention);`)).toEqual([cjs]);
  });

  test('TypeScript finds the typings', () => {
    for (const moduleResolution of [ts.ModuleResolutionKind.Bundler, ts.ModuleResolutionKind.Node16]) {
      const { resolvedModule } = ts.resolveModuleName(PKG.name, path.join(appDir, 'app.ts'),
          { moduleResolution, module: moduleResolution === ts.ModuleResolutionKind.Node16 ? ts.ModuleKind.Node16 : ts.ModuleKind.ESNext }, ts.sys);
      expect(resolvedModule?.resolvedFileName).toBe(installed('dist/src/index.d.ts'));
    }
  });

  test('unpkg and jsdelivr serve the <script> build', () => {
    expect(PKG.unpkg).toBe('dist/browser/tfjs-flash-attention.min.js');
    expect(PKG.jsdelivr).toBe('dist/browser/tfjs-flash-attention.min.js');
  });
});

const CHROMIUM = findChromium();
// CI (REQUIRE_WEBGPU, or CI) must never pass by skipping; a developer without Chromium may.
const MUST_RUN = !!(process.env.CI || process.env.REQUIRE_WEBGPU || process.env.REQUIRE_BROWSER);
const describeBrowser = CHROMIUM || MUST_RUN ? describe : describe.skip;
if (!CHROMIUM && !MUST_RUN) console.warn('browser tests skipped: no Chromium at /usr/lib/chromium/chromium or /usr/bin/chromium (set CHROMIUM_PATH)');

describeBrowser('in headless Chromium', () => {
  let session: BrowserSession;
  let page: Page;
  // The demo runs for ~30 s on SwiftShader, mostly WGSL compilation; it starts first and runs
  // alongside the other pages' checks, and its own tests wait for it at the end.
  let demoRun: Promise<{ demo: Page; state: DemoStateView }>;
  beforeAll(async () => {
    if (!CHROMIUM) throw new Error('Chromium not found (apt-get install chromium, or set CHROMIUM_PATH)');
    session = await openBrowserSession(CHROMIUM);
    demoRun = runDemo(session);
    demoRun.catch(() => { /* reported by the demo's tests */ });
    page = await session.openCheckPage();
  });
  afterAll(async () => { await session?.close(); });

  // Every option at once, so the page exercises the whole contract (dropout's counter-based mask
  // included). The WebGPU check uses a plainer case, in the demo page (see below).
  const EVERY_OPTION: CaseSpec = {
    dims: { batch: 2, seqQ: 9, seqK: 13, heads: 4, kvHeads: 2, headDim: 8, headDimV: 12 },
    windowSize: [5, 2], softcap: 3, alibi: true, maskShape: [1, 1, 9, 13], dropoutRate: 0.2, seed: 12 };

  describe('the <script> build after tf.min.js and tf-backend-webgpu.min.js', () => {
    test('adds tf.flashAttention and tf.layers.flashMultiHeadAttention to the global tf', async () => {
      const found = await page.evaluate(() => {
        const tf = (globalThis as unknown as { tf: Record<string, unknown> & { layers: Record<string, unknown> } }).tf;
        return { op: typeof tf.flashAttention, layer: typeof tf.layers.flashMultiHeadAttention };
      });
      expect(found).toEqual({ op: 'function', layer: 'function' });
    });

    test('registers its cpu and webgpu kernels with the page\'s tf', async () => {
      expect(await page.evaluate(() => {
        const tf = (globalThis as unknown as { tf: { getKernel(n: string, b: string): unknown } }).tf;
        return ['cpu', 'webgpu'].flatMap(b => ['FlashAttention', 'FlashAttentionGrad'].map(k => `${k}/${b}: ${tf.getKernel(k, b) != null}`));
      })).toEqual(['FlashAttention/cpu: true', 'FlashAttentionGrad/cpu: true', 'FlashAttention/webgpu: true', 'FlashAttentionGrad/webgpu: true']);
    });
  });

  describe('the <script> build in other pages', () => {
    /** A blank page with these scripts added in order; returns it with the errors they threw. */
    async function pageWithScripts(scripts: string[]) {
      const p = await session.browser.newPage();
      const errors: string[] = [];
      p.on('pageerror', e => errors.push(e.message));
      await p.goto(`${session.url}blank.html`);
      for (const url of scripts) await p.addScriptTag({ url });
      return { page: p, errors };
    }

    test('works after tf.min.js alone, without the WebGPU script', async () => {
      const { page: p, errors } = await pageWithScripts(['vendor/tf.min.js', 'dist/tfjs-flash-attention.min.js']);
      try {
        expect(errors).toEqual([]);
        await expectMatchesReference(p, 'cpu', causalGqa(8));
      } finally {
        await p.close();
      }
    });

    test('without tf.min.js, fails at load saying what to load first', async () => {
      const { page: p, errors } = await pageWithScripts(['dist/tfjs-flash-attention.min.js']);
      await p.close();
      expect(errors).toEqual([expect.stringContaining('load tf.min.js (and tf-backend-webgpu.min.js for WebGPU) before tfjs-flash-attention.min.js')]);
    });
  });

  describe('an app bundled by esbuild from the ES module and @tensorflow/tfjs', () => {
    test('runs flashAttention forward and gradients like the float64 reference (cpu kernel)', async () => {
      // The app imports tfjs and this package by name, as a user's app would; esbuild finds
      // tfjs in this repository's node_modules, so the app holds exactly one tfjs-core.
      const app = await esbuild.build({
        stdin: {
          contents: `import * as tf from '@tensorflow/tfjs';
                     import { flashAttention } from '${PKG.name}';
                     globalThis.tf = { ...tf, flashAttention };`,
          resolveDir: appDir, loader: 'js',
        },
        absWorkingDir: appDir, nodePaths: [path.join(ROOT, 'node_modules')], bundle: true, write: false,
        metafile: true, platform: 'browser', format: 'iife', target: 'es2020', logLevel: 'silent',
      });
      const inputs = Object.keys(app.metafile!.inputs);
      expect(inputs.filter(f => f.includes(PKG.name))).toEqual([`node_modules/${PKG.name}/dist/browser/tfjs-flash-attention.esm.js`]);
      expect(new Set(inputs.filter(f => f.includes('tfjs-core/')).map(f => f.split('tfjs-core/')[0])).size).toBe(1);

      const appPage = await session.browser.newPage();
      try {
        const errors: string[] = [];
        appPage.on('pageerror', e => errors.push(e.message));
        await appPage.goto(`${session.url}blank.html`);
        await appPage.addScriptTag({ content: app.outputFiles![0].text });
        expect(errors).toEqual([]);
        await expectMatchesReference(appPage, 'cpu', EVERY_OPTION);
      } finally {
        await appPage.close();
      }
    });
  });

  // webgl has no fused kernel: it runs the blockwise fallback (kernels/fallback/).
  describe.each([
    { backend: 'webgl', cases: [causalGqa(16), EVERY_OPTION] },
    { backend: 'cpu', cases: [causalGqa(16), EVERY_OPTION] },
  ])('flashAttention on the $backend backend', ({ backend, cases }) => {
    // A page per backend, so that one backend's failure cannot leave the next one a busy page.
    let backendPage: Page;
    beforeAll(async () => { backendPage = await session.openCheckPage(); });
    afterAll(async () => { await backendPage?.close(); });

    test.each(cases.map(c => [describeCase(c), c] as const))(
        'forward and gradients match the float64 reference: %s',
        async (_name, c) => expectMatchesReference(backendPage, backend, c));
  });

  // On SwiftShader every WebGPU pipeline takes seconds to compile (~12 s for flashAttention's
  // forward and backward with one option set) and each page has its own device, so the WebGPU
  // check shares the demo page: the benchmark's head size is set to the training model's keyDim and
  // the check uses that head size with causal on, so the three share compiled flash kernels.
  describe('on WebGPU, in the demo page', () => {
    let demo: Page;
    let state: DemoStateView;
    beforeAll(async () => { ({ demo, state } = await demoRun); });
    afterAll(async () => { await demo?.close(); });

    test('the demo picks WebGPU, benchmarks flash vs stock, and trains the layer', () => {
      expect(state.error).toBeUndefined();
      expect(state.backend).toBe('webgpu');
      expect(state.bench.map(p => p.seq)).toEqual([32, 64, 128]);
      for (const p of state.bench) {
        expect([p.flashError, p.stockError]).toEqual([undefined, undefined]);
        // The point of flash attention: no [seq, seq] matrix, so less peak memory at every length.
        expect(p.flashMiB!).toBeLessThan(p.stockMiB!);
      }
      expect(state.trainedWith).toBe('tf.layers.flashMultiHeadAttention');
      expect(state.losses).toHaveLength(DEMO_STEPS);
      expect(state.losses.every(Number.isFinite)).toBe(true);
      expect(average(state.losses.slice(-3))).toBeLessThan(0.8 * average(state.losses.slice(0, 3)));
    });

    test('the demo page\'s screenshot is not blank: every chart shows its lines', async () => {
      // Decoded once (a pngjs decode takes ~1 s here); the charts are cropped out of it by their boxes.
      const shot = await demo.screenshot({ fullPage: true });
      const file = process.env.UPDATE_DEMO_SCREENSHOT
          ? path.join(ROOT, 'docs', 'images', 'demo.png') : path.join(os.tmpdir(), 'tfjs-flash-attention-demo.png');
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, shot);
      const image = PNG.sync.read(shot);
      expect(pixelStats(image).distinctColors).toBeGreaterThan(50);

      // Count pixels of each series colour in each chart: axes alone would not pass.
      const FLASH = [0x1f, 0x77, 0xb4], STOCK = [0xd6, 0x27, 0x28], LOSS = [0x2c, 0xa0, 0x2c];
      const drawn: Record<string, number[]> = {};
      for (const [id, colors] of Object.entries({ 'time-chart': [FLASH, STOCK], 'memory-chart': [FLASH, STOCK], 'loss-chart': [LOSS] })) {
        const box = await demo.locator(`#${id}`).boundingBox();
        drawn[id] = pixelStats(image, colors, box!).colorPixels.map(n => Math.min(n, 100));
      }
      expect(drawn).toEqual({ 'time-chart': [100, 100], 'memory-chart': [100, 100], 'loss-chart': [100] });
    });

    test('hovering a point of a chart shows its values in a tooltip', async () => {
      for (const id of ['time-chart', 'loss-chart']) {
        await demo.locator(`#${id} .mark-symbol path`).first().hover();
        const tooltip = demo.locator('#vg-tooltip-element.visible');
        await tooltip.waitFor({ timeout: 5000 });
        expect(await tooltip.textContent()).toMatch(id === 'time-chart' ? /seriesflashAttention|seriesstock attention/ : /step1loss/);
        await demo.mouse.move(0, 0);
      }
    });

    test.each([[describeCase(causalGqa(DEMO_HEAD_DIM)), causalGqa(DEMO_HEAD_DIM)] as const])(
        'flashAttention forward and gradients match the float64 reference: %s',
        async (_name, c) => expectMatchesReference(demo, 'webgpu', c));
  });
});

/** Opens the demo page (WebGPU, short settings) and waits until it has benchmarked and trained. */
async function runDemo(session: BrowserSession): Promise<{ demo: Page; state: DemoStateView }> {
  const demo = await session.browser.newPage({ viewport: { width: 1240, height: 900 } });
  await demo.goto(`${session.url}?seqs=32,64,128&steps=${DEMO_STEPS}&headDim=${DEMO_HEAD_DIM}`);
  await demo.waitForFunction(() => (window as unknown as { demoState?: { done: boolean } }).demoState?.done,
                             null, { timeout: 90000 });
  const state = await demo.evaluate(() => (window as unknown as { demoState: DemoStateView }).demoState);
  return { demo, state };
}

function causalGqa(headDim: number): CaseSpec {
  return { dims: { batch: 1, seqQ: 16, seqK: 16, heads: 4, kvHeads: 2, headDim, headDimV: headDim }, causal: true, seed: 11 };
}

/** Runs the case in the page on `backend` and compares with the float64 reference computed here. */
async function expectMatchesReference(page: Page, backend: string, c: CaseSpec): Promise<void> {
  const data = caseData(c);
  const want = reference(c, data);
  const got = await page.evaluate(runFlashInPage, toPageCase(backend, c, data));
  expect(got.backend).toBe(backend);
  expect(got.fusedKernel).toBe(backend !== 'webgl');
  const errors = compare({
    out: Float32Array.from(got.out), lse: Float32Array.from(got.lse),
    dq: Float32Array.from(got.dq), dk: Float32Array.from(got.dk), dv: Float32Array.from(got.dv),
  }, want);
  const tolerance = (name: string) => name === 'out' || name === 'lse' ? F32_TOLERANCE.forward : F32_TOLERANCE.grads;
  expect(Object.entries(errors).filter(([name, err]) => !(err <= tolerance(name)))).toEqual([]);
}

interface DemoStateView {
  backend?: string; error?: string; losses: number[]; trainedWith?: string;
  bench: Array<{ seq: number; flashMiB?: number; stockMiB?: number; flashError?: string; stockError?: string }>;
}

const average = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

interface Box { x: number; y: number; width: number; height: number; }

/**
 * Pixel statistics of a decoded PNG (or of a box of it, in CSS pixels = image pixels at device scale 1):
 * how many distinct colours, and how many pixels lie near each given colour.
 */
function pixelStats({ data, width, height }: PNG, colors: number[][] = [], box?: Box) {
  const x0 = Math.max(0, Math.floor(box?.x ?? 0)), y0 = Math.max(0, Math.floor(box?.y ?? 0));
  const x1 = Math.min(width, Math.ceil(box ? box.x + box.width : width));
  const y1 = Math.min(height, Math.ceil(box ? box.y + box.height : height));
  const distinct = new Set<number>();
  const colorPixels = colors.map(() => 0);
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
    const i = (y * width + x) * 4;
    const r = data[i], g = data[i + 1], b = data[i + 2];
    distinct.add((r << 16) | (g << 8) | b);
    for (let j = 0; j < colors.length; j++) {
      if (Math.abs(r - colors[j][0]) + Math.abs(g - colors[j][1]) + Math.abs(b - colors[j][2]) < 40) colorPixels[j]++;
    }
  }
  return { distinctColors: distinct.size, colorPixels };
}
