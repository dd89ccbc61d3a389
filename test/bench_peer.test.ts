/**
 * The onnxruntime peers' parts that need no onnxruntime (it is not installed in CI): the
 * MultiHeadAttention and GroupQueryAttention decode models' protobuf bytes, float16 conversion,
 * reading per-run program times from its profile, the decode peer's float64 check, and the peers'
 * and the subgroups device's columns in the Markdown reports.
 */
import { BenchCase } from '../bench/cases';
import type { DecodeRow } from '../bench/decode';
import { groupQueryAttentionDecodeModel, GQA_DECODE_INPUTS, multiHeadAttentionModel, toFloat16Bits } from '../bench/onnx_model';
import { programTimes } from '../bench/onnxruntime';
import { writeFileSync } from 'node:fs';
import type { Ort } from '../bench/onnxruntime';
import { checkDecode, checkedDecodeHeads, decodeInputs, decodePeer, decodePeerMarkdown, DecodeShape } from '../bench/onnxruntime_decode';
import { parseArgs } from '../bench/options';
import { baseResult, CaseResult, markdownReport } from '../bench/report';
import type { FlashAttentionAttrs } from '../src/contract';
import { referenceForward } from './helpers/reference';

type Field = { field: number; wire: number; value: bigint | Uint8Array };

/** A protobuf message as its fields, in order (varint, 32-bit and length-delimited wire types). */
function decode(bytes: Uint8Array): Field[] {
  const fields: Field[] = [];
  let i = 0;
  const varint = () => {
    let v = 0n, shift = 0n;
    for (;;) { const b = bytes[i++]; v |= BigInt(b & 0x7f) << shift; shift += 7n; if (!(b & 0x80)) return v; }
  };
  while (i < bytes.length) {
    const key = Number(varint());
    const [field, wire] = [key >> 3, key & 7];
    if (wire === 0) fields.push({ field, wire, value: varint() });
    else if (wire === 5) { fields.push({ field, wire, value: bytes.slice(i, i + 4) }); i += 4; }
    else if (wire === 2) { const n = Number(varint()); fields.push({ field, wire, value: bytes.slice(i, i + n) }); i += n; }
    else throw new Error(`wire type ${wire}`);
  }
  return fields;
}
const all = (m: Field[], field: number) => m.filter(f => f.field === field).map(f => f.value);
const one = (m: Field[], field: number) => all(m, field)[0];
const text = (v: unknown) => new TextDecoder().decode(v as Uint8Array);
const sub = (v: unknown) => decode(v as Uint8Array);

describe('the MultiHeadAttention model', () => {
  const model = decode(multiHeadAttentionModel({ batch: 2, seq: 128, heads: 4, headDim: 32, causal: true, dtype: 'float16' }));
  const graph = sub(one(model, 7));
  const node = sub(one(graph, 1));

  test('one com.microsoft MultiHeadAttention node on query, key, value', () => {
    expect(text(one(node, 4))).toBe('MultiHeadAttention');
    expect(text(one(node, 7))).toBe('com.microsoft');
    expect(all(node, 1).map(text)).toEqual(['query', 'key', 'value']);
    expect(all(node, 2).map(text)).toEqual(['output']);
    const opsets = all(model, 8).map(sub).map(o => [o.length > 1 ? text(one(o, 1)) : '', Number(one(o, 2))]);
    expect(opsets).toContainEqual(['com.microsoft', 1]);
  });

  test('num_heads, unidirectional (causal) and scale 1/sqrt(d) as typed attributes', () => {
    const attrs = Object.fromEntries(all(node, 5).map(sub).map(a => [text(one(a, 1)), a]));
    expect(Number(one(attrs.num_heads, 3))).toBe(4);
    expect(Number(one(attrs.num_heads, 20))).toBe(2);        // INT
    expect(Number(one(attrs.unidirectional, 3))).toBe(1);
    const scale = new Float32Array((one(attrs.scale, 2) as Uint8Array).slice().buffer)[0];
    expect(scale).toBeCloseTo(1 / Math.sqrt(32), 7);
    expect(Number(one(attrs.scale, 20))).toBe(1);             // FLOAT
    const full = decode(multiHeadAttentionModel({ batch: 1, seq: 8, heads: 1, headDim: 8, causal: false, dtype: 'float32' }));
    const fullAttrs = all(sub(one(sub(one(full, 7)), 1)), 5).map(sub);
    expect(Number(one(fullAttrs.find(a => text(one(a, 1)) === 'unidirectional')!, 3))).toBe(0);
  });

  test('inputs and output are [B, N, H·d] of the requested float type', () => {
    for (const io of [...all(graph, 11), ...all(graph, 12)].map(sub)) {
      const tensor = sub(one(sub(one(io, 2)), 1));
      expect(Number(one(tensor, 1))).toBe(10);   // FLOAT16
      const dims = all(sub(one(tensor, 2)), 1).map(d => Number(one(sub(d), 1)));
      expect(dims).toEqual([2, 128, 128]);
    }
  });
});

