/**
 * The onnxruntime peer's parts that need no onnxruntime (it is not installed in CI): the
 * MultiHeadAttention model's protobuf bytes, float16 conversion, reading per-run program times from
 * its profile, and the peer's and the subgroups device's columns in the Markdown report.
 */
import { BenchCase } from '../bench/cases';
import { multiHeadAttentionModel, toFloat16Bits } from '../bench/onnx_model';
import { programTimes } from '../bench/onnxruntime';
import { baseResult, CaseResult, markdownReport } from '../bench/report';

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
