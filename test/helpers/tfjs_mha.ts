/**
 * The two oracles of the FlashMultiHeadAttention tests:
 *  - tfjs-layers' own MultiHeadAttention, which the package does not export: its ESM module is
 *    bundled on the fly with esbuild (tfjs-core left external, so it shares the test's tfjs-core)
 *    into node_modules/.cache, never into the repository;
 *  - a float64 reference of the whole layer (projections around test/helpers/reference.ts),
 *    for what tfjs has no counterpart of (grouped-query heads, windows, ALiBi, soft-capping).
 */
import * as fs from 'fs';
import * as path from 'path';
import { buildSync } from 'esbuild';
import * as tf from '@tensorflow/tfjs';
import { FlashAttentionAttrs } from '../../src/contract';
import { referenceForward } from './reference';
import { rng } from './attention_case';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type TfjsMultiHeadAttention = any;

/**
 * tfjs-layers' MultiHeadAttention class. Its bundle carries a private copy of tfjs-layers'
 * internals that re-registers layer classes (Dense, Softmax, ...) with tfjs's serialization map,
 * so use it in a test file that does not also load saved models.
 */
export function loadTfjsMultiHeadAttention(): new (args: object) => TfjsMultiHeadAttention {
  const version = require('@tensorflow/tfjs-layers/package.json').version;
  const root = path.resolve(__dirname, '..', '..');
  const outfile = path.join(root, 'node_modules', '.cache', 'tfjs-flash-attention',
                            `tfjs-layers-${version}-multihead_attention.js`);
  if (!fs.existsSync(outfile)) {
    buildSync({
      entryPoints: [require.resolve('@tensorflow/tfjs-layers/dist/layers/nlp/multihead_attention.js')],
      bundle: true, platform: 'node', format: 'cjs', external: ['@tensorflow/tfjs-core'],
      outfile, logLevel: 'warning',
    });
  }
  return require(outfile).MultiHeadAttention;
}

/** tfjs's MultiHeadAttention keeps its weights in four EinsumDense sublayers (kernel, bias each). */
export function tfjsMhaWeights(mha: TfjsMultiHeadAttention): tf.Tensor[] {
  return [mha._queryDense, mha._keyDense, mha._valueDense, mha._outputDense]
      .flatMap((dense: tf.layers.Layer) => dense.getWeights());
}

export function setTfjsMhaWeights(mha: TfjsMultiHeadAttention, weights: tf.Tensor[]): void {
  const perDense = mha._queryDense.getWeights().length;
  [mha._queryDense, mha._keyDense, mha._valueDense, mha._outputDense].forEach(
      (dense: tf.layers.Layer, i: number) => dense.setWeights(weights.slice(i * perDense, (i + 1) * perDense)));
}

/** A seeded standard-normal tensor (reproducible from the seed). */
export function randomTensor(shape: number[], seed: number, scale = 1): tf.Tensor {
  const r = rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const values = Float32Array.from({ length: n },
      () => scale * Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r()));
  return tf.tensor(values, shape);
}

/**
 * A seeded bool [batch, seqQ, seqK] mask in which query row i always keeps key min(i, seqK - 1),
 * so no row is empty, also when ANDed with Keras's (top-left) causal mask.
 */
export function randomMaskWithoutEmptyRows(batch: number, seqQ: number, seqK: number, seed: number): tf.Tensor {
  const r = rng(seed);
  const values = new Uint8Array(batch * seqQ * seqK);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < seqQ; i++) {
      const row = (b * seqQ + i) * seqK;
      for (let j = 0; j < seqK; j++) values[row + j] = r() < 0.6 ? 1 : 0;
      values[row + Math.min(i, seqK - 1)] = 1;
    }
  }
  return tf.tensor(values, [batch, seqQ, seqK], 'bool');
}

