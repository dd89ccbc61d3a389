/**
 * The decode sweep (`npm run bench -- --decode`): one query row over a long key/value cache, the
 * split-KV forward (kernels/webgpu/flash_decode_webgpu.ts) against the one-pass forward (the
 * decode path switched off) and the stock composite, in one process. Reported: GPU time, the
 * bytes of K and V read once over that time (GB/s), and the floor: the time to read K and V once
 * at the bandwidth a simple copy kernel reaches in the same run (read + write of a large buffer).
 * Target (issue 13): at seqK >= 8192, decode within 2x of that floor.
 *
 * --decode-targets=128,256,... also times the split-KV forward at those split-pass workgroup
 * targets (the tuning of DECODE_TARGET_WORKGROUPS).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as tfc from '@tensorflow/tfjs-core';
import type { flashAttention as FlashAttentionFn } from '../src/flash_attention';
import { deviceRandom, TF } from './attention';
import { ErrorScopes, timeCall, TimingPlan } from './measure';
import { decodePeerMarkdown, DecodePeer } from './onnxruntime_decode';

type Tensor = tfc.Tensor;

export interface DecodeSweep {
  seqKs: number[]; batches: number[]; heads: number; kvHeads: number[]; headDims: number[];
  /** Split-pass workgroup targets to tune over (empty: the default only). */
  targets: number[];
  /** Split-pass thread counts to try besides the default (tuning). */
  threads: number[];
  /** Size of the copy kernel's buffer. */
  copyBytes: number;
}

export const DECODE_GPU_SWEEP: DecodeSweep = {
  seqKs: [1024, 2048, 4096, 8192, 16384, 32768, 65536], batches: [1, 8], heads: 16, kvHeads: [16, 2],
  headDims: [64, 128], targets: [], threads: [], copyBytes: 512 * 2 ** 20,
};
/** SwiftShader / no GPU: tiny, a minute at most. */
export const DECODE_SMALL_SWEEP: DecodeSweep = {
  seqKs: [512, 2048], batches: [1], heads: 4, kvHeads: [4, 1], headDims: [32], targets: [], threads: [], copyBytes: 16 * 2 ** 20,
};

export interface DecodeRow {
  seqK: number; batch: number; heads: number; kvHeads: number; headDim: number;
  impl: string; gpuMs: number | null; wallMs: number | null; kvBytes: number;
  gbPerS: number | null; floorMs: number | null; vsFloor: number | null; splits?: number;
  status: string; note?: string;
  /** The onnxruntime peer's rows: its CopyKVCache GPU ms (apart from gpuMs) and relative error vs float64. */
  kvCopyMs?: number | null; relErr?: number;
}

interface DecodeHooks {
  setDecodeOverride: (o: { mode?: 'auto' | 'on' | 'off'; targetWorkgroups?: number; tiles?: { threads?: number } }) => void;
  decodeCalls: () => number;
}

/**
 * Read + write bandwidth of a plain elementwise copy (tf.neg of `bytes`, vec4 loads and stores in
 * tfjs's WebGPU kernel): GB/s of bytes moved, the floor's yardstick.
 */
async function copyBandwidth(tf: TF, plan: TimingPlan, bytes: number): Promise<{ gbPerS: number; ms: number }> {
  const x = tf.ones([bytes / 4]);
  const t = await timeCall(tf, () => tf.neg(x), plan);
  x.dispose();
  const ms = t.gpuMs ?? t.wallMs;
  return { gbPerS: 2 * bytes / ms / 1e6, ms };
}

/** softmax(q kᵀ scale) v with grouped heads as a tfjs user writes it: q [B, Hkv, G, D] against k [B, Hkv, N, D]. */
function compositeDecode(tf: TF, q: Tensor, kh: Tensor, vh: Tensor, scale: number): Tensor {
  return tf.tidy(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, kh, false, true), scale)), vh));
}

