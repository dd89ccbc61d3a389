#!/usr/bin/env node
// Runs a TypeScript example: bundles it with esbuild (packages stay external, resolved from
// node_modules) into node_modules/.cache, then runs the bundle with the remaining arguments.
//   node examples/run.js examples/transformer/train.ts --steps=10
const path = require('path');
const { buildSync } = require('esbuild');

const [entry, ...args] = process.argv.slice(2);
if (!entry) {
  console.error('usage: node examples/run.js <example.ts> [flags]');
  process.exit(2);
}
const root = path.resolve(__dirname, '..');
const outfile = path.join(root, 'node_modules', '.cache', 'tfjs-flash-attention', 'examples',
                          path.relative(root, path.resolve(entry)).replace(/[\\/]/g, '__').replace(/\.ts$/, '.js'));
buildSync({
  entryPoints: [path.resolve(entry)], outfile, bundle: true, platform: 'node', target: 'node20',
  format: 'cjs', packages: 'external', sourcemap: 'inline', logLevel: 'warning',
});
process.argv = [process.argv[0], outfile, ...args];
require(outfile);
