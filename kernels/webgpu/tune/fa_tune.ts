/**
 * Correctness check and timing of the WebGPU kernels outside jest, for the H100 (through the kit
 * of ../shared/gpu) and for SwiftShader here. Prints `RESULT {json}` lines.
 *
 *   --mode=check [--only=fwd]           small random cases vs the float64 reference
 *   --mode=time --n=4096 [--causal=1] [--bwd=1] [--heads=16] [--d=64] [--reps=10]
 *   --tiles='{"forward":{"rows":64,...}}'  force tile geometries (setTileConfigOverride)
 *   --subgroups=1                       run on the opt-in subgroups device
 */
import { installDawn, numArg, toolArgs } from './tool_env';

async function main() {
  installDawn(toolArgs.unsafe ? ['enable-dawn-features=allow_unsafe_apis,disable_timestamp_query_conversion', 'disable-dawn-features=timestamp_quantization'] : undefined);
  const tf = await import('@tensorflow/tfjs');
  await import('@tensorflow/tfjs-backend-webgpu');
  // The kernels themselves, run through tfjs's engine: no op, no API layer (src/).
  await import('../register');
  const { FlashAttention, FlashAttentionGrad, normalizeAttrs } = await import('../../../src/contract');
  const { setTileConfigOverride } = await import('../tiles');
  const ac = await import('../../../test/helpers/cases');
  type Tensor = import('@tensorflow/tfjs').Tensor;
  const runKernel = (name: string, inputs: Record<string, Tensor>, attrs: object) =>
    tf.engine().runKernel(name, inputs, attrs as {}) as Tensor[];
  /** The forward kernel, then (grads) the backward kernel with dy: what tf.grads of the op runs. */
  const runKernels = (x: Record<string, Tensor>, dy: Tensor, attrs: object, grads: boolean): Tensor[] => {
    const [out, logSumExp] = runKernel(FlashAttention, x, attrs);
    return grads ? [out, logSumExp, ...runKernel(FlashAttentionGrad, { ...x, out, logSumExp, dy }, attrs)] : [out, logSumExp];
  };
  /** Placeholders as the op passes them when ALiBi or the mask is off (src/contract/kernel_names.ts). */
  const noSlopes = () => tf.zeros([1]), noMask = () => tf.ones([1, 1, 1, 1], 'bool');
  // --subgroups=1: the opt-in subgroups device (kernels/webgpu/subgroups.ts) instead of tfjs's own.
  if (numArg('subgroups', 0)) {
    const { useWebGPUWithSubgroups } = await import('../subgroups');
    if (!(await useWebGPUWithSubgroups())) throw new Error('useWebGPUWithSubgroups failed');
  } else if (!(await tf.setBackend('webgpu'))) throw new Error('no webgpu');
  const be = tf.backend() as any;
  const dev = be.device as GPUDevice;
  const errors: string[] = [];
  dev.onuncapturederror = (e: any) => errors.push(String(e?.error?.message ?? e).slice(0, 2000));
  if (toolArgs.tiles) setTileConfigOverride(JSON.parse(toolArgs.tiles));
  const { subgroupMinSizeOf } = await import('../subgroups');
  const subgroupMinSize = subgroupMinSizeOf(be);
  const out = (o: object) => console.log('RESULT ' + JSON.stringify({ subgroupMinSize, ...o }));

  if ((toolArgs.mode ?? 'check') === 'check') {
    const grads = toolArgs.only !== 'fwd';
    const cases: any[] = [
      { dims: { batch: 1, seqQ: 33, seqK: 40, heads: 2, kvHeads: 1, headDim: 16, headDimV: 8 }, seed: 1 },
      { dims: { batch: 2, seqQ: 17, seqK: 9, heads: 2, kvHeads: 2, headDim: 5, headDimV: 3 }, seed: 2, causal: true,
        alibi: true, softcap: 2, dropoutRate: 0.3, maskShape: [1, 2, 17, 1] },
      { dims: { batch: 1, seqQ: 70, seqK: 70, heads: 4, kvHeads: 2, headDim: 64, headDimV: 64 }, seed: 3, causal: true },
      { dims: { batch: 1, seqQ: 65, seqK: 130, heads: 2, kvHeads: 1, headDim: 32, headDimV: 48 }, seed: 4, windowSize: [20, 3] },
    ];
    const chosen = toolArgs.case ? [JSON.parse(toolArgs.case)] : cases.slice(0, numArg('cases', cases.length));
    for (const c of chosen) {
      const d = ac.caseData(c);
      const t0 = Date.now();
      const { batch, seqQ, seqK, heads, kvHeads, headDim, headDimV } = c.dims;
      const x = {
        q: tf.tensor(d.q, [batch, seqQ, heads, headDim]), k: tf.tensor(d.k, [batch, seqK, kvHeads, headDim]),
        v: tf.tensor(d.v, [batch, seqK, kvHeads, headDimV]),
        alibiSlopes: d.slopes ? tf.tensor(d.slopes) : noSlopes(),
        mask: d.mask ? tf.tensor(d.mask, [...new Array(4 - c.maskShape.length).fill(1), ...c.maskShape], 'bool') : noMask(),
      };
      const dy = tf.tensor(d.dy, [batch, seqQ, heads, headDimV]);
      const res = runKernels(x, dy, ac.caseAttrs(c, d), grads);
      const [o, lse, dq, dk, dv] = await Promise.all(res.map(t => t.data() as Promise<Float32Array>));
      const empty = new Float32Array(0);
      const got = { out: o, lse, dq: dq ?? empty, dk: dk ?? empty, dv: dv ?? empty };
      tf.dispose([...Object.values(x), dy, ...res]);
      const ms = Date.now() - t0;
      out({ case: ac.describeCase(c), ms, err: ac.compare(got, ac.reference(c, d), grads), deviceErrors: errors.splice(0) });
    }
  } else {
    const n = numArg('n', 4096), heads = numArg('heads', 16), d = numArg('d', 64), reps = numArg('reps', 10);
    const causal = !!numArg('causal', 0), bwd = !!numArg('bwd', 0);
    const q = tf.randomNormal([1, n, heads, d]), k = tf.randomNormal([1, n, heads, d]), v = tf.randomNormal([1, n, heads, d]);
    const dy = tf.randomNormal([1, n, heads, d]);
    const dims = { batch: 1, seqQ: n, seqK: n, heads, kvHeads: heads, headDim: d, headDimV: d };
    const attrs = normalizeAttrs(dims, { causal, seed: 1 }, false, false);
    const x = { q, k, v, alibiSlopes: noSlopes(), mask: noMask() };
    const run = () => runKernels(x, dy, attrs, bwd);
    // One tiny readback waits for everything queued before it (tidy: the reshape shares data).
    const sync = async (ts: any[]) => { const s = tf.tidy(() => tf.slice(tf.reshape(ts[ts.length - 1], [-1]), 0, 1)); await s.data(); s.dispose(); };
    // Warm up until the GPU clocks are up (~0.25 s of load).
    const tw = performance.now();
    while (performance.now() - tw < numArg('warmMs', 600)) { const o = run(); await sync(o); tf.dispose(o); }
    const bm = be.bufferManager; let peak = 0; const acquire = bm.acquireBuffer.bind(bm);
    bm.acquireBuffer = (...a: any[]) => { const r = acquire(...a); peak = Math.max(peak, bm.numBytesUsed); return r; };
    const base = bm.numBytesUsed; peak = base;
    const wall: number[] = [];
    for (let i = 0; i < reps; i++) { const t0 = performance.now(); const o = run(); await sync(o); wall.push(performance.now() - t0); tf.dispose(o); }
    const t = await tf.time(() => { const o = run(); tf.dispose(o); });
    const med = [...wall].sort((a, b) => a - b)[wall.length >> 1];
    const flop = 4 * heads * n * n * d * (causal ? 0.5 : 1) * (bwd ? 3.5 : 1);
    out({ n, heads, d, causal, bwd, wallMs: +med.toFixed(3), wallMin: +Math.min(...wall).toFixed(3),
          kernelMs: +(t.kernelMs as number).toFixed(3), tflopsWall: +(flop / med / 1e9).toFixed(1),
          tflopsKernel: +(flop / (t.kernelMs as number) / 1e9).toFixed(1),
          peakMB: +((peak) / 2 ** 20).toFixed(1), baseMB: +(base / 2 ** 20).toFixed(1),
          deviceErrors: errors.splice(0), perKernel: (t as any).getExtraProfileInfo?.() });
  }
  process.exit(0);
}
main().catch(e => { console.log('RESULT ' + JSON.stringify({ error: String(e?.stack ?? e).slice(0, 1000) })); process.exit(1); });
