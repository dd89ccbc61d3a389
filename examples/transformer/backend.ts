/** Picks and initialises the tfjs backend: WebGPU through Dawn when a real GPU is there, else CPU. */
import { DawnAdapter, installDawn } from './dawn';

export type BackendChoice = 'auto' | 'webgpu' | 'cpu';

/**
 * 'auto' takes WebGPU only on a hardware adapter: on a software one (SwiftShader) the tfjs CPU
 * backend is faster. 'webgpu' takes any adapter and fails without one.
 * Must run before tfjs is imported (see dawn.ts); returns a description for the logs.
 */
export async function prepareBackend(choice: BackendChoice): Promise<{ backend: 'webgpu' | 'cpu'; detail: string }> {
  if (!['auto', 'webgpu', 'cpu'].includes(choice)) throw new Error(`--backend must be auto, webgpu or cpu, got ${choice}`);
  let adapter: DawnAdapter | null = null;
  if (choice !== 'cpu') adapter = await installDawn();
  if (choice === 'webgpu' && !adapter) throw new Error('--backend=webgpu: no WebGPU adapter (is the webgpu package installed, and Vulkan available?)');
  const useGpu = adapter != null && (choice === 'webgpu' || !adapter.isFallback);
  const detail = useGpu ? `webgpu on ${adapter!.name}${adapter!.isFallback ? ' (software)' : ''}`
      : adapter ? `cpu (WebGPU adapter ${adapter.name} is software; --backend=webgpu forces it)` : 'cpu (no WebGPU adapter)';
  return { backend: useGpu ? 'webgpu' : 'cpu', detail };
}

/** Sets the prepared backend; call after tfjs (and @tensorflow/tfjs-backend-webgpu) are imported. */
export async function activateBackend(tf: typeof import('@tensorflow/tfjs'), backend: 'webgpu' | 'cpu'): Promise<void> {
  if (!(await tf.setBackend(backend))) throw new Error(`tf.setBackend('${backend}') failed`);
  await tf.ready();
}
