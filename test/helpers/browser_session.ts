/**
 * Headless Debian Chromium for the browser test: WebGPU and WebGL both on the SwiftShader that
 * Chromium bundles, pages served from 127.0.0.1 by the demo's own server (which builds the
 * package's <script> bundle in memory with esbuild), no network.
 */
import * as fs from 'fs';
import { Browser, chromium, Page } from 'playwright-core';
import { BLANK_PAGE_HTML, CHECK_PAGE_HTML } from './browser_pages';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { startDemoServer } = require('../../examples/browser/serve.js') as {
  startDemoServer(opts: { extraRoutes?: Record<string, { type: string; body: string }> }):
      Promise<{ url: string; close(): Promise<void> }>;
};

/** The real binary first: /usr/bin/chromium is Debian's wrapper script (it prints shell noise). */
const CHROMIUM_PATHS = ['/usr/lib/chromium/chromium', '/usr/bin/chromium', '/usr/bin/chromium-browser'];

export function findChromium(): string | undefined {
  return [process.env.CHROMIUM_PATH, ...CHROMIUM_PATHS].find(p => p && fs.existsSync(p));
}

/**
 * --enable-unsafe-webgpu is the one flag WebGPU needs on Linux (without it requestAdapter() gives
 * null). WebGL already falls back to SwiftShader through ANGLE's Vulkan backend in this Chromium;
 * --use-angle=swiftshader asks for it outright and --enable-unsafe-swiftshader keeps newer
 * Chromiums, which refuse the automatic software fallback, from dropping WebGL. The rest keeps
 * the browser off the network.
 */
export const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
  '--no-sandbox', '--disable-quic', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run',
];

export interface BrowserSession {
  browser: Browser;
  /** Root URL of the demo server; also serves `check.html` and an empty `blank.html`. */
  url: string;
  /** A page with tf.min.js, tf-backend-webgpu.min.js and our <script> build loaded. */
  openCheckPage(): Promise<Page>;
  close(): Promise<void>;
}

export async function openBrowserSession(executablePath: string): Promise<BrowserSession> {
  const server = await startDemoServer({
    extraRoutes: {
      '/check.html': { type: 'text/html; charset=utf-8', body: CHECK_PAGE_HTML },
      '/blank.html': { type: 'text/html; charset=utf-8', body: BLANK_PAGE_HTML },
    },
  });
  let browser: Browser;
  try {
    browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS });
  } catch (err) {
    await server.close();
    throw err;
  }
  return {
    browser,
    url: server.url,
    async openCheckPage() {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', e => errors.push(e.message));
      await page.goto(`${server.url}check.html`);
      await page.waitForFunction(() => document.readyState === 'complete');
      if (errors.length) throw new Error(`check page failed to load: ${errors.join('; ')}`);
      return page;
    },
    async close() {
      await browser.close();
      await server.close();
    },
  };
}
