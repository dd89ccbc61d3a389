/**
 * What the benchmark runs, and the arithmetic floor of each case: FLOPs by the FlashAttention
 * papers' convention and the fewest bytes any implementation must move. Pure functions, no tfjs,
 * so the table, the chart and the tests share them.
 */

/**
 * flash on tfjs's default WebGPU device, the stock composite, flash on the package's opt-in
 * subgroups device (useWebGPUWithSubgroups), and onnxruntime's WebGPU MultiHeadAttention (forward
 * only, float32 and float16) as a peer.
 */
export type Impl = 'flash' | 'composite' | 'flash-subgroups' | 'onnxruntime-f32' | 'onnxruntime-f16';
export type Pass = 'fwd' | 'fwd+bwd';
export const IMPLS: readonly Impl[] = ['flash', 'composite', 'flash-subgroups', 'onnxruntime-f32', 'onnxruntime-f16'];
/** Implementations without a backward here. */
export const FORWARD_ONLY: readonly Impl[] = ['onnxruntime-f32', 'onnxruntime-f16'];
/** Run after every other case: switching tfjs to the subgroups device disposes the default one. */
export const SUBGROUPS_DEVICE: readonly Impl[] = ['flash-subgroups'];
export const PASSES: readonly Pass[] = ['fwd', 'fwd+bwd'];

export interface Shape {
  batch: number;
  heads: number;
  seq: number;
  headDim: number;
  causal: boolean;
}

export interface BenchCase extends Shape {
  impl: Impl;
  pass: Pass;
}

const FLOAT32_BYTES = 4;

/**
 * Forward: 4·B·H·Nq·Nk·d (two matmuls of 2·Nq·Nk·d each), halved for causal because only the
 * lower triangle is useful work; forward+backward counts 3.5× forward (backward = 2.5×: five
 * matmuls, the FlashAttention-2 paper's convention). Recomputation in the backward is not counted,
 * so these are useful FLOPs and TFLOP/s compare across implementations.
 */
export function attentionFlops(s: Shape, pass: Pass): number {
  const forward = 4 * s.batch * s.heads * s.seq * s.seq * s.headDim * (s.causal ? 0.5 : 1);
  return pass === 'fwd' ? forward : 3.5 * forward;
}

/**
 * Fewest bytes from and to GPU memory: forward reads q, k, v and writes out and logsumexp;
 * the backward reads q, k, v, out, dOut, logsumexp and writes dq, dk, dv.
 */
export function attentionMinBytes(s: Shape, pass: Pass): number {
  const tensor = s.batch * s.seq * s.heads * s.headDim * FLOAT32_BYTES;
  const rowStats = s.batch * s.heads * s.seq * FLOAT32_BYTES;
  const forward = 4 * tensor + rowStats;
  return pass === 'fwd' ? forward : forward + 8 * tensor + rowStats;
}

export interface Ceilings {
  /** Sustained float32 throughput, TFLOP/s. */
  tflops: number;
  /** Memory bandwidth, GB/s. */
  gbPerS: number;
}

/** The roofline floor in ms: a case can run no faster than its FLOPs or its bytes allow. */
export function floorMs(s: Shape, pass: Pass, c: Ceilings): number {
  const computeMs = attentionFlops(s, pass) / (c.tflops * 1e9);
  const memoryMs = attentionMinBytes(s, pass) / (c.gbPerS * 1e6);
  return Math.max(computeMs, memoryMs);
}

export interface Sweep {
  seqs: number[];
  headDims: number[];
  heads: number;
  batch: number;
  causal: boolean[];
  passes: Pass[];
  impls: Impl[];
}

/**
 * Cases in run order: tfjs's default device first, the subgroups device after it (one switch per
 * run); within each, sequence length outermost, so a run cut short by its deadline still covers
 * every configuration at the smaller sizes; flash before composite at each shape, so a composite
 * that exhausts memory cannot spoil flash's numbers. Forward-only peers get no fwd+bwd case.
 */
export function enumerateCases(w: Sweep): BenchCase[] {
  const cases: BenchCase[] = [];
  const phases = [w.impls.filter(i => !SUBGROUPS_DEVICE.includes(i)), w.impls.filter(i => SUBGROUPS_DEVICE.includes(i))];
  for (const impls of phases) {
    for (const seq of w.seqs) {
      for (const headDim of w.headDims) {
        for (const impl of impls) {
          for (const pass of w.passes) {
            if (pass !== 'fwd' && FORWARD_ONLY.includes(impl)) continue;
            for (const causal of w.causal) {
              cases.push({ impl, pass, batch: w.batch, heads: w.heads, seq, headDim, causal });
            }
          }
        }
      }
    }
  }
  return cases;
}

/**
 * Heads per composite chunk: the largest power-of-two share of the heads whose [heads, N, N]
 * score matrix fits one storage binding (and stays under 2^31 elements, tfjs's index type).
 * Returns 0 when even one head does not fit: the composite cannot run that shape at all.
 */
export function compositeHeadsPerChunk(heads: number, seq: number, maxBindingBytes: number): number {
  const fits = (h: number) => h * seq * seq * FLOAT32_BYTES <= maxBindingBytes && h * seq * seq < 2 ** 31;
  let chunk = heads;
  while (chunk > 1 && (!fits(chunk) || heads % chunk !== 0)) chunk = Math.floor(chunk / 2);
  return fits(chunk) ? chunk : 0;
}

export const caseLabel = (c: BenchCase) =>
  `${c.impl.padEnd(15)} ${c.pass.padEnd(7)} N=${String(c.seq).padEnd(5)} d=${String(c.headDim).padEnd(3)} ` +
  `H=${c.heads} ${c.causal ? 'causal' : 'full  '}`;
