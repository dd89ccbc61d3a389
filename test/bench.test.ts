/**
 * The benchmark's own arithmetic and outputs (bench/): FLOP and byte counts, head chunking, the
 * command line, the float64 row reference (against the tests' oracle), the Markdown table, the
 * chart (its spec here, its SVG and PNG through `npm run chart`), and one end-to-end run of
 * `npm run bench` on the cpu backend.
 */
import { execFileSync } from 'child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import * as path from 'path';
import { PNG } from 'pngjs';
import {
  attentionFlops, attentionMinBytes, BenchCase, compositeHeadsPerChunk, enumerateCases, floorMs, Impl, Shape,
} from '../bench/cases';
import { benchChartSpec, throughputUnit } from '../bench/chart';
import { parseArgs, sweepDefaults, timingDefaults } from '../bench/options';
import { checkedRows, referenceRow, relativeError } from '../bench/reference_rows';
import { baseResult, CaseResult, markdownReport, RunRecord } from '../bench/report';
import {
  documentLengths, raggedLengths, scorePairs, VarlenCase, varlenCases, varlenMarkdown, VarlenResult,
} from '../bench/varlen';
import { caseData, reference } from './helpers/attention_case';

const H100_BINDING_LIMIT = 2 ** 31 - 4;   // maxStorageBufferBindingSize on the H100 (Dawn/Vulkan)
const shape = (seq: number, causal = false, headDim = 64): Shape => ({ batch: 1, heads: 16, seq, headDim, causal });

describe('FLOP and byte counts (the floor)', () => {
  test('forward is 4·B·H·N²·d, halved for causal; forward+backward is 3.5× forward', () => {
    expect(attentionFlops(shape(4096), 'fwd')).toBe(4 * 16 * 4096 * 4096 * 64);
    expect(attentionFlops(shape(4096, true), 'fwd')).toBe(2 * 16 * 4096 * 4096 * 64);
    expect(attentionFlops(shape(4096), 'fwd+bwd')).toBe(3.5 * 4 * 16 * 4096 * 4096 * 64);
  });

  test('bytes: forward moves q, k, v, out and logsumexp; backward adds 8 tensors and logsumexp', () => {
    const tensor = 16 * 1024 * 64 * 4, lse = 16 * 1024 * 4;
    expect(attentionMinBytes(shape(1024), 'fwd')).toBe(4 * tensor + lse);
    expect(attentionMinBytes(shape(1024), 'fwd+bwd')).toBe(12 * tensor + 2 * lse);
  });

  test('the floor is the larger of compute time and memory time', () => {
    const ceilings = { tflops: 50, gbPerS: 3000 };
    // N = 16384 is compute-bound: 1.1 PFLOP at 50 TFLOP/s = 22 ms.
    expect(floorMs(shape(16384), 'fwd', ceilings)).toBeCloseTo(attentionFlops(shape(16384), 'fwd') / 50e9, 9);
    // A tiny ceiling on FLOPs makes memory irrelevant; a tiny bandwidth makes it decide.
    expect(floorMs(shape(512), 'fwd', { tflops: 1e9, gbPerS: 1 })).toBeCloseTo(attentionMinBytes(shape(512), 'fwd') / 1e6, 9);
  });
});

describe('composite head chunking under the 2 GiB binding limit', () => {
  test('all heads while [H, N, N] fits, then halves, then 0 once one head does not fit', () => {
    expect(compositeHeadsPerChunk(16, 4096, H100_BINDING_LIMIT)).toBe(16);   // 1 GiB
    expect(compositeHeadsPerChunk(16, 8192, H100_BINDING_LIMIT)).toBe(4);    // 8 heads = 2 GiB > limit
    expect(compositeHeadsPerChunk(16, 16384, H100_BINDING_LIMIT)).toBe(1);
    expect(compositeHeadsPerChunk(16, 32768, H100_BINDING_LIMIT)).toBe(0);   // one head: 4 GiB
  });

  test('chunks divide the heads evenly', () => {
    expect(compositeHeadsPerChunk(12, 8192, H100_BINDING_LIMIT)).toBe(6);
    expect(compositeHeadsPerChunk(12, 8192, 3 * 8192 * 8192 * 4)).toBe(3);
  });
});

