/**
 * Checkpoints on disk: model.json (topology, training config, weights manifest), weights.bin
 * (model and optimizer weights, so Adam's moments survive a resume) and state.json (step, loss
 * history, vocabulary). Plain tfjs has no file:// handler outside tfjs-node, so this goes through
 * tf.io.withSaveHandler and tf.io.fromMemory.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { FlatAdam, trainableVariables } from './model';

export interface TrainingState {
  step: number;
  losses: number[];
  vocabulary: string[];
  config: Record<string, unknown>;
}

export async function saveCheckpoint(dir: string, model: tf.LayersModel, state: TrainingState): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await model.save(tf.io.withSaveHandler(async (artifacts) => {
    const weights = Buffer.from(tf.io.CompositeArrayBuffer.join(artifacts.weightData!));
    const { weightSpecs, weightData, ...rest } = artifacts;
    void weightData;
    // Write to temporary names first: an interrupted save must not corrupt the last checkpoint.
    fs.writeFileSync(path.join(dir, 'weights.bin.tmp'), weights);
    fs.writeFileSync(path.join(dir, 'model.json.tmp'),
                     JSON.stringify({ ...rest, weightsManifest: [{ paths: ['weights.bin'], weights: weightSpecs }] }));
    fs.renameSync(path.join(dir, 'weights.bin.tmp'), path.join(dir, 'weights.bin'));
    fs.renameSync(path.join(dir, 'model.json.tmp'), path.join(dir, 'model.json'));
    return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON', weightDataBytes: weights.byteLength } };
  }), { includeOptimizer: true });
  fs.writeFileSync(path.join(dir, 'state.json'), JSON.stringify(state));
}

export function hasCheckpoint(dir: string): boolean {
  return ['model.json', 'weights.bin', 'state.json'].every(f => fs.existsSync(path.join(dir, f)));
}

/** The model (compiled, with its optimizer state when saved with it) and the training state. */
export async function loadCheckpoint(dir: string): Promise<{ model: tf.LayersModel; state: TrainingState }> {
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
  const bytes = fs.readFileSync(path.join(dir, 'weights.bin'));
  const weightData = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const { weightsManifest, ...rest } = json;
  const model = await tf.loadLayersModel(tf.io.fromMemory({ ...rest, weightSpecs: weightsManifest[0].weights, weightData }));
  // tfjs restores the optimizer as its own Adam holding FlatAdam's state: hand that state back.
  const loaded = model.optimizer as tf.AdamOptimizer;
  const flat = new FlatAdam(loaded.getConfig().learningRate as number, trainableVariables(model));
  await flat.setWeights(await loaded.getWeights());
  loaded.dispose();
  model.optimizer = flat;
  const state = JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')) as TrainingState;
  return { model, state };
}
