/** No tensor is left behind by many forward + backward calls, on the kernel and on the fallback. */
import * as tf from '@tensorflow/tfjs';
import { flashAttention } from '../src/index';
import { CPU_PATHS, registerFallbackBackend } from './helpers/backends';

registerFallbackBackend();

describe.each(CPU_PATHS)('no leaks on the $name', ({ backend }) => {
  beforeAll(async () => { await tf.setBackend(backend); });

  test('forward, returnLogSumExp and gradients, with every tensor option', () => {
    const q = tf.randomNormal([1, 6, 2, 4]) as tf.Tensor4D, k = tf.randomNormal([1, 5, 1, 4]) as tf.Tensor4D;
    const v = tf.randomNormal([1, 5, 1, 3]) as tf.Tensor4D;
    const mask = tf.randomUniform([6, 5]).greater(0.3);
    const slopes = tf.tensor1d([0.5, 0.25]);
    const opts = { causal: true, mask, alibiSlopes: slopes, dropoutRate: 0.2, softcap: 2 };
    const grads = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
      tf.sum(flashAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, opts)));
    // tf.grads itself leaves one tensor per call (tfjs-facts.md): measure that baseline first.
    const baseline = tf.grads((a: tf.Tensor) => tf.sum(a));
    const b0 = tf.memory().numTensors;
    tf.dispose(baseline([q]));
    const perCallBaseline = tf.memory().numTensors - b0;

    const start = tf.memory().numTensors;
    const calls = 20;
    for (let i = 0; i < calls; i++) {
      tf.dispose(flashAttention(q, k, v, opts));
      const r = flashAttention(q, k, v, { ...opts, returnLogSumExp: true });
      tf.dispose([r.output, r.logSumExp]);
      tf.dispose(grads([q, k, v]));
    }
    expect(tf.memory().numTensors - start).toBe(calls * perCallBaseline);
    tf.dispose([q, k, v, mask, slopes]);
  });

  test('variableGrads through an optimizer step', () => {
    const wq = tf.variable(tf.randomNormal([1, 4, 2, 4]));
    const k = tf.randomNormal([1, 4, 2, 4]) as tf.Tensor4D, v = tf.randomNormal([1, 4, 2, 4]) as tf.Tensor4D;
    const opt = tf.train.sgd(0.1);
    const loss = () => tf.sum(tf.square(flashAttention(wq as tf.Tensor4D, k, v, { causal: true }))) as tf.Scalar;
    tf.dispose(opt.minimize(loss, true) ?? []);        // first step creates optimizer state
    const start = tf.memory().numTensors;
    for (let i = 0; i < 10; i++) tf.dispose(opt.minimize(loss, true) ?? []);
    expect(tf.memory().numTensors).toBe(start);
    opt.dispose();
    tf.dispose([wq, k, v]);
  });
});
