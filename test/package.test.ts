/**
 * The package as users get it: `npm pack`'s tarball installed into fresh projects (ESM with
 * strict TypeScript, CommonJS, the lowest tfjs the peer range allows), bundled for Node by
 * esbuild and webpack, and the README's TypeScript blocks compiled against it.
 *
 * Consumer projects live in a temporary directory and install from the npm registry (through npm's
 * own cache). Needs the build (`npm run build`, which scripts/test.sh runs first; built here if
 * missing).
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const TSC = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
const TFJS_VERSION: string = PKG.devDependencies['@tensorflow/tfjs-core'];
/** The lowest tfjs-core / tfjs-layers the peer range admits ("^4.0.0" -> "4.0.0"). */
const LOWEST_TFJS: string = PKG.peerDependencies['@tensorflow/tfjs-core'].replace(/^[\^~>=]+/, '');

let work: string;
let tarball: string;
let tarballFiles: string[];

function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`);
  }
  return { stdout: r.stdout, stderr: r.stderr };
}

/** The JSON object a consumer prints on its last line of output. */
function lastJson(stdout: string) {
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

function npmInstall(dir: string, specs: string[]) {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: path.basename(dir), private: true }));
  run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', ...specs], dir);
}

function write(dir: string, files: Record<string, string>) {
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
}

/**
 * A CommonJS consumer: flashAttention (forward and gradient) and the layer on the cpu backend,
 * checked against the plain matMul-softmax-matMul composite. Prints one JSON line.
 */
const SMOKE_CJS = `
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const { flashAttention, flashMultiHeadAttention } = require('tfjs-flash-attention');

