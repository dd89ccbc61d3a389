/**
 * The WebGPU test environment: the HAS_GPU gate (set by test/global-setup.js when Dawn found an
 * adapter; CI sets REQUIRE_WEBGPU=1, so a skipped GPU test cannot pass there) and backend setup.
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { setTileConfigOverride, TileConfig } from '../../kernels/webgpu/tiles';

export const HAS_GPU = !!process.env.WEBGPU_ADAPTER;
/** `test`, or `test.skip` when there is no WebGPU adapter. */
export const gpuTest = HAS_GPU ? test : test.skip;

const uncaptured: string[] = [];

export async function useWebGPU(): Promise<WebGPUBackend> {
  if (!(await tf.setBackend('webgpu'))) throw new Error('setBackend(webgpu) failed');
  await tf.ready();
  const backend = tf.backend() as WebGPUBackend;
  backend.device.onuncapturederror = e => { uncaptured.push(e.error.message); };
  return backend;
}

/** WebGPU errors no error scope caught since the last call (they mean garbage results). */
export function takeUncapturedErrors(): string[] {
  return uncaptured.splice(0);
}

/** Frees the device (afterAll): jest workers run many files, and Dawn devices hold memory. */
export function destroyWebGPU(): void {
  if (!HAS_GPU || tf.findBackend('webgpu') == null) return;
  const device = (tf.findBackend('webgpu') as WebGPUBackend).device;
  tf.removeBackend('webgpu');
  device.destroy();
}

/** Runs fn and returns its result with the shader keys of the WebGPU programs it ran, in order. */
export async function withProgramsRun<T>(fn: () => T | Promise<T>): Promise<{ result: T; programs: string[] }> {
  const backend = tf.backend() as WebGPUBackend;
  const programs: string[] = [];
  const run = backend.runWebGPUProgram.bind(backend);
  const spy = jest.spyOn(backend, 'runWebGPUProgram').mockImplementation((program, ...rest) => {
    programs.push(program.shaderKey);
    return run(program, ...rest);
  });
  try {
    return { result: await fn(), programs };
  } finally {
    spy.mockRestore();
  }
}

/** Buffers the webgpu backend holds for tensors (the buffer manager's used bytes). */
export function gpuBytesInUse(): number {
  return (tf.memory() as unknown as { numBytesInGPU: number }).numBytesInGPU;
}

/**
 * Tiles small enough that the suites' small shapes span several of them on WebGPU (boundary and
 * multi-tile paths), whatever the device would choose.
 */
export const TINY_TILES: TileConfig = { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 4, unroll: 1 };

/**
 * The staged forward (the backward's chunked products) on tiles as small: several head-dim chunks
 * and value-row steps per key tile, 16 threads. Small on purpose: SwiftShader's compile time and
 * memory grow with the tile (64 x 64 staged at headDim 64: 7 s and 1 GB; this one: 2 s).
 */
export const TINY_STAGED_TILES: TileConfig = {
  rows: 8, cols: 8, rowsPerThread: 2, colsPerThread: 2, unroll: 1, depth: 4, accumulateDepth: 4, staged: true,
};

/**
 * Runs the enclosing describe block on `backend`: webgpu with TINY_TILES in every pass (and the
 * device destroyed afterwards), or a cpu path by name.
 */
export function useBackendForSuite(backend: string): void {
  beforeAll(async () => {
    if (backend === 'webgpu') {
      if (!HAS_GPU) return;
      await useWebGPU();
      setTileConfigOverride({ forward: TINY_TILES, dq: TINY_TILES, dkdv: TINY_TILES });
    } else {
      await tf.setBackend(backend);
    }
  });
  afterAll(() => {
    if (backend === 'webgpu') { setTileConfigOverride({}); destroyWebGPU(); }
  });
}