/** max |actual - expected| / max |expected|: the relative error of a whole output. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  expect(actual.length).toBe(expected.length);
  let diff = 0, scale = 0;
  for (let i = 0; i < actual.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return diff / Math.max(scale, 1e-30);
}

export interface LayerReferenceCase {
  numHeads: number; numKeyValueHeads: number; keyDim: number; valueDim: number;
  /** getWeights() of the layer: q/k/v/output kernels, each followed by its bias when useBias. */
  weights: tf.Tensor[];
  useBias: boolean;
  query: tf.Tensor; value: tf.Tensor; key?: tf.Tensor;
  /** Attention options in kernel-attribute form (scale 1/sqrt(keyDim) unless given). */
  attrs?: Partial<FlashAttentionAttrs>;
  alibiSlopes?: number[];
  /** bool [B or 1, 1, T, S]: true = attend (combine every mask here, independently of the layer). */
  mask?: tf.Tensor;
}

/** The layer's output in float64: projections, referenceForward, output projection. */
export function referenceLayerForward(c: LayerReferenceCase): Float64Array {
  const key = c.key ?? c.value;
  const [batch, seqQ] = c.query.shape as [number, number];
  const seqK = c.value.shape[1] as number;
  const w = c.weights.map(t => Array.from(t.dataSync()));
  const stride = c.useBias ? 2 : 1;
  const kernel = (i: number) => w[i * stride];
  const bias = (i: number) => (c.useBias ? w[i * stride + 1] : undefined);

  /** x [B, N, F] . kernel [F, H, D] + bias [H, D] -> [B, N, H, D] in float64. */
  const project = (x: tf.Tensor, kernelValues: number[], biasValues: number[] | undefined, heads: number, depth: number) => {
    const [b, n, f] = x.shape as [number, number, number];
    const xs = x.dataSync();
    const out = new Float64Array(b * n * heads * depth);
    for (let row = 0; row < b * n; row++) {
      for (let hd = 0; hd < heads * depth; hd++) {
        let acc = biasValues ? biasValues[hd] : 0;
        for (let c = 0; c < f; c++) acc += xs[row * f + c] * kernelValues[c * heads * depth + hd];
        out[row * heads * depth + hd] = acc;
      }
    }
    return out;
  };
  const q = project(c.query, kernel(0), bias(0), c.numHeads, c.keyDim);
  const k = project(key, kernel(1), bias(1), c.numKeyValueHeads, c.keyDim);
  const v = project(c.value, kernel(2), bias(2), c.numKeyValueHeads, c.valueDim);
  const attrs: FlashAttentionAttrs = {
    scale: 1 / Math.sqrt(c.keyDim), softcap: 0, windowLeft: -1, windowRight: -1,
    hasAlibi: c.alibiSlopes != null, hasMask: c.mask != null, dropoutRate: 0, seed: 0,
    precision: 'highest', seqLayout: 'dense', maxSeqLenQ: seqQ, maxSeqLenK: seqK, numSeqs: batch, ...c.attrs,
  };
  const { out } = referenceForward(
      { batch, seqQ, seqK, heads: c.numHeads, kvHeads: c.numKeyValueHeads, headDim: c.keyDim, headDimV: c.valueDim },
      { q, k, v, alibiSlopes: c.alibiSlopes,
        mask: c.mask ? { values: Array.from(c.mask.dataSync()), shape: c.mask.shape } : undefined },
      attrs);
  // [B, T, H, Dv] . [H, Dv, O] + [O]
  const hv = c.numHeads * c.valueDim;
  const outKernel = kernel(3), outBias = bias(3);
  const outSize = outKernel.length / hv;
  const result = new Float64Array(batch * seqQ * outSize);
  for (let row = 0; row < batch * seqQ; row++) {
    for (let o = 0; o < outSize; o++) {
      let acc = outBias ? outBias[o] : 0;
      for (let i = 0; i < hv; i++) acc += out[row * hv + i] * outKernel[i * outSize + o];
      result[row * outSize + o] = acc;
    }
  }
  return result;
}
