/**
 * GPU time per program of flash's forward + backward (the forward, the backward preprocess, the
 * dQ pass, the dK/dV pass, and tfjs's own programs around them), after a warm-up long enough for
 * the GPU clocks, median of --reps: where a training step's attention time goes, per pass. Prints
 * `RESULT {json}` lines, one per (device path, head dim, sequence length, mask).
 *
 *   --d=64,128 --n=1024,4096 --causal=0|1|both --heads=16 --reps=7 --warmMs=800
 *   --subgroups=0|1|both --forward=auto|tiled|staged
 */
import { bothArg, installDawn, intsArg, numArg, toolArgs } from '../kernels/webgpu/tune/tool_env';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function main() {
  installDawn();
  const tf = await import('@tensorflow/tfjs');
  await import('@tensorflow/tfjs-backend-webgpu');
  const { flashAttention } = await import('../src/index');
  const { setForwardVariant } = await import('../kernels/webgpu/tiles');
  setForwardVariant((toolArgs.forward ?? 'auto') as 'auto' | 'tiled' | 'staged');
  type Tensor = import('@tensorflow/tfjs').Tensor;
  const heads = numArg('heads', 16), reps = numArg('reps', 7);

  for (const subgroups of bothArg('subgroups', '0')) {
    if (subgroups) {
      const { useWebGPUWithSubgroups } = await import('../kernels/webgpu/subgroups');
      if (!(await useWebGPUWithSubgroups())) { console.log('RESULT {"error":"no subgroups"}'); continue; }
    } else if (!(await tf.setBackend('webgpu'))) throw new Error('no webgpu');
    for (const d of intsArg('d', '64,128')) {
      for (const n of intsArg('n', '4096')) {
        for (const causal of bothArg('causal', 'both')) {
          const res: Record<string, unknown> = { subgroups, forward: toolArgs.forward ?? 'auto', d, n, causal };
          try {
            const shape = [1, n, heads, d];
            const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal(shape, 0, 1, 'float32', seed));
            const grads = tf.grads((a: Tensor, b: Tensor, c: Tensor) => flashAttention(a as any, b as any, c as any, { causal }));
            const step = () => grads([q, k, v], dy);
            const tw = performance.now();
            while (performance.now() - tw < numArg('warmMs', 800)) { const g = step(); await g[0].data(); tf.dispose(g); }
            const perProgram: Record<string, number[]> = {};
            const totals: number[] = [];
            for (let r = 0; r < reps; r++) {
              const info = await tf.time(() => { tf.dispose(step()); }) as any;
              totals.push(info.kernelMs);
              const sums: Record<string, number> = {};
              // tfjs-backend-webgpu: "ProgramClassName: ms, ..." in dispatch order.
              for (const item of String(info.getExtraProfileInfo?.() ?? '').split(', ').filter(Boolean)) {
                const at = item.lastIndexOf(': ');
                const name = item.slice(0, at);
                sums[name] = (sums[name] ?? 0) + Number(item.slice(at + 2));
              }
              for (const [name, ms] of Object.entries(sums)) (perProgram[name] ??= []).push(ms);
            }
            res.totalMs = +median(totals).toFixed(3);
            res.totalRange = [+Math.min(...totals).toFixed(3), +Math.max(...totals).toFixed(3)];
            res.programs = Object.fromEntries(Object.entries(perProgram).map(([name, ms]) => [name, +median(ms).toFixed(3)]));
            tf.dispose([q, k, v, dy]);
          } catch (e) {
            res.error = String((e as Error)?.message ?? e).slice(0, 300);
          }
          console.log('RESULT ' + JSON.stringify(res));
        }
      }
    }
  }
  process.exit(0);
}
main().catch(e => { console.log('RESULT ' + JSON.stringify({ error: String(e?.stack ?? e).slice(0, 1000) })); process.exit(1); });
