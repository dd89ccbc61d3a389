/**
 * onnxruntime's WebGPU decode as a peer of the decode sweep (bench/decode.ts): one decode step of a
 * com.microsoft GroupQueryAttention node (bench/onnx_model.ts; Hkv = H for the MHA rows), float32,
 * on onnxruntime-node's WebGPU execution provider (its own Dawn, same GPU).
 *
 * For one query row onnxruntime runs its split-reduce decode: `FlashAttentionDecodeQKV` (scores,
 * softmax partials and the partial P·V per 64-key tile) and `FlashAttentionDecodeVxReduce` (the
 * combine). Their GPU time, from onnxruntime's profiler, is the row's GPU ms: the same work as our
 * decode kernel. Before them `CopyKVCache` writes the present cache: from a separate past buffer (all
 * we can give it from Node, where inputs are host tensors, so past and present never share a buffer)
 * it copies the whole cache plus the new token, which our kernel does not do (the cache is already
 * in place there); it is reported apart (kvCopyMs), as is session.run's wall time (uploads of the
 * past cache every run).
 *
 * The output is checked against a float64 reference of the same host inputs (bench/reference_rows.ts)
 * for the first and last batch element, the first and last head and, with GQA, the heads on both
 * sides of the first kv-head boundary. A failure of the peer becomes a row, never a crash.
 */
import { groupQueryAttentionDecodeModel } from './onnx_model';
import { loadOnnxruntime, Ort, OrtTensor, patterned, PeerPlan, timedRuns, withProfiledSession } from './onnxruntime';
import { referenceRow, relativeError } from './reference_rows';
import { median } from './measure';
import type { DecodeRow } from './decode';

export interface DecodeShape { seqK: number; batch: number; heads: number; kvHeads: number; headDim: number }
/** The fields of a decode row that describe its shape and floor (bench/decode.ts fills them). */
export type DecodeRowBase = DecodeShape & { kvBytes: number; floorMs: number };

/** The impl name of the peer's rows. */
export const DECODE_PEER_IMPL = 'onnxruntime';
/** Relative error (root mean square, vs float64) above which the peer's row is 'wrong': float32 throughout. */
export const DECODE_PEER_REL_ERR = 1e-4;

export interface DecodePeerTiming {
  /** Median per run of the decode programs (FlashAttention*), GPU ms. */
  gpuMs: number;
  /** Median per run of CopyKVCache (past + new token -> present), GPU ms; null if it did not run. */
  kvCopyMs: number | null;
  /** Any other program per run, GPU ms. */
  otherGpuMs: Record<string, number>;
  /** Median session.run wall time: includes uploading the past cache and reading the output back. */
  wallMs: number;
  relErr?: number;
}

export interface DecodeInputs {
  q: Float32Array; kNew: Float32Array; vNew: Float32Array; pastK: Float32Array; pastV: Float32Array;
}

/** Host inputs of a decode step (prime periods, so heads and positions differ; O(period) to fill). */
export function decodeInputs(s: DecodeShape): DecodeInputs {
  const kv = s.batch * s.kvHeads * s.headDim;
  return {
    q: patterned(s.batch * s.heads * s.headDim, 10007, 11),
    kNew: patterned(kv, 10009, 41), vNew: patterned(kv, 10037, 43),
    pastK: patterned(kv * (s.seqK - 1), 10009, 23), pastV: patterned(kv * (s.seqK - 1), 10037, 37),
  };
}

/** The (batch, head) pairs whose output rows are checked against float64. */
export function checkedDecodeHeads(s: DecodeShape): Array<{ batch: number; head: number }> {
  const group = s.heads / s.kvHeads;
  const heads = [...new Set([0, s.heads - 1, ...(group > 1 && s.kvHeads > 1 ? [group - 1, group] : [])])].sort((a, b) => a - b);
  return [...new Set([0, s.batch - 1])].flatMap(batch => heads.map(head => ({ batch, head })));
}

