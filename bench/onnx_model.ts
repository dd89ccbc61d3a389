/**
 * A one-node ONNX model, com.microsoft MultiHeadAttention, encoded in code: the onnxruntime peer
 * needs no model file and no onnx package. Only the protobuf fields the model uses are written
 * (onnx/onnx.proto3 field numbers); pure functions, no onnxruntime, so a test can check the bytes.
 */

export type OnnxFloat = 'float32' | 'float16';

export interface MhaModelSpec {
  batch: number;
  seq: number;
  heads: number;
  headDim: number;
  /** MultiHeadAttention's `unidirectional`: each query sees keys up to its own position. */
  causal: boolean;
  dtype: OnnxFloat;
}

/** TensorProto.DataType values. */
const ELEM_TYPE: Record<OnnxFloat, number> = { float32: 1, float16: 10 };
/** AttributeProto.AttributeType values. */
const ATTR_FLOAT = 1, ATTR_INT = 2;
/** A recent IR version and the com.microsoft opset onnxruntime 1.x implements MultiHeadAttention in. */
const IR_VERSION = 8, ONNX_OPSET = 17, MS_OPSET = 1;

type Bytes = number[];

function varint(out: Bytes, value: number | bigint): void {
  let v = BigInt.asUintN(64, BigInt(value));   // negative int64s are ten bytes, as protobuf wants
  do {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v ? byte | 0x80 : byte);
  } while (v);
}

const tag = (out: Bytes, field: number, wire: number) => varint(out, (field << 3) | wire);

function intField(out: Bytes, field: number, value: number): void {
  tag(out, field, 0);
  varint(out, value);
}

function bytesField(out: Bytes, field: number, payload: Bytes | Uint8Array): void {
  tag(out, field, 2);
  varint(out, payload.length);
  for (const b of payload) out.push(b);
}

const stringField = (out: Bytes, field: number, s: string) => bytesField(out, field, [...new TextEncoder().encode(s)]);

function floatField(out: Bytes, field: number, value: number): void {
  tag(out, field, 5);
  out.push(...new Uint8Array(new Float32Array([value]).buffer));
}

const message = (build: (out: Bytes) => void): Bytes => { const out: Bytes = []; build(out); return out; };

/** ValueInfoProto of a tensor with fixed dimensions. */
function valueInfo(name: string, elemType: number, dims: number[]): Bytes {
  const shape = message(s => dims.forEach(d => bytesField(s, 1, message(dim => intField(dim, 1, d)))));
  const tensorType = message(t => { intField(t, 1, elemType); bytesField(t, 2, shape); });
  return message(v => { stringField(v, 1, name); bytesField(v, 2, message(t => bytesField(t, 1, tensorType))); });
}

function attribute(name: string, type: number, value: number): Bytes {
  return message(a => {
    stringField(a, 1, name);
    if (type === ATTR_INT) intField(a, 3, value); else floatField(a, 2, value);
    intField(a, 20, type);
  });
}

/**
 * query, key, value [B, N, H·d] -> output [B, N, H·d], scale 1/√d (the benchmark's), as the
 * ModelProto bytes InferenceSession.create takes.
 */
export function multiHeadAttentionModel(s: MhaModelSpec): Uint8Array {
  const elem = ELEM_TYPE[s.dtype];
  const dims = [s.batch, s.seq, s.heads * s.headDim];
  const node = message(n => {
    for (const input of ['query', 'key', 'value']) stringField(n, 1, input);
    stringField(n, 2, 'output');
    stringField(n, 3, 'attention');
    stringField(n, 4, 'MultiHeadAttention');
    bytesField(n, 5, attribute('num_heads', ATTR_INT, s.heads));
    bytesField(n, 5, attribute('unidirectional', ATTR_INT, s.causal ? 1 : 0));
    bytesField(n, 5, attribute('scale', ATTR_FLOAT, 1 / Math.sqrt(s.headDim)));
    stringField(n, 7, 'com.microsoft');
  });
  const graph = message(g => {
    bytesField(g, 1, node);
    stringField(g, 2, 'multi_head_attention');
    for (const input of ['query', 'key', 'value']) bytesField(g, 11, valueInfo(input, elem, dims));
    bytesField(g, 12, valueInfo('output', elem, dims));
  });
  const opset = (domain: string, version: number) =>
      message(o => { if (domain) stringField(o, 1, domain); intField(o, 2, version); });
  return Uint8Array.from(message(m => {
    intField(m, 1, IR_VERSION);
    stringField(m, 2, 'tfjs-flash-attention bench');
    bytesField(m, 7, graph);
    bytesField(m, 8, opset('', ONNX_OPSET));
    bytesField(m, 8, opset('com.microsoft', MS_OPSET));
  }));
}

/** float32 -> IEEE half bits (round to nearest even), for the float16 model's inputs. */
export function toFloat16Bits(x: Float32Array): Uint16Array {
  const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    f32[0] = x[i];
    const bits = u32[0];
    const sign = (bits >>> 16) & 0x8000;
    const exp = (bits >>> 23) & 0xff;
    let mant = bits & 0x7fffff;
    if (exp === 0xff) { out[i] = sign | 0x7c00 | (mant ? 0x200 : 0); continue; }
    const e = exp - 127 + 15;
    if (e >= 0x1f) { out[i] = sign | 0x7c00; continue; }
    if (e <= 0) {
      if (e < -10) { out[i] = sign; continue; }
      mant |= 0x800000;
      const shift = 14 - e;
      let half = mant >>> shift;
      const rest = mant & ((1 << shift) - 1), halfway = 1 << (shift - 1);
      if (rest > halfway || (rest === halfway && (half & 1))) half++;
      out[i] = sign | half;
      continue;
    }
    let half = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (half & 1))) half++;   // may carry into the exponent: correct
    out[i] = sign | half;
  }
  return out;
}
