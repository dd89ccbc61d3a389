/**
 * FlashMultiHeadAttention with Keras padding masks (issue 12, "The layer"): the masks carried by
 * the query and the value become sequence lengths and a [batch, 1, 1, S] key mask, never a
 * [batch, T, S] tensor, with the results of the mask path (the same masks given as an explicit
 * attentionMask, which the layer ANDs into one [batch, heads, T, S] mask): forward and
 * gradients, eagerly and in predict/fit, on cpu and WebGPU.
 */
import * as tf from '@tensorflow/tfjs';
import { FlashMultiHeadAttention, FlashMultiHeadAttentionArgs } from '../src/index';
import { AttentionOptions } from '../src/layer';
import { LAYER_BACKENDS, useLayerBackend } from './helpers/layer_backends';
import { alibiSlopesFor } from '../src/layer_plain_attention';
import { referenceLayerForward, randomTensor, relativeError } from './helpers/tfjs_mha';

const NONZERO_BIASES = tf.initializers.randomNormal({ mean: 0, stddev: 0.5 });

type Lengths = AttentionOptions['seqLensQ'];
/** What the layer passed to the op: the mask's shape and the lengths (kept past the call). */
interface Seen { maskShape?: number[]; seqLensQ?: Lengths; seqLensK?: Lengths }

/** Records the mask shape and lengths of every attention the layer computes. */
class RecordingAttention extends FlashMultiHeadAttention {
  static override className = 'RecordingAttentionForVarlenTests';
  readonly seen: Seen[] = [];
  protected override computeAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, options: AttentionOptions) {
    const kept = (x: Lengths) => (x instanceof tf.Tensor ? tf.keep(x.clone()) : x);
    this.seen.push({ maskShape: options.mask?.shape, seqLensQ: kept(options.seqLensQ), seqLensK: kept(options.seqLensK) });
    return super.computeAttention(q, k, v, options);
  }
}

async function lengthsOf(x: Lengths): Promise<number[] | undefined> {
  if (x == null) return undefined;
  const values = Array.from(x instanceof tf.Tensor ? await x.data() : x);
  if (x instanceof tf.Tensor) x.dispose();
  return values;
}

/** bool [batch, n]: true at positions < lengths[b] (right padding), or the given rows. */
function prefixMask(lengths: number[], n: number): tf.Tensor {
  return tf.tensor2d(lengths.map(len => Array.from({ length: n }, (_, j) => (j < len ? 1 : 0))), undefined, 'bool');
}

/** [batch, T, S]: the Keras masks ANDed, the attentionMask that forces the mask path. */
function outerMask(queryMask: tf.Tensor | null, keyMask: tf.Tensor | null, batch: number, seqQ: number, seqK: number) {
  return tf.tidy(() => {
    const q = queryMask ? tf.reshape(queryMask, [batch, seqQ, 1]) : tf.ones([batch, seqQ, 1], 'bool');
    const k = keyMask ? tf.reshape(keyMask, [batch, 1, seqK]) : tf.ones([batch, 1, seqK], 'bool');
    return tf.logicalAnd(q, k);
  });
}

const read = async (t: tf.Tensor) => Float32Array.from(await t.data() as Float32Array);

interface PaddingCase {
  name: string;
  seqQ: number; seqK: number;
  /** Lengths of the query's and the value's sequences (null: no Keras mask on that input). */
  lenQ: number[] | null; lenK: number[] | null;
  /** Rows of masks with holes instead of lengths. */
  rowsQ?: number[][]; rowsK?: number[][];
  selfAttention?: boolean;
  args?: Partial<FlashMultiHeadAttentionArgs>;
  useCausalMask?: boolean;
  /** The lengths the layer should pass (undefined: not passed). */
  expectLens?: { q?: number[]; k?: number[] };
  /** Also on WebGPU (SwiftShader compiles every option combination anew: a few cases only). */
  gpu?: boolean;
}

