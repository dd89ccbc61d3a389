/**
 * Forward tile candidates in one process: each geometry is checked against the float64 reference
 * on a small random case, then timed (GPU time, tf.time) at --n (default 4096), 16 heads, on the
 * default device and then on the opt-in subgroups device. Prints `RESULT {json}` lines, one per
 * geometry and sequence length.
 *
 *   --grid='[{"d":64,"tiles":[{"rows":64,...}]}, ...]'   head dims and their candidates
 *   --n=4096 (or a list: --n=1024,4096,16384) --heads=16 --causal=0|1|both --reps=10
 *   --subgroups=0|1|both --warmMs=600
 */
import { bothArg, installDawn, numArg, toolArgs } from './tool_env';

async function main() {
  installDawn();
  const tf = await import('@tensorflow/tfjs');
  await import('@tensorflow/tfjs-backend-webgpu');
  await import('../register');
  const { FlashAttention, normalizeAttrs } = await import('../../../src/contract');
  const { setTileConfigOverride } = await import('../tiles');
  const ac = await import('../../../test/helpers/cases');
  type Tensor = import('@tensorflow/tfjs').Tensor;
  const forward = (x: Record<string, Tensor>, attrs: object) =>
    tf.engine().runKernel(FlashAttention, x, attrs as {}) as Tensor[];
  const noSlopes = () => tf.zeros([1]), noMask = () => tf.ones([1, 1, 1, 1], 'bool');
  const grid = JSON.parse(toolArgs.grid) as Array<{ d: number; tiles: object[] }>;
  const ns = (toolArgs.n ?? '4096').split(',').map(Number), heads = numArg('heads', 16), reps = numArg('reps', 10);

  for (const subgroups of bothArg('subgroups', 'both')) {
    if (subgroups) {
      const { useWebGPUWithSubgroups } = await import('../subgroups');
      if (!(await useWebGPUWithSubgroups())) { console.log('RESULT {"error":"no subgroups"}'); continue; }
    } else if (!(await tf.setBackend('webgpu'))) throw new Error('no webgpu');
    const errors: string[] = [];
    (tf.backend() as any).device.onuncapturederror = (e: any) => errors.push(String(e?.error?.message ?? e).slice(0, 500));
    for (const { d, tiles } of grid) {
      for (const t of tiles) {
        setTileConfigOverride({ forward: t as any });
        const res: Record<string, unknown> = { subgroups, d, tiles: t };
        try {
          // Check: a small case with every option, against float64.
          const c = { dims: { batch: 1, seqQ: 70, seqK: 77, heads: 2, kvHeads: 1, headDim: d, headDimV: d }, seed: 5,
                      causal: true, softcap: 3, alibi: true, dropoutRate: 0.1 };
          const data = ac.caseData(c as any);
          const x0 = {
            q: tf.tensor(data.q, [1, 70, 2, d]), k: tf.tensor(data.k, [1, 77, 1, d]), v: tf.tensor(data.v, [1, 77, 1, d]),
            alibiSlopes: tf.tensor(data.slopes!), mask: noMask(),
          };
          const [o, lse] = forward(x0, ac.caseAttrs(c as any, data));
          const got = { out: await o.data() as Float32Array, lse: await lse.data() as Float32Array,
                        dq: new Float32Array(0), dk: new Float32Array(0), dv: new Float32Array(0) };
          tf.dispose([...Object.values(x0), o, lse]);
          res.err = ac.compare(got, ac.reference(c as any, data), false);
          // Time.
          for (const n of ns) {
            res.n = n;
            for (const causal of bothArg('causal', 'both')) {
              const q = tf.randomNormal([1, n, heads, d]), k = tf.randomNormal([1, n, heads, d]), v = tf.randomNormal([1, n, heads, d]);
              const dims = { batch: 1, seqQ: n, seqK: n, heads, kvHeads: heads, headDim: d, headDimV: d };
              const x = { q, k, v, alibiSlopes: noSlopes(), mask: noMask() };
              const attrs = normalizeAttrs(dims, { causal, seed: 1 }, false, false);
              const sync = async (ts: Tensor[]) => { await ts[1].data(); };
              // Warm up until the GPU clocks are up: 3 calls were not enough on the H200 (2026-12-02),
              // so configurations timed after an idle gap (compile, check) read several times slower.
              const tw = performance.now();
              while (performance.now() - tw < numArg('warmMs', 600)) { const r = forward(x, attrs); await sync(r); tf.dispose(r); }
              const ms: number[] = [];
              for (let i = 0; i < reps; i++) {
                const t0 = await tf.time(() => { const r = forward(x, attrs); tf.dispose(r); });
                ms.push(t0.kernelMs as number);
              }
              ms.sort((a, b) => a - b);
              // The median, and the fastest and slowest repetitions (a wide spread flags noise).
              res[causal ? 'causalMs' : 'fullMs'] = +ms[ms.length >> 1].toFixed(3);
              res[causal ? 'causalRange' : 'fullRange'] = [+ms[0].toFixed(3), +ms[ms.length - 1].toFixed(3)];
              tf.dispose([q, k, v, x.alibiSlopes, x.mask]);
            }
            if (n !== ns[ns.length - 1]) {
              console.log('RESULT ' + JSON.stringify({ ...res, deviceErrors: errors.splice(0) }));
              for (const key of ['fullMs', 'causalMs', 'fullRange', 'causalRange']) delete res[key];
            }
          }
        } catch (e) {
          res.error = String((e as Error)?.message ?? e).slice(0, 300);
        }
        res.deviceErrors = errors.splice(0);
        console.log('RESULT ' + JSON.stringify(res));
      }
    }
  }
  process.exit(0);
}
main().catch(e => { console.log('RESULT ' + JSON.stringify({ error: String(e?.stack ?? e).slice(0, 1000) })); process.exit(1); });