describe('the GroupQueryAttention decode model', () => {
  const spec = { batch: 8, seqK: 65536, heads: 16, kvHeads: 2, headDim: 128, dtype: 'float32' as const };
  const model = decode(groupQueryAttentionDecodeModel(spec));
  const graph = sub(one(model, 7));
  const node = sub(one(graph, 1));
  const tensorOf = (io: Field[]) => {
    const tensor = sub(one(sub(one(io, 2)), 1));
    return { name: text(one(io, 1)), elemType: Number(one(tensor, 1)), dims: all(sub(one(tensor, 2)), 1).map(d => Number(one(sub(d), 1))) };
  };

  test('one com.microsoft GroupQueryAttention node: new token, past cache, seqlens_k, total length in; output, present out', () => {
    expect(text(one(node, 4))).toBe('GroupQueryAttention');
    expect(text(one(node, 7))).toBe('com.microsoft');
    expect(all(node, 1).map(text)).toEqual(['query', 'key', 'value', 'past_key', 'past_value', 'seqlens_k', 'total_sequence_length']);
    expect(all(node, 1).map(text)).toEqual([...GQA_DECODE_INPUTS]);
    expect(all(node, 2).map(text)).toEqual(['output', 'present_key', 'present_value']);
    const attrs = Object.fromEntries(all(node, 5).map(sub).map(a => [text(one(a, 1)), a]));
    expect(Object.keys(attrs).sort()).toEqual(['kv_num_heads', 'num_heads', 'scale']);
    expect([Number(one(attrs.num_heads, 3)), Number(one(attrs.kv_num_heads, 3))]).toEqual([16, 2]);
    expect(Number(one(attrs.kv_num_heads, 20))).toBe(2);   // INT
    expect(new Float32Array((one(attrs.scale, 2) as Uint8Array).slice().buffer)[0]).toBeCloseTo(1 / Math.sqrt(128), 7);
  });

  test('inputs: [B, 1, H·d] query, [B, 1, Hkv·d] new key and value, [B, Hkv, seqK - 1, d] past, int32 lengths', () => {
    const inputs = all(graph, 11).map(sub).map(tensorOf);
    expect(inputs).toEqual([
      { name: 'query', elemType: 1, dims: [8, 1, 2048] },
      { name: 'key', elemType: 1, dims: [8, 1, 256] },
      { name: 'value', elemType: 1, dims: [8, 1, 256] },
      { name: 'past_key', elemType: 1, dims: [8, 2, 65535, 128] },
      { name: 'past_value', elemType: 1, dims: [8, 2, 65535, 128] },
      { name: 'seqlens_k', elemType: 6, dims: [8] },
      { name: 'total_sequence_length', elemType: 6, dims: [] },
    ]);
  });

  test('only the output comes back to the host: present_key and present_value stay on the device', () => {
    expect(all(graph, 12).map(sub).map(tensorOf)).toEqual([{ name: 'output', elemType: 1, dims: [8, 1, 2048] }]);
    const mha = decode(groupQueryAttentionDecodeModel({ ...spec, kvHeads: 16, dtype: 'float16' }));
    const mhaGraph = sub(one(mha, 7));
    expect(all(mhaGraph, 11).map(sub).map(tensorOf)[3]).toEqual({ name: 'past_key', elemType: 10, dims: [8, 16, 65535, 128] });
    expect(Number(one(all(sub(one(mhaGraph, 1)), 5).map(sub).find(a => text(one(a, 1)) === 'kv_num_heads')!, 3))).toBe(16);
  });
});