const CASES: PaddingCase[] = [
  { name: 'self-attention, lengths full, 1 and 0', seqQ: 7, seqK: 7, lenQ: [7, 1, 0], lenK: [7, 1, 0], selfAttention: true,
    expectLens: { q: [7, 1, 0], k: [7, 1, 0] } },
  { name: 'causal self-attention, GQA', seqQ: 9, seqK: 9, lenQ: [9, 4, 6], lenK: [9, 4, 6], selfAttention: true,
    useCausalMask: true, args: { numHeads: 4, numKeyValueHeads: 2 }, expectLens: { q: [9, 4, 6], k: [9, 4, 6] }, gpu: true },
  { name: 'cross-attention, seqQ != seqK, both padded', seqQ: 5, seqK: 8, lenQ: [3, 5, 2], lenK: [8, 2, 6],
    expectLens: { q: [3, 5, 2], k: [8, 2, 6] } },
  { name: 'cross-attention, only the value padded', seqQ: 6, seqK: 9, lenQ: null, lenK: [4, 9, 1],
    expectLens: { k: [4, 9, 1] }, gpu: true },
  { name: 'causal, T < S (top-left: keys past the last query are never reached)', seqQ: 5, seqK: 8,
    lenQ: [5, 3, 4], lenK: [8, 6, 2], useCausalMask: true, expectLens: { q: [5, 3, 4], k: [5, 3, 4] } },
  { name: 'causal, T > S (the padded offset kept: lenK - lenQ = S - T)', seqQ: 8, seqK: 5,
    lenQ: [8, 3, 6], lenK: [5, 5, 1], useCausalMask: true, expectLens: { q: [8, 8, 6], k: [5, 5, 3] }, gpu: true },
  { name: 'window, ALiBi and softcap, T != S', seqQ: 6, seqK: 8, lenQ: [6, 2, 4], lenK: [7, 8, 3],
    args: { numHeads: 2, windowSize: [2, 1], alibi: true, softcap: 3 }, expectLens: { q: [6, 6, 4], k: [8, 8, 6] } },
  { name: 'masks with holes (not prefixes): still exact, through the key mask', seqQ: 6, seqK: 6,
    lenQ: null, lenK: null, rowsQ: [[1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]],
    rowsK: [[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], expectLens: { q: [4, 6, 5], k: [4, 6, 0] },
    gpu: true },
];

function masksOf(c: PaddingCase) {
  const q = c.rowsQ ? tf.tensor2d(c.rowsQ, undefined, 'bool') : c.lenQ ? prefixMask(c.lenQ, c.seqQ) : null;
  const k = c.selfAttention ? q : c.rowsK ? tf.tensor2d(c.rowsK, undefined, 'bool') : c.lenK ? prefixMask(c.lenK, c.seqK) : null;
  return { q, k };
}

describe.each(LAYER_BACKENDS)('on $backend', ({ backend, available }) => {
  const run = available ? test : test.skip;
  useLayerBackend({ backend, available });

  describe('padding masks: lengths instead of a [batch, T, S] mask, same results as the mask path', () => {
    run.each(backend === 'cpu' ? CASES : CASES.filter(c => c.gpu))('$name', async (c) => {
      const batch = 3;
      const query = randomTensor([batch, c.seqQ, 8], 1);
      const value = c.selfAttention ? query : randomTensor([batch, c.seqK, 8], 2);
      const dy = randomTensor([batch, c.seqQ, 8], 3);
      const masks = masksOf(c);
      const layer = new RecordingAttention({ numHeads: 2, keyDim: 4, biasInitializer: NONZERO_BIASES, ...c.args });
      layer.apply(query, { value });
      const vars = layer.trainableWeights.map(w => (w as unknown as { val: tf.Variable }).val);
      const attentionMask = outerMask(masks.q, masks.k, batch, c.seqQ, c.seqK);

      // Both calls on the same input tensors; the padded one reads the Keras masks from them.
      const outputAndGrads = (padded: boolean) => tf.tidy(() => {
        query.kerasMask = (padded && masks.q) || undefined;
        value.kerasMask = (padded && masks.k) || undefined;
        const f = () => tf.sum(tf.mul(layer.apply(query, {
          value, useCausalMask: c.useCausalMask, ...(padded ? {} : { attentionMask }),
        }) as tf.Tensor, dy)) as tf.Scalar;
        const { grads } = tf.variableGrads(f, vars);
        // d/dquery and d/dvalue (the same tensor in self-attention).
        const inputGrads = tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(layer.apply(xs[0], {
          value: xs[1] ?? xs[0], useCausalMask: c.useCausalMask, ...(padded ? {} : { attentionMask }),
        }) as tf.Tensor, dy)))(c.selfAttention ? [query] : [query, value]);
        const output = layer.apply(query, { value, useCausalMask: c.useCausalMask, ...(padded ? {} : { attentionMask }) }) as tf.Tensor;
        return [output, ...inputGrads, ...vars.map(v => grads[v.name])];
      });
      layer.seen.length = 0;
      const padded = outputAndGrads(true);
      const [options, ...others] = layer.seen;
      const viaMask = outputAndGrads(false);
      await Promise.all(others.flatMap(o => [lengthsOf(o.seqLensQ), lengthsOf(o.seqLensK)]));
      query.kerasMask = undefined;
      value.kerasMask = undefined;

      // The padded call passed lengths, and a [batch, 1, 1, S] mask only for keys with holes. WebGPU
      // in Node cannot read the masks' extents synchronously: masks as they are, no lengths.
      const readable = backend === 'cpu';
      // (Also where lengths widened for alignment reach past a prefix.)
      const widened = c.lenK != null && c.expectLens?.k != null && c.expectLens.k.some((len, b) => len > c.lenK![b]);
      const keyMaskKept = masks.k != null && (c.rowsK != null || !readable || widened);
      expect(options.maskShape).toEqual(keyMaskKept ? [batch, 1, 1, c.seqK] : undefined);
      const causalByLengths = c.useCausalMask && c.seqQ < c.seqK && new Array(batch).fill(c.seqQ);
      const expectLens = readable ? c.expectLens : causalByLengths ? { q: causalByLengths, k: causalByLengths } : {};
      expect(await lengthsOf(options.seqLensQ)).toEqual(expectLens?.q);
      expect(await lengthsOf(options.seqLensK)).toEqual(expectLens?.k);

      const [a, b] = [await Promise.all(padded.map(read)), await Promise.all(viaMask.map(read))];
      expect(relativeError(a[0], b[0])).toBeLessThan(1e-5);
      if (backend === 'cpu') {
        // Both paths against the float64 reference of the layer with the masks ANDed (Keras's
        // causal mask top-left aligned), so a shared mistake cannot pass.
        const causal = c.useCausalMask
          ? tf.linalg.bandPart(tf.ones([c.seqQ, c.seqK], 'bool'), -1, 0) : tf.ones([c.seqQ, c.seqK], 'bool');
        const window = c.args?.windowSize;
        const expected = referenceLayerForward({
          numHeads: layer.numHeads, numKeyValueHeads: layer.numKeyValueHeads, keyDim: 4, valueDim: 4,
          weights: layer.getWeights(), useBias: true, query, value,
          mask: tf.expandDims(tf.logicalAnd(attentionMask, causal), 1),
          attrs: { ...(window ? { windowLeft: window[0], windowRight: window[1] } : {}), softcap: c.args?.softcap ?? 0 },
          alibiSlopes: c.args?.alibi ? alibiSlopesFor(layer.numHeads) : undefined,
        });
        expect(relativeError(a[0], expected)).toBeLessThan(1e-5);
      }
      // Gradients relative to the largest one of each kind (some true gradients are 0).
      for (let i = 1; i < a.length; i++) {
        const scale = Math.max(...Array.from(b[i], Math.abs), 1e-6);
        expect(Math.max(...Array.from(a[i], (x, j) => Math.abs(x - b[i][j]))) / scale).toBeLessThan(1e-4);
      }
      tf.dispose([...padded, ...viaMask, attentionMask, query, value, dy, ...[masks.q, masks.k].filter((m): m is tf.Tensor => m != null)]);
    });
  });

  describe('in a model: Embedding(maskZero) padding, predict and fit', () => {
    /** tokens -> Embedding(maskZero) -> causal self-attention, optionally with an attentionMask input. */
    function buildModel(withAttentionMask: boolean) {
      const tokens = tf.input({ shape: [null], dtype: 'int32' });
      const mask = tf.input({ shape: [null, null], dtype: 'bool' });
      const embedded = tf.layers.embedding({ inputDim: 12, outputDim: 8, maskZero: true, name: 'embedding' })
          .apply(tokens) as tf.SymbolicTensor;
      const attention = new FlashMultiHeadAttention({ numHeads: 2, keyDim: 4, causal: true, biasInitializer: NONZERO_BIASES,
                                                      name: 'attention' });
      const attended = attention.apply(embedded, { value: embedded, ...(withAttentionMask ? { attentionMask: mask } : {}) });
      const out = tf.layers.dense({ units: 3, name: 'head' }).apply(attended) as tf.SymbolicTensor;
      return tf.model({ inputs: withAttentionMask ? [tokens, mask] : tokens, outputs: out });
    }
    const ids = [[3, 1, 4, 1, 5, 0, 0, 0], [2, 6, 5, 3, 5, 8, 9, 7], [7, 0, 0, 0, 0, 0, 0, 0]];
    const everything = () => tf.ones([3, 8, 8], 'bool');

    run('predict: padded batch equals the mask path and each sequence alone', async () => {
      const padded = buildModel(false);
      const viaMask = buildModel(true);
      viaMask.setWeights(padded.getWeights());
      const x = tf.tensor2d(ids, undefined, 'int32');
      const [a, b] = [padded.predict(x) as tf.Tensor, viaMask.predict([x, everything()]) as tf.Tensor];
      expect(relativeError(await read(a), await read(b))).toBeLessThan(1e-5);
      const alone = padded.predict(tf.tensor2d([ids[0].slice(0, 5)], undefined, 'int32')) as tf.Tensor;
      expect(relativeError(await read(tf.slice(a, [0, 0, 0], [1, 5, 3])), await read(alone))).toBeLessThan(1e-5);
    });

    run('fit: one step takes the same weights to the same values as the mask path', async () => {
      const padded = buildModel(false);
      const viaMask = buildModel(true);
      viaMask.setWeights(padded.getWeights());
      for (const m of [padded, viaMask]) m.compile({ optimizer: tf.train.sgd(0.5), loss: 'sparseCategoricalCrossentropy' });
      const x = tf.tensor2d(ids, undefined, 'int32');
      const y = tf.tensor3d(ids.map(r => r.map(t => [t % 3])));
      await padded.fit(x, y, { epochs: 1, batchSize: 3, verbose: 0 });
      await viaMask.fit([x, everything()], y, { epochs: 1, batchSize: 3, verbose: 0 });
      const [after, expected] = [padded.getWeights(), viaMask.getWeights()];
      for (let i = 0; i < after.length; i++) {
        expect(relativeError(await read(after[i]), await read(expected[i]))).toBeLessThan(1e-5);
      }
    });
  });
});

