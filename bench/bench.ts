/**
 * The benchmark: flashAttention against the stock tfjs composite on one backend in one process.
 * Entry of `npm run bench` (bundled by bench/run.mjs) and of the GPU machine's kit
 * (bash ../shared/gpu/pack-webgpu-kit.sh bench/bench.ts). Flags: bench/options.ts, or --help.
 *
 * tfjs must be imported only after navigator.gpu exists (tfjs-backend-webgpu registers 'webgpu'
 * at import time only if it does), hence the dynamic imports.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { flashAttention as FlashAttentionFn } from '../src/flash_attention';
import type { flashAttentionVarlen as FlashAttentionVarlenFn } from '../src/flash_attention_varlen';
import {
  compositeRunnable, flashRunnable, Inputs, makeInputs, Runnable, TF,
} from './attention';
import {
  BenchCase, caseLabel, compositeHeadsPerChunk, enumerateCases, Impl, Shape, SUBGROUPS_DEVICE,
} from './cases';
import { writeBenchChart } from './chart';
import { DECODE_GPU_SWEEP, DECODE_SMALL_SWEEP, DecodeSweep, renderDecode, runDecodeBench } from './decode';
import { ErrorScopes, GpuMemoryTracker, timeCall, TimingPlan } from './measure';
import { loadOnnxruntime, Ort, timeOnnxruntime } from './onnxruntime';
import { DECODE_PEER_IMPL, loadDecodePeer } from './onnxruntime_decode';
import { BenchOptions, parseArgs, sweepDefaults, timingDefaults, USAGE } from './options';
import { referenceRows, relativeError, RowRef } from './reference_rows';
import { baseResult, CaseResult, floorTable, markdownReport, RunMeta, RunRecord } from './report';
import { runVarlenCases, varlenCases, varlenMarkdown, varlenProgressLine, VarlenResult } from './varlen';

/** Above this the rows are not float32 round-off but a wrong result (the tests hold 1e-5 / 1e-4). */
const WRONG_RESULT_REL_ERR = 1e-3;
/** The same for float16 inputs and arithmetic (11 significant bits). */
const WRONG_RESULT_REL_ERR_F16 = 2e-2;

interface Backend {
  tf: TF;
  flash: typeof FlashAttentionFn;
  flashVarlen: typeof FlashAttentionVarlenFn;
  /** Which WebGPU device tfjs runs on: tfjs's own, or the package's opt-in subgroups device. */
  devicePath: 'default' | 'subgroups';
  name: string;
  device: GPUDevice | null;
  adapter: Record<string, unknown> | null;
  realGpu: boolean;
  tracker: GpuMemoryTracker | null;
  maxBindingBytes: number;
  hasTimestamps: boolean;
}

async function installWebGPU(): Promise<GPU | null> {
  try {
    const { create, globals } = await import('webgpu');
    Object.assign(globalThis, globals);
    // Unquantized timestamps: Dawn rounds them to 65.5 µs by default, too coarse for small cases.
    const gpu = create(['disable-dawn-features=timestamp_quantization']) as GPU;
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
    return gpu;
  } catch (e) {
    console.log(`# no WebGPU in this process: ${e instanceof Error ? e.message.split('\n')[0] : e}`);
    return null;
  }
}

