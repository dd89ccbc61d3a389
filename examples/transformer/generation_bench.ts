/** The measurement behind generate_bench.ts (imported once the backend is prepared). */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import '../../src/index';
import { activateBackend } from './backend';
import { loadCheckpoint } from './checkpoint';
import { CharCorpus, seededRandom } from './data';
import { generateCached, generateUncached, stepRate, tokenProgress } from './generate';
import { buildTransformer } from './model';

export interface GenerationBenchOptions {
  backend: 'webgpu' | 'cpu'; backendDetail: string;
  contexts: number[]; tokens: number; layers: number; dim: number; heads: number;
  attention: 'flash' | 'stock'; checkpoint: string; maxSeconds: number; out: string; seed: number;
}

interface Row {
  context: number; tokens: number;
  /** Per token after the first (decode steps); the first token's seconds (prefill) apart. */
  cachedTokensPerSecond: number; uncachedTokensPerSecond?: number; speedup?: number;
  cachedFirstTokenSeconds: number; uncachedFirstTokenSeconds?: number;
  identical?: boolean;
  /** Why the uncached run was left out (the previous context took longer than --max-seconds). */
  skipped?: string;
}

export async function runGenerationBench(o: GenerationBenchOptions): Promise<void> {
  await activateBackend(tf, o.backend);
  const corpus = CharCorpus.load();
  const maxContext = Math.max(...o.contexts);
  let model: tf.LayersModel;
  if (o.checkpoint) {
    ({ model } = await loadCheckpoint(o.checkpoint));
  } else {
    tf.randomUniform([1], 0, 1, 'float32', o.seed).dispose();
    model = buildTransformer({ vocabSize: corpus.vocabSize, seqLen: maxContext + o.tokens, dim: o.dim, heads: o.heads,
                               layers: o.layers, attention: o.attention });
  }
  const env = { backend: o.backendDetail, date: new Date().toISOString(), node: process.version,
                model: { layers: o.layers, dim: o.dim, heads: o.heads, attention: o.attention, checkpoint: o.checkpoint || null } };
  console.log(`generation bench: ${JSON.stringify(env)}`);
  const random = seededRandom(o.seed);
  const rows: Row[] = [];
  let uncachedTooSlow: string | undefined;
  for (const context of o.contexts) {
    const start = Math.floor(random() * corpus.ids.length);
    const prompt = Array.from({ length: context }, (_, i) => corpus.ids[(start + i) % corpus.ids.length]);
    const options = { length: o.tokens, temperature: 0, random };
    // A short warm-up each way (same cache size): shader compiles and first-use allocations are
    // not generation speed. Without the cache every token is a new shape, as it is for users.
    await generateCached(model, prompt, { ...options, length: 2, cacheLength: context + o.tokens });
    const cached = await generateCached(model, prompt, { ...options, onToken: tokenProgress(`context ${context}, with the cache`) });
    const row: Row = { context, tokens: o.tokens, cachedTokensPerSecond: stepRate(cached),
                       cachedFirstTokenSeconds: cached.firstTokenSeconds };
    if (uncachedTooSlow) {
      row.skipped = uncachedTooSlow;
    } else {
      await generateUncached(model, prompt, { ...options, length: 2 });
      const full = await generateUncached(model, prompt, { ...options, onToken: tokenProgress(`context ${context}, without`) });
      Object.assign(row, { uncachedTokensPerSecond: stepRate(full), uncachedFirstTokenSeconds: full.firstTokenSeconds,
                           speedup: stepRate(cached) / stepRate(full),
                           identical: full.tokens.every((t, i) => t === cached.tokens[i]) });
      if (full.seconds > o.maxSeconds) uncachedTooSlow = `context ${context} took ${full.seconds.toFixed(1)} s without the cache`;
    }
    rows.push(row);
    console.log(`context ${context}: with the cache ${row.cachedTokensPerSecond.toFixed(1)} tokens/s` +
                (row.uncachedTokensPerSecond != null
                  ? `, without ${row.uncachedTokensPerSecond.toFixed(1)} tokens/s (${row.speedup!.toFixed(2)}x), tokens ${row.identical ? 'identical' : 'DIFFER'}`
                  : `, without: skipped (${row.skipped})`));
  }
  console.log('\n| prompt tokens | new tokens | with cache: first token (s) | tokens/s after | without: first token (s) | tokens/s after | speed-up | same tokens |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|:---:|');
  for (const r of rows) {
    console.log(`| ${r.context} | ${r.tokens} | ${r.cachedFirstTokenSeconds.toFixed(2)} | ${r.cachedTokensPerSecond.toFixed(1)} | ` +
                `${r.uncachedFirstTokenSeconds?.toFixed(2) ?? '—'} | ${r.uncachedTokensPerSecond?.toFixed(1) ?? '—'} | ` +
                `${r.speedup ? `${r.speedup.toFixed(2)}x` : '—'} | ${r.identical == null ? '—' : r.identical ? 'yes' : 'NO'} |`);
  }
  fs.mkdirSync(path.dirname(o.out), { recursive: true });
  fs.writeFileSync(o.out, JSON.stringify({ env, rows }, null, 2));
  console.log(`written: ${o.out}`);
  if (rows.some(r => r.identical === false)) throw new Error('greedy generation with the cache differs from full recomputation');
}
