/** Bad input throws before any work, names the argument, the expected and the given value, and leaks nothing. */
import * as tf from '@tensorflow/tfjs';
import {
  flashAttention, FlashAttention, FlashAttentionAttrs, FlashAttentionOptions, flashAttentionVarlen,
  FlashAttentionVarlenOptions,
} from '../src/index';
import { normalizeAttrs } from '../src/contract';
import { FALLBACK_BACKEND, registerFallbackBackend } from './helpers/backends';
import { HAS_GPU, takeUncapturedErrors, useWebGPU, destroyWebGPU } from './helpers/webgpu_env';

const q = () => tf.zeros([2, 5, 4, 8]) as tf.Tensor4D;
const k = () => tf.zeros([2, 7, 2, 8]) as tf.Tensor4D;
const v = () => tf.zeros([2, 7, 2, 6]) as tf.Tensor4D;

type Args = () => [tf.Tensor | number[], tf.Tensor | number[], tf.Tensor | number[], FlashAttentionOptions?];

const badInputs: [string, Args, RegExp][] = [
  ['q of rank 3', () => [tf.zeros([2, 5, 8]), k(), v()], /q must be rank 4 \[batch, seqQ, heads, headDim\], but got shape \[2, 5, 8\]/],
  ['k of rank 5', () => [q(), tf.zeros([2, 7, 2, 8, 1]), v()], /k must be rank 4 .* but got shape \[2, 7, 2, 8, 1\]/],
  ['int32 v', () => [q(), k(), tf.zeros([2, 7, 2, 6], 'int32')], /v must be float32, but got int32/],
  ['batch mismatch', () => [q(), tf.zeros([3, 7, 2, 8]), tf.zeros([3, 7, 2, 6])], /batch sizes differ: q \[2, 5, 4, 8\], k \[3, 7, 2, 8\]/],
  ['headDim mismatch', () => [q(), tf.zeros([2, 7, 2, 9]), v()], /k's headDim must equal q's: .* headDim 8, k \[2, 7, 2, 9\] has 9/],
  ['seqK mismatch between k and v', () => [q(), k(), tf.zeros([2, 6, 2, 6])], /v must be \[batch, seqK, kvHeads, headDimV\] = \[2, 7, 2, headDimV\].*but got \[2, 6, 2, 6\]/],
  ['heads not divisible by kvHeads', () => [tf.zeros([2, 5, 3, 8]), k(), v()], /heads \(3, .*\) must be divisible by kvHeads \(2/],
  ['headDim over 256', () => [tf.zeros([1, 2, 1, 257]), tf.zeros([1, 2, 1, 257]), tf.zeros([1, 2, 1, 4])], /headDim and headDimV must be in \[1, 256\], but got headDim 257/],
  ['an empty dimension', () => [tf.zeros([2, 0, 4, 8]), k(), v()], /q must have no empty dimension, but got shape \[2, 0, 4, 8\]/],
  ['alibiSlopes of the wrong length', () => [q(), k(), v(), { alibiSlopes: [1, 2, 3] }], /alibiSlopes must have length heads = 4, but got shape \[3\]/],
  ['dropoutRate 1', () => [q(), k(), v(), { dropoutRate: 1 }], /dropoutRate must be in \[0, 1\), but got 1/],
  ['negative dropoutRate', () => [q(), k(), v(), { dropoutRate: -0.1 }], /dropoutRate must be in \[0, 1\), but got -0.1/],
  ['windowSize with a float', () => [q(), k(), v(), { windowSize: [1.5, 0] }], /windowSize must be \[left, right\] with integers >= -1 .* but got \[1.5,0\]/],
  ['windowSize below -1', () => [q(), k(), v(), { windowSize: [-2, 0] as [number, number] }], /windowSize must be .* but got \[-2,0\]/],
  ['windowSize of one element', () => [q(), k(), v(), { windowSize: [3] as unknown as [number, number] }], /windowSize must be \[left, right\]/],
  ['mask not broadcastable', () => [q(), k(), v(), { mask: tf.ones([2, 3, 5, 7], 'bool') }], /mask of shape \[2, 3, 5, 7\] is not broadcastable to \[batch, heads, seqQ, seqK\] = \[2, 4, 5, 7\]/],
  ['mask of rank 5', () => [q(), k(), v(), { mask: tf.ones([1, 1, 1, 5, 7], 'bool') }], /mask of shape \[1, 1, 1, 5, 7\] is not broadcastable/],
  ['float mask', () => [q(), k(), v(), { mask: tf.ones([5, 7]) }], /mask must be a bool tensor \(true = attend\), but got float32/],
  ['negative softcap', () => [q(), k(), v(), { softcap: -1 }], /softcap must be a finite number >= 0/],
  ['NaN scale', () => [q(), k(), v(), { scale: NaN }], /scale must be a finite number, but got NaN/],
  ['unknown option', () => [q(), k(), v(), { casual: true } as FlashAttentionOptions], /unknown option 'casual'/],
  ['bad precision', () => [q(), k(), v(), { precision: 'half' as 'fast' }], /precision must be 'highest' or 'fast', but got "half"/],
  ['scale beyond float32', () => [q(), k(), v(), { scale: 1e39 }], /scale must fit in float32 \(\|scale\| <= 3.4028234663852886e\+38\), but got 1e\+39/],
  ['negative scale beyond float32', () => [q(), k(), v(), { scale: -4e38 }], /scale must fit in float32 .* but got -4e\+38/],
  ['softcap beyond float32', () => [q(), k(), v(), { softcap: 1e39 }], /softcap must fit in float32 \(softcap <= 3.4028234663852886e\+38\), but got 1e\+39/],
  ['a NaN alibi slope', () => [q(), k(), v(), { alibiSlopes: [0.5, NaN, 0.25, 0.125] }], /alibiSlopes must be finite float32 numbers, but alibiSlopes\[1\] is NaN/],
  ['an infinite alibi slope', () => [q(), k(), v(), { alibiSlopes: new Float32Array([0.5, 0.5, -Infinity, 0.1]) }], /alibiSlopes\[2\] is -Infinity/],
  ['an alibi slope beyond float32', () => [q(), k(), v(), { alibiSlopes: [1e39, 0.5, 0.25, 0.125] }], /alibiSlopes\[0\] is 1e\+39/],
  ['a non-numeric alibi slope', () => [q(), k(), v(), { alibiSlopes: [0.5, 0.5, 0.5, '0.1'] as unknown as number[] }], /alibiSlopes\[3\] is "0.1"/],
  ['alibiSlopes as a string', () => [q(), k(), v(), { alibiSlopes: '0.5' as unknown as number[] }], /alibiSlopes must be a number\[\], Float32Array or Tensor1D, but got string/],
  ['a negative seed', () => [q(), k(), v(), { seed: -1 }], /seed must be an integer in \[0, 2\^32\), but got -1/],
  ['a fractional seed', () => [q(), k(), v(), { seed: 1.5 }], /seed must be an integer in \[0, 2\^32\), but got 1.5/],
  ['a seed of 2^32', () => [q(), k(), v(), { seed: 2 ** 32 }], /seed must be an integer in \[0, 2\^32\), but got 4294967296/],
  ['a string seed', () => [q(), k(), v(), { seed: '7' as unknown as number }], /seed must be an integer in \[0, 2\^32\), but got "7"/],
  ['returnLogSumExp not a boolean', () => [q(), k(), v(), { returnLogSumExp: 'yes' as unknown as boolean }], /returnLogSumExp must be a boolean, but got "yes"/],
  ['options as a Map', () => [q(), k(), v(), new Map([['causal', true]]) as unknown as FlashAttentionOptions], /options must be a plain object such as \{ causal: true \}, but got a Map/],
  ['options as an array', () => [q(), k(), v(), [] as unknown as FlashAttentionOptions], /options must be a plain object .* but got an Array/],
  ['null options', () => [q(), k(), v(), null as unknown as FlashAttentionOptions], /options must be a plain object .* but got null/],
];

describe('bad input', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  test.each(badInputs)('%s throws a message naming it and leaks nothing', (_, args, message) => {
    const made = args();
    const before = tf.memory().numTensors;
    expect(() => flashAttention(made[0] as tf.Tensor4D, made[1] as tf.Tensor4D, made[2] as tf.Tensor4D, made[3]))
      .toThrow(message);
    expect(tf.memory().numTensors).toBe(before);
    expect(() => flashAttention(made[0] as tf.Tensor4D, made[1] as tf.Tensor4D, made[2] as tf.Tensor4D, made[3]))
      .toThrow(/^Error in flashAttention: /);
    tf.dispose(made.flatMap(x => (x instanceof tf.Tensor ? [x] : x && typeof x === 'object' && 'mask' in x ? [x.mask as tf.Tensor] : [])));
  });
});