/** One kv head's keys or values over all seqK positions: its past rows, then the new token's. */
function cacheOf(past: Float32Array, next: Float32Array, s: DecodeShape, batch: number, kvHead: number): Float32Array {
  const d = s.headDim, slot = batch * s.kvHeads + kvHead;
  const out = new Float32Array(s.seqK * d);
  out.set(past.subarray(slot * (s.seqK - 1) * d, (slot + 1) * (s.seqK - 1) * d));
  out.set(next.subarray(slot * d, (slot + 1) * d), (s.seqK - 1) * d);
  return out;
}

/** Relative error of the checked output rows against float64 attention over the same inputs. */
export function checkDecode(x: DecodeInputs, out: ArrayLike<number>, s: DecodeShape): number {
  const d = s.headDim, group = s.heads / s.kvHeads;
  const caches = new Map<string, { k: Float32Array; v: Float32Array }>();
  const pairs = checkedDecodeHeads(s).map(({ batch, head }) => {
    const kvHead = Math.floor(head / group), key = `${batch}/${kvHead}`;
    if (!caches.has(key)) {
      caches.set(key, { k: cacheOf(x.pastK, x.kNew, s, batch, kvHead), v: cacheOf(x.pastV, x.vNew, s, batch, kvHead) });
    }
    const { k, v } = caches.get(key)!;
    const at = (batch * s.heads + head) * d;
    const ref = referenceRow(x.q.subarray(at, at + d), k, v, new Float64Array(d), s.seqK, d, s.seqK - 1, false).out;
    return { got: Float64Array.from({ length: d }, (_, c) => out[at + c]), ref };
  });
  return relativeError(pairs);
}

/** Times one decode step on onnxruntime's WebGPU EP (a session per shape, released after it). */
export async function timeOnnxruntimeDecode(ort: Ort, s: DecodeShape, plan: PeerPlan): Promise<DecodePeerTiming> {
  if (s.seqK < 2) throw new Error(`the decode peer needs a past of at least one key, got seqK ${s.seqK}`);
  const model = groupQueryAttentionDecodeModel({ ...s, dtype: 'float32' });
  return withProfiledSession(ort, model, async (session, readPrograms) => {
    const x = decodeInputs(s);
    const { batch: b, kvHeads, heads, headDim: d, seqK } = s;
    const feeds: Record<string, OrtTensor> = {
      query: new ort.Tensor('float32', x.q, [b, 1, heads * d]),
      key: new ort.Tensor('float32', x.kNew, [b, 1, kvHeads * d]),
      value: new ort.Tensor('float32', x.vNew, [b, 1, kvHeads * d]),
      past_key: new ort.Tensor('float32', x.pastK, [b, kvHeads, seqK - 1, d]),
      past_value: new ort.Tensor('float32', x.pastV, [b, kvHeads, seqK - 1, d]),
      seqlens_k: new ort.Tensor('int32', new Int32Array(b).fill(seqK - 1), [b]),
      total_sequence_length: new ort.Tensor('int32', Int32Array.of(seqK), []),
    };
    const { wallAllMs, runs, reps, output } = await timedRuns(session, feeds, plan);
    const { attentionMs, otherMs } = readPrograms(runs, reps);
    const { CopyKVCache: kvCopyMs = null, ...otherGpuMs } = otherMs;
    return {
      gpuMs: median(attentionMs), kvCopyMs, otherGpuMs, wallMs: median(wallAllMs),
      relErr: plan.check ? checkDecode(x, output.data, s) : undefined,
    };
  });
}

export interface DecodePeer {
  /** e.g. 'onnxruntime-node 1.30.0, WebGPU execution provider, GroupQueryAttention decode'. */
  description: string;
  /** The peer's row of one shape: timed and checked, or a failure as its status; never throws. */
  row(base: DecodeRowBase): Promise<DecodeRow>;
}

/**
 * GPU ms over each yardstick the sweep measured for the shape: the copy floor always; the read
 * probe's peak floor and read-once time where the sweep has them (bench/decode.ts's later yardsticks).
 */
