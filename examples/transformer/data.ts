/** The embedded corpus as characters, and random training windows over it. */
import * as fs from 'fs';
import * as path from 'path';

/** Relative to the working directory (the repository root), as bundles cannot know their sources' place. */
export const CORPUS_PATH = path.join('examples', 'transformer', 'corpus.txt');

/** Mulberry32: a tiny seeded generator, so runs are reproducible from --seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Character-level vocabulary: one token per distinct character of the corpus, sorted. */
export class CharCorpus {
  readonly ids: Int32Array;
  readonly vocabulary: string[];
  private readonly index: Map<string, number>;

  constructor(readonly text: string, vocabulary?: string[]) {
    this.vocabulary = vocabulary ?? [...new Set(text)].sort();
    this.index = new Map(this.vocabulary.map((c, i) => [c, i]));
    this.ids = this.encode(text);
  }

  static load(file = CORPUS_PATH, vocabulary?: string[]): CharCorpus {
    return new CharCorpus(fs.readFileSync(file, 'utf8'), vocabulary);
  }

  get vocabSize(): number { return this.vocabulary.length; }

  /** Characters outside the vocabulary (possible in a prompt) become spaces. */
  encode(s: string): Int32Array {
    const space = this.index.get(' ') ?? 0;
    return Int32Array.from(s, c => this.index.get(c) ?? space);
  }

  decode(ids: ArrayLike<number>): string {
    return Array.from(ids, i => this.vocabulary[i]).join('');
  }

  /**
   * count windows of seqLen tokens and their next-token targets, starting at random offsets.
   * The corpus is read cyclically, so windows longer than the corpus (long-sequence runs on a
   * few tens of KB of text) simply wrap around.
   */
  windows(count: number, seqLen: number, random: () => number): { inputs: Int32Array; targets: Int32Array } {
    const n = this.ids.length;
    const inputs = new Int32Array(count * seqLen), targets = new Int32Array(count * seqLen);
    for (let w = 0; w < count; w++) {
      const start = Math.floor(random() * n);
      for (let t = 0; t < seqLen; t++) {
        inputs[w * seqLen + t] = this.ids[(start + t) % n];
        targets[w * seqLen + t] = this.ids[(start + t + 1) % n];
      }
    }
    return { inputs, targets };
  }
}