describe('the sweep and its command line', () => {
  test('cases run sequence length outermost and flash before composite at each shape', () => {
    const cases = enumerateCases(sweepDefaults({ seqs: [512, 1024], headDims: [64], impls: ['flash', 'composite'] }, true));
    expect(cases).toHaveLength(2 * 2 * 2 * 2);
    expect(cases.slice(0, 8).every(c => c.seq === 512)).toBe(true);
    expect(cases.slice(0, 4).every(c => c.impl === 'flash')).toBe(true);
    expect(cases.slice(4, 8).every(c => c.impl === 'composite')).toBe(true);
  });

  test('the subgroups device runs after every default-device case; the onnxruntime peer is forward only', () => {
    const cases = enumerateCases(sweepDefaults({ seqs: [512, 1024], headDims: [64] }, true));
    // Per shape: flash and composite 4 each, flash-subgroups 4, the two peers 2 each (forward only).
    expect(cases).toHaveLength(2 * (4 + 4 + 4 + 2 + 2));
    const firstSubgroups = cases.findIndex(c => c.impl === 'flash-subgroups');
    expect(firstSubgroups).toBe(2 * 12);
    expect(cases.slice(firstSubgroups).every(c => c.impl === 'flash-subgroups')).toBe(true);
    const peers = cases.filter(c => c.impl.startsWith('onnxruntime'));
    expect(peers).toHaveLength(8);
    expect(peers.every(c => c.pass === 'fwd')).toBe(true);
  });

  test('defaults: the issue\'s sweep on a real GPU, a small one elsewhere', () => {
    const gpu = sweepDefaults({}, true), cpu = sweepDefaults({}, false);
    expect(gpu.seqs[0]).toBe(512);
    expect(gpu.seqs).toContain(16384);
    expect(gpu.headDims).toEqual([32, 64, 128, 256]);
    expect(gpu.impls).toEqual(['flash', 'composite', 'flash-subgroups', 'onnxruntime-f32', 'onnxruntime-f16']);
    const quick = sweepDefaults({}, true, true);
    expect(quick.seqs).toEqual([1024, 4096, 16384]);
    expect(quick.headDims).toEqual([64, 128]);
    expect(gpu.heads).toBe(16);
    expect(Math.max(...cpu.seqs)).toBeLessThanOrEqual(256);
    expect(timingDefaults({}, false).maxReps).toBeLessThan(timingDefaults({}, true).maxReps);
    expect(timingDefaults({ maxReps: 50 }, false).maxReps).toBe(50);
  });

  test('flags select sizes, heads, dims, mask, passes and implementations', () => {
    const o = parseArgs(['--seqs=256,512', '--heads=8', '--dims=128', '--causal=1', '--passes=bwd',
                         '--impls=flash', '--deadline=30', '--check=0']);
    expect(o.sweep).toEqual({ seqs: [256, 512], heads: 8, headDims: [128], causal: [true],
                              passes: ['fwd+bwd'], impls: ['flash'] });
    expect(o.deadlineS).toBe(30);
    expect(o.check).toBe(false);
    expect(parseArgs(['--causal=both']).sweep.causal).toEqual([false, true]);
    expect(o.implsGiven).toBe(true);
    expect(parseArgs([]).implsGiven).toBe(false);
    expect(parseArgs(['--subgroups']).sweep.impls).toEqual(['flash-subgroups', 'composite']);
    expect(parseArgs(['--quick']).quick).toBe(true);
  });

  test('unknown flags and bad values are errors that name the flag', () => {
    expect(() => parseArgs(['--sizez=1'])).toThrow(/unknown flag --sizez/);
    expect(() => parseArgs(['--seqs=12,x'])).toThrow(/--seqs needs positive integers/);
    expect(() => parseArgs(['--impls=flash,naive'])).toThrow(/'naive' is not one of flash, composite/);
    expect(() => parseArgs(['seqs=1'])).toThrow(/unexpected argument/);
  });
});

