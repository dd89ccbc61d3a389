/**
 * Command line of the benchmark. Every dimension of the sweep is a flag; what is not given
 * defaults to the sweep on a real GPU and to a small sweep elsewhere (CPU, SwiftShader),
 * where `npm run bench` must finish in a minute or so.
 */
import { Impl, IMPLS, Pass, PASSES, Sweep } from './cases';

export type BackendChoice = 'auto' | 'webgpu' | 'cpu';

export interface TimingFlags {
  /** Most timed repetitions per case; fewer when one repetition is slow (see targetMs). */
  maxReps: number;
  minReps: number;
  /** Wall time a case's timed repetitions aim to fill. */
  targetMs: number;
  /** Repetitions timed with GPU timestamps (tf.time); 0 turns GPU timing off. */
  timedReps: number;
}

export interface BenchOptions {
  backend: BackendChoice;
  /** Fields left undefined are filled by sweepDefaults once the device is known. */
  sweep: Partial<Sweep>;
  /** Timing flags as given; timingDefaults fills the rest once the device is known. */
  timing: Partial<TimingFlags>;
  /** No case starts after this many seconds; later cases are recorded as skipped. */
  deadlineS: number;
  /** A case whose estimated run time is longer than this is skipped rather than run. */
  maxCaseS: number;
  /** Compare rows of the output (and of dq) with a float64 reference. */
  check: boolean;
  outDir: string;
  /** A quick subset of the GPU sweep (N 1024, 4096, 16384; d 64, 128), every implementation. */
  quick: boolean;
  /** --impls was given: an implementation that cannot run here is an error, not left out. */
  implsGiven: boolean;
  /** Print the FLOP / byte floor of the sweep as Markdown and run nothing. */
  floorOnly: boolean;
  /** Re-render the Markdown table and the chart from an earlier results.json; runs nothing. */
  renderOnly?: string;
  ceilingTflops: number;
  ceilingGbPerS: number;
  /** Which WebGPU forward flash takes (kernels/webgpu/tiles.ts setForwardVariant). */
  forwardVariant: 'auto' | 'tiled' | 'staged';
  help: boolean;
  /** Run the decode sweep (bench/decode.ts) instead; decodeTargets: split-pass workgroup targets to tune over. */
  decode: boolean;
  decodeTargets: number[];
  decodeThreads: number[];
  /** Split-pass variants to time besides the default: '+'-joined key=value lists, ','-separated. */
  decodeVariants: string[];
  /** Also time the one-pass forward and the composite in the decode sweep (off for tuning runs). */
  decodeBaselines: boolean;
  /** The decode sweep's kv head counts (undefined: the sweep's default). */
  decodeKvHeads?: number[];
  /** Also time each program of a decode call alone (split, combine-out, combine-lse) and an empty dispatch. */
  decodePasses: boolean | 'default';
  /** ms of GPU warm-up before each decode timing (undefined: the sweep's default). */
  decodeWarmMs?: number;
  /** Interleaved timing rounds per decode shape (undefined: the sweep's default). */
  decodeRounds?: number;
  /** The variable-length cases (bench/varlen.ts): off, before the sweep, or instead of it. */
  varlen: 'off' | 'on' | 'only';
  /** The decode sweep's onnxruntime row per shape (bench/onnxruntime_decode.ts), when onnxruntime-node loads. */
  decodePeer: boolean;
  /** The device the decode sweep runs on: tfjs's own, or the package's opt-in subgroups device. */
  decodeDevice: 'default' | 'subgroups';
}

