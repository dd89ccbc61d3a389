/**
 * Small dispatch helpers for our WGSL programs. They run inside tfjs-backend-webgpu's own device,
 * buffers and command stream through `backend.runWebGPUProgram`, but import nothing from that
 * package at runtime (type-only imports), so this package loads where it is not installed.
 */
import type { WebGPUBackend, WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';
import { TensorInfo, util } from '@tensorflow/tfjs-core';
import { check, OptionFlags, shapeStr } from '../../src/contract';

export type { WebGPUBackend };

/** One program-defined uniform, in the order its field appears in `program.uniforms`. */
export interface Uniform { type: 'float32' | 'int32' | 'uint32'; data: number[]; }

/**
 * Compile-time parameters of one program family. Every field becomes part of the shader key, so
 * two programs share a pipeline exactly when they were generated from equal variants.
 */
export type Variant = Readonly<Record<string, number | boolean | string>>;

/** Builds the shader key from the variant object, so no option can be forgotten in the key. */
export function shaderKeyOf(family: string, variant: Variant): string {
  return family + Object.keys(variant).sort().map(k => `_${k}=${variant[k]}`).join('');
}

/**
 * Base of our programs: the fields tfjs reads. `dispatchLayout` only decides whether tfjs calls
 * `main(index)` (flat layouts) or `main()`; our tiled kernels index work by workgroup id.
 */
export abstract class FlashProgram implements WebGPUProgram {
  abstract variableNames: string[];
  abstract outputShape: number[];
  abstract workgroupSize: [number, number, number];
  abstract dispatch: [number, number, number];
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] } = { x: [0], y: [1] };
  shaderKey = '';
  uniforms?: string;
  size?: boolean;
  abstract getUserCode(): string;
}

/** The device limits our tile choices and size checks depend on. */
export interface DeviceLimits {
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupsPerDimension: number;
}

export function deviceLimits(backend: WebGPUBackend): DeviceLimits {
  const l = backend.device.limits;
  return {
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
  };
}

/**
 * tfjs does not check binding sizes: an oversized binding becomes a WebGPU validation error and
 * garbage results. We refuse such work up front with an error the caller can act on.
 */
export function checkBindingSizes(limits: DeviceLimits, what: Array<[string, number[]]>): void {
  for (const [name, shape] of what) {
    const bytes = 4 * util.sizeFromShape(shape);
    check(bytes <= limits.maxStorageBufferBindingSize, () =>
        `${name} of shape ${shapeStr(shape)} needs ${bytes} bytes, more than this WebGPU device's ` +
        `maxStorageBufferBindingSize (${limits.maxStorageBufferBindingSize}); split the batch or heads into smaller calls`);
  }
}

export function checkDispatch(limits: DeviceLimits, dispatch: number[]): void {
  check(dispatch.every(d => d <= limits.maxComputeWorkgroupsPerDimension), () =>
      `the work grid [${dispatch.join(', ')}] (tiles, heads, batch) exceeds this WebGPU device's ` +
      `maxComputeWorkgroupsPerDimension (${limits.maxComputeWorkgroupsPerDimension})`);
}

/** The first device error our programs raised, per device: sticky, reported by every later call. */
const deviceErrors = new WeakMap<GPUDevice, string>();

/**
 * Runs our dispatches inside validation and out-of-memory error scopes. WebGPU reports such
 * errors only asynchronously, as garbage results otherwise; so the error is logged when it
 * arrives and every later flashAttention call on that device throws it, instead of returning
 * silently wrong numbers again.
 */
export function withDeviceErrorCheck<T>(backend: WebGPUBackend, body: () => T): T {
  const device = backend.device;
  const earlier = deviceErrors.get(device);
  check(earlier === undefined, () => `an earlier WebGPU call failed on this device, so results cannot be trusted: ${earlier}`);
  device.pushErrorScope('validation');
  device.pushErrorScope('out-of-memory');
  try {
    return body();
  } finally {
    const report = (kind: string) => (e: GPUError | null) => {
      if (e && !deviceErrors.has(device)) {
        deviceErrors.set(device, `${kind}: ${e.message}`);
        console.error(`Error in flashAttention: WebGPU ${kind} error: ${e.message}`);
      }
    };
    device.popErrorScope().then(report('out-of-memory'), () => {});
    device.popErrorScope().then(report('validation'), () => {});
  }
}

