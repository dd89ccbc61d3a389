/**
 * One-node ONNX models, com.microsoft MultiHeadAttention (the forward peer) and GroupQueryAttention
 * (the decode peer), encoded in code: the onnxruntime peers need no model file and no onnx package. Only the protobuf fields the model uses are written
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
/** A recent IR version and the com.microsoft opset onnxruntime 1.x implements both ops in. */
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

/** A graph input or output: a tensor of fixed dimensions ([] for a scalar). */
interface TensorSpec { name: string; elemType: number; dims: number[] }

/**
 * A model of one com.microsoft node, as the ModelProto bytes InferenceSession.create takes. The
 * node's outputs not listed in `graphOutputs` stay on the device (never copied back to the host).
 */
function oneNodeModel(op: string, graphName: string, inputs: TensorSpec[], nodeOutputs: string[],
                      graphOutputs: TensorSpec[], attributes: Bytes[]): Uint8Array {
  const node = message(n => {
    for (const input of inputs) stringField(n, 1, input.name);
    for (const output of nodeOutputs) stringField(n, 2, output);
    stringField(n, 3, 'attention');
    stringField(n, 4, op);
    for (const a of attributes) bytesField(n, 5, a);
    stringField(n, 7, 'com.microsoft');
  });
  const graph = message(g => {
    bytesField(g, 1, node);
    stringField(g, 2, graphName);
    for (const t of inputs) bytesField(g, 11, valueInfo(t.name, t.elemType, t.dims));
    for (const t of graphOutputs) bytesField(g, 12, valueInfo(t.name, t.elemType, t.dims));
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

/**
 * query, key, value [B, N, H·d] -> output [B, N, H·d], scale 1/√d (the benchmark's), as the
 * ModelProto bytes InferenceSession.create takes.
 */
export function multiHeadAttentionModel(s: MhaModelSpec): Uint8Array {
  const elemType = ELEM_TYPE[s.dtype];
  const dims = [s.batch, s.seq, s.heads * s.headDim];
  return oneNodeModel('MultiHeadAttention', 'multi_head_attention',
      ['query', 'key', 'value'].map(name => ({ name, elemType, dims })), ['output'], [{ name: 'output', elemType, dims }], [
        attribute('num_heads', ATTR_INT, s.heads),
        attribute('unidirectional', ATTR_INT, s.causal ? 1 : 0),
        attribute('scale', ATTR_FLOAT, 1 / Math.sqrt(s.headDim)),
      ]);
}

export interface GqaDecodeModelSpec {
  batch: number;
  /** Keys and values attended to: the cache's seqK − 1 past positions and the new token. */
  seqK: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  dtype: OnnxFloat;
}

/** The decode model's graph inputs, in GroupQueryAttention's input order. */
export const GQA_DECODE_INPUTS = ['query', 'key', 'value', 'past_key', 'past_value', 'seqlens_k', 'total_sequence_length'] as const;

/**
 * One decode step of com.microsoft GroupQueryAttention: query [B, 1, H·d] and the new token's
 * key, value [B, 1, Hkv·d] against past_key, past_value [B, Hkv, seqK − 1, d] (head-major, as the
 * op wants its cache); seqlens_k [B] = seqK − 1 (int32: the last position, as the op counts),
 * total_sequence_length = seqK (int32 scalar). Output [B, 1, H·d], scale 1/√d. Hkv = H is plain
 * multi-head attention (the op allows it). present_key and present_value (the past with the new
 * token appended, [B, Hkv, seqK, d]) are node outputs but not graph outputs: they stay on the GPU.
 */
export function groupQueryAttentionDecodeModel(s: GqaDecodeModelSpec): Uint8Array {
  const elemType = ELEM_TYPE[s.dtype];
  const int32 = 6;   // TensorProto.INT32
  const past = [s.batch, s.kvHeads, s.seqK - 1, s.headDim];
  const dims: Record<(typeof GQA_DECODE_INPUTS)[number], number[]> = {
    query: [s.batch, 1, s.heads * s.headDim], key: [s.batch, 1, s.kvHeads * s.headDim],
    value: [s.batch, 1, s.kvHeads * s.headDim], past_key: past, past_value: past, seqlens_k: [s.batch],
    total_sequence_length: [],
  };
  const inputs = GQA_DECODE_INPUTS.map(name =>
      ({ name, elemType: name === 'seqlens_k' || name === 'total_sequence_length' ? int32 : elemType, dims: dims[name] }));
  return oneNodeModel('GroupQueryAttention', 'group_query_attention_decode', inputs,
      ['output', 'present_key', 'present_value'], [{ name: 'output', elemType, dims: dims.query }], [
        attribute('num_heads', ATTR_INT, s.heads),
        attribute('kv_num_heads', ATTR_INT, s.kvHeads),
        attribute('scale', ATTR_FLOAT, 1 / Math.sqrt(s.headDim)),
      ]);
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