describe('the decode peer\'s float64 check', () => {
  const s: DecodeShape = { seqK: 37, batch: 3, heads: 4, kvHeads: 2, headDim: 8 };
  const x = decodeInputs(s);
  // The test oracle over the same inputs laid out as it reads them: k, v [B, seqK, Hkv, d], the
  // past (head-major [B, Hkv, seqK - 1, d]) then the new token ([B, 1, Hkv·d]) at position seqK - 1.
  const bshd = (past: Float32Array, next: Float32Array) => {
    const out = new Float32Array(s.batch * s.seqK * s.kvHeads * s.headDim);
    for (let b = 0; b < s.batch; b++) for (let j = 0; j < s.seqK; j++) for (let h = 0; h < s.kvHeads; h++) {
      for (let c = 0; c < s.headDim; c++) {
        out[((b * s.seqK + j) * s.kvHeads + h) * s.headDim + c] = j < s.seqK - 1
            ? past[((b * s.kvHeads + h) * (s.seqK - 1) + j) * s.headDim + c] : next[(b * s.kvHeads + h) * s.headDim + c];
      }
    }
    return out;
  };
  const attrs: FlashAttentionAttrs = {
    scale: 1 / Math.sqrt(s.headDim), softcap: 0, windowLeft: -1, windowRight: -1, hasAlibi: false, hasMask: false,
    dropoutRate: 0, seed: 0, precision: 'highest', seqLayout: 'dense', maxSeqLenQ: 1, maxSeqLenK: s.seqK, numSeqs: s.batch,
  };
  const dims = { ...s, seqQ: 1, headDimV: s.headDim };
  const expected = referenceForward(dims, { q: x.q, k: bshd(x.pastK, x.kNew), v: bshd(x.pastV, x.vNew) }, attrs).out;

  test('checks the first and last batch element, the first and last head, and both sides of a kv-head boundary', () => {
    expect(checkedDecodeHeads(s)).toEqual([0, 1, 2, 3].flatMap(head => [0, 2].map(batch => ({ batch, head })))
      .sort((a, b) => a.batch - b.batch || a.head - b.head));
    expect(checkedDecodeHeads({ ...s, kvHeads: 4, batch: 1 })).toEqual([{ batch: 0, head: 0 }, { batch: 0, head: 3 }]);
  });

  test('agrees with the test oracle on the same inputs, and fails a wrong value, a wrong new token or the wrong kv heads', () => {
    expect(checkDecode(x, expected, s)).toBeLessThan(1e-12);
    const last = expected.slice();
    last[((s.batch - 1) * s.heads + 2) * s.headDim + 5] += 0.01;   // one value of head 2 (kv head 1) of the last batch element
    expect(checkDecode(x, last, s)).toBeGreaterThan(1e-4);
    const wrongNewToken = referenceForward({ ...dims, seqK: s.seqK }, {
      q: x.q, k: bshd(x.pastK, x.kNew.map(() => -9)), v: bshd(x.pastV, x.vNew.map(() => 5)),
    }, attrs).out;
    expect(checkDecode(x, wrongNewToken, s)).toBeGreaterThan(1e-3);
    // the cache reversed: each query head reads the other kv head's keys and values.
    const swapped = referenceForward(dims, { q: x.q, k: bshd(x.pastK, x.kNew).reverse(), v: bshd(x.pastV, x.vNew).reverse() }, attrs).out;
    expect(checkDecode(x, swapped, s)).toBeGreaterThan(1e-3);
  });
});