async function setUpBackend(o: BenchOptions): Promise<Backend> {
  const gpu = o.backend === 'cpu' ? null : await installWebGPU();
  const adapter = gpu ? await gpu.requestAdapter({ powerPreference: 'high-performance' }) : null;
  const tf = await import('@tensorflow/tfjs-core');
  // tfjs-core alone registers no gradients; the union package would, but it brings its own copy.
  await import('@tensorflow/tfjs-core/dist/register_all_gradients');
  await import('@tensorflow/tfjs-backend-cpu');
  if (adapter) await import('@tensorflow/tfjs-backend-webgpu');
  const { flashAttention, flashAttentionVarlen } = await import('../src/index');
  (await import('../kernels/webgpu/tiles')).setForwardVariant(o.forwardVariant);

  const name = adapter ? 'webgpu' : 'cpu';
  if (o.backend === 'webgpu' && !adapter) throw new Error('--backend=webgpu: no WebGPU adapter found');
  if (!(await tf.setBackend(name))) throw new Error(`tf.setBackend('${name}') failed`);
  await tf.ready();

  if (name === 'cpu') {
    return { tf, flash: flashAttention, flashVarlen: flashAttentionVarlen, devicePath: 'default', name, device: null, adapter: null, realGpu: false,
             tracker: null, maxBindingBytes: Number.MAX_SAFE_INTEGER, hasTimestamps: false };
  }
  const info = adapter!.info;
  const fields = { vendor: info.vendor, architecture: info.architecture, device: info.device,
                   description: info.description, isFallbackAdapter: info.isFallbackAdapter,
                   subgroups: adapter!.features.has('subgroups'), shaderF16: adapter!.features.has('shader-f16') };
  const fallback = Boolean(info.isFallbackAdapter) ||
                   /swiftshader|lavapipe|llvmpipe/i.test(`${info.vendor} ${info.architecture} ${info.description}`);
  return webgpuBackend({ tf, flash: flashAttention, flashVarlen: flashAttentionVarlen, devicePath: 'default', name,
                        adapter: fields, realGpu: !fallback });
}

function webgpuBackend(b: Pick<Backend, 'tf' | 'flash' | 'flashVarlen' | 'devicePath' | 'name' | 'adapter' | 'realGpu'>): Backend {
  const backend = b.tf.backend() as WebGPUBackend;
  return {
    ...b, device: backend.device, tracker: new GpuMemoryTracker(backend),
    maxBindingBytes: Math.min(backend.device.limits.maxStorageBufferBindingSize, backend.device.limits.maxBufferSize),
    hasTimestamps: backend.device.features.has('timestamp-query'),
  };
}

/**
 * tfjs on the package's opt-in subgroups device, for the flash-subgroups cases: it replaces the
 * 'webgpu' backend (disposing every tensor on it), hence last. Null where it cannot be had.
 */
async function switchToSubgroups(b: Backend): Promise<Backend | null> {
  if (b.name !== 'webgpu') return null;
  const { useWebGPUWithSubgroups } = await import('../src/index');
  if (!(await useWebGPUWithSubgroups())) return null;
  await b.tf.ready();
  return webgpuBackend({ ...b, devicePath: 'subgroups' });
}

function commandLine(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim() || null;
  } catch {
    return null;
  }
}

/** A real GPU idles at low clocks and needs a fraction of a second of load to reach full speed. */
async function warmUpClocks(tf: TF, ms: number): Promise<void> {
  const a = tf.randomUniform([2048, 2048]);
  const start = performance.now();
  while (performance.now() - start < ms) {
    // tidy: the reshape shares c's buffer and would otherwise keep every product alive.
    const one = tf.tidy(() => tf.slice(tf.reshape(tf.matMul(a, a), [-1]), 0, 1));
    await one.data();
    one.dispose();
  }
  a.dispose();
}

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const sameShape = (a: Shape, b: Shape) =>
  a.seq === b.seq && a.headDim === b.headDim && a.heads === b.heads && a.batch === b.batch;

/**
 * Bytes live during a case that the implementation itself does not need, left out of its peak so
 * both count their inputs once: the composite works on head-major copies, so the [B, N, H, D]
 * originals are the harness's; a forward never reads dOut.
 */
function harnessOnlyBytes(c: BenchCase, x: Inputs): number {
  const bytes = (t: Inputs['q']) => t.size * 4;
  if (c.impl === 'composite') return bytes(x.q) + bytes(x.k) + bytes(x.v) + bytes(x.dOut);
  return c.pass === 'fwd' ? bytes(x.dOut) : 0;
}

class Runner {
  private readonly start = performance.now();
  private b: Backend;
  private scopes: ErrorScopes;
  /** Useful FLOPs per ms last achieved by each impl × pass: predicts the next, larger case. */
  private readonly rate = new Map<string, number>();
  private inputs: { shape: Shape; x: Inputs; refs: Map<boolean, RowRef[]> } | null = null;
  readonly results: CaseResult[] = [];

