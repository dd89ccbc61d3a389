#!/usr/bin/env node
// `npm run bench -- [flags]`: bundles bench/bench.ts with esbuild, the way the GPU machine's kit
// does (ESM, tfjs's `module` entries so one tfjs-core is shared), and runs it in a fresh Node.
// A fresh process because Dawn reads the Vulkan driver variables only at start-up.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dawn = join(root, 'node_modules', 'webgpu', 'dist', `${process.platform}-${process.arch}`, 'dawn.node');
// Outside the project, as on the GPU machine: nothing but the bundle is reachable, so the run here
// behaves as the kit's does (no second tfjs from node_modules through a runtime require).
const outfile = join(tmpdir(), `tfjs-flash-attention-bench-${process.getuid?.() ?? 0}`, 'bench.mjs');

// 'webgpu' becomes its dawn.node loaded by absolute path, as the kit's shim does.
const dawnByPath = {
  name: 'dawn-by-path',
  setup(b) {
    b.onResolve({ filter: /^webgpu$/ }, () => ({ path: 'webgpu', namespace: 'dawn-by-path' }));
    b.onLoad({ filter: /.*/, namespace: 'dawn-by-path' }, () => ({
      // Through a variable: esbuild must leave the native addon to Node's require.
      contents: `const addon = ${JSON.stringify(dawn)}; export const { create, globals } = require(addon);`,
      loader: 'js',
    }));
  },
};

await build({
  entryPoints: [join(root, 'bench', 'bench.ts')],
  bundle: true, platform: 'node', target: 'node20', format: 'esm',
  mainFields: ['module', 'main'],
  plugins: [dawnByPath],
  // CommonJS-only globals some package code uses (kernels/tensorflow's op-library lookup).
  define: { __dirname: 'import.meta.dirname', __filename: 'import.meta.filename' },
  banner: { js: "import{createRequire as __benchRequire}from'node:module';const require=__benchRequire(import.meta.url);" },
  outfile, logLevel: 'warning',
});

const env = { ...process.env };
env.XDG_RUNTIME_DIR ??= '/tmp';   // silences libwayland's complaint when Dawn loads
// Dawn picks its Vulkan driver at start-up: probe for an adapter in a child process with the
// environment as given, and when there is none (no driver, or one Dawn rejects, such as lavapipe)
// fall back to Chromium's SwiftShader, so a CPU-only machine still exercises the WebGPU path.
function adapterFound(probeEnv) {
  const probe = spawnSync(process.execPath, ['-e', `
    const { create, globals } = require(${JSON.stringify(dawn)}); Object.assign(globalThis, globals);
    create([]).requestAdapter().then(a => { process.stdout.write(a ? 'yes' : ''); process.exit(0); });`],
    { env: probeEnv, encoding: 'utf8', timeout: 30000 });
  return probe.stdout === 'yes';
}
const swiftShader = '/usr/lib/chromium/vk_swiftshader_icd.json';
const wantsCpu = process.argv.includes('--backend=cpu') || process.argv.includes('--help');
if (!wantsCpu && existsSync(dawn) && !adapterFound(env) && existsSync(swiftShader)) {
  env.VK_ICD_FILENAMES = swiftShader;
  console.log(`# no WebGPU adapter from the installed Vulkan drivers: using SwiftShader (${swiftShader})`);
}

const child = spawnSync(process.execPath, [outfile, ...process.argv.slice(2)], { stdio: 'inherit', env, cwd: root });
process.exit(child.status ?? 1);