export const USAGE = `npm run bench -- [flags]

  --backend=auto|webgpu|cpu   auto: webgpu when an adapter exists, else cpu (default auto)
  --seqs=512,1024,...         sequence lengths (Nq = Nk)
  --dims=64,128               head dims
  --heads=16 --batch=1
  --causal=both|0|1           full, causal or both (default both)
  --passes=fwd,fwd+bwd        'bwd' is accepted for fwd+bwd
  --impls=flash,composite,flash-subgroups,onnxruntime-f32,onnxruntime-f16
                              flash-subgroups: flash on the opt-in subgroups device
                              (useWebGPUWithSubgroups), run after the rest; onnxruntime-*: the peer,
                              forward only, when onnxruntime-node is installed (bash bench/install-peers.sh).
                              Default: all that this machine can run
  --quick                     a subset: N 1024,4096,16384; d 64,128 (other flags still apply)
  --reps=20 --min-reps=3      timed repetitions, adaptive between the two (cpu/SwiftShader: 5, 2)
  --target-ms=300             wall time the timed repetitions of one case aim for
  --gpu-reps=2                repetitions timed with GPU timestamps, 0 = off (1)
  --deadline=600              seconds; no case starts later (rest: "skipped")
  --max-case-s=60             skip a case estimated to take longer
  --check=1                   spot-check output / dq rows against float64
  --subgroups                 same as --impls=flash-subgroups,composite
  --forward=auto|tiled|staged flash's WebGPU forward: as measured (auto, default) or one variant forced
  --varlen=0|1|only           also (1) or only run the variable-length cases (bench/varlen.ts): a
                              ragged batch of 8 (seqLensQ/K) and packed documents
                              (flashAttentionVarlen), each beside a dense bool mask and dense
                              attention, at the sweep's --seqs, --dims, --heads, --causal, --passes
                              (default 0); written to varlen.md and varlen.json
  --out=bench/results/latest  where results.json, results.md, chart.svg and chart.png go
  --render=FILE.json          only re-render results.md and the chart from FILE.json
  --floor                     only print the FLOP / byte floor of the sweep (GPU defaults)
  --ceiling-tflops=51.6 --ceiling-gbs=3350   roofline used for the floor column (H100 f32 SIMT, HBM3)
  --decode                    the decode sweep instead (bench/decode.ts): one query row, --seqs are key
                              lengths (GPU default 1024..65536), batch 1 and 8, heads 16, kv heads 16 and 2,
                              d 64,128; split-KV vs one-pass vs composite, GB/s against a copy kernel
  --decode-peer=0|1           the decode sweep's 'onnxruntime' row per shape: its WebGPU GroupQueryAttention
                              decode, when onnxruntime-node is installed (bash bench/install-peers.sh) (default 1)
  --decode-targets=256,512    also time the split-KV forward at these split-pass workgroup targets
  --decode-threads=256        ... and with these split-pass workgroup sizes
  --decode-variants=vec4=0+prefetch=0,mintiles=1   ... and these split-pass variants (keys: vec4,
                              prefetch, fused, grouped, subgroup (0/1), mintiles, target, threads, cols, rows, mrows,
                              lanes, unroll, blocked (0/1), consecutive (0/1), gmin (grouped pass from this headDimV),
                              cthreads (the combine's threads), ccols (its value vec4 columns per workgroup))
  --decode-device=subgroups   the decode sweep on the opt-in subgroups device (useWebGPUWithSubgroups:
                              the subgroup split pass; decode[subgroup=0] times the other passes there)
  --decode-baselines=0        decode sweep without the one-pass forward and the composite (tuning)
  --decode-kv-heads=16,2      the decode sweep's kv head counts (GPU default 16,2; --heads query heads)
  --decode-passes=1|default   also time each program of a decode call alone (split, combine-out,
                              combine-lse; each decode entry, or the default's only) and an empty dispatch,
                              as the calls are
  --decode-warm-ms=100        ms of the same work before each decode timing (clocks steady; GPU default 100)
  --decode-rounds=2           interleaved timings of each entry of a shape, the fastest reported with the spread (GPU default 2)

Defaults on a real GPU: seqs 512..32768, dims 32,64,128,256, heads 16, both passes, causal and full.
Defaults on cpu or a fallback adapter (SwiftShader): seqs 64,128, dims 64, heads 2, fewer repetitions.`;

function list<T extends string>(raw: string, allowed: readonly T[], flag: string, alias: Record<string, T> = {}): T[] {
  const items = raw.split(',').map(s => s.trim()).filter(Boolean).map(s => alias[s] ?? s);
  for (const item of items) {
    if (!allowed.includes(item as T)) throw new Error(`--${flag}: '${item}' is not one of ${allowed.join(', ')}`);
  }
  return items as T[];
}

function positiveInts(raw: string, flag: string): number[] {
  const xs = raw.split(',').filter(Boolean).map(Number);
  if (xs.length === 0 || xs.some(x => !Number.isInteger(x) || x <= 0)) {
    throw new Error(`--${flag} needs positive integers, got '${raw}'`);
  }
  return xs;
}

function number(raw: string, flag: string, min: number): number {
  const x = Number(raw);
  if (!Number.isFinite(x) || x < min) throw new Error(`--${flag} needs a number >= ${min}, got '${raw}'`);
  return x;
}

function bool(raw: string, flag: string): boolean {
  if (['1', 'true', 'yes', ''].includes(raw)) return true;
  if (['0', 'false', 'no'].includes(raw)) return false;
  throw new Error(`--${flag} needs 0 or 1, got '${raw}'`);
}