describe('the decode peer\'s rows, on a stand-in for onnxruntime', () => {
  const s: DecodeShape = { seqK: 20, batch: 2, heads: 4, kvHeads: 2, headDim: 8 };
  const base = { ...s, kvBytes: 2 * s.batch * s.seqK * s.kvHeads * s.headDim * 4, floorMs: 0.001 };
  /** An Ort whose session computes the step in float64 from its feeds (plus `error`) and profiles 3 programs a run. */
  const standIn = (opts: { error?: number; create?: () => never; run?: () => never }) => {
    const released: number[] = [];
    const ort = {
      version: 'stand-in',
      Tensor: class { constructor(readonly type: string, readonly data: Float32Array | Int32Array, readonly dims: number[]) {} },
      InferenceSession: {
        async create(_model: Uint8Array, options: Record<string, unknown>) {
          opts.create?.();
          const events: object[] = [];
          return {
            async run(feeds: Record<string, { data: Float32Array; dims: number[] }>) {
              opts.run?.();
              const [b, kvh, past, d] = feeds.past_key.dims;
              const bshd = (pastT: Float32Array, next: Float32Array) => Float32Array.from({ length: b * (past + 1) * kvh * d }, (_, i) => {
                const c = i % d, h = Math.floor(i / d) % kvh, j = Math.floor(i / (d * kvh)) % (past + 1), bb = Math.floor(i / (d * kvh * (past + 1)));
                return j < past ? pastT[((bb * kvh + h) * past + j) * d + c] : next[(bb * kvh + h) * d + c];
              });
              const out = referenceForward({ batch: b, seqQ: 1, seqK: past + 1, heads: feeds.query.dims[2] / d, kvHeads: kvh, headDim: d, headDimV: d },
                  { q: feeds.query.data, k: bshd(feeds.past_key.data, feeds.key.data), v: bshd(feeds.past_value.data, feeds.value.data) },
                  { scale: 1 / Math.sqrt(d), softcap: 0, windowLeft: -1, windowRight: -1, hasAlibi: false, hasMask: false, dropoutRate: 0, seed: 0,
                    precision: 'highest', seqLayout: 'dense', maxSeqLenQ: 1, maxSeqLenK: past + 1, numSeqs: b }).out;
              const ts = events.length;
              for (const [name, dur] of [['CopyKVCache', 7], ['FlashAttentionDecodeQKV', 40], ['FlashAttentionDecodeVxReduce', 5]] as const) {
                events.push({ cat: 'Api', name: `attention&GroupQueryAttention&${name}`, dur, ts: ts + events.length });
              }
              return { output: { data: Float32Array.from(out, x => x + (opts.error ?? 0)), dims: [b, 1, feeds.query.dims[2]] } };
            },
            endProfiling() { writeFileSync(`${options.profileFilePrefix}_1.json`, JSON.stringify(events)); },
            async release() { released.push(1); },
          };
        },
      },
    };
    return { ort: ort as unknown as Ort, released };
  };

  test('ok: the decode programs\' GPU time, CopyKVCache apart, checked against float64', async () => {
    const { ort, released } = standIn({});
    const row = await decodePeer(ort, true).row(base);
    expect(row).toMatchObject({ impl: 'onnxruntime', status: 'ok', gpuMs: 0.045, kvCopyMs: 0.007, seqK: 20, kvHeads: 2 });
    expect(row.relErr).toBeLessThan(1e-6);
    expect(row.gbPerS).toBeCloseTo(base.kvBytes / 0.045 / 1e6, 9);
    expect(row.vsFloor).toBeCloseTo(45, 9);
    expect(released).toHaveLength(1);
    // The sweep's read-probe yardsticks, where it has them, get their ratios too.
    const withProbe = await decodePeer(ort, false).row({ ...base, peakFloorMs: 0.015, readOnceMs: 0.009 } as typeof base);
    expect(withProbe).toMatchObject({ vsPeak: 3, vsReadOnce: 5, relErr: undefined, status: 'ok' });
  });

  test('a wrong output is a wrong row; a failing session is a row with the message; each session released', async () => {
    const wrong = standIn({ error: 1e-3 });
    expect(await decodePeer(wrong.ort, true).row(base)).toMatchObject({ status: 'wrong' });
    const oom = standIn({ run: () => { throw new Error('Failed to allocate a buffer of 1 GiB'); } });
    expect(await decodePeer(oom.ort, true).row(base)).toMatchObject({ status: 'OOM', gpuMs: null, note: 'Failed to allocate a buffer of 1 GiB' });
    expect(oom.released).toHaveLength(1);
    const noDevice = standIn({ create: () => { throw new Error('no WebGPU adapter'); } });
    expect(await decodePeer(noDevice.ort, true).row(base)).toMatchObject({ status: 'error', note: 'no WebGPU adapter' });
  });
});

describe('the decode table\'s peer section', () => {
  const base = { seqK: 8192, batch: 1, heads: 16, kvHeads: 2, headDim: 128, kvBytes: 2 ** 24, floorMs: 0.01 };
  const row = (impl: string, extra: Partial<DecodeRow>): DecodeRow =>
      ({ ...base, impl, gpuMs: 0.1, wallMs: 3, gbPerS: 160, vsFloor: 10, status: 'ok', ...extra });

  test('lists the peer\'s decode programs and CopyKVCache apart, wall time and its error; nothing without peer rows', () => {
    expect(decodePeerMarkdown([row('decode', {})])).toBe('');
    const md = decodePeerMarkdown([row('decode', {}), row('onnxruntime', { kvCopyMs: 0.0213, relErr: 2.2e-7 }),
      row('onnxruntime', { seqK: 65536, gpuMs: null, wallMs: null, status: 'error', note: 'no FlashAttention program' })]);
    expect(md).toContain('| seqK | B | H/Hkv | d | decode programs ms | CopyKVCache ms | wall ms | rel err vs float64 | status |');
    expect(md).toContain('| 8192 | 1 | 16/2 | 128 | 0.100 | 0.021 | 3.0 | 2.2e-7 | ok |');
    expect(md).toContain('| 65536 | 1 | 16/2 | 128 |  |  |  |  | error: no FlashAttention program |');
  });
});

