/**
 * Finds and loads the CUDA op library (build/cuda/flash_attention_op.so, from
 * `npm run build:cuda`) into the libtensorflow that @tensorflow/tfjs-node-gpu loaded, through the
 * small N-API loader next to it (native/loader/). Never throws: the outcome says why not.
 */

export interface OpLibraryStatus {
  loaded: boolean;
  /** Why the CUDA kernels are not in use; null when loaded. */
  reason: string | null;
  /** Whether tfjs-node-gpu is part of this process, i.e. whether the reason is worth telling. */
  relevant: boolean;
}

interface LoaderAddon {
  load(path: string): { loaded: boolean; reason: string | null; cudaDevices: number };
}

type NodeRequire = ((id: string) => unknown) & { cache?: Record<string, unknown> };

/** webpack's name for Node's own require, which it leaves alone (its `require` is its module system). */
declare const __non_webpack_require__: NodeRequire | undefined;

/**
 * Node's require when running under Node; undefined in browsers and bundles for them. Never the
 * bare `require` as a value: webpack can only replace that with a stub that throws.
 */
function nodeRequire(): NodeRequire | undefined {
  if (typeof process !== 'object' || !process?.versions?.node) return undefined;
  if (typeof __non_webpack_require__ === 'function') return __non_webpack_require__;
  if (typeof module !== 'object' || typeof module?.require !== 'function') return undefined;
  // Bound, not called as module.require(id): webpack warns about any require call it cannot follow.
  const req: NodeRequire = module.require.bind(module);
  req.cache = typeof require === 'function' ? require.cache : undefined;
  return req;
}

/** Directories that may hold the build, most specific first. */
function candidateDirs(req: NodeRequire): string[] {
  const path = req('path') as typeof import('path');
  const dirs: string[] = [];
  if (process.env.TFJS_FLASH_ATTENTION_CUDA_DIR) dirs.push(process.env.TFJS_FLASH_ATTENTION_CUDA_DIR);
  // From kernels/tensorflow (sources, ts-jest) and dist/kernels/tensorflow (the npm build).
  dirs.push(path.resolve(__dirname, '../../build/cuda'), path.resolve(__dirname, '../../../build/cuda'));
  return dirs;
}

/** True when tfjs-node-gpu has been required in this process. */
function tfjsNodeGpuLoaded(req: NodeRequire): boolean {
  const cache = req.cache ?? {};
  return Object.keys(cache).some(k => k.includes('tfjs-node-gpu'));
}

export function loadOpLibrary(): OpLibraryStatus {
  const req = nodeRequire();
  if (!req) return { loaded: false, reason: 'not running under Node', relevant: false };
  const fs = req('fs') as typeof import('fs');
  const path = req('path') as typeof import('path');
  const relevant = tfjsNodeGpuLoaded(req);
  // The CPU build of TensorFlow (@tensorflow/tfjs-node) would take the op library but has no
  // GPU device to run its kernels on: only tfjs-node-gpu's TensorFlow qualifies.
  if (!relevant) return { loaded: false, relevant, reason: '@tensorflow/tfjs-node-gpu is not loaded in this process' };
  const dir = candidateDirs(req).find(d => fs.existsSync(path.join(d, 'flash_attention_op.so')));
  if (!dir) {
    return { loaded: false, relevant,
             reason: 'the CUDA op library is not built (run `npm run build:cuda` on a machine with CUDA)' };
  }
  const loaderPath = path.join(dir, 'flash_attention_loader.node');
  try {
    const loader = req(loaderPath) as LoaderAddon;
    const r = loader.load(path.join(dir, 'flash_attention_op.so'));
    return { loaded: r.loaded, reason: r.reason, relevant: relevant || r.loaded };
  } catch (e) {
    return { loaded: false, relevant, reason: `the loader ${loaderPath} failed: ${(e as Error).message}` };
  }
}