/**
 * Bad lengths (issue 12): q, k, v as above (batch 2, seqQ 5, seqK 7) with seqLensQ/K, and packed
 * q [5, 4, 8], k [7, 2, 8], v [7, 2, 6] with cuSeqLensQ/K. Each throws before any kernel runs.
 */
const q3 = () => tf.zeros([5, 4, 8]);
const k3 = () => tf.zeros([7, 2, 8]);
const v3 = () => tf.zeros([7, 2, 6]);
const cu = (cuSeqLensQ: FlashAttentionVarlenOptions['cuSeqLensQ'], cuSeqLensK: FlashAttentionVarlenOptions['cuSeqLensK'] = [0, 3, 7]) =>
  ({ cuSeqLensQ, cuSeqLensK });

type VarlenCall = () => { run: () => unknown; made: tf.Tensor[] };
/** Options are built when the test runs (tensors need a backend). */
const padded = (makeOptions: () => FlashAttentionOptions): VarlenCall => () => {
  const made = [q(), k(), v()];
  const options = makeOptions();
  const lens = [options.seqLensQ, options.seqLensK].filter((x): x is tf.Tensor1D => x instanceof tf.Tensor);
  return { run: () => flashAttention(made[0], made[1], made[2], options), made: [...made, ...lens] };
};
const packed = (makeOptions: () => FlashAttentionVarlenOptions, shapes = [[5, 4, 8], [7, 2, 8], [7, 2, 6]]): VarlenCall => () => {
  const made = shapes.map(s => tf.zeros(s));
  const options = makeOptions();
  const extra = Object.values(options).filter((x): x is tf.Tensor => x instanceof tf.Tensor);
  return { run: () => flashAttentionVarlen(made[0], made[1], made[2], options), made: [...made, ...extra] };
};