describe('float64 row reference', () => {
  for (const causal of [false, true]) {
    test(`rows of out and dq match the tests' oracle (${causal ? 'causal' : 'full'})`, () => {
      const dims = { batch: 1, seqQ: 24, seqK: 24, heads: 3, kvHeads: 3, headDim: 8, headDimV: 8 };
      const spec = { dims, causal, seed: 7 };
      const data = caseData(spec);
      const want = reference(spec, data);
      const { heads: H, headDim: D, seqK: N } = dims;
      const s: Shape = { batch: 1, heads: H, seq: N, headDim: D, causal };
      const headRows = (x: Float32Array, h: number) =>
          Float32Array.from({ length: N * D }, (_, n) => x[(Math.floor(n / D) * H + h) * D + (n % D)]);
      for (const { head, row } of checkedRows(s)) {
        const at = (x: Float32Array) => x.subarray((row * H + head) * D, (row * H + head + 1) * D);
        const got = referenceRow(at(data.q), headRows(data.k, head), headRows(data.v, head), at(data.dy),
                                 N, D, row, causal);
        const wantOut = want.out.subarray((row * H + head) * D, (row * H + head + 1) * D);
        const wantDq = want.dq.subarray((row * H + head) * D, (row * H + head + 1) * D);
        expect(relativeError([{ got: got.out, ref: wantOut }])).toBeLessThan(1e-12);
        expect(relativeError([{ got: got.dq, ref: wantDq }])).toBeLessThan(1e-12);
      }
    });
  }

  test('checked rows cover both ends of the heads and of the sequence', () => {
    expect(checkedRows(shape(100))).toEqual([0, 15].flatMap(head => [1, 50, 99].map(row => ({ head, row }))));
  });

  test('a NaN in a checked row is never within tolerance', () => {
    const err = relativeError([{ got: [1, NaN], ref: [1, 2] }]);
    expect(err <= 1e-3).toBe(false);
  });
});

function fakeRun(): RunRecord {
  const ok = (c: BenchCase, wallMs: number, peakMiB: number): CaseResult => {
    const r = baseResult(c, 'ok');
    return { ...r, wallMs, gpuMs: wallMs * 0.9, tflopsWall: r.flops / wallMs / 1e9,
             tflopsGpu: r.flops / (wallMs * 0.9) / 1e9, peakBytes: peakMiB * 2 ** 20, relErr: 1e-7 };
  };
  const at = (impl: 'flash' | 'composite', seq: number, pass: 'fwd' | 'fwd+bwd' = 'fwd'): BenchCase =>
      ({ ...shape(seq), impl, pass });
  return {
    meta: { date: '2026-11-24T06:00:00.000Z', backend: 'webgpu', adapter: { vendor: 'nvidia', architecture: '' },
            nvidiaSmi: 'NVIDIA H100 80GB HBM3, 81559 MiB', tfjsVersion: '4.22.0', node: 'v20', gitCommit: 'abc',
            argv: [], ceilings: { tflops: 51.6, gbPerS: 3350 } },
    results: [
      ok(at('flash', 1024), 1, 10), ok(at('composite', 1024), 4, 200),
      ok(at('flash', 2048), 3, 20), ok(at('composite', 2048), 9, 800),
      ok(at('flash', 2048, 'fwd+bwd'), 12, 30),
      baseResult(at('composite', 2048, 'fwd+bwd'), 'OOM', 'vkAllocateMemory failed'),
    ],
  };
}

describe('Markdown report', () => {
  const md = markdownReport(fakeRun());

  test('one table per pass with flash and composite side by side, and the speed-up', () => {
    expect(md).toContain('### Forward, d = 64, no mask (B = 1, H = 16)');
    expect(md).toContain('### Forward + backward, d = 64, no mask');
    const row1024 = md.split('\n').find(l => l.startsWith('| 1024 |'))!;
    expect(row1024).toContain('| 1.000 (0.900) | 4.000 (3.600) | 4.00× (4.00×) |');
    expect(row1024).toMatch(/\| 10 \| 200 \|$/);
  });

  test('a case that could not run says so instead of a time, with its reason in the notes', () => {
    const bwdRow = md.split('\n').filter(l => l.startsWith('| 2048 |'))[1];
    expect(bwdRow).toContain('**OOM**');
    expect(md).toContain('composite fwd+bwd N=2048 d=64 full: OOM — vkAllocateMemory failed');
  });

  test('the machine and the floor\'s ceilings are stated', () => {
    expect(md).toContain('nvidia-smi: NVIDIA H100 80GB HBM3');
    expect(md).toContain('51.6 TFLOP/s');
  });
});

