/**
 * FlashMultiHeadAttention inside the functional graphs people build: the post-LN residual block
 * of the original Transformer, BERT and the Keras tutorial (LayerNorm(x + MHA(x, x)) with x not a
 * model input), an encoder-decoder whose encoder output feeds two cross-attention layers, a pre-LN
 * block, and one tensor read by several attention layers. Each model goes through predict (equal
 * to running its layers eagerly), evaluate, fit with a validation split, and save / load on the
 * cpu backend; the first two also on WebGPU (all but fit).
 *
 * Inference runs tfjs-layers' graph executor, which frees a tensor once its last consumer has
 * run; before inputs were passed to tfjs once each, self-attention (query = value = key) released
 * its input while the residual add still needed it ("Tensor is disposed").
 */
import * as tf from '@tensorflow/tfjs';
import { flashMultiHeadAttention } from '../src/index';
import { randomTensor, relativeError } from './helpers/tfjs_mha';
import { rng } from './helpers/attention_case';
import { LAYER_BACKENDS, useLayerBackend } from './helpers/layer_backends';

const [VOCAB, SEQ, DIM, BATCH] = [11, 6, 8, 8];
type Input = tf.Tensor | tf.SymbolicTensor;

/** A model's layers, runnable symbolically (to build the model) and eagerly (the oracle). */
interface Architecture {
  inputs: () => tf.SymbolicTensor[];
  forward: (inputs: Input[]) => Input;
  data: (seed: number) => { x: tf.Tensor[], y: tf.Tensor };
}

const attention = (name: string) => flashMultiHeadAttention({ numHeads: 2, keyDim: 4, name });
const layerNorm = () => tf.layers.layerNormalization({ epsilon: 1e-6 });
const add = (...xs: Input[]) => tf.layers.add().apply(xs as tf.Tensor[]) as Input;

/** Keras tutorial's TransformerBlock (post-LN): LN(x + MHA(x, x)), then LN(h + FFN(h)). */
function postLnBlock(prefix: string) {
  const [attn, ln1, ln2] = [attention(`${prefix}_attention`), layerNorm(), layerNorm()];
  const [ffn1, ffn2] = [tf.layers.dense({ units: 16, activation: 'relu' }), tf.layers.dense({ units: DIM })];
  const adds = [tf.layers.add(), tf.layers.add()];
  return (x: Input, causal = false) => {
    const attended = attn.apply(x as tf.Tensor, { value: x, useCausalMask: causal }) as Input;
    const h = ln1.apply(adds[0].apply([x, attended] as tf.Tensor[])) as Input;
    const f = ffn2.apply(ffn1.apply(h)) as Input;
    return ln2.apply(adds[1].apply([h, f] as tf.Tensor[])) as Input;
  };
}

function tokens(seed: number, batch = BATCH): tf.Tensor {
  const r = rng(seed);
  return tf.tensor2d(Array.from({ length: batch }, () => Array.from({ length: SEQ }, () => Math.floor(r() * VOCAB))),
                     undefined, 'int32');
}
const tokenInput = (name: string) => tf.input({ shape: [SEQ], dtype: 'int32', name });

function postLnEncoder(): Architecture {
  const embed = tf.layers.embedding({ inputDim: VOCAB, outputDim: DIM });
  const blocks = [postLnBlock('encoder0'), postLnBlock('encoder1')];
  const pool = tf.layers.globalAveragePooling1d();
  const head = tf.layers.dense({ units: 1 });
  return {
    inputs: () => [tokenInput('tokens')],
    forward: ([t]) => head.apply(pool.apply(blocks[1](blocks[0](embed.apply(t) as Input)))) as Input,
    data: seed => ({ x: [tokens(seed)], y: randomTensor([BATCH, 1], seed + 1) }),
  };
}

