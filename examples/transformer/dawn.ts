/**
 * WebGPU in Node through Dawn (the `webgpu` package). tfjs-backend-webgpu registers its backend
 * only if navigator.gpu exists when it is imported, so this runs before anything imports tfjs;
 * it imports nothing from tfjs itself.
 */
export interface DawnAdapter {
  /** vendor/architecture, e.g. nvidia/hopper or google/swiftshader. */
  name: string;
  /** True for a software adapter such as SwiftShader: correct, but far slower than the CPU backend. */
  isFallback: boolean;
}

/** Installs navigator.gpu (and Dawn's GPU* globals); null when no adapter is available. */
export async function installDawn(): Promise<DawnAdapter | null> {
  // Dawn's Vulkan loader prints a libwayland warning without this; any value silences it.
  process.env.XDG_RUNTIME_DIR ??= '/tmp';
  let webgpu: { create: (flags: string[]) => GPU; globals: object };
  try {
    webgpu = await import('webgpu');
  } catch {
    return null;
  }
  Object.assign(globalThis, webgpu.globals);
  const gpu = webgpu.create([]);
  const adapter = await gpu.requestAdapter();
  if (!adapter) return null;
  // Node >= 21 defines a getter-only navigator: replace it rather than assign to it.
  Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  return { name: `${adapter.info.vendor}/${adapter.info.architecture}`, isFallback: adapter.info.isFallbackAdapter };
}