  constructor(b: Backend, private readonly o: BenchOptions, private readonly plan: TimingPlan,
              private readonly ort: Ort | null) {
    this.b = b;
    this.scopes = new ErrorScopes(b.device);
  }

  get backend(): Backend { return this.b; }

  /** Later cases run on b (the subgroups device); the old backend's tensors are gone with it. */
  useBackend(b: Backend): void {
    this.inputs = null;
    this.b = b;
    this.scopes = new ErrorScopes(b.device);
  }

  elapsedS(): number { return (performance.now() - this.start) / 1000; }

  private inputsFor(s: Shape): Inputs {
    if (this.inputs && sameShape(this.inputs.shape, s)) return this.inputs.x;
    this.dropInputs();
    this.inputs = { shape: s, x: makeInputs(this.b.tf, s), refs: new Map() };
    return this.inputs.x;
  }

  dropInputs(): void {
    if (!this.inputs) return;
    const { q, k, v, dOut } = this.inputs.x;
    this.b.tf.dispose([q, k, v, dOut]);
    this.inputs = null;
  }

  private async refsFor(c: BenchCase): Promise<RowRef[]> {
    const cache = this.inputs!.refs;
    if (!cache.has(c.causal)) cache.set(c.causal, await referenceRows(this.b.tf, this.inputs!.x, c));
    return cache.get(c.causal)!;
  }

  /** Why a case should not run at all, or null. */
  private reasonToSkip(c: BenchCase, headsPerChunk: number): CaseResult | null {
    if (c.impl === 'composite' && headsPerChunk === 0) {
      return baseResult(c, 'too large', `one head's ${c.seq}×${c.seq} float32 scores take ` +
          `${(c.seq * c.seq * 4 / GiB).toFixed(1)} GiB, over the ${(this.b.maxBindingBytes / GiB).toFixed(1)} GiB ` +
          'storage binding limit (chunking heads cannot help)');
    }
    const left = this.o.deadlineS - this.elapsedS();
    if (left <= 0) return baseResult(c, 'skipped', `deadline (${this.o.deadlineS} s) reached`);
    const rate = this.rate.get(`${c.impl}/${c.pass}/${c.headDim}`);
    if (rate) {
      const calls = 1 + this.plan.minReps + this.plan.timedReps + (this.o.check ? 1 : 0);
      const estimateS = (baseResult(c, 'ok').flops / rate) * calls / 1000;
      if (estimateS > this.o.maxCaseS || estimateS > left) {
        return baseResult(c, 'skipped', `estimated ${estimateS.toFixed(0)} s from the previous size's ` +
            `throughput; over --max-case-s=${this.o.maxCaseS} or the ${left.toFixed(0)} s left`);
      }
    }
    return null;
  }

  async runCase(c: BenchCase): Promise<CaseResult> {
    const { tf, tracker } = this.b;
    const headsPerChunk = compositeHeadsPerChunk(c.batch * c.heads, c.seq, this.b.maxBindingBytes);
    const skip = this.reasonToSkip(c, headsPerChunk);
    if (skip) return skip;

    tracker?.releasePool();
    let runnable: Runnable | null = null;
    let liveBeforeBytes: number | null = null;
    const outcome = await this.scopes.run(async () => {
      const x = this.inputsFor(c);
      const refs = this.o.check ? await this.refsFor(c) : [];
      tracker?.resetPeak();
      liveBeforeBytes = tracker ? tracker.liveBytes : null;
      runnable = c.impl === 'composite' ? compositeRunnable(tf, c, x, headsPerChunk)
                                        : flashRunnable(tf, this.b.flash, c, x);
      let peakBytes: number | null = null;
      const timing = await timeCall(tf, runnable.run, this.plan, () => {
        if (tracker) peakBytes = tracker.peak - harnessOnlyBytes(c, x);
      });
      let relErr: number | undefined;
      if (refs.length) {
        const result = runnable.run();
        const first = Array.isArray(result) ? result[0] : result;
        const pairs = [];
        for (const ref of refs) {
          pairs.push({ got: await runnable.rowOf(first, ref.head, ref.row), ref: c.pass === 'fwd' ? ref.out : ref.dq });
        }
        tf.dispose(result);
        relErr = relativeError(pairs);
      }
      return { timing, peakBytes, relErr };
    });
    (runnable as Runnable | null)?.dispose();
    tracker?.releasePool();

    if (outcome.failure) {
      const { kind, message } = outcome.failure;
      return baseResult(c, kind, message);
    }
    const { timing, peakBytes, relErr } = outcome.value!;
    const wrong = relErr !== undefined && !(relErr <= WRONG_RESULT_REL_ERR);
    const r: CaseResult = {
      ...baseResult(c, wrong ? 'wrong' : 'ok',
                    wrong ? `relative error ${relErr} of checked ${c.pass === 'fwd' ? 'out' : 'dq'} rows vs float64` : undefined),
      wallMs: timing.wallMs, wallAllMs: timing.wallAllMs.map(x => +x.toFixed(3)), gpuMs: timing.gpuMs,
      peakBytes, liveBeforeBytes, relErr, warmupCalls: timing.warmupCalls,
      ...(c.impl === 'composite' ? { headsPerChunk } : {}),
    };
    r.tflopsWall = r.flops / timing.wallMs / 1e9;
    r.tflopsGpu = timing.gpuMs ? r.flops / timing.gpuMs / 1e9 : null;
    this.rate.set(`${c.impl}/${c.pass}/${c.headDim}`, r.flops / timing.wallMs);
    return r;
  }

