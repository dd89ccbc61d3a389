// tfjs-backend-webgpu registers 'webgpu' only if navigator.gpu exists when it is imported, so
// Dawn's globals go in here (jest setupFiles), before any test file's imports run.
import * as path from 'path';
if (process.env.WEBGPU_ADAPTER) {
  const dir = path.dirname(require.resolve('webgpu/package.json'));
  // require('webgpu') is ESM and fails inside jest's CJS sandbox; the addon loads by path.
  const dawn = require(path.join(dir, 'dist', `${process.platform}-${process.arch}`, 'dawn.node'));
  Object.assign(globalThis, dawn.globals);
  Object.defineProperty(globalThis, 'navigator',
    { value: { gpu: dawn.create([]) }, configurable: true, writable: true });
}