describe('the chart (a Vega-Lite spec, drawn by charts/render.ts)', () => {
  // The spec's dataset, its legend domains and its panels, as Vega-Lite will read them.
  const specOf = (run: RunRecord) => benchChartSpec(run) as unknown as {
    data: { values: Array<Record<string, unknown>> };
    facet: { row: { sort: string[] }; column: { sort: string[] } };
    spec: { layer: Array<{ encoding: { color?: { scale?: { domain: string[] } }; strokeDash?: { scale: { domain: string[] } } } }> };
  };
  const withPeer = (): RunRecord => {
    const run = fakeRun();
    // Any implementation in results.json gets its own line (the onnxruntime peer, say).
    const peer = run.results.filter(r => r.impl === 'flash')
        .map(r => ({ ...r, impl: 'onnxruntime' as Impl, wallMs: r.wallMs! * 2, tflopsWall: r.tflopsWall! / 2, tflopsGpu: r.tflopsGpu! / 2 }));
    return { ...run, results: [...run.results, ...peer] };
  };

  test('a line per implementation in results.json, flash and composite first, each from wall and GPU time', () => {
    const spec = specOf(withPeer());
    expect(spec.spec.layer[0].encoding.color!.scale!.domain).toEqual(['flash', 'composite', 'onnxruntime']);
    expect(spec.spec.layer[0].encoding.strokeDash!.scale.domain).toEqual(['wall time', 'GPU time']);
    const points = spec.data.values.filter(v => v.kind === 'point');
    const flash1024 = points.filter(p => p.series === 'flash' && p.seq === 1024 && p.row === 'forward');
    expect(flash1024.map(p => [p.timing, p.value])).toEqual([
      ['wall time', fakeRun().results[0].tflopsWall], ['GPU time', fakeRun().results[0].tflopsGpu]]);
    expect(new Set(points.map(p => p.series))).toEqual(new Set(['flash', 'composite', 'onnxruntime']));
  });

  test('a panel per pass (rows) and head dim × mask (columns)', () => {
    const spec = specOf(fakeRun());
    expect(spec.facet.row.sort).toEqual(['forward', 'forward + backward']);
    expect(spec.facet.column.sort).toEqual(['d = 64, no mask']);
  });

  test('a case that could not run is a cross with its reason, not a point', () => {
    const values = specOf(fakeRun()).data.values;
    expect(values.filter(v => v.kind === 'failure')).toEqual([expect.objectContaining({
      series: 'composite', seq: 2048, row: 'forward + backward', label: 'OOM', detail: 'vkAllocateMemory failed' })]);
    expect(values.filter(v => v.kind === 'point' && v.series === 'composite' && v.row === 'forward + backward')).toEqual([]);
  });

  test('throughput in GFLOP/s or MFLOP/s where a CPU-sized run would show only zeros', () => {
    expect(throughputUnit(20)).toEqual({ name: 'TFLOP/s', factor: 1 });
    expect(throughputUnit(0.004)).toEqual({ name: 'GFLOP/s', factor: 1e3 });
    expect(throughputUnit(2e-6)).toEqual({ name: 'MFLOP/s', factor: 1e6 });
  });

  test('npm run chart draws chart.svg and chart.png from results.json, and the loss curve from state.json', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'chart-test-'));
    try {
      writeFileSync(path.join(dir, 'results.json'), JSON.stringify(withPeer()));
      mkdirSync(path.join(dir, 'training'));
      writeFileSync(path.join(dir, 'training', 'state.json'), JSON.stringify({ losses: [5, 4, 3.2, NaN, 2.5, 2.2, 2.1] }));
      if (process.env.KEEP_CHART_TEST) console.log(dir);
      execFileSync(process.execPath, ['examples/run.js', 'charts/cli.ts', path.join(dir, 'results.json'), path.join(dir, 'training', 'state.json')],
                   { cwd: path.join(__dirname, '..'), stdio: ['ignore', 'pipe', 'pipe'] });

      const svg = readFileSync(path.join(dir, 'chart.svg'), 'utf8');
      expect(svg).toContain('flash vs composite vs onnxruntime: TFLOP/s against sequence length');
      for (const label of ['forward + backward', 'wall time', 'GPU time', 'OOM', 'sequence length N', '2K']) expect(svg).toContain(label);
      const chart = PNG.sync.read(readFileSync(path.join(dir, 'chart.png')));
      expect(chart.width).toBeGreaterThan(1000);
      // The lines in their series' colours, the red cross, and the title drawn in a real font:
      // resvg draws no text at all when it finds no font.
      expect(colorPixels(chart, [[0x1f, 0x77, 0xb4], [0xff, 0x7f, 0x0e], [0x2c, 0xa0, 0x2c], [0xc8, 0x1e, 0x1e]])
          .map(n => n > 100)).toEqual([true, true, true, true]);
      expect(colorPixels(chart, [[0, 0, 0]], { y0: 0, y1: 40 })[0]).toBeGreaterThan(500);

      const loss = PNG.sync.read(readFileSync(path.join(dir, 'training', 'loss.png')));
      expect(readFileSync(path.join(dir, 'training', 'loss.svg'), 'utf8')).toContain('loss (nats per token)');
      expect(colorPixels(loss, [[0x2c, 0xa0, 0x2c]])[0]).toBeGreaterThan(500);
      expect(colorPixels(loss, [[0, 0, 0]], { y0: 0, y1: 40 })[0]).toBeGreaterThan(500);
    } finally {
      if (!process.env.KEEP_CHART_TEST) rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** How many pixels (in rows y0..y1) lie near each colour. */
function colorPixels(png: PNG, colors: number[][], { y0 = 0, y1 = png.height } = {}): number[] {
  const counts = colors.map(() => 0);
  for (let y = y0; y < y1; y++) {
    for (let x = 0; x < png.width; x++) {
      const i = (y * png.width + x) * 4;
      colors.forEach(([r, g, b], j) => {
        if (Math.abs(png.data[i] - r) + Math.abs(png.data[i + 1] - g) + Math.abs(png.data[i + 2] - b) < 40) counts[j]++;
      });
    }
  }
  return counts;
}

describe('variable-length cases (--varlen)', () => {
  test('a ragged batch of 8 spreads its lengths over [N/8, N]; documents total N', () => {
    expect(raggedLengths(4096)).toEqual([512, 1024, 1536, 2048, 2560, 3072, 3584, 4096]);
    expect(raggedLengths(24)).toEqual([3, 6, 9, 12, 15, 18, 21, 24]);
    for (const n of [7, 16, 1000, 16384]) {
      const docs = documentLengths(n);
      expect(docs.reduce((a, b) => a + b, 0)).toBe(n);
      expect(docs.every(l => l > 0)).toBe(true);
    }
    expect(documentLengths(16384).length).toBeGreaterThan(4);
  });

  test('work is counted as Σ len² against 8·N² (ragged) or N² (packed), halved-plus-diagonal with causal', () => {
    const ragged = { layout: 'ragged' as const, seq: 4096, heads: 16, headDim: 64, causal: false };
    const lens = raggedLengths(4096);
    expect(scorePairs(ragged)).toEqual({ sequences: lens.reduce((a, l) => a + l * l, 0), dense: 8 * 4096 * 4096 });
    expect(scorePairs(ragged).sequences / scorePairs(ragged).dense).toBeCloseTo(0.398, 3);
    const causal = scorePairs({ ...ragged, causal: true });
    expect(causal.dense).toBe(8 * 4096 * 4097 / 2);
    const packed = scorePairs({ ...ragged, layout: 'packed' });
    expect(packed.dense).toBe(4096 * 4096);
    expect(packed.sequences).toBe(documentLengths(4096).reduce((a, l) => a + l * l, 0));
  });

  test('cases put the three variants of a shape side by side', () => {
    const cases = varlenCases({ seqs: [64, 128], headDims: [8], heads: 2, causal: [false, true], passes: ['fwd', 'fwd+bwd'] });
    expect(cases).toHaveLength(2 * 2 * 2 * 2 * 3);
    expect(cases.slice(0, 3).map(c => c.variant)).toEqual(['lengths', 'mask', 'dense']);
    expect(new Set(cases.slice(0, 3).map(c => `${c.layout}${c.seq}${c.pass}${c.causal}`)).size).toBe(1);
    expect(parseArgs(['--varlen=only']).varlen).toBe('only');
    expect(parseArgs(['--varlen=1']).varlen).toBe('on');
    expect(parseArgs([]).varlen).toBe('off');
  });

  test('the table gives each variant\'s time, its ratio to the lengths\' and the pairs left', () => {
    const at = (variant: VarlenCase['variant'], wallMs: number): VarlenResult => ({
      layout: 'ragged', seq: 4096, heads: 16, headDim: 64, causal: true, pass: 'fwd', variant, status: 'ok',
      lengths: raggedLengths(4096), ...(() => { const p = scorePairs({ layout: 'ragged', seq: 4096, heads: 16, headDim: 64, causal: true });
                                                 return { pairs: p.sequences, densePairs: p.dense }; })(),
      wallMs, gpuMs: wallMs * 0.9,
    });
    const md = varlenMarkdown([at('lengths', 2), { ...at('mask', 0), status: 'too large', note: 'over the limit', wallMs: undefined },
                               at('dense', 5)]);
    expect(md).toContain('### Forward, causal, ragged batch');
    const row = md.split('\n').find(l => l.startsWith('| 4096 |'))!;
    expect(row).toContain('| 2.000 (1.800) | **too large** | 5.000 (4.500) |  | 2.50× |');
    expect(md).toContain('ragged mask fwd N=4096 d=64 causal: too large — over the limit');
  });
});

describe('npm run bench end to end (cpu backend, tiny sweep)', () => {
  test('--varlen=only: lengths, mask and dense for a ragged batch and packed documents, lengths equal to mask', () => {
    const out = mkdtempSync(path.join(tmpdir(), 'bench-varlen-test-'));
    try {
      execFileSync(process.execPath,
          ['bench/run.mjs', '--backend=cpu', '--varlen=only', '--seqs=24', '--heads=2', '--dims=8', '--reps=1', `--out=${out}`],
          { cwd: path.join(__dirname, '..'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      const { results } = JSON.parse(readFileSync(path.join(out, 'varlen.json'), 'utf8')) as { results: VarlenResult[] };
      expect(results).toHaveLength(2 * 2 * 2 * 3);
      for (const r of results) {
        expect(r.status).toBe('ok');
        expect(r.wallMs).toBeGreaterThan(0);
        if (r.variant === 'mask') expect(r.relErrVsMask).toBeLessThan(1e-5);
      }
      const md = readFileSync(path.join(out, 'varlen.md'), 'utf8');
      expect(md).toContain('packed documents: flashAttentionVarlen');
      expect(md).toContain('| 24 | 8 | 3, 6, 9, 12, 15, 18, 21, 24 |');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  test('writes results.json, results.md, chart.svg and chart.png with every case checked against float64', () => {
    const out = mkdtempSync(path.join(tmpdir(), 'bench-test-'));
    try {
      const log = execFileSync(process.execPath,
          ['bench/run.mjs', '--backend=cpu', '--seqs=16,32', '--heads=2', '--dims=8', '--reps=2', `--out=${out}`],
          { cwd: path.join(__dirname, '..'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      const progress = log.split('\n').filter(l => /^\[\s*\d+\/16\]/.test(l));
      expect(progress).toHaveLength(16);
      const run = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8')) as RunRecord;
      expect(run.meta.backend).toBe('cpu');
      expect(run.results).toHaveLength(16);
      for (const r of run.results) {
        expect(r.status).toBe('ok');
        expect(r.relErr).toBeLessThan(r.pass === 'fwd' ? 1e-5 : 1e-4);
        expect(r.wallMs).toBeGreaterThan(0);
      }
      expect(readFileSync(path.join(out, 'results.md'), 'utf8')).toContain('| 32 |');
      expect(readFileSync(path.join(out, 'chart.svg'), 'utf8')).toMatch(/[MGT]FLOP\/s against sequence length/);
      expect(PNG.sync.read(readFileSync(path.join(out, 'chart.png'))).width).toBeGreaterThan(0);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