  /** A forward case of the onnxruntime peer, on its own WebGPU device; its GPU time from its profiler. */
  async runPeerCase(c: BenchCase): Promise<CaseResult> {
    const skip = this.reasonToSkip(c, 1);
    if (skip) return skip;
    const dtype = c.impl === 'onnxruntime-f16' ? 'float16' : 'float32';
    try {
      const t = await timeOnnxruntime(this.ort!, c, dtype, {
        minReps: this.plan.minReps, maxReps: this.plan.maxReps, targetMs: this.plan.targetMs,
        warmupMs: this.plan.warmupMs, check: this.o.check,
      });
      const limit = dtype === 'float16' ? WRONG_RESULT_REL_ERR_F16 : WRONG_RESULT_REL_ERR;
      const wrong = t.relErr !== undefined && !(t.relErr <= limit);
      const r: CaseResult = {
        ...baseResult(c, wrong ? 'wrong' : 'ok', wrong ? `relative error ${t.relErr} of checked out rows vs float64` : undefined),
        wallMs: t.wallMs, wallAllMs: t.wallAllMs.map(x => +x.toFixed(3)), gpuMs: t.gpuMs, relErr: t.relErr,
        warmupCalls: t.warmupCalls, otherGpuMs: t.otherGpuMs, peakBytes: null,
      };
      r.tflopsWall = r.flops / t.wallMs / 1e9;
      r.tflopsGpu = t.gpuMs ? r.flops / t.gpuMs / 1e9 : null;
      this.rate.set(`${c.impl}/${c.pass}/${c.headDim}`, r.flops / t.wallMs);
      return r;
    } catch (e) {
      const message = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, ' ').slice(0, 240);
      return baseResult(c, /memory|allocat/i.test(message) ? 'OOM' : 'error', message);
    }
  }
}

function progressLine(i: number, n: number, c: BenchCase, r: CaseResult, elapsedS: number): string {
  const head = `[${String(i + 1).padStart(String(n).length)}/${n}] ${caseLabel(c)}`;
  const tail = `(${elapsedS.toFixed(1)} s)`;
  if (r.status !== 'ok' && r.status !== 'wrong') return `${head}  ${r.status.toUpperCase()}: ${r.note ?? ''} ${tail}`;
  const gpu = r.gpuMs ? ` gpu ${r.gpuMs.toFixed(3)} ms` : '';
  const peak = r.peakBytes ? ` peak ${(r.peakBytes / MiB).toFixed(0)} MiB` : '';
  const err = r.relErr !== undefined ? ` err ${r.relErr.toExponential(1)}` : '';
  return `${head}  wall ${r.wallMs!.toFixed(3)} ms${gpu}  ${r.tflopsWall!.toPrecision(3)} TFLOP/s${peak}${err}` +
         `${r.status === 'wrong' ? '  WRONG' : ''} ${tail}`;
}

