/**
 * A seqQ x seqK float32 buffer is 1 GiB at seq 16384: the CPU kernel and the blockwise fallback
 * must do the forward and backward passes without any allocation anywhere near that.
 * Every typed array allocated during the call is recorded (the cpu backend allocates tensors as
 * typed arrays too), and the engine's own peak bytes are checked for the fallback.
 */
import * as tf from '@tensorflow/tfjs';
import { flashAttention } from '../src/index';
import { FALLBACK_BACKEND, registerFallbackBackend } from './helpers/backends';
import { KEY_BLOCK } from '../kernels/fallback/blockwise';

registerFallbackBackend();


/** Runs fn while recording the largest typed-array allocation in bytes. */
function largestAllocation(fn: () => void): number {
  const ctors = ['Float32Array', 'Float64Array', 'Int32Array', 'Uint8Array'] as const;
  const g = globalThis as unknown as Record<string, unknown>;
  const originals = ctors.map(name => g[name] as { new(...a: unknown[]): ArrayBufferView; BYTES_PER_ELEMENT: number });
  let largest = 0;
  ctors.forEach((name, i) => {
    const Orig = originals[i];
    g[name] = new Proxy(Orig, {
      construct(target, args) {
        const made = Reflect.construct(target, args) as ArrayBufferView;
        largest = Math.max(largest, made.byteLength);
        return made;
      },
    });
  });
  try { fn(); } finally { ctors.forEach((name, i) => { g[name] = originals[i]; }); }
  return largest;
}

function profileGradients(seq: number) {
  const q = tf.randomNormal([1, seq, 1, 2]) as tf.Tensor4D;
  const k = tf.randomNormal([1, seq, 1, 2]) as tf.Tensor4D;
  const v = tf.randomNormal([1, seq, 1, 2]) as tf.Tensor4D;
  let profile: ReturnType<typeof tf.profile> | undefined;
  // tf.profile runs its function synchronously before its first await, so the allocation
  // recorder sees every allocation of the forward and backward passes.
  const largest = largestAllocation(() => {
    profile = tf.profile(() => {
      const g = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.sum(flashAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, { causal: true })));
      tf.dispose(g([q, k, v]));
    });
  });
  return profile!.then(({ peakBytes }) => {
    tf.dispose([q, k, v]);
    return { largest, peakBytes, fullMatrixBytes: seq * seq * 4 };
  });
}

describe('memory of the cpu kernel at seq 16384', () => {
  beforeAll(async () => { await tf.setBackend('cpu'); });

  test('forward + backward allocate nothing near a seqQ x seqK buffer', async () => {
    const { largest, peakBytes, fullMatrixBytes } = await profileGradients(16384);
    expect(largest).toBeLessThan(fullMatrixBytes / 256);
    expect(peakBytes).toBeLessThan(fullMatrixBytes / 256);
  });
});

describe('memory of the blockwise fallback', () => {
  beforeAll(async () => { await tf.setBackend(FALLBACK_BACKEND); });

  // tfjs-cpu's broadcasting kernels, which it runs on here, are slow under jest, so it is measured
  // at 1024 and 2048: quadratic memory would grow 4x between them, linear grows 2x.
  test('grows linearly with sequence length; its largest buffer is one key block', async () => {
    const small = await profileGradients(1024);
    const large = await profileGradients(2048);
    expect(large.peakBytes / small.peakBytes).toBeLessThan(2.3);
    // Its largest buffer is one key block, seq x KEY_BLOCK floats (1/8 of seqQ x seqK at 2048);
    // its working set is about nine of them, whatever the sequence length.
    expect(large.largest).toBeLessThanOrEqual(2048 * KEY_BLOCK * 4);
    expect(large.largest).toBeLessThan(large.fullMatrixBytes / 4);
    expect(large.peakBytes).toBeLessThan(12 * 2048 * KEY_BLOCK * 4);
  });
});