describe('memory: a padded call never builds a [batch, T, S] tensor', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  test('seq 16384 on cpu: every tensor linear in T; the cost follows the lengths', async () => {
    const [batch, seq] = [2, 16384];
    const x = randomTensor([batch, seq, 8], 7);
    const layer = new RecordingAttention({ numHeads: 2, keyDim: 4, causal: true });
    layer.apply(tf.slice(x, [0, 0, 0], [batch, 8, 8]), { value: tf.slice(x, [0, 0, 0], [batch, 8, 8]) });
    x.kerasMask = prefixMask([100, 37], seq);
    const before = tf.memory().numBytes;
    const info = await tf.profile(() => tf.tidy(() => {
      tf.variableGrads(() => tf.sum(layer.apply(x, { value: x }) as tf.Tensor) as tf.Scalar);
    }));
    const sizes = info.kernels.flatMap(k => k.outputShapes.map(s => (s as number[]).reduce((a, b) => a * b, 1)));
    // A [batch, T, S] bool mask would be 2^29 elements; the largest here is a [batch, T, features]-sized one.
    expect(Math.max(...sizes)).toBeLessThanOrEqual(batch * seq * 8);
    // Peak far below one [batch, T, S] bool mask (2^29 bytes).
    expect(info.peakBytes - before).toBeLessThan(batch * seq * seq / 8);
    expect(layer.seen.at(-1)!.seqLensK).toBeDefined();
    x.kerasMask = undefined;
  });
});