export function parseArgs(argv: readonly string[]): BenchOptions {
  const o: BenchOptions = {
    backend: 'auto', sweep: {}, timing: {},
    deadlineS: 600, maxCaseS: 60, check: true, outDir: 'bench/results/latest',
    ceilingTflops: 51.6, ceilingGbPerS: 3350, help: false, floorOnly: false, quick: false, implsGiven: false,
    decode: false, decodeTargets: [], decodeThreads: [], decodeVariants: [], decodeBaselines: true, decodePasses: false,
    forwardVariant: 'auto',
    varlen: 'off', decodePeer: true, decodeDevice: 'default',
  };
  for (const arg of argv) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new Error(`unexpected argument '${arg}' (flags look like --name=value; --help lists them)`);
    const [, flag, value = ''] = m;
    switch (flag) {
      case 'help': o.help = true; break;
      case 'backend': o.backend = list(value, ['auto', 'webgpu', 'cpu'] as const, flag)[0]; break;
      case 'seqs': case 'sizes': o.sweep.seqs = positiveInts(value, flag); break;
      case 'dims': o.sweep.headDims = positiveInts(value, flag); break;
      case 'heads': o.sweep.heads = positiveInts(value, flag)[0]; break;
      case 'batch': o.sweep.batch = positiveInts(value, flag)[0]; break;
      case 'causal':
        o.sweep.causal = value === 'both' ? [false, true] : [bool(value, flag)];
        break;
      case 'passes': o.sweep.passes = list<Pass>(value, PASSES, flag, { bwd: 'fwd+bwd', 'fwd+bwd': 'fwd+bwd' }); break;
      case 'impls': o.sweep.impls = list<Impl>(value, IMPLS, flag); o.implsGiven = true; break;
      case 'reps': o.timing.maxReps = number(value, flag, 1); break;
      case 'min-reps': o.timing.minReps = number(value, flag, 1); break;
      case 'target-ms': o.timing.targetMs = number(value, flag, 0); break;
      case 'gpu-reps': o.timing.timedReps = number(value, flag, 0); break;
      case 'deadline': o.deadlineS = number(value, flag, 0); break;
      case 'max-case-s': o.maxCaseS = number(value, flag, 0); break;
      case 'check': o.check = bool(value, flag); break;
      case 'out': o.outDir = value; break;
      case 'render': o.renderOnly = value; break;
      case 'floor': o.floorOnly = bool(value, flag); break;
      case 'subgroups':
        if (bool(value, flag)) { o.sweep.impls = ['flash-subgroups', 'composite']; o.implsGiven = true; }
        break;
      case 'quick': o.quick = bool(value, flag); break;
      case 'forward': o.forwardVariant = list(value, ['auto', 'tiled', 'staged'] as const, flag)[0]; break;
      case 'varlen': o.varlen = value === 'only' ? 'only' : bool(value, flag) ? 'on' : 'off'; break;
      case 'ceiling-tflops': o.ceilingTflops = number(value, flag, 1e-9); break;
      case 'ceiling-gbs': o.ceilingGbPerS = number(value, flag, 1e-9); break;
      case 'decode-peer': o.decodePeer = bool(value, flag); break;
      case 'decode': o.decode = bool(value, flag); break;
      case 'decode-targets': o.decodeTargets = positiveInts(value, flag); break;
      case 'decode-threads': o.decodeThreads = positiveInts(value, flag); break;
      case 'decode-variants': o.decodeVariants = value.split(',').filter(Boolean); break;
      case 'decode-baselines': o.decodeBaselines = bool(value, flag); break;
      case 'decode-kv-heads': o.decodeKvHeads = positiveInts(value, flag); break;
      case 'decode-passes': o.decodePasses = value === 'default' ? 'default' : bool(value, flag); break;
      case 'decode-warm-ms': o.decodeWarmMs = number(value, flag, 0); break;
      case 'decode-rounds': o.decodeRounds = positiveInts(value, flag)[0]; break;
      case 'decode-device': o.decodeDevice = list(value, ['default', 'subgroups'] as const, flag)[0]; break;
      default: throw new Error(`unknown flag --${flag}; --help lists the flags`);
    }
  }
  return o;
}

/** Repetitions: enough for a stable median on a GPU; few on CPU and SwiftShader, where one call of
 * even a small case takes a large fraction of a second. */
export function timingDefaults(given: Partial<TimingFlags>, realGpu: boolean): TimingFlags {
  const d = realGpu ? { maxReps: 20, minReps: 3, targetMs: 300, timedReps: 2 }
                    : { maxReps: 5, minReps: 2, targetMs: 300, timedReps: 1 };
  const t = { ...d, ...given };
  t.minReps = Math.min(t.minReps, t.maxReps);
  return t;
}

/** The GPU sweep, and the --quick subset of it. */
export const GPU_SWEEP = { seqs: [512, 1024, 2048, 4096, 8192, 16384, 32768], headDims: [32, 64, 128, 256], heads: 16 };
export const QUICK_SWEEP = { seqs: [1024, 4096, 16384], headDims: [64, 128], heads: 16 };

/** Fills what the command line left open, by whether the device is a real GPU (and --quick). */
export function sweepDefaults(given: Partial<Sweep>, realGpu: boolean, quick = false): Sweep {
  const small = { seqs: [64, 128], headDims: [64], heads: 2 };
  const d = quick ? QUICK_SWEEP : realGpu ? GPU_SWEEP : small;
  return {
    seqs: given.seqs ?? d.seqs,
    headDims: given.headDims ?? d.headDims,
    heads: given.heads ?? d.heads,
    batch: given.batch ?? 1,
    causal: given.causal ?? [false, true],
    passes: given.passes ?? [...PASSES],
    impls: given.impls ?? [...IMPLS],
  };
}
