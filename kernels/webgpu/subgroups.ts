/**
 * The opt-in subgroup path of the WebGPU kernels.
 *
 * tfjs-backend-webgpu creates its device without the `subgroups` feature, and tfjs assembles each
 * shader with its own prelude first, so a program cannot place `enable subgroups;` itself. Both
 * need the device: `useWebGPUWithSubgroups` creates one with the feature and registers it as the
 * 'webgpu' backend. That replaces the user's backend, so it is never done implicitly; without it
 * (or where the adapter lacks the feature) the kernels use workgroup memory only.
 *
 * The kernels reduce a query row across the threads that share it with subgroupShuffleXor. That
 * relies on two things WebGPU does not promise, so both are checked on the device before it is
 * used: subgroups of a one-dimensional workgroup are runs of consecutive local invocation
 * indices, aligned to the subgroup size, and no subgroup is smaller than the adapter's
 * subgroupMinSize. The shader is compiled for that minimum, never for one assumed size (4 on
 * SwiftShader, 32 on the H100).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';

/** Devices created by useWebGPUWithSubgroups, with the smallest subgroup size they may run. */
const subgroupDevices = new WeakMap<GPUDevice, number>();

/** The smallest subgroup size of the backend's device, or 0 when its kernels must not use subgroups. */
export function subgroupMinSizeOf(backend: WebGPUBackend): number {
  return subgroupDevices.get(backend.device) ?? 0;
}

/** WGSL built-ins that need the `enable subgroups;` directive. */
const SUBGROUP_BUILTIN = /\bsubgroup[A-Z]\w*\s*\(|@builtin\(\s*subgroup_/;

/**
 * Replaces the 'webgpu' backend with one whose device has the `subgroups` feature, and makes it
 * the current backend, so that flashAttention's WebGPU kernels reduce rows with subgroup
 * operations instead of workgroup memory and barriers.
 *
 * Call it once, before creating any tensor on the 'webgpu' backend: the old backend and its
 * tensors are disposed. Resolves to false, changing nothing, where it cannot be done: no WebGPU,
 * tfjs-backend-webgpu not imported, an adapter without `subgroups`, or subgroups laid out in a
 * way the kernels do not handle.
 */
export async function useWebGPUWithSubgroups(): Promise<boolean> {
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu || tf.findBackendFactory('webgpu') == null) return false;
  const adapter = await gpu.requestAdapter({
    powerPreference: tf.env().get('WEBGPU_USE_LOW_POWER_GPU') ? 'low-power' : 'high-performance',
  });
  if (!adapter || !adapter.features.has('subgroups')) return false;
  const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number };
  // WebGPU's smallest allowed subgroup size, where the adapter does not say.
  const minSize = info.subgroupMinSize ?? 4;

  // The same limits tfjs-backend-webgpu asks for, plus the features it asks for and `subgroups`.
  const wanted: GPUFeatureName[] = ['timestamp-query', 'bgra8unorm-storage'];
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: [...wanted.filter(f => adapter.features.has(f)), 'subgroups'],
    requiredLimits: {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    },
  });
  if (!(await subgroupsAreLinear(device, minSize))) {
    device.destroy();
    return false;
  }
  const createShaderModule = device.createShaderModule.bind(device);
  device.createShaderModule = (d: GPUShaderModuleDescriptor) =>
      createShaderModule(SUBGROUP_BUILTIN.test(d.code) ? { ...d, code: `enable subgroups;\n${d.code}` } : d);

  // The backend class comes from the registered backend, so this package never imports
  // tfjs-backend-webgpu at runtime (it loads where that is not installed).
  const Backend = await webgpuBackendClass();
  if (!Backend) {
    device.destroy();
    return false;
  }
  subgroupDevices.set(device, minSize);
  if (tf.findBackend('webgpu') != null) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => new Backend(device, adapter.info));
  return tf.setBackend('webgpu');
}

type WebGPUBackendClass = new (device: GPUDevice, info?: GPUAdapterInfo) => WebGPUBackend;

async function webgpuBackendClass(): Promise<WebGPUBackendClass | null> {
  const previous = tf.getBackend();
  if (!(await tf.setBackend('webgpu'))) return null;
  const stock = tf.backend() as WebGPUBackend;
  const Backend = stock.constructor as WebGPUBackendClass;
  if (previous !== 'webgpu' && previous) await tf.setBackend(previous);
  tf.removeBackend('webgpu');
  stock.device.destroy();
  return Backend;
}

/**
 * Runs one workgroup per size the kernels use and checks, for every invocation, that its
 * subgroup is at least `minSize` lanes and starts at local index (index - lane id), a multiple
 * of the subgroup size: the layout the kernels' xor shuffles rely on.
 */
async function subgroupsAreLinear(device: GPUDevice, minSize: number): Promise<boolean> {
  const sizes = [32, 64, 128, 256].filter(n => n <= device.limits.maxComputeInvocationsPerWorkgroup);
  const total = sizes.reduce((a, n) => a + n, 0);
  device.pushErrorScope('validation');
  const out = device.createBuffer({ size: 4 * total, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const read = device.createBuffer({ size: 4 * total, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const encoder = device.createCommandEncoder();
  let offset = 0;
  for (const n of sizes) {
    const module = device.createShaderModule({ code: `
      enable subgroups;
      @group(0) @binding(0) var<storage, read_write> ok : array<u32>;
      @compute @workgroup_size(${n})
      fn main(@builtin(local_invocation_index) i : u32, @builtin(subgroup_invocation_id) lane : u32,
              @builtin(subgroup_size) size : u32) {
        let first = subgroupBroadcastFirst(i);
        let neighbour = subgroupShuffleXor(i, 1u);
        let linear = (size >= ${minSize}u) & (i - lane == first) & (first % size == 0u) & (neighbour == (i ^ 1u));
        ok[${offset}u + i] = select(0u, 1u, linear);
      }` });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: out } }],
    }));
    pass.dispatchWorkgroups(1);
    pass.end();
    offset += n;
  }
  encoder.copyBufferToBuffer(out, 0, read, 0, 4 * total);
  device.queue.submit([encoder.finish()]);
  const error = await device.popErrorScope();
  if (error) return false;
  await read.mapAsync(GPUMapMode.READ);
  const linear = new Uint32Array(read.getMappedRange()).every(x => x === 1);
  read.unmap();
  out.destroy();
  read.destroy();
  return linear;
}