/** Encoder-decoder: the encoder output is the key/value of two cross-attention layers. */
function encoderDecoder(): Architecture {
  const [embedSource, embedTarget] = [0, 1].map(() => tf.layers.embedding({ inputDim: VOCAB, outputDim: DIM }));
  const encoder = postLnBlock('encoder');
  const decoderSelf = postLnBlock('decoder_self');
  const cross = [attention('cross0'), attention('cross1')];
  const norms = [layerNorm(), layerNorm()];
  const head = tf.layers.dense({ units: 3 });
  return {
    inputs: () => [tokenInput('source'), tokenInput('target')],
    forward: ([source, target]) => {
      const encoded = encoder(embedSource.apply(source) as Input);
      let h = decoderSelf(embedTarget.apply(target) as Input, true);
      for (let i = 0; i < 2; i++) {
        h = norms[i].apply(add(h, cross[i].apply(h as tf.Tensor, { value: encoded }) as Input)) as Input;
      }
      return head.apply(h) as Input;
    },
    data: seed => ({ x: [tokens(seed), tokens(seed + 1)], y: randomTensor([BATCH, SEQ, 3], seed + 2) }),
  };
}

/** Pre-LN (GPT-2): x + MHA(LN(x), LN(x)); the residual stream x is not a model input either. */
function preLn(): Architecture {
  const embed = tf.layers.embedding({ inputDim: VOCAB, outputDim: DIM });
  const blocks = [0, 1].map(i => ({ norm: layerNorm(), attn: attention(`pre_ln${i}`) }));
  const head = tf.layers.dense({ units: 2 });
  return {
    inputs: () => [tokenInput('tokens')],
    forward: ([t]) => {
      let x = embed.apply(t) as Input;
      for (const { norm, attn } of blocks) {
        const n = norm.apply(x) as Input;
        x = add(x, attn.apply(n as tf.Tensor, { value: n, useCausalMask: true }) as Input);
      }
      return head.apply(x) as Input;
    },
    data: seed => ({ x: [tokens(seed)], y: randomTensor([BATCH, SEQ, 2], seed + 1) }),
  };
}

/** One tensor read by two self-attention layers (one with an explicit key) and a residual add. */
function sharedTensor(): Architecture {
  const project = tf.layers.dense({ units: DIM });
  const [first, second] = [attention('shared0'), attention('shared1')];
  const head = tf.layers.dense({ units: 2 });
  return {
    inputs: () => [tf.input({ shape: [SEQ, 5], name: 'features' })],
    forward: ([features]) => {
      const x = project.apply(features) as Input;
      const a = first.apply(x as tf.Tensor, { value: x }) as Input;
      const b = second.apply(x as tf.Tensor, { value: x, key: x }) as Input;
      return head.apply(add(x, a, b)) as Input;
    },
    data: seed => ({ x: [randomTensor([BATCH, SEQ, 5], seed)], y: randomTensor([BATCH, SEQ, 2], seed + 1) }),
  };
}

/** [name, architecture, also on WebGPU]: there the two graphs of the issue (SwiftShader compiles every new kernel). */
const ARCHITECTURES: Array<[string, () => Architecture, boolean]> = [
  ['post-LN encoder (Keras tutorial), two blocks', postLnEncoder, true],
  ['encoder-decoder, encoder output shared by two cross-attention layers', encoderDecoder, true],
  ['pre-LN blocks', preLn, false],
  ['a tensor shared by several layers', sharedTensor, false],
];

async function values(t: tf.Tensor | tf.Tensor[] | tf.Scalar | tf.Scalar[]): Promise<Float32Array> {
  // Reads are asynchronous: WebGPU in Node cannot read synchronously.
  const list = Array.isArray(t) ? t : [t];
  return Float32Array.from((await Promise.all(list.map(x => x.data()))).flatMap(d => Array.from(d as Float32Array)));
}

async function savedAndLoaded(model: tf.LayersModel): Promise<tf.LayersModel> {
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(tf.io.withSaveHandler(async (artifacts) => {
    saved = artifacts;
    return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
  }));
  return tf.loadLayersModel(tf.io.fromMemory(saved!));
}

