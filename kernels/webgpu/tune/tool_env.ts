/**
 * What the WebGPU measuring tools (fa_tune.ts, forward_sweep.ts, bench/pass_profile.ts) share:
 * their `--key=value` flags and Dawn for Node installed as the page's navigator.gpu, before tfjs's
 * WebGPU backend is imported (it registers only if navigator.gpu exists then).
 */
import { create, globals } from 'webgpu';

/** The process's flags: `--key=value`, or `--key` alone for '1'. */
export const toolArgs: Record<string, string> = Object.fromEntries(process.argv.slice(2).map(a => {
  const i = a.indexOf('=');
  return i < 0 ? [a.replace(/^--/, ''), '1'] : [a.slice(0, i).replace(/^--/, ''), a.slice(i + 1)];
}));
/** A number flag, d when absent. */
export const numArg = (k: string, d: number) => (toolArgs[k] === undefined ? d : Number(toolArgs[k]));
/** A 0|1|both flag as the booleans to run. */
export const bothArg = (k: string, d: string) =>
  ((toolArgs[k] ?? d) === 'both' ? [false, true] : [(toolArgs[k] ?? d) === '1']);
/** A comma-separated list of numbers. */
export const intsArg = (k: string, d: string) => (toolArgs[k] ?? d).split(',').map(Number);

/** Installs Dawn (with the given toggles) as navigator.gpu; call before importing tfjs-backend-webgpu. */
export function installDawn(toggles: string[] = ['disable-dawn-features=timestamp_quantization']): void {
  Object.assign(globalThis, globals);
  // The ESM bundle has no __dirname, which the tensorflow kernels' op-library lookup reads.
  (globalThis as Record<string, unknown>).__dirname ??= process.cwd();
  const gpu = create(toggles);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
}
