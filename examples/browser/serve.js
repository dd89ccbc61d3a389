#!/usr/bin/env node
/**
 * Serves the browser demo on 127.0.0.1 only (`npm run demo`, or `node examples/browser/serve.js
 * --port 8080`). Everything comes from this checkout: tf.min.js and tf-backend-webgpu.min.js from
 * node_modules, the package's <script> build and the demo script built in memory with esbuild on
 * every page load, so an edit shows up on reload and nothing is fetched from a CDN.
 *
 * test/browser.test.ts starts the same server and adds its own pages through `extraRoutes`.
 */
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const esbuild = require('esbuild');
const { buildBrowserBundles, BASENAME, ROOT } = require('../../scripts/build-browser');

const HOST = '127.0.0.1';
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
                '.map': 'application/json', '.png': 'image/png' };

/** The vendor scripts a page loads before ours, as the README's <script> instructions say. */
const VENDOR_FILES = {
  '/vendor/tf.min.js': require.resolve('@tensorflow/tfjs/dist/tf.min.js'),
  '/vendor/tf-backend-webgpu.min.js': require.resolve('@tensorflow/tfjs-backend-webgpu/dist/tf-backend-webgpu.min.js'),
};

async function buildDemoScript() {
  const result = await esbuild.build({
    entryPoints: [path.join(__dirname, 'demo.ts')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    sourcemap: 'inline',
    write: false,
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

/** Builds the package bundle and the demo script; returns the in-memory routes they serve. */
async function buildRoutes() {
  const [{ script }, demo] = await Promise.all([buildBrowserBundles({ write: false }), buildDemoScript()]);
  return {
    [`/dist/${BASENAME}.min.js`]: { type: TYPES['.js'], body: script.text },
    [`/dist/${BASENAME}.min.js.map`]: { type: TYPES['.map'], body: script.map },
    '/demo.js': { type: TYPES['.js'], body: demo },
  };
}

/**
 * Starts the server. port 0 picks a free port.
 * @param {{port?: number, extraRoutes?: Record<string, {type: string, body: string | Buffer}>}} [opts]
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
async function startDemoServer({ port = 0, extraRoutes = {} } = {}) {
  let built = await buildRoutes();
  const pageFile = path.join(__dirname, 'index.html');

  const server = http.createServer(async (req, res) => {
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    try {
      const urlPath = new URL(req.url, `http://${HOST}`).pathname;
      if (urlPath === '/' || urlPath === '/index.html') {
        built = await buildRoutes();   // rebuild so that a reload picks up source edits
        return send(200, TYPES['.html'], fs.readFileSync(pageFile));
      }
      const route = extraRoutes[urlPath] || built[urlPath];
      if (route) return send(200, route.type, route.body);
      const vendorPath = urlPath.endsWith('.map') ? urlPath.slice(0, -4) : urlPath;
      if (VENDOR_FILES[vendorPath]) {
        const file = VENDOR_FILES[vendorPath] + urlPath.slice(vendorPath.length);
        if (fs.existsSync(file)) return send(200, TYPES[path.extname(file)], fs.readFileSync(file));
      }
      send(404, 'text/plain', `not found: ${urlPath}`);
    } catch (err) {
      send(500, 'text/plain', String(err && err.stack || err));
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, resolve);
  });
  return {
    url: `http://${HOST}:${server.address().port}/`,
    close: () => new Promise(resolve => server.close(() => resolve())),
  };
}

module.exports = { startDemoServer };

if (require.main === module) {
  const i = process.argv.indexOf('--port');
  const port = Number(i > 0 ? process.argv[i + 1] : process.env.PORT || 8080);
  startDemoServer({ port }).then(({ url }) => {
    console.log(`tfjs-flash-attention demo: ${url}  (Ctrl-C to stop)`);
    console.log(`options: ${url}?seqs=256,512,1024&steps=200&backend=webgl`);
  }, err => {
    console.error(err.message || err);
    process.exit(1);
  });
}