/** Writes results.json and results.md, and with chart: true (once a run ends: it takes a second) the chart. */
async function writeOutputs(run: RunRecord, dir: string, { chart: withChart = true } = {}): Promise<void> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'results.json'), JSON.stringify(run, null, 1) + '\n');
  writeFileSync(join(dir, 'results.md'), markdownReport(run));
  if (!withChart) return;
  const chart = await writeBenchChart(run, dir);
  // The GPU kit carries no native PNG renderer: its chart.png is drawn later, here.
  if (!chart.png) console.log(`# wrote ${chart.svg} only: ${chart.reason}; run npm run chart -- ${join(dir, 'results.json')}`);
}

/**
 * The variable-length cases (bench/varlen.ts) at the sweep's sizes, on tfjs's default device;
 * writes varlen.json and varlen.md next to the sweep's results.
 */
async function runVarlenSuite(b: Backend, o: BenchOptions, sweep: ReturnType<typeof sweepDefaults>, plan: TimingPlan,
                              meta: RunMeta): Promise<VarlenResult[]> {
  const cases = varlenCases(sweep);
  const start = performance.now();
  console.log(`# ${cases.length} variable-length cases: N ${sweep.seqs.join(',')}; d ${sweep.headDims.join(',')}; ` +
              `H ${sweep.heads}; ragged batch of 8 and packed documents; lengths vs mask vs dense`);
  mkdirSync(o.outDir, { recursive: true });
  const write = (results: VarlenResult[]) => {
    writeFileSync(join(o.outDir, 'varlen.json'), JSON.stringify({ meta, results }, null, 1) + '\n');
    writeFileSync(join(o.outDir, 'varlen.md'), varlenMarkdown(results));
  };
  const done: VarlenResult[] = [];
  const results = await runVarlenCases({
    tf: b.tf, flash: b.flash, flashVarlen: b.flashVarlen, scopes: new ErrorScopes(b.device), plan,
    maxBindingBytes: b.maxBindingBytes, check: o.check,
    pastDeadline: () => (performance.now() - start) / 1000 > o.deadlineS,
    betweenShapes: () => b.tracker?.releasePool(),
  }, cases, (r, i) => {
    done.push(r);
    console.log(varlenProgressLine(r, i, cases.length));
    write(done);
  });
  write(results);
  console.log(`# variable-length cases done in ${((performance.now() - start) / 1000).toFixed(1)} s: ${o.outDir}/varlen.md, varlen.json`);
  return results;
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  if (o.help) { console.log(USAGE); return 0; }
  if (o.floorOnly) {
    console.log(floorTable(sweepDefaults(o.sweep, true, o.quick), { tflops: o.ceilingTflops, gbPerS: o.ceilingGbPerS }));
    return 0;
  }
  if (o.renderOnly && o.decode) {
    renderDecode(o.renderOnly);
    console.log(`rendered decode.json and decode.md next to ${o.renderOnly}`);
    return 0;
  }
  if (o.renderOnly) {
    const run = JSON.parse(readFileSync(o.renderOnly, 'utf8')) as RunRecord;
    const dir = process.argv.some(a => a.startsWith('--out=')) ? o.outDir : dirname(o.renderOnly);
    await writeOutputs(run, dir);
    console.log(`rendered ${dir}/results.md and the chart from ${o.renderOnly}`);
    return 0;
  }

  const b = await setUpBackend(o);
  if (o.decode) return decodeMain(o, b);
  const sweep = sweepDefaults(o.sweep, b.realGpu, o.quick);
  const { ort, why: ortMissing } = sweep.impls.some(i => i.startsWith('onnxruntime')) && b.name === 'webgpu'
      ? loadOnnxruntime() : { ort: null, why: '' };
  const unavailable = (impl: Impl): string | null => {
    if (impl.startsWith('onnxruntime')) {
      if (b.name !== 'webgpu') return 'the onnxruntime peer runs on WebGPU only';
      if (!ort) return `onnxruntime-node not found (bash bench/install-peers.sh installs it): ${ortMissing}`;
    }
    if (impl === 'flash-subgroups' && !b.adapter?.subgroups) return 'no WebGPU adapter with subgroups';
    return null;
  };
  for (const impl of [...sweep.impls]) {
    const why = unavailable(impl);
    if (!why) continue;
    if (o.implsGiven) throw new Error(`--impls=${impl}: ${why}`);
    console.log(`# ${impl} left out: ${why}`);
    sweep.impls = sweep.impls.filter(i => i !== impl);
  }
  const cases = enumerateCases(sweep);
  const timing = timingDefaults(o.timing, b.realGpu);
  const plan: TimingPlan = {
    ...timing, warmupMs: b.realGpu ? 100 : 0, timedReps: b.hasTimestamps ? timing.timedReps : 0,
  };
  const meta: RunMeta = {
    date: new Date().toISOString(), backend: b.name, adapter: b.adapter,
    nvidiaSmi: commandLine('nvidia-smi', ['--query-gpu=name,memory.total,driver_version,clocks.max.sm', '--format=csv,noheader']),
    tfjsVersion: b.tf.version_core, node: process.version,
    gitCommit: process.env.BENCH_COMMIT || commandLine('git', ['rev-parse', '--short', 'HEAD']),
    argv: process.argv.slice(2), ceilings: { tflops: o.ceilingTflops, gbPerS: o.ceilingGbPerS },
    ...(ort ? { onnxruntime: `onnxruntime-node ${ort.version}, WebGPU execution provider` } : {}),
  };
  console.log(`# backend ${b.name}${b.adapter ? ` (${Object.values(b.adapter).filter(v => v !== '').join(', ')})` : ''}` +
              `${meta.nvidiaSmi ? `; ${meta.nvidiaSmi}` : ''}; timestamps ${plan.timedReps > 0 ? 'on' : 'off'}`);
  console.log(`# ${cases.length} cases: N ${sweep.seqs.join(',')}; d ${sweep.headDims.join(',')}; H ${sweep.heads}; ` +
              `B ${sweep.batch}; ${sweep.passes.join(' & ')}; ${sweep.causal.map(x => (x ? 'causal' : 'full')).join(' & ')}; ` +
              `deadline ${o.deadlineS} s -> ${o.outDir}`);
  if (b.realGpu) await warmUpClocks(b.tf, 400);

  if (o.varlen !== 'off') {
    const varlen = await runVarlenSuite(b, o, sweep, plan, meta);
    if (o.varlen === 'only') return varlen.some(r => r.status === 'wrong') ? 1 : 0;
  }

  const runner = new Runner(b, o, plan, ort);
  const run: RunRecord = { meta, results: runner.results };
  let subgroupsFailed: string | null = null;
  for (let i = 0; i < cases.length; i++) {
    const c = cases[i];
    if (SUBGROUPS_DEVICE.includes(c.impl) && runner.backend.devicePath !== 'subgroups' && !subgroupsFailed) {
      runner.dropInputs();
      const sb = await switchToSubgroups(runner.backend);
      if (sb) {
        runner.useBackend(sb);
        if (sb.realGpu) await warmUpClocks(sb.tf, 200);
        console.log('# now on the opt-in subgroups device (useWebGPUWithSubgroups)');
      } else {
        subgroupsFailed = 'useWebGPUWithSubgroups() declined this adapter';
      }
    }
    const r = subgroupsFailed && SUBGROUPS_DEVICE.includes(c.impl) ? baseResult(c, 'skipped', subgroupsFailed)
            : c.impl.startsWith('onnxruntime') ? await runner.runPeerCase(c) : await runner.runCase(c);
    runner.results.push(r);
    console.log(progressLine(i, cases.length, c, r, runner.elapsedS()));
    meta.elapsedS = +runner.elapsedS().toFixed(1);
    await writeOutputs(run, o.outDir, { chart: false });
    if (r.status === 'device lost') {
      for (const c of cases.slice(i + 1)) runner.results.push(baseResult(c, 'skipped', 'device lost earlier'));
      break;
    }
  }
  runner.dropInputs();
  await writeOutputs(run, o.outDir);
  console.log(`# done in ${runner.elapsedS().toFixed(1)} s: ${o.outDir}/results.json, results.md, chart.svg and chart.png`);
  // A wrong peer is the peer's finding (reported in its rows), not a failure of this package.
  return runner.results.some(r => r.status === 'wrong' && !r.impl.startsWith('onnxruntime')) ? 1 : 0;
}