describe('the decode sweep\'s peer flag', () => {
  test('on unless --decode-peer=0; anything but 0 or 1 is an error naming the flag', () => {
    expect(parseArgs(['--decode']).decodePeer).toBe(true);
    expect(parseArgs(['--decode', '--decode-peer=0']).decodePeer).toBe(false);
    expect(parseArgs(['--decode', '--decode-peer=1']).decodePeer).toBe(true);
    expect(() => parseArgs(['--decode-peer=maybe'])).toThrow(/--decode-peer needs 0 or 1, got 'maybe'/);
  });
});

describe('float16 conversion of the peer\'s inputs', () => {
  test('rounds to nearest even, with subnormals, overflow, infinities and NaN', () => {
    const bits = toFloat16Bits(new Float32Array([1, -2, 0.1, 65504, 65520, 1e6, 6e-8, 1e-8, -0, Infinity, NaN, 1 + 2 ** -11, 1 + 3 * 2 ** -11]));
    expect([...bits]).toEqual([0x3c00, 0xc000, 0x2e66, 0x7bff, 0x7c00, 0x7c00, 0x0001, 0x0000, 0x8000, 0x7c00, 0x7e00, 0x3c00, 0x3c02]);
  });
});

describe('program times from onnxruntime\'s profile', () => {
  const run = (ts: number, attentionUs: number) => [
    { cat: 'Api', name: 'attention&MultiHeadAttention&CopyKVCache', dur: 100, ts },
    { cat: 'Api', name: 'attention&MultiHeadAttention&FlashAttention', dur: attentionUs, ts: ts + 1 },
    { cat: 'Session', name: 'model_run', dur: 9999, ts },
  ];

  test('sums the FlashAttention programs of each of the last runs; the others apart', () => {
    const events = [...run(0, 9000), ...run(100, 2000), ...run(200, 3000), ...run(300, 4000)];
    const t = programTimes(events, 4, 3);
    expect(t.attentionMs).toEqual([2, 3, 4]);
    expect(t.otherMs).toEqual({ CopyKVCache: 0.1 });
  });

  test('a profile that does not split evenly into runs, or without FlashAttention, is an error', () => {
    expect(() => programTimes(run(0, 1).slice(0, 1), 2, 1)).toThrow(/1 program events for 2 runs/);
    expect(() => programTimes(run(0, 1).slice(0, 1), 1, 1)).toThrow(/no FlashAttention program \(ran: CopyKVCache\)/);
  });
});

describe('the report\'s peer and subgroups columns', () => {
  const c = (impl: BenchCase['impl']): BenchCase => ({ impl, pass: 'fwd', batch: 1, heads: 16, seq: 4096, headDim: 64, causal: false });
  const ok = (impl: BenchCase['impl'], wallMs: number, gpuMs: number): CaseResult =>
      ({ ...baseResult(c(impl), 'ok'), wallMs, gpuMs, peakBytes: null });
  const md = markdownReport({
    meta: { date: '2026-12-02', backend: 'webgpu', adapter: null, nvidiaSmi: null, tfjsVersion: '4.22.0', node: 'v20',
            gitCommit: null, argv: [], ceilings: { tflops: 51.6, gbPerS: 4800 }, onnxruntime: 'onnxruntime-node 1.30.0' },
    results: [ok('flash', 4, 3.5), ok('composite', 7, 6), ok('flash-subgroups', 3.5, 3), ok('onnxruntime-f32', 20, 4),
              baseResult(c('onnxruntime-f16'), 'error', 'f16 not supported')],
  });

  test('each as time and ratio to the composite; onnxruntime by GPU time only', () => {
    const header = md.split('\n').find(l => l.startsWith('| N |'))!;
    expect(header).toContain('| flash, subgroups device, ms (GPU) | composite ÷ subgroups wall (GPU) |');
    expect(header).toContain('| onnxruntime f32 ms (GPU) | composite ÷ ort f32 (GPU) | onnxruntime f16 ms (GPU) |');
    const row = md.split('\n').find(l => l.startsWith('| 4096 |'))!;
    expect(row).toContain('| 3.500 (3.000) | 2.00× (2.00×) | 20.00 (4.000) | (1.50×) | **error** | – |');
    expect(md).toContain('onnxruntime-node 1.30.0');
  });
});
