/**
 * The training example's building blocks (examples/transformer): the stock baseline computes the
 * same function as the flash model, a checkpoint resumes training exactly (weights and Adam
 * state), and the corpus windows are next-token pairs.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import '../src/index';
import { loadCheckpoint, saveCheckpoint } from '../examples/transformer/checkpoint';
import { CharCorpus, seededRandom } from '../examples/transformer/data';
import { buildTransformer, compileTransformer, TransformerConfig } from '../examples/transformer/model';
import { relativeError } from './helpers/tfjs_mha';

const CONFIG: Omit<TransformerConfig, 'attention'> = { vocabSize: 20, seqLen: 24, dim: 16, heads: 2, layers: 2 };

function batch(seed: number, size = 2) {
  const random = seededRandom(seed);
  const ids = Array.from({ length: size * (CONFIG.seqLen + 1) }, () => Math.floor(random() * CONFIG.vocabSize));
  const rows = Array.from({ length: size }, (_, b) => ids.slice(b * (CONFIG.seqLen + 1), (b + 1) * (CONFIG.seqLen + 1)));
  return {
    x: tf.tensor2d(rows.map(r => r.slice(0, -1)), undefined, 'int32'),
    y: tf.tensor3d(rows.map(r => r.slice(1).map(t => [t]))),
  };
}

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('the side-by-side baseline', () => {
  test('the stock model computes the same function as the flash model, with the same weights', () => {
    const flash = buildTransformer({ ...CONFIG, attention: 'flash' });
    const stock = buildTransformer({ ...CONFIG, attention: 'stock' });
    stock.setWeights(flash.getWeights());
    const { x } = batch(1);
    const [a, b] = [flash.predict(x) as tf.Tensor, stock.predict(x) as tf.Tensor];
    expect(relativeError(a.dataSync(), b.dataSync())).toBeLessThan(1e-5);
  });
});

describe('checkpoints', () => {
  let dir: string;
  beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'transformer-checkpoint-')); });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('a resumed model takes exactly the step the original takes (weights and Adam state restored)', async () => {
    const model = buildTransformer({ ...CONFIG, attention: 'flash' });
    compileTransformer(model, 0.01);
    for (const seed of [2, 3]) {
      const { x, y } = batch(seed);
      await model.trainOnBatch(x, y);
    }
    await saveCheckpoint(dir, model, { step: 2, losses: [1, 2], vocabulary: ['a'], config: { ...CONFIG } });
    const { model: resumed, state } = await loadCheckpoint(dir);
    expect(state).toEqual({ step: 2, losses: [1, 2], vocabulary: ['a'], config: { ...CONFIG } });

    const { x, y } = batch(4);
    const [lossOriginal, lossResumed] = [Number(await model.trainOnBatch(x, y)), Number(await resumed.trainOnBatch(x, y))];
    expect(lossResumed).toBeCloseTo(lossOriginal, 5);
    // Adam's moments matter here: restarting them from zero gives a visibly different step.
    model.getWeights().forEach((w, i) =>
        expect(relativeError(resumed.getWeights()[i].dataSync(), w.dataSync())).toBeLessThan(1e-5));
  });
});

describe('the corpus', () => {
  test('windows are (input, next token) pairs, read cyclically past the end', () => {
    const corpus = new CharCorpus('abcdef');
    expect(corpus.vocabulary).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    const { inputs, targets } = corpus.windows(3, 10, seededRandom(5));
    for (let w = 0; w < 3; w++) {
      const input = corpus.decode(inputs.slice(w * 10, (w + 1) * 10));
      const target = corpus.decode(targets.slice(w * 10, (w + 1) * 10));
      expect('abcdef'.repeat(4)).toContain(input);
      expect(target.slice(0, -1)).toBe(input.slice(1));
    }
  });

  test('the embedded corpus is a few tens of KB of plain ASCII text', () => {
    const corpus = CharCorpus.load(path.join(__dirname, '..', 'examples', 'transformer', 'corpus.txt'));
    expect(corpus.text.length).toBeGreaterThan(20000);
    expect(/^[\x20-\x7e\n]*$/.test(corpus.text)).toBe(true);
  });
});