/** `--decode`: the decode sweep (bench/decode.ts) on this backend. */
async function decodeMain(o: BenchOptions, b0: Backend): Promise<number> {
  // The split-KV kernel and the read probe are WebGPU programs (on cpu every row was 'decode path not taken').
  if (b0.name !== 'webgpu') throw new Error(`--decode needs the webgpu backend, got ${b0.name}`);
  const b = o.decodeDevice === 'subgroups' ? await switchToSubgroups(b0) : b0;
  if (!b) throw new Error('--decode-device=subgroups: useWebGPUWithSubgroups() declined this adapter');
  const d = b.realGpu ? DECODE_GPU_SWEEP : DECODE_SMALL_SWEEP;
  const sweep: DecodeSweep = {
    ...d, seqKs: o.sweep.seqs ?? d.seqKs, headDims: o.sweep.headDims ?? d.headDims, heads: o.sweep.heads ?? d.heads,
    batches: o.sweep.batch ? [o.sweep.batch] : d.batches, targets: o.decodeTargets, threads: o.decodeThreads,
    variants: o.decodeVariants, baselines: o.decodeBaselines, warmMs: o.decodeWarmMs ?? d.warmMs,
    kvHeads: o.decodeKvHeads ?? d.kvHeads, passes: o.decodePasses,
    rounds: o.decodeRounds ?? d.rounds,
  };
  const badKv = sweep.kvHeads.find(kv => sweep.heads % kv !== 0);
  if (badKv) throw new Error(`--decode-kv-heads: ${badKv} does not divide the query heads (${sweep.heads})`);
  const timing = timingDefaults(o.timing, b.realGpu);
  const plan: TimingPlan = { ...timing, warmupMs: b.realGpu ? 100 : 0, timedReps: b.hasTimestamps ? timing.timedReps : 0 };
  const hooks = await import('../kernels/webgpu/flash_decode_webgpu');
  const meta = {
    date: new Date().toISOString(), backend: b.name, devicePath: b.devicePath, adapter: b.adapter,
    nvidiaSmi: commandLine('nvidia-smi', ['--query-gpu=name,memory.total,driver_version,clocks.max.sm', '--format=csv,noheader']),
    gitCommit: process.env.BENCH_COMMIT || commandLine('git', ['rev-parse', '--short', 'HEAD']), argv: process.argv.slice(2),
  };
  console.log(`# decode sweep on ${b.name} (${b.devicePath} device)${b.adapter ? ` (${Object.values(b.adapter).filter(v => v !== '').join(', ')})` : ''}` +
              `${meta.nvidiaSmi ? `; ${meta.nvidiaSmi}` : ''}; timestamps ${plan.timedReps > 0 ? 'on' : 'off'} -> ${o.outDir}`);
  const { peer, why: peerMissing } = o.decodePeer && b.name === 'webgpu' ? loadDecodePeer(o.check) : { peer: null, why: 'off' };
  console.log(`# onnxruntime decode peer: ${peer ? peer.description : `not run (${peerMissing})`}`);
  if (peer) Object.assign(meta, { onnxruntime: peer.description });
  if (b.realGpu) await warmUpClocks(b.tf, 400);
  const rows = await runDecodeBench(b.tf, b.flash, hooks, sweep, plan, b.device, o.outDir, meta, o.deadlineS, peer);
  console.log(`# decode done: ${o.outDir}/decode.json, decode.md`);
  // A wrong peer is the peer's finding (reported in its rows), not a failure of this package.
  return rows.some(r => (r.status === 'wrong' && r.impl !== DECODE_PEER_IMPL) || r.status === 'decode path not taken') ? 1 : 0;
}

main().then(code => process.exit(code), e => {
  console.error(`bench failed: ${e instanceof Error ? e.stack : e}`);
  process.exit(2);
});