tf.setBackend('cpu').then(() => {
  const q = tf.tensor4d([0.1, -0.4, 0.3, 0.8, -0.2, 0.5, 0.9, -0.7, 0.6, 0.2, -0.3, 0.4], [1, 3, 1, 4]);
  const k = tf.tensor4d([0.5, 0.1, -0.6, 0.2, 0.3, -0.9, 0.4, 0.7, -0.1, 0.2, 0.8, -0.5], [1, 3, 1, 4]);
  const v = tf.tensor4d([1, 2, 3, 4, -1, 0.5, 2, -3, 0.25, -2, 1, 0], [1, 3, 1, 4]);
  const out = flashAttention(q, k, v, { causal: true });
  // tfjs 4.0's CommonJS core has no chained ops (t.reshape): functions only.
  const causal = tf.cast(tf.linalg.bandPart(tf.ones([3, 3]), -1, 0), 'bool');
  const flat = t => tf.reshape(t, [3, 4]);
  const composite = a => tf.matMul(tf.softmax(tf.where(causal,
      tf.mul(tf.matMul(flat(a), flat(k), false, true), 0.5), tf.fill([3, 3], -Infinity))), flat(v));
  const maxError = tf.max(tf.abs(tf.sub(flat(out), composite(q)))).dataSync()[0];
  const grad = tf.grad(a => tf.sum(flashAttention(a, k, v, { causal: true })))(q);
  const gradComposite = tf.grad(a => tf.sum(composite(a)))(q);
  const maxGradError = tf.max(tf.abs(tf.sub(flat(grad), flat(gradComposite)))).dataSync()[0];
  const x = tf.ones([2, 3, 8]);
  const layerOutput = flashMultiHeadAttention({ numHeads: 2, keyDim: 4 }).apply(x, { value: x });
  console.log(JSON.stringify({ tfjs: tf.version_core, shape: out.shape, maxError, maxGradError, layerShape: layerOutput.shape }));
}).catch(e => { console.error(e); process.exit(1); });
`;

function expectSmoke(result: { stdout: string; stderr: string }, tfjsVersion: string) {
  const smoke = lastJson(result.stdout);
  expect(smoke.tfjs).toBe(tfjsVersion);
  expect(smoke.shape).toEqual([1, 3, 1, 4]);
  expect(smoke.maxError).toBeLessThan(1e-6);
  expect(smoke.maxGradError).toBeLessThan(1e-5);
  expect(smoke.layerShape).toEqual([2, 3, 8]);
  // A second tfjs in the process registers every kernel again: tfjs warns "... already registered".
  expect(result.stderr).not.toMatch(/already registered/);
}

beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'src', 'index.js'))) run('npm', ['run', 'build', '--silent'], ROOT);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'fa-package-'));
  const packed = JSON.parse(run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], ROOT).stdout);
  tarball = path.join(work, packed[0].filename);
  tarballFiles = packed[0].files.map((f: { path: string }) => f.path);
}, 120000);

afterAll(() => { if (work) fs.rmSync(work, { recursive: true, force: true }); });

describe('the tarball', () => {
  test('ships the build, the CUDA sources the build script compiles, README and LICENSE', () => {
    for (const f of ['package.json', 'README.md', 'LICENSE', 'dist/src/index.js', 'dist/src/index.d.ts',
                     'dist/src/tf_namespace.d.ts', 'dist/browser/tfjs-flash-attention.esm.js',
                     'dist/browser/tfjs-flash-attention.min.js', 'scripts/build-cuda.sh',
                     'kernels/cuda/flash_attention.h', 'native/loader/loader.cc', 'native/tf_op/flash_attention_op.cc']) {
      expect(tarballFiles).toContain(f);
    }
    // Every file build-cuda.sh reads from the package is in it.
    const buildScript = fs.readFileSync(path.join(ROOT, 'scripts/build-cuda.sh'), 'utf8');
    for (const [, rel] of buildScript.matchAll(/\$ROOT\/((?:kernels|native)\/[\w/.-]+\.(?:cc|cu|h))/g)) {
      expect(tarballFiles).toContain(rel);
    }
  });

  test('ships nothing users do not run: tests, tuning scripts, the CUDA harness and its logs', () => {
    const unwanted = tarballFiles.filter(f =>
        /(^|\/)(test|tune|harness|bench|examples)\//.test(f) || /\.test\.|\.py$|\.log$|_log\.txt$/.test(f));
    expect(unwanted).toEqual([]);
  });

  test('LICENSE is the Apache License 2.0 that package.json names', () => {
    expect(PKG.license).toBe('Apache-2.0');
    const license = fs.readFileSync(path.join(ROOT, 'LICENSE'), 'utf8');
    expect(license).toMatch(/^\s*Apache License\s+Version 2\.0, January 2004/);
    expect(license).toMatch(/END OF TERMS AND CONDITIONS/);
  });

  // No `repository` field: the project has no public repository address yet, and a made-up one
  // would send users nowhere. The README's links are relative and name shipped files instead.
  test('package.json says what it is about and which Node it needs', () => {
    expect(PKG.keywords).toEqual(expect.arrayContaining(['tensorflow', 'tfjs', 'attention', 'webgpu']));
    expect(PKG.engines.node).toMatch(/^>=\d+/);
  });

  test('peer dependencies are ranges, not one exact version', () => {
    for (const name of ['@tensorflow/tfjs-core', '@tensorflow/tfjs-layers']) {
      expect(PKG.peerDependencies[name]).toMatch(/^\^4\.\d+\.\d+$/);
    }
  });

  test('README links work outside the repository: relative ones name files the tarball ships', () => {
    const links = [...README.matchAll(/\]\(([^)\s]+)\)/g)].map(m => m[1]);
    expect(links.length).toBeGreaterThan(3);
    for (const link of links) {
      if (link.startsWith('#') || /^https?:/.test(link)) continue;
      expect({ link, shipped: tarballFiles.includes(link.replace(/#.*$/, '')) }).toEqual({ link, shipped: true });
    }
  });
});

describe('installed from the tarball into a fresh project', () => {
  let app: string;

  beforeAll(() => {
    app = path.join(work, 'app');
    npmInstall(app, [tarball, ...['tfjs', 'tfjs-core', 'tfjs-layers', 'tfjs-backend-cpu', 'tfjs-backend-webgpu']
                                       .map(p => `@tensorflow/${p}@${TFJS_VERSION}`)]);
  }, 300000);

  test('CommonJS: require() it and run flashAttention and the layer on the cpu backend', () => {
    write(app, { 'smoke.cjs': SMOKE_CJS });
    expectSmoke(run('node', ['smoke.cjs'], app), TFJS_VERSION);
  });

  test('CommonJS: tf.flashAttention, tf.flashAttentionVarlen and tf.layers.flashMultiHeadAttention, whichever is required first', () => {
    for (const order of [['@tensorflow/tfjs', 'tfjs-flash-attention'], ['tfjs-flash-attention', '@tensorflow/tfjs']]) {
      const { stdout, stderr } = run('node', ['-e', `
        for (const m of ${JSON.stringify(order)}) require(m);
        const tf = require('@tensorflow/tfjs');
        console.log(JSON.stringify([typeof tf.flashAttention, typeof tf.flashAttentionVarlen, typeof tf.layers.flashMultiHeadAttention]));`], app);
      expect(lastJson(stdout)).toEqual(['function', 'function', 'function']);
      expect(stderr).not.toMatch(/already registered/);
    }
  });

  test('CommonJS TypeScript (strict): tf.flashAttention and tf.layers.flashMultiHeadAttention typed and present with tfjs-flash-attention/tf-namespace', () => {
    const dir = path.join(app, 'cjs-ts');
    fs.mkdirSync(dir, { recursive: true });
    write(dir, {
      'package.json': JSON.stringify({ type: 'commonjs' }),
      'tsconfig.json': JSON.stringify({ compilerOptions: {
        strict: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2020', lib: ['es2020', 'dom'],
        types: [], skipLibCheck: true, outDir: 'out' }, include: ['main.ts'] }),
      'main.ts': `
        import 'tfjs-flash-attention/tf-namespace';   // before tfjs, as the README says
        import * as tf from '@tensorflow/tfjs';
        async function main(): Promise<void> {
          await tf.setBackend('cpu');
          const q = tf.randomNormal([1, 6, 2, 4]);
          const kv = tf.randomNormal([1, 5, 1, 4]);
          const out: tf.Tensor4D = tf.flashAttention(q, kv, kv, { causal: true });
          const x = tf.input({ shape: [6, 8] });
          const y = tf.layers.flashMultiHeadAttention({ numHeads: 2, keyDim: 4 }).apply(x, { value: x }) as tf.SymbolicTensor;
          console.log(JSON.stringify({ out: out.shape, y: y.shape }));
        }
        main();`,
    });
    run('node', [TSC, '-p', dir], app);
    expect(lastJson(run('node', [path.join(dir, 'out', 'main.js')], app).stdout)).toEqual({ out: [1, 6, 2, 4], y: [null, 6, 8] });
  });

  test('ESM with strict TypeScript (nodenext): named imports typecheck and run', () => {
    const dir = path.join(app, 'esm-ts');
    fs.mkdirSync(dir, { recursive: true });
    write(dir, {
      'package.json': JSON.stringify({ type: 'module' }),
      'tsconfig.json': JSON.stringify({ compilerOptions: {
        strict: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom'],
        types: [], skipLibCheck: true, outDir: 'out' }, include: ['main.ts'] }),
      'main.ts': `
        import * as tf from '@tensorflow/tfjs';
        import { flashAttention, flashMultiHeadAttention, type FlashAttentionOptions } from 'tfjs-flash-attention';
        await tf.setBackend('cpu');
        const options: FlashAttentionOptions = { causal: true, windowSize: [2, 0] };
        const q = tf.randomNormal([1, 6, 2, 4]);
        const kv = tf.randomNormal([1, 6, 1, 4]);
        const { output, logSumExp } = flashAttention(q, kv, kv, { ...options, returnLogSumExp: true });
        const x = tf.randomNormal([1, 6, 8]);
        const y = flashMultiHeadAttention({ numHeads: 2, keyDim: 4 }).apply(x, { value: x }) as tf.Tensor;
        console.log(JSON.stringify({ output: output.shape, logSumExp: logSumExp.shape, y: y.shape }));`,
    });
    run('node', [TSC, '-p', dir], app);
    expect(lastJson(run('node', [path.join(dir, 'out', 'main.js')], app).stdout))
        .toEqual({ output: [1, 6, 2, 4], logSumExp: [1, 2, 6], y: [1, 6, 8] });
  });

  test("the README's TypeScript blocks typecheck against the installed package (strict)", () => {
    const blocks = [...README.matchAll(/```ts\n([\s\S]*?)```/g)].map(m => m[1]);
    expect(blocks.length).toBeGreaterThanOrEqual(2);
    const dir = path.join(app, 'readme');
    fs.mkdirSync(dir, { recursive: true });
    const files = blocks.map((_, i) => `block${i}.ts`);
    write(dir, {
      'package.json': JSON.stringify({ type: 'module' }),
      'tsconfig.json': JSON.stringify({ compilerOptions: {
        strict: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom'],
        types: [], skipLibCheck: true, noEmit: true }, include: files }),
      // Each block is a module of its own (as pasted into a file), so a block must import what it uses.
      ...Object.fromEntries(blocks.map((b, i) => [files[i], `${b}\nexport {};\n`])),
    });
    const r = spawnSync('node', [TSC, '-p', dir], { cwd: app, encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  describe('bundled for Node', () => {
    // Importing the package must not touch the file system or native code: webpack's own
    // `require` has no 'fs' to give, and a require() by computed name is left to Node at run time,
    // which loads a second tfjs from disk ("kernel already registered" for each kernel).
    test('esbuild --platform=node', async () => {
      write(app, { 'smoke.cjs': SMOKE_CJS });
      const esbuild = await import('esbuild');
      const result = await esbuild.build({
        entryPoints: [path.join(app, 'smoke.cjs')], absWorkingDir: app, outfile: path.join(app, 'out-esbuild', 'smoke.js'),
        bundle: true, platform: 'node', format: 'cjs', logLevel: 'silent',
      });
      expect(result.errors).toEqual([]);
      expectSmoke(run('node', [path.join(app, 'out-esbuild', 'smoke.js')], app), TFJS_VERSION);
    }, 120000);

    test('webpack, target node', async () => {
      write(app, { 'smoke.cjs': SMOKE_CJS });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const webpack = require('webpack') as typeof import('webpack');
      const stats = await new Promise<import('webpack').Stats>((resolve, reject) => webpack({
        context: app, entry: './smoke.cjs', target: 'node', mode: 'development', devtool: false,
        output: { path: path.join(app, 'out-webpack'), filename: 'smoke.js' },
        resolve: { modules: [path.join(app, 'node_modules')] }, infrastructureLogging: { level: 'error' },
      }, (err, s) => err || !s ? reject(err) : resolve(s)));
      const info = stats.toJson({ all: false, errors: true, warnings: true });
      expect(info.errors).toEqual([]);
      // Warnings from tfjs's own code are tfjs's; none may come from this package.
      expect((info.warnings ?? []).filter(w => /tfjs-flash-attention/.test(`${w.moduleName} ${w.message}`))).toEqual([]);
      expectSmoke(run('node', [path.join(app, 'out-webpack', 'smoke.js')], app), TFJS_VERSION);
    }, 180000);
  });
});

describe(`the lowest tfjs the peer range admits (${LOWEST_TFJS}), installed from the npm registry`, () => {
  test('CommonJS consumer: flashAttention and the layer on the cpu backend', () => {
    const dir = path.join(work, 'lowest');
    npmInstall(dir, [tarball, ...['tfjs-core', 'tfjs-layers', 'tfjs-backend-cpu'].map(p => `@tensorflow/${p}@${LOWEST_TFJS}`)]);
    write(dir, { 'smoke.cjs': SMOKE_CJS });
    expectSmoke(run('node', ['smoke.cjs'], dir), LOWEST_TFJS);
  }, 300000);
});

describe('importing the package', () => {
  test('tries no op library until the tensorflow backend is used, then once, quietly without tfjs-node-gpu', () => {
    // A fresh Node: the built package, with the cpu backend registered under the name 'tensorflow'.
    const { stdout, stderr } = run('node', ['-e', `
      const tf = require('@tensorflow/tfjs-core');
      const { MathBackendCPU } = require('@tensorflow/tfjs-backend-cpu');
      const fa = require(${JSON.stringify(path.join(ROOT, 'dist/src/index.js'))});
      const { tensorflowKernelStatus } = require(${JSON.stringify(path.join(ROOT, 'dist/kernels/tensorflow/register.js'))});
      const before = tensorflowKernelStatus() ?? null;
      tf.registerBackend('tensorflow', () => new MathBackendCPU());
      for (const kernel of tf.getKernelsForBackend('cpu')) tf.registerKernel({ ...kernel, backendName: 'tensorflow' });
      tf.setBackend('tensorflow').then(() => {
        const q = tf.ones([1, 2, 1, 4]);
        const out = fa.flashAttention(q, q, q);
        console.log(JSON.stringify({ before, after: tensorflowKernelStatus(), out: Array.from(out.dataSync()) }));
      });`], ROOT);
    const result = lastJson(stdout);
    expect(result.before).toBeNull();
    expect(result.after).toEqual({ loaded: false, relevant: false, reason: '@tensorflow/tfjs-node-gpu is not loaded in this process' });
    expect(result.out).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
    expect(stderr).not.toMatch(/CUDA kernels unavailable/);
  });
});