/**
 * A program's inputs: the sequence ranges (int32 [numSeqs, 2]) are bound only where lengths are
 * given, so a program without them is the same shader as before lengths existed.
 */
export const withSeqRanges = <T>(inputs: T[], f: OptionFlags, ranges: () => [T, T]): T[] =>
    f.seqRanges ? [...inputs, ...ranges()] : inputs;
/** The WGSL names of the ranges' bindings. */
export const RANGE_NAMES = (): [string, string] => ['seqRangesQ', 'seqRangesK'];

/**
 * The optional inputs a pass binds: the ALiBi slopes, the mask and (with `ranges`) the sequence
 * ranges only where their option is on. The op passes one-element placeholders for the others;
 * bound, each would be uploaded on every call, and tfjs uploads into a pooled buffer by ending the
 * compute pass for a copy: per call, a pass break and a copy for every disabled option.
 */
export function optionalInputNames(f: OptionFlags, ranges = true): string[] {
  return [...(f.alibi ? ['alibiSlopes'] : []), ...(f.mask ? ['mask'] : []), ...(ranges ? withSeqRanges([], f, RANGE_NAMES) : [])];
}

/** The tensors bound to a program's variableNames, taken by name. */
export function inputsByName(names: readonly string[], tensors: Record<string, TensorInfo>): TensorInfo[] {
  return names.map(n => {
    const t = tensors[n];
    if (t === undefined) throw new Error(`flashAttention (webgpu): no tensor for the binding '${n}'`);
    return t;
  });
}

/** Runs one program; the backend caches its pipeline under the program's shader key. */
export function runProgram(backend: WebGPUBackend, program: FlashProgram, inputs: TensorInfo[],
                           uniforms: Uniform[], dtype: 'float32' | 'int32' = 'float32'): TensorInfo {
  return backend.runWebGPUProgram(program, inputs, dtype, uniforms);
}

/** Copies `size(shape)` floats starting at `offset` of a packed buffer into a new tensor. */
class UnpackProgram extends FlashProgram {
  variableNames = ['packed'];
  outputShape: number[];
  workgroupSize: [number, number, number] = [64, 1, 1];
  dispatch: [number, number, number];
  dispatchLayout = { x: [0] };
  uniforms = 'offset : i32,';
  size = true;
  shaderKey = 'flashAttentionUnpack';
  constructor(shape: number[]) {
    super();
    this.outputShape = shape;
    this.dispatch = [Math.ceil(util.sizeFromShape(shape) / 64), 1, 1];
  }
  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index < uniforms.size) { result[index] = packed[index + uniforms.offset]; }
      }`;
  }
}

/**
 * The logSumExp output of a call that need not compute it (AttentionProblem.computeLogSumExp
 * false: no gradient can be taken and the caller did not ask for it): NaNs, held on the CPU, so
 * no dispatch and no upload unless someone reads it.
 */
export function logSumExpNotComputed(backend: WebGPUBackend, shape: number[]): TensorInfo {
  return backend.makeTensorInfo(shape, 'float32', new Float32Array(util.sizeFromShape(shape)).fill(NaN));
}

/**
 * runWebGPUProgram has one output, so passes with two results write them into one packed buffer;
 * this splits it (a copy of the small outputs, never of anything seqQ x seqK) and frees it.
 */
export function unpack(backend: WebGPUBackend, packed: TensorInfo, parts: number[][]): TensorInfo[] {
  let offset = 0;
  const out = parts.map(shape => {
    const part = backend.runWebGPUProgram(new UnpackProgram(shape), [packed], 'float32',
                                          [{ type: 'int32', data: [offset] }]);
    offset += util.sizeFromShape(shape);
    return part;
  });
  backend.disposeData(packed.dataId);
  return out;
}

/** Repeats a template for i = 0..n-1: code is generated unrolled so indices are constants. */
export function unroll(n: number, body: (i: number) => string, sep = '\n'): string {
  return Array.from({ length: n }, (_, i) => body(i)).join(sep);
}