function yardstickRatios(base: DecodeRowBase, ms: number): { vsFloor: number; vsPeak?: number; vsReadOnce?: number } {
  const b = base as DecodeRowBase & { peakFloorMs?: number | null; readOnceMs?: number | null };
  return { vsFloor: ms / base.floorMs, ...(b.peakFloorMs ? { vsPeak: ms / b.peakFloorMs } : {}),
           ...(b.readOnceMs ? { vsReadOnce: ms / b.readOnceMs } : {}) };
}

/** The decode peer when onnxruntime-node loads (bash bench/install-peers.sh), else null and why. */
export function loadDecodePeer(check: boolean): { peer: DecodePeer | null; why: string } {
  const { ort, why } = loadOnnxruntime();
  return ort ? { peer: decodePeer(ort, check), why: '' } : { peer: null, why };
}

/**
 * The decode peer on a loaded onnxruntime. Few repetitions: each session.run uploads the whole past
 * cache (up to 1 GiB each of K and V in the sweep), and the GPU times come from the profiler.
 */
export function decodePeer(ort: Ort, check: boolean): DecodePeer {
  const plan: PeerPlan = { minReps: 3, maxReps: 5, targetMs: 200, warmupMs: 0, check };
  const row = async (base: DecodeRowBase): Promise<DecodeRow> => {
    try {
      const t = await timeOnnxruntimeDecode(ort, base, plan);
      const wrong = t.relErr !== undefined && !(t.relErr <= DECODE_PEER_REL_ERR);
      const others = Object.entries(t.otherGpuMs).map(([name, ms]) => `${name} ${ms} ms`);
      return {
        ...base, impl: DECODE_PEER_IMPL, gpuMs: t.gpuMs, wallMs: t.wallMs, gbPerS: base.kvBytes / t.gpuMs / 1e6,
        ...yardstickRatios(base, t.gpuMs), kvCopyMs: t.kvCopyMs, relErr: t.relErr, status: wrong ? 'wrong' : 'ok',
        note: [t.relErr !== undefined ? `rel err vs float64 ${t.relErr.toExponential(1)}` : 'not checked',
               `CopyKVCache ${t.kvCopyMs === null ? 'did not run' : `${t.kvCopyMs.toFixed(3)} ms`} apart`, ...others].join('; '),
      };
    } catch (e) {
      const message = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, ' ').slice(0, 240);
      return { ...base, impl: DECODE_PEER_IMPL, gpuMs: null, wallMs: null, gbPerS: null, vsFloor: null,
               status: /memory|allocat/i.test(message) ? 'OOM' : 'error', note: message };
    }
  };
  return { description: `onnxruntime-node ${ort.version}, WebGPU execution provider, GroupQueryAttention decode`, row };
}

/** The peer's rows in detail under the decode table: decode programs, CopyKVCache apart, wall, check. */
export function decodePeerMarkdown(rows: readonly DecodeRow[]): string {
  const peer = rows.filter(r => r.impl === DECODE_PEER_IMPL);
  if (peer.length === 0) return '';
  const f = (x: number | null | undefined, digits = 3) => (x === null || x === undefined ? '' : x.toFixed(digits));
  return [
    '',
    `${DECODE_PEER_IMPL}: GroupQueryAttention decode on its WebGPU EP; GPU ms = its decode programs ` +
    '(FlashAttentionDecode*); CopyKVCache (past + new token into the present cache, a whole-cache copy ' +
    'from Node) and session.run wall time (host uploads) apart.',
    '',
    '| seqK | B | H/Hkv | d | decode programs ms | CopyKVCache ms | wall ms | rel err vs float64 | status |',
    '|---:|---:|---|---:|---:|---:|---:|---:|---|',
    ...peer.map(r => `| ${r.seqK} | ${r.batch} | ${r.heads}/${r.kvHeads} | ${r.headDim} | ${f(r.gpuMs)} | ${f(r.kvCopyMs)} | ` +
                     `${f(r.wallMs, 1)} | ${r.relErr === undefined ? '' : r.relErr.toExponential(1)} | ` +
                     `${r.status}${r.status !== 'ok' && r.note ? `: ${r.note}` : ''} |`),
  ].join('\n') + '\n';
}
