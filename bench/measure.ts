/**
 * How a case is measured: wall time of dispatch + a 1-element readback (median), GPU time from
 * timestamp queries (tf.time), peak live WebGPU buffer bytes, and WebGPU error scopes so that an
 * out-of-memory or oversized binding is reported as such instead of timing garbage.
 */
import type * as tfc from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { TF } from './attention';

type Tensor = tfc.Tensor;

export const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Waits for everything queued before it: reading one element flushes and drains the queue. */
export async function syncOnFirstElement(tf: TF, result: Tensor | Tensor[]): Promise<void> {
  const first = Array.isArray(result) ? result[0] : result;
  const one = tf.tidy(() => tf.slice(tf.reshape(first, [-1]), 0, 1));
  await one.data();
  one.dispose();
}

/**
 * Peak of the bytes of live WebGPU buffers, counted where tfjs hands buffers out
 * (bufferManager.acquireBuffer), i.e. what the tensors and temporaries of a call hold at once.
 * Buffers parked in tfjs's free pool are not live; releasePool destroys them between cases so
 * that one case's pool cannot push the next one out of memory.
 */
export class GpuMemoryTracker {
  private peakBytes = 0;
  private readonly manager: WebGPUBackend['bufferManager'];

  constructor(backend: WebGPUBackend) {
    this.manager = backend.bufferManager;
    const acquire = this.manager.acquireBuffer.bind(this.manager);
    this.manager.acquireBuffer = (...args: Parameters<typeof acquire>) => {
      const buffer = acquire(...args);
      this.peakBytes = Math.max(this.peakBytes, this.manager.numBytesUsed);
      return buffer;
    };
  }

  get liveBytes(): number { return this.manager.numBytesUsed; }
  get peak(): number { return this.peakBytes; }
  resetPeak(): void { this.peakBytes = this.manager.numBytesUsed; }

  releasePool(): void {
    // freeBuffers is private in tfjs's typings; the pool must still be emptied between cases.
    const m = this.manager as unknown as {
      freeBuffers: Map<string, GPUBuffer[]>; numFreeBuffers: number; numBytesAllocated: number;
    };
    for (const buffers of m.freeBuffers.values()) {
      for (const b of buffers) { m.numBytesAllocated -= b.size; b.destroy(); }
      buffers.length = 0;
    }
    m.numFreeBuffers = 0;
  }
}

export type Failure = { kind: 'OOM' | 'validation' | 'device lost' | 'error'; message: string };

/**
 * Runs body inside 'out-of-memory' and 'validation' error scopes. tfjs does not check
 * maxStorageBufferBindingSize and never sees a failed allocation: both surface only here (or
 * as uncaptured errors), while the results it returns are garbage.
 */
export class ErrorScopes {
  private readonly uncaptured: string[] = [];
  lost: string | null = null;

  constructor(private readonly device: GPUDevice | null) {
    if (!device) return;
    device.addEventListener('uncapturederror', (e: Event) =>
        this.uncaptured.push(String((e as GPUUncapturedErrorEvent).error?.message ?? e)));
    device.lost.then(info => { this.lost = info.message || info.reason || 'lost'; });
  }

  async run<T>(body: () => Promise<T>): Promise<{ value?: T; failure?: Failure }> {
    if (this.device) {
      this.device.pushErrorScope('validation');
      this.device.pushErrorScope('out-of-memory');
    }
    let value: T | undefined, thrown: unknown;
    try { value = await body(); } catch (e) { thrown = e; }
    let oom: GPUError | null = null, validation: GPUError | null = null;
    if (this.device) {
      oom = await this.device.popErrorScope();
      validation = await this.device.popErrorScope();
    }
    const short = (s: string) => s.replace(/\s+/g, ' ').slice(0, 240);
    if (this.lost) return { failure: { kind: 'device lost', message: short(this.lost) } };
    if (oom) return { failure: { kind: 'OOM', message: short(oom.message) } };
    if (validation) return { failure: { kind: 'validation', message: short(validation.message) } };
    const stray = this.uncaptured.splice(0);
    if (stray.length) return { failure: { kind: /memory/i.test(stray[0]) ? 'OOM' : 'validation', message: short(stray[0]) } };
    if (thrown !== undefined) {
      const message = thrown instanceof Error ? thrown.message : String(thrown);
      return { failure: { kind: /out of memory|allocation/i.test(message) ? 'OOM' : 'error', message: short(message) } };
    }
    return { value };
  }
}

export interface Timing {
  wallMs: number;
  wallAllMs: number[];
  /** Sum of per-kernel GPU timestamps; null where the backend has none. */
  gpuMs: number | null;
  warmupCalls: number;
}

export interface TimingPlan {
  minReps: number;
  maxReps: number;
  /** The timed repetitions of a case aim to fill this much wall time. */
  targetMs: number;
  /** Warm-up runs until this much time has passed (GPU clocks ramp up under load), at least once. */
  warmupMs: number;
  timedReps: number;
}

/**
 * Times fn: warm-up (pipeline compilation, clocks), then the wall repetitions, then tf.time.
 * afterWall runs between the last two: under tf.time tfjs holds buffers longer (one pass per
 * kernel, read back later), so memory is read before it, as the baseline did.
 */
export async function timeCall(tf: TF, fn: () => Tensor | Tensor[], plan: TimingPlan,
                               afterWall: () => void = () => {}): Promise<Timing> {
  const once = async () => {
    const t0 = performance.now();
    const result = fn();
    await syncOnFirstElement(tf, result);
    const ms = performance.now() - t0;
    tf.dispose(result);
    return ms;
  };
  const warmStart = performance.now();
  let lastMs = await once();
  let warmupCalls = 1;
  while (performance.now() - warmStart < plan.warmupMs && warmupCalls < 10) {
    lastMs = await once();
    warmupCalls++;
  }
  const reps = Math.max(plan.minReps, Math.min(plan.maxReps, Math.ceil(plan.targetMs / Math.max(lastMs, 1e-3))));
  const wallAllMs: number[] = [];
  for (let i = 0; i < reps; i++) wallAllMs.push(await once());
  afterWall();

  const gpuTimes: number[] = [];
  for (let i = 0; i < plan.timedReps; i++) {
    const info = await tf.time(() => { tf.dispose(fn()); });
    if (typeof info.kernelMs !== 'number' || !Number.isFinite(info.kernelMs)) break;
    gpuTimes.push(info.kernelMs);
  }
  return {
    wallMs: median(wallAllMs), wallAllMs, warmupCalls,
    gpuMs: gpuTimes.length ? median(gpuTimes) : null,
  };
}