describe.each(LAYER_BACKENDS)('on $backend', ({ backend, available }) => {
  const run = available ? test : test.skip;
  useLayerBackend({ backend, available });

  run.each(ARCHITECTURES.filter(([, , onGpu]) => backend === 'cpu' || onGpu))(
      '%s: predict equals the eager layers; evaluate, fit with validation (cpu), save and load work', async (_, make) => {
    const arch = make();
    const inputs = arch.inputs();
    const model = tf.model({ inputs, outputs: arch.forward(inputs) as tf.SymbolicTensor });
    const { x, y } = arch.data(7);

    const predicted = await values(model.predict(x) as tf.Tensor);
    const eager = await values(tf.tidy(() => arch.forward(x) as tf.Tensor));
    expect(relativeError(predicted, eager)).toBeLessThan(1e-5);
    // Twice: the executor caches its plan, and nothing of the first run may be freed early.
    expect(relativeError(await values(model.predict(x) as tf.Tensor), predicted)).toBe(0);

    model.compile({ optimizer: tf.train.adam(0.01), loss: 'meanSquaredError' });
    const evaluated = await values(model.evaluate(x, y, { batchSize: 4 }) as tf.Scalar);
    expect(Number.isFinite(evaluated[0])).toBe(true);
    // The executor's early release is the same on every backend; on SwiftShader, where every new
    // kernel is compiled on the CPU, the training kernels would double the time of this test.
    if (backend === 'cpu') {
      const history = await model.fit(x, y, { epochs: 2, batchSize: 4, validationSplit: 0.25, verbose: 0 });
      for (const key of ['loss', 'val_loss']) {
        expect(history.history[key]).toHaveLength(2);
        expect((history.history[key] as number[]).every(Number.isFinite)).toBe(true);
      }
    }

    const loaded = await savedAndLoaded(model);
    const [fromModel, fromLoaded] = [await values(model.predict(x) as tf.Tensor), await values(loaded.predict(x) as tf.Tensor)];
    expect(relativeError(fromLoaded, fromModel)).toBe(0);
    loaded.compile({ optimizer: 'sgd', loss: 'meanSquaredError' });
    expect(Number.isFinite((await values(loaded.evaluate(x, y) as tf.Scalar))[0])).toBe(true);
  }, 300000);
});

describe('models saved before inputs were passed once each', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  test('[query, value, key] inbound nodes (self-attention listing one tensor thrice) still load and predict', async () => {
    const arch = postLnEncoder();
    const inputs = arch.inputs();
    const model = tf.model({ inputs, outputs: arch.forward(inputs) as tf.SymbolicTensor });
    let saved: tf.io.ModelArtifacts | undefined;
    await model.save(tf.io.withSaveHandler(async (artifacts) => {
      saved = artifacts;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }));
    // Rewrite each attention call into the earlier form: one entry per role, no layout.
    type InboundEntry = [string, number, number, Record<string, unknown>];
    const topology = JSON.parse(JSON.stringify(saved!.modelTopology));
    let rewritten = 0;
    for (const layer of topology.config.layers) {
      if (layer.class_name !== 'FlashMultiHeadAttention') continue;
      layer.inbound_nodes = layer.inbound_nodes.map((entries: InboundEntry[]) => {
        const { input_layout: layout, ...kwargs } = entries[0][3];
        expect(layout).toEqual([0, 0, 0]);
        rewritten++;
        return (layout as number[]).map(at => [...entries[at].slice(0, 3), kwargs]);
      });
    }
    expect(rewritten).toBe(2);
    const loaded = await tf.loadLayersModel(tf.io.fromMemory({ ...saved!, modelTopology: topology }));
    const { x } = arch.data(9);
    expect(relativeError(await values(loaded.predict(x) as tf.Tensor), await values(model.predict(x) as tf.Tensor))).toBe(0);
  });
});
