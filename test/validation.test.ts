/** Bad input throws before any work, names the argument, the expected and the given value, and leaks nothing. */
import * as tf from '@tensorflow/tfjs';
import { flashAttention, FlashAttentionOptions } from '../src/index';

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