export async function runDecodeBench(tf: TF, flash: typeof FlashAttentionFn, hooks: DecodeHooks, sw: DecodeSweep,
                                     plan: TimingPlan, device: GPUDevice | null, outDir: string,
                                     meta: Record<string, unknown>, deadlineS: number,
                                     peer: DecodePeer | null = null): Promise<DecodeRow[]> {
  const start = performance.now();
  const scopes = new ErrorScopes(device);
  const copy = await copyBandwidth(tf, plan, sw.copyBytes);
  console.log(`# copy kernel (tf.neg of ${sw.copyBytes / 2 ** 20} MiB): ${copy.ms.toFixed(3)} ms, ${copy.gbPerS.toFixed(0)} GB/s read + write`);
  const rows: DecodeRow[] = [];
  const save = () => {
    mkdirSync(outDir, { recursive: true });
    const record = { meta: { ...meta, copyGbPerS: copy.gbPerS, sweep: sw }, rows };
    writeFileSync(join(outDir, 'decode.json'), JSON.stringify(record, null, 1) + '\n');
    writeFileSync(join(outDir, 'decode.md'), decodeMarkdown(rows, copy.gbPerS));
  };
  for (const headDim of sw.headDims) for (const kvHeads of sw.kvHeads) for (const batch of sw.batches) for (const seqK of sw.seqKs) {
    const heads = sw.heads;
    const kvBytes = batch * seqK * kvHeads * headDim * 2 * 4;
    const floorMs = kvBytes / (copy.gbPerS * 1e6);
    const base = { seqK, batch, heads, kvHeads, headDim, kvBytes, floorMs };
    if ((performance.now() - start) / 1000 > deadlineS) {
      rows.push({ ...base, impl: 'all', gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null, status: 'skipped', note: 'deadline' });
      continue;
    }
    if (kvBytes / 2 > 2 ** 31 - 4) {
      rows.push({ ...base, impl: 'all', gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null, status: 'too large',
                  note: 'K over the 2 GiB storage binding limit' });
      continue;
    }
    const q = deviceRandom(tf, [batch, 1, heads, headDim], 11);
    const k = deviceRandom(tf, [batch, seqK, kvHeads, headDim], 23);
    const v = deviceRandom(tf, [batch, seqK, kvHeads, headDim], 37);
    const group = heads / kvHeads;
    const qg = tf.reshape(q, [batch, kvHeads, group, headDim]);   // seqQ = 1: [B, 1, H, D] is [B, Hkv, G, D]
    const kh = tf.transpose(k, [0, 2, 1, 3]), vh = tf.transpose(v, [0, 2, 1, 3]);
    const variants: Array<{ impl: string; run: () => Tensor; target?: number; threads?: number }> = [
      { impl: 'decode', run: () => flash(q, k, v) },
      ...sw.targets.map(target => ({ impl: `decode@${target}`, run: () => flash(q, k, v), target })),
      ...sw.threads.map(threads => ({ impl: `decode/t${threads}`, run: () => flash(q, k, v), threads })),
      { impl: 'one-pass', run: () => flash(q, k, v) },
      { impl: 'composite', run: () => compositeDecode(tf, qg, kh, vh, 1 / Math.sqrt(headDim)) },
    ];
    let reference: Float32Array | null = null;
    for (const x of variants) {
      hooks.setDecodeOverride(x.impl === 'one-pass' ? { mode: 'off' } : x.impl === 'composite' ? {} : { mode: 'on', targetWorkgroups: x.target, tiles: x.threads ? { threads: x.threads } : undefined });
      const callsBefore = hooks.decodeCalls();
      const r = await scopes.run(async () => {
        const t = await timeCall(tf, x.run, plan);
        const out = x.run();
        const data = await out.data() as Float32Array;
        out.dispose();
        return { t, data };
      });
      hooks.setDecodeOverride({});
      if (r.failure) {
        rows.push({ ...base, impl: x.impl, gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null, status: r.failure.kind, note: r.failure.message });
        console.log(`${label(base)} ${x.impl}: ${r.failure.kind} ${r.failure.message}`);
        continue;
      }
      const { t, data } = r.value!;
      // The composite's output is [B, Hkv, G, D], flash's [B, 1, H, D]: the same order when seqQ = 1.
      const err = reference ? maxRelDiff(data, reference) : 0;
      if (!reference) reference = data;
      const ms = t.gpuMs ?? t.wallMs;
      const row: DecodeRow = {
        ...base, impl: x.impl, gpuMs: t.gpuMs, wallMs: t.wallMs, gbPerS: kvBytes / ms / 1e6, vsFloor: ms / floorMs,
        status: err < 1e-4 ? 'ok' : 'wrong', note: err ? `max rel diff vs decode ${err.toExponential(1)}` : undefined,
      };
      if (x.impl.startsWith('decode') && hooks.decodeCalls() === callsBefore) row.status = 'decode path not taken';
      rows.push(row);
      console.log(`${label(base)} ${x.impl.padEnd(12)} gpu ${ms.toFixed(3)} ms  ${row.gbPerS!.toFixed(0)} GB/s  ` +
                  `${row.vsFloor!.toFixed(2)}x floor  ${row.status}${row.note ? ` (${row.note})` : ''}`);
    }
    tf.dispose([q, k, v, qg, kh, vh]);
    if (peer) {   // onnxruntime's decode (bench/onnxruntime_decode.ts): its own inputs, device and check
      const row = await peer.row(base);
      rows.push(row);
      console.log(`${label(base)} ${row.impl.padEnd(12)} gpu ${row.gpuMs?.toFixed(3) ?? '-'} ms  ${row.status}  (${row.note})`);
    }
    save();
  }
  save();
  return rows;
}

const label = (s: { seqK: number; batch: number; heads: number; kvHeads: number; headDim: number }) =>
    `N ${String(s.seqK).padStart(5)} B ${s.batch} H ${s.heads}/${s.kvHeads} d ${s.headDim}`;

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) { num = Math.max(num, Math.abs(a[i] - b[i])); den = Math.max(den, Math.abs(b[i])); }
  return a.length === b.length ? num / Math.max(den, 1e-30) : Infinity;
}

export function decodeMarkdown(rows: DecodeRow[], copyGbPerS: number): string {
  const lines = [
    `Copy kernel bandwidth (read + write): ${copyGbPerS.toFixed(0)} GB/s. Floor = bytes of K and V / that bandwidth.`,
    '',
    '| seqK | B | H/Hkv | d | impl | GPU ms | GB/s (K+V once) | x floor | status |',
    '|---:|---:|---|---:|---|---:|---:|---:|---|',
  ];
  for (const r of rows) {
    const f = (x: number | null, d: number) => (x === null ? "" : x.toFixed(x < 10 ? Math.max(d, 2) : d));
    lines.push(`| ${r.seqK} | ${r.batch} | ${r.heads}/${r.kvHeads} | ${r.headDim} | ${r.impl} | ${f(r.gpuMs ?? r.wallMs, 3)} | ` +
               `${f(r.gbPerS, 0)} | ${f(r.vsFloor, 2)} | ${r.status}${r.note && r.status !== 'ok' ? `: ${r.note}` : ''} |`);
  }
  return lines.join('\n') + '\n' + decodePeerMarkdown(rows);
}

