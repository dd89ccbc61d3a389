#!/usr/bin/env node
/**
 * Browser builds of tfjs-flash-attention, made with esbuild's JS API so that `npm test` on a fresh
 * clone can build them too (test/browser.test.ts calls buildBrowserBundles()).
 *
 *   dist/browser/tfjs-flash-attention.esm.js   ES module for bundlers (package.json "module",
 *                                               exports "module"/"import"); every @tensorflow/*
 *                                               import stays a bare import.
 *   dist/browser/tfjs-flash-attention.min.js   <script> build for pages that load tf.min.js and
 *                                               tf-backend-webgpu.min.js first; every
 *                                               @tensorflow/* import reads the global `tf`.
 *
 * tfjs is never bundled: a second copy of tfjs-core would have its own engine and kernel registry,
 * so the kernels we register would be invisible to the user's tf.
 *
 * Usage: node scripts/build-browser.js [--outdir dir]
 */
'use strict';
const fs = require('fs');
const path = require('path');
const esbuild = require('esbuild');

const ROOT = path.resolve(__dirname, '..');
const BASENAME = 'tfjs-flash-attention';
const TFJS_PACKAGE = /^@tensorflow\/tfjs(-[a-z0-9-]+)?(\/.*)?$/;

/**
 * Maps every @tensorflow/* import to the global `tf` that tf.min.js (and, for the WebGPU names,
 * tf-backend-webgpu.min.js, which merges its exports into the same global) defines. The union
 * tf.min.js re-exports tfjs-core, tfjs-layers and the cpu/webgl backends at its top level, so the
 * package entry points all resolve to that one object; deep imports have no global equivalent.
 */
const tfGlobalPlugin = {
  name: 'tf-global',
  setup(build) {
    build.onResolve({ filter: TFJS_PACKAGE }, args => {
      const match = TFJS_PACKAGE.exec(args.path);
      if (match[2]) {
        return { errors: [{ text: `deep import '${args.path}' has no equivalent on the global tf of the <script> build; import from the package entry point instead` }] };
      }
      return { path: args.path, namespace: 'tf-global' };
    });
    build.onLoad({ filter: /.*/, namespace: 'tf-global' }, () => ({
      contents: 'module.exports = globalThis.tf;',
      loader: 'js',
    }));
  },
};

// Fails at load time with a message that names the fix, instead of "cannot read x of undefined".
const REQUIRE_GLOBAL_TF =
  'if (typeof globalThis.tf !== "object" || globalThis.tf === null) {\n' +
  '  throw new Error("Error in flashAttention: load tf.min.js (and tf-backend-webgpu.min.js for WebGPU) ' +
  'before tfjs-flash-attention.min.js; the global tf is missing");\n' +
  '}';

function commonOptions() {
  return {
    entryPoints: [path.join(ROOT, 'src', 'index.ts')],
    absWorkingDir: ROOT,
    bundle: true,
    platform: 'browser',
    target: 'es2020',
    sourcemap: true,
    metafile: true,
    legalComments: 'eof',
    logLevel: 'silent',
    // Browsers have no CommonJS: src/attach.ts's require() probe is dead code here, and left in it
    // makes esbuild add a dynamic-require shim that webpack flags as a critical dependency.
    define: { require: 'undefined' },
  };
}

/**
 * Builds both bundles. With write: false (the tests, the demo server) nothing touches the disk
 * and the outputs are returned in memory.
 * @param {{outdir?: string, write?: boolean}} [opts]
 * @returns {Promise<{esm: Bundle, script: Bundle}>}
 * @typedef {{file: string, text: string, map: string, metafile: object, warnings: object[]}} Bundle
 */
async function buildBrowserBundles({ outdir = path.join(ROOT, 'dist', 'browser'), write = true } = {}) {
  const esmFile = path.join(outdir, `${BASENAME}.esm.js`);
  const scriptFile = path.join(outdir, `${BASENAME}.min.js`);
  const [esm, script] = await Promise.all([
    esbuild.build({
      ...commonOptions(),
      format: 'esm',
      outfile: esmFile,
      write,
      external: ['@tensorflow/*'],
    }),
    esbuild.build({
      ...commonOptions(),
      format: 'iife',
      outfile: scriptFile,
      write,
      minify: true,
      banner: { js: REQUIRE_GLOBAL_TF },
      plugins: [tfGlobalPlugin],
    }),
  ]);
  const bundle = (result, file) => {
    const read = f => write ? fs.readFileSync(f, 'utf8') : result.outputFiles.find(o => o.path === f).text;
    return { file, text: read(file), map: read(`${file}.map`), metafile: result.metafile, warnings: result.warnings };
  };
  return { esm: bundle(esm, esmFile), script: bundle(script, scriptFile) };
}

module.exports = { buildBrowserBundles, BASENAME, ROOT };

if (require.main === module) {
  const i = process.argv.indexOf('--outdir');
  const outdir = i > 0 ? path.resolve(process.argv[i + 1]) : undefined;
  buildBrowserBundles({ outdir }).then(({ esm, script }) => {
    for (const b of [esm, script]) {
      for (const w of b.warnings) console.warn(`warning: ${w.text}`);
      console.log(`${path.relative(process.cwd(), b.file)}  ${(Buffer.byteLength(b.text) / 1024).toFixed(1)} KiB`);
    }
  }, err => {
    console.error(err.message || err);
    process.exit(1);
  });
}