const badLengths: [string, VarlenCall, RegExp][] = [
  ['seqLensQ above seqQ', padded(() => ({ seqLensQ: [6, 1] })), /^Error in flashAttention: seqLensQ\[0\] must be an integer in \[0, seqQ = 5\], but got 6/],
  ['a negative seqLensK', padded(() => ({ seqLensK: [3, -1] })), /seqLensK\[1\] must be an integer in \[0, seqK = 7\], but got -1/],
  ['a fractional seqLensK', padded(() => ({ seqLensK: new Int32Array([3, 4]), seqLensQ: [1.5, 2] })), /seqLensQ\[0\] must be an integer in \[0, seqQ = 5\], but got 1.5/],
  ['a NaN length', padded(() => ({ seqLensK: [NaN, 1] })), /seqLensK\[0\] must be an integer .* but got NaN/],
  ['seqLensQ of the wrong count', padded(() => ({ seqLensQ: [1, 2, 3] })), /seqLensQ must have one length per batch element \(2\), but got 3/],
  ['seqLensK as an int32 tensor of the wrong count', padded(() => ({ seqLensK: tf.tensor1d([7], 'int32') })), /seqLensK must have one length per batch element \(2\), but got 1/],
  ['seqLensK above seqK in a tensor', padded(() => ({ seqLensK: tf.tensor1d([7, 8], 'int32') })), /seqLensK\[1\] must be an integer in \[0, seqK = 7\], but got 8/],
  ['seqLensQ as a float32 tensor', padded(() => ({ seqLensQ: tf.tensor1d([1, 2]) })), /seqLensQ must be an int32 tensor, but got float32/],
  ['seqLensK as a rank-2 tensor', padded(() => ({ seqLensK: tf.tensor2d([[1], [2]], [2, 1], 'int32') as unknown as tf.Tensor1D })), /seqLensK must be a Tensor1D, but got shape \[2, 1\]/],
  ['seqLensQ as a Float32Array', padded(() => ({ seqLensQ: new Float32Array([1, 2]) as unknown as Int32Array })), /seqLensQ must be a number\[\], Int32Array or int32 Tensor1D, but got a Float32Array/],
  ['a string length', padded(() => ({ seqLensQ: [1, '2'] as unknown as number[] })), /seqLensQ\[1\] must be a number, but got "2"/],
  ['seqLensQ as a number', padded(() => ({ seqLensQ: 3 as unknown as number[] })), /seqLensQ must be a number\[\], Int32Array or int32 Tensor1D, but got 3/],
  ['cuSeqLensQ not starting at 0', packed(() => cu([1, 3, 5])), /^Error in flashAttentionVarlen: cuSeqLensQ must start at 0, but cuSeqLensQ\[0\] is 1/],
  ['decreasing cuSeqLensK', packed(() => cu([0, 2, 5], [0, 4, 3, 7])), /cuSeqLensK must be non-decreasing, but cuSeqLensK\[2\] = 3 < cuSeqLensK\[1\] = 4/],
  ['cuSeqLensQ not ending at totalQ', packed(() => cu([0, 2, 4])), /cuSeqLensQ must end at totalQ \(q's dimension 0\) = 5, but ends at 4/],
  ['cuSeqLensK past totalK', packed(() => cu([0, 2, 5], [0, 3, 8])), /cuSeqLensK must end at totalK \(k's dimension 0\) = 7, but ends at 8/],
  ['cuSeqLensQ of one offset', packed(() => cu([0])), /cuSeqLensQ must have numSeqs \+ 1 >= 2 offsets, but got 1/],
  ['a fractional offset', packed(() => cu([0, 2.5, 5])), /cuSeqLensQ\[1\] must be an integer, but got 2.5/],
  ['mismatched numSeqs', packed(() => cu([0, 2, 5], [0, 1, 3, 7])), /cuSeqLensQ and cuSeqLensK must describe the same number of sequences, but got 2 and 3/],
  ['cuSeqLensK as a float32 tensor', packed(() => cu([0, 2, 5], tf.tensor1d([0, 3, 7]) as tf.Tensor1D)), /cuSeqLensK must be an int32 tensor, but got float32/],
  ['a missing cuSeqLensK', packed(() => ({ cuSeqLensQ: [0, 5] } as FlashAttentionVarlenOptions)), /cuSeqLensK is required: int32 \[numSeqs \+ 1\]/],
  ['a mask with packed sequences', packed(() => ({ ...cu([0, 2, 5]), mask: tf.ones([1, 1, 5, 7], 'bool') } as FlashAttentionVarlenOptions)),
   /mask is not supported with packed sequences/],
  ['seqLensQ with packed sequences', packed(() => ({ ...cu([0, 2, 5]), seqLensQ: [2, 3] } as FlashAttentionVarlenOptions)),
   /seqLensQ is not an option of packed sequences: give cuSeqLensQ and cuSeqLensK/],
  ['packed q of rank 4', packed(() => cu([0, 2, 5]), [[1, 5, 4, 8], [7, 2, 8], [7, 2, 6]]), /q must be rank 3 \[totalQ, heads, headDim\], but got shape \[1, 5, 4, 8\]/],
  ['packed v of the wrong rows', packed(() => cu([0, 2, 5]), [[5, 4, 8], [7, 2, 8], [6, 2, 6]]), /v must be \[batch, seqK, kvHeads, headDimV\]/],
  ['an unknown packed option', packed(() => ({ ...cu([0, 2, 5]), cuSeqlensK: [0, 7] } as FlashAttentionVarlenOptions)), /unknown option 'cuSeqlensK'/],
];

describe('bad lengths', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  test.each(badLengths)('%s throws a message naming it before any kernel runs, and leaks nothing', (_, call, message) => {
    const { run, made } = call();
    const before = tf.memory().numTensors;
    const engine = tf.engine();
    const kernels: string[] = [];
    const runKernel = engine.runKernel.bind(engine);
    const spy = jest.spyOn(engine, 'runKernel').mockImplementation((name, inputs, attrs) => {
      kernels.push(name);
      return runKernel(name, inputs, attrs);
    });
    try {
      expect(run).toThrow(message);
    } finally {
      spy.mockRestore();
    }
    expect(kernels.filter(name => name === FlashAttention)).toEqual([]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(made);
  });
});

describe('seeds', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  test.each([0, 1, 2 ** 31, 2 ** 32 - 1])('seed %d reaches the kernels unchanged', seed => {
    const dims = { batch: 1, seqQ: 2, seqK: 2, heads: 1, kvHeads: 1, headDim: 4, headDimV: 4 };
    expect(normalizeAttrs(dims, { seed }, false, false).seed).toBe(seed);
  });
});

describe('windowSize wider than the sequences', () => {
  const dims = { batch: 1, seqQ: 5, seqK: 7, heads: 2, kvHeads: 1, headDim: 8, headDimV: 8 };
  // seqQ + seqK = 12: from 12 on a side keeps every key, so it is unbounded (-1).
  type Options = FlashAttentionOptions & { returnLogSumExp?: false };
  const unbounded: [string, [number, number], Options][] = [
    ['[-1, 2^31 - 1]', [-1, 2 ** 31 - 1], {}],
    ['[2^31 - 1, -1]', [2 ** 31 - 1, -1], {}],
    ['[-1, 2^32]', [-1, 2 ** 32], {}],
    ['[2^53, 2^31]', [2 ** 53, 2 ** 31], {}],
    ['[12, 12]', [12, 12], {}],
    ['[2^31, 2^32] with causal', [2 ** 31, 2 ** 32], { causal: true }],
  ];

  test.each(unbounded)('%s is normalised once, in the op, to what it means', (_, windowSize, base) => {
    const attrs = normalizeAttrs(dims, { ...base, windowSize }, false, false);
    const want = normalizeAttrs(dims, base, false, false);
    expect([attrs.windowLeft, attrs.windowRight]).toEqual([want.windowLeft, want.windowRight]);
  });

  it('keeps a window that still cuts: [11, 0] stays as given', () => {
    const attrs = normalizeAttrs(dims, { windowSize: [11, 0] }, false, false);
    expect([attrs.windowLeft, attrs.windowRight]).toEqual([11, 0]);
  });

  it('never hands a kernel a window attribute outside int32', async () => {
    await tf.setBackend('cpu');
    const seen: FlashAttentionAttrs[] = [];
    const engine = tf.engine();
    const runKernel = engine.runKernel.bind(engine);
    const spy = jest.spyOn(engine, 'runKernel').mockImplementation((name, inputs, attrs) => {
      if (name === FlashAttention) seen.push(attrs as unknown as FlashAttentionAttrs);
      return runKernel(name, inputs, attrs);
    });
    try {
      const [x, y, z] = [tf.ones([1, 5, 2, 8]), tf.ones([1, 7, 1, 8]), tf.ones([1, 7, 1, 8])];
      for (const [, windowSize, base] of unbounded) tf.dispose(flashAttention(x, y, z, { ...base, windowSize }));
      tf.dispose([x, y, z]);
    } finally {
      spy.mockRestore();
    }
    expect(seen).toHaveLength(unbounded.length);
    for (const a of seen) {
      for (const w of [a.windowLeft, a.windowRight]) expect(w >= -1 && w < 2 ** 31).toBe(true);
    }
  });

  const backends = [['cpu kernel', 'cpu'], ['blockwise fallback', FALLBACK_BACKEND],
                    ...(HAS_GPU ? [['webgpu', 'webgpu']] : [])];
  afterAll(() => destroyWebGPU());

  test.each(backends)('gives the unbounded result and gradients on the %s', async (_, backend) => {
    registerFallbackBackend();
    if (backend === 'webgpu') await useWebGPU();
    else await tf.setBackend(backend);
    const [q0, k0, v0, dy] = [[1, 5, 2, 8], [1, 7, 1, 8], [1, 7, 1, 8], [1, 5, 2, 8]]
        .map((shape, i) => tf.randomNormal(shape, 0, 1, 'float32', 7 + i));
    const run = async (options: Options) => {
      const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(flashAttention(a, b, c, options), dy));
      const [dq, dk, dv] = tf.grads(f)([q0, k0, v0]);
      const results = [flashAttention(q0, k0, v0, options), dq, dk, dv];
      const values = await Promise.all(results.map(t => t.data()));
      tf.dispose(results);
      return values;
    };
    for (const [name, windowSize, base] of unbounded) {
      const got = await run({ ...base, windowSize, seed: 1 }), want = await run({ ...base, seed: 1 });
      got.forEach((g, i) => expect([name, i, Array.from(g)]).toEqual([name, i, Array.from(want[i])]));
    }
    if (backend === 'webgpu') expect(takeUncapturedErrors()).toEqual([]);
    tf.dispose([q0, k0, v0, dy]);
  }, 600000);
});

describe('types', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  it('takes the Tensor<Rank> that tf.randomNormal returns, and checks the rank when it runs', () => {
    const x: tf.Tensor = tf.randomNormal([1, 3, 2, 4]);
    const out: tf.Tensor4D = flashAttention(x, x, x);
    expect(out.shape).toEqual([1, 3, 2, 4]);
    const rank3: tf.Tensor = tf.randomNormal([3, 2, 4]);
    expect(() => flashAttention(rank3, x, x)).toThrow(/q must be rank 4 \[batch, seqQ, heads, headDim\], but got shape \[3, 2, 4\]/);
    tf.dispose([x, out, rank3]);
  });
});
