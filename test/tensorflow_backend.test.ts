/**
 * The `tensorflow` backend (tfjs-node-gpu + CUDA op library) up to the boundary that can be
 * reached here: tfjs-node-gpu, libtensorflow and a GPU are not available, so
 *  - the loader and the op library's registration run against a fake libtensorflow.so.2
 *    (native/test/), loaded the way tfjs-node-gpu loads the real one;
 *  - the kernels are checked for the op name, input order and attributes they hand to
 *    tfjs-node's executeMultipleOutputs, through a recording backend.
 * The CUDA kernels themselves are checked on a GPU by kernels/cuda/harness/harness.py.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { getKernel, KernelConfig, TensorInfo } from '@tensorflow/tfjs-core';
import { dropoutThreshold, FlashAttention, FlashAttentionAttrs, FlashAttentionGrad } from '../src/contract';
import {
  flashAttentionGradTensorflowConfig, flashAttentionTensorflowConfig, TensorflowBackendLike, TensorflowOpAttr,
} from '../kernels/tensorflow/flash_attention_tensorflow';
import { ensureTensorflowKernels, tensorflowKernelStatus } from '../kernels/tensorflow/register';

const ROOT = path.resolve(__dirname, '..');
const CUDA_HOME = process.env.CUDA_HOME ?? '/usr/local/cuda';
const canBuildFakes = fs.existsSync(path.join(CUDA_HOME, 'include', 'cuda_runtime.h'));

const ATTRS: FlashAttentionAttrs = {
  scale: 0.125, softcap: 30, windowLeft: 64, windowRight: 0, hasAlibi: true, hasMask: false,
  dropoutRate: 0.1, seed: 0xfffffffe, precision: 'fast', seqLayout: 'packed', maxSeqLenQ: 70, maxSeqLenK: 90, numSeqs: 3,
};
const FORWARD_INPUTS = ['q', 'k', 'v', 'alibiSlopes', 'mask', 'seqRangesQ', 'seqRangesK'];

/** A tfjs-node backend stand-in that records what the kernels ask it to execute. */
function recordingBackend() {
  const calls: { name: string; attrs: TensorflowOpAttr[]; inputs: TensorInfo[]; numOutputs: number }[] = [];
  const backend: TensorflowBackendLike = {
    binding: { TF_ATTR_STRING: 0, TF_ATTR_INT: 1, TF_ATTR_FLOAT: 2, TF_ATTR_BOOL: 3 },
    executeMultipleOutputs(name, attrs, inputs, numOutputs) {
      calls.push({ name, attrs, inputs, numOutputs });
      return inputs.slice(0, numOutputs);
    },
  };
  return { backend, calls };
}

function fakeTensor(name: string): TensorInfo {
  return { dataId: { name }, shape: [1], dtype: 'float32' };
}

function runKernel(config: KernelConfig, inputNames: string[], attrs: FlashAttentionAttrs = ATTRS) {
  const { backend, calls } = recordingBackend();
  const inputs = Object.fromEntries(inputNames.map(n => [n, fakeTensor(n)]));
  config.kernelFunc({ inputs, backend: backend as never, attrs: attrs as never });
  expect(calls).toHaveLength(1);
  return { call: calls[0], inputs };
}

describe('tensorflow kernels hand the op its inputs in order and the kernel attributes', () => {
  it('FlashAttention: q, k, v, alibiSlopes, mask, seqRangesQ, seqRangesK -> 2 outputs, every attribute typed', () => {
    const { call, inputs } = runKernel(flashAttentionTensorflowConfig, FORWARD_INPUTS);
    expect(call.name).toBe(FlashAttention);
    expect(call.inputs).toEqual(FORWARD_INPUTS.map(n => inputs[n]));
    expect(call.numOutputs).toBe(2);
    expect(call.attrs).toEqual([
      { name: 'scale', type: 2, value: 0.125 },
      { name: 'softcap', type: 2, value: 30 },
      { name: 'windowLeft', type: 1, value: 64 },
      { name: 'windowRight', type: 1, value: 0 },
      { name: 'hasAlibi', type: 3, value: true },
      { name: 'hasMask', type: 3, value: false },
      { name: 'dropoutRate', type: 2, value: 0.1 },
      { name: 'seed', type: 1, value: -2 },          // 0xfffffffe as int32: same low 32 bits
      { name: 'precision', type: 0, value: 'fast' },
      { name: 'dropoutThreshold', type: 1, value: dropoutThreshold(0.1) },
      { name: 'seqLayout', type: 0, value: 'packed' },
      { name: 'maxSeqLenQ', type: 1, value: 70 },
      { name: 'maxSeqLenK', type: 1, value: 90 },
      { name: 'numSeqs', type: 1, value: 3 },
    ]);
  });

  it('every attribute of the contract reaches the op', () => {
    const { call } = runKernel(flashAttentionTensorflowConfig, FORWARD_INPUTS);
    const names = call.attrs.map(a => a.name);
    for (const key of Object.keys(ATTRS)) expect(names).toContain(key);
  });

  it('a padded batch sends its layout; a dense call sends the placeholder ranges all the same', () => {
    for (const seqLayout of ['padded', 'dense'] as const) {
      const { call, inputs } = runKernel(flashAttentionTensorflowConfig, FORWARD_INPUTS,
                                         { ...ATTRS, seqLayout, maxSeqLenQ: 1, maxSeqLenK: 1, numSeqs: 1 });
      expect(call.attrs.find(a => a.name === 'seqLayout')?.value).toBe(seqLayout);
      expect(call.inputs.slice(5)).toEqual([inputs.seqRangesQ, inputs.seqRangesK]);
    }
  });

  it('sends the float64 threshold, which the float32 attribute alone would round differently', () => {
    // Why dropoutThreshold travels: TensorFlow's float attr is float32.
    expect(Math.floor(Math.fround(0.1) * 2 ** 32)).not.toBe(dropoutThreshold(0.1));
  });

  it('FlashAttentionGrad: forward inputs (ranges included), out, logSumExp, dy -> 3 outputs, same attributes', () => {
    const names = [...FORWARD_INPUTS, 'out', 'logSumExp', 'dy'];
    const { call, inputs } = runKernel(flashAttentionGradTensorflowConfig, names);
    expect(call.name).toBe(FlashAttentionGrad);
    expect(call.inputs).toEqual(names.map(n => inputs[n]));
    expect(call.numOutputs).toBe(3);
    expect(call.attrs).toEqual(runKernel(flashAttentionTensorflowConfig, FORWARD_INPUTS).call.attrs);
  });
});

describe('without tfjs-node-gpu in the process', () => {
  it('importing the package tries nothing: the op library is loaded on first use of the tensorflow backend', () => {
    expect(tensorflowKernelStatus()).toBeUndefined();
  });

  it('registers no tensorflow kernel (the op takes the blockwise fallback) and stays quiet', () => {
    ensureTensorflowKernels();
    const status = tensorflowKernelStatus();
    expect(status?.loaded).toBe(false);
    expect(status?.relevant).toBe(false);
    expect(getKernel(FlashAttention, 'tensorflow')).toBeUndefined();
    expect(getKernel(FlashAttentionGrad, 'tensorflow')).toBeUndefined();
  });
});

(canBuildFakes ? describe : describe.skip)('loader and op library against a fake libtensorflow', () => {
  let dir: string;
  let fakeBinding: string;

  /** Runs JavaScript in a fresh Node (native libraries are per process) and parses its JSON output. */
  function inChild(code: string, env: Record<string, string> = {}) {
    const r = spawnSync(process.execPath, ['-e', code], {
      encoding: 'utf8', env: { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules'), ...env },
    });
    if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
    return { out: JSON.parse(r.stdout.trim().split('\n').pop()!), stderr: r.stderr };
  }

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fa-tf-'));
    execFileSync('bash', [path.join(ROOT, 'native/test/build-fakes.sh'), dir], { stdio: 'pipe' });
    // tfjs-node-gpu is detected by its path in require's cache: give the fake binding such a path.
    const pkg = path.join(dir, 'node_modules', '@tensorflow', 'tfjs-node-gpu');
    fs.mkdirSync(pkg, { recursive: true });
    fakeBinding = path.join(pkg, 'tfjs_binding.node');
    fs.copyFileSync(path.join(dir, 'fake_tfjs_binding.node'), fakeBinding);
    fs.copyFileSync(path.join(dir, 'libtensorflow.so.2'), path.join(pkg, 'libtensorflow.so.2'));
  }, 120000);

  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('says libtensorflow is missing when tfjs-node-gpu has not loaded it', () => {
    const { out } = inChild(`
      const loader = require(${JSON.stringify(path.join(dir, 'flash_attention_loader.node'))});
      console.log(JSON.stringify(loader.load(${JSON.stringify(path.join(dir, 'flash_attention_op.so'))})));`);
    expect(out.loaded).toBe(false);
    expect(out.reason).toMatch(/libtensorflow is not loaded/);
  });

  describe('once the (fake) tfjs binding has loaded libtensorflow.so.2 privately', () => {
    let result: { status: { loaded: boolean; reason: string | null; cudaDevices: number };
                  registry: { ops: { name: string; inputs: string[]; outputs: string[]; attrs: string[]; hasShapeFn: boolean }[];
                              kernels: { op: string; device: string }[] };
                  shapes: string[] };
    beforeAll(() => {
      result = inChild(`
        const fake = require(${JSON.stringify(fakeBinding)});
        const loader = require(${JSON.stringify(path.join(dir, 'flash_attention_loader.node'))});
        const status = loader.load(${JSON.stringify(path.join(dir, 'flash_attention_op.so'))});
        const q = [2, 100, 8, 64], k = [2, 120, 2, 64], v = [2, 120, 2, 32], r = [2, 2];
        // Packed: 3 sequences in q [1, 250, 8, 64], k and v [1, 310, 2, *].
        const pq = [1, 250, 8, 64], pk = [1, 310, 2, 64], pv = [1, 310, 2, 32], pr = [3, 2];
        const shapes = [
          fake.infer('FlashAttention', [q, k, v, [8], [1, 1, 1, 1], r, r]),
          fake.infer('FlashAttentionGrad', [q, k, v, [8], [1, 1, 1, 1], r, r, [2, 100, 8, 32], [2, 8, 100], [2, 100, 8, 32]]),
          fake.infer('FlashAttention', [[2, 100, 8], k, v, [8], [1, 1, 1, 1], r, r]),
          fake.infer('FlashAttention', [pq, pk, pv, [8], [1, 1, 1, 1], pr, pr]),
          fake.infer('FlashAttentionGrad', [pq, pk, pv, [8], [1, 1, 1, 1], pr, pr, [1, 250, 8, 32], [1, 8, 250], [1, 250, 8, 32]]),
        ];
        console.log(JSON.stringify({ status, registry: JSON.parse(fake.registry()), shapes }));`).out;
    });

    it('TF_LoadLibrary registers FlashAttention and FlashAttentionGrad with GPU kernels', () => {
      expect(result.registry.ops.map(o => o.name)).toEqual([FlashAttention, FlashAttentionGrad]);
      expect(result.registry.kernels).toEqual([{ op: FlashAttention, device: 'GPU' }, { op: FlashAttentionGrad, device: 'GPU' }]);
      const [fwd, grad] = result.registry.ops;
      expect(fwd.inputs).toEqual(['q: float', 'k: float', 'v: float', 'alibi_slopes: float', 'mask: bool',
                                  'seq_ranges_q: int32', 'seq_ranges_k: int32']);
      expect(fwd.outputs).toEqual(['out: float', 'logsumexp: float']);
      expect(grad.inputs).toEqual([...fwd.inputs, 'out: float', 'logsumexp: float', 'dy: float']);
      expect(grad.outputs).toEqual(['dq: float', 'dk: float', 'dv: float']);
      expect(fwd.hasShapeFn && grad.hasShapeFn).toBe(true);
    });

    it('declares the tfjs kernel attributes (plus dropoutThreshold) on both ops', () => {
      const attrNames = (o: { attrs: string[] }) => o.attrs.map(a => a.split(':')[0]);
      const expected = [...Object.keys(ATTRS), 'dropoutThreshold'].sort();
      for (const op of result.registry.ops) expect(attrNames(op).sort()).toEqual(expected);
    });

    it('declares seqLayout with the contract\'s three layouts', () => {
      for (const op of result.registry.ops) {
        expect(op.attrs).toContain("seqLayout: {'dense', 'padded', 'packed'} = 'dense'");
      }
    });

    it('infers out [B, Nq, H, Dv] and logsumexp [B, H, Nq]; gradients shaped like q, k, v', () => {
      expect(JSON.parse(result.shapes[0])).toEqual([[2, 100, 8, 32], [2, 8, 100]]);
      expect(JSON.parse(result.shapes[1])).toEqual([[2, 100, 8, 64], [2, 120, 2, 64], [2, 120, 2, 32]]);
      expect(result.shapes[2]).toMatch(/^error: .*rank 4/);
    });

    it('packed: out [1, totalQ, H, Dv] and logsumexp [1, H, totalQ]; gradients shaped like q, k, v', () => {
      expect(JSON.parse(result.shapes[3])).toEqual([[1, 250, 8, 32], [1, 8, 250]]);
      expect(JSON.parse(result.shapes[4])).toEqual([[1, 250, 8, 64], [1, 310, 2, 64], [1, 310, 2, 32]]);
    });

    it('loads only where CUDA sees a device, and says why otherwise', () => {
      expect(result.status.loaded).toBe(result.status.cudaDevices > 0);
      if (!result.status.loaded) expect(result.status.reason).toBe('no CUDA device is visible to the op library');
    });
  });

  it('the package registers no tensorflow kernel without a usable library, and warns once why', () => {
    const bundle = path.join(dir, 'register.js');
    execFileSync(path.join(ROOT, 'node_modules/.bin/esbuild'), [
      path.join(ROOT, 'kernels/tensorflow/register.ts'), '--bundle', '--platform=node', '--format=cjs',
      '--external:@tensorflow/tfjs-core', `--outfile=${bundle}`, '--log-level=warning']);
    const { out, stderr } = inChild(`
      require(${JSON.stringify(fakeBinding)});
      const tf = require('@tensorflow/tfjs-core');
      const reg = require(${JSON.stringify(bundle)});
      reg.ensureTensorflowKernels();     // what the op does on the tensorflow backend
      reg.registerTensorflowKernels();   // a second attempt must not warn again
      console.log(JSON.stringify({ status: reg.tensorflowKernelStatus(), kernel: tf.getKernel('FlashAttention', 'tensorflow') != null }));`,
    { TFJS_FLASH_ATTENTION_CUDA_DIR: dir });
    if (out.status.loaded) {   // a machine with a GPU: the (kernel-less) library is registered
      expect(out.kernel).toBe(true);
      return;
    }
    expect(out.kernel).toBe(false);
    expect(out.status.relevant).toBe(true);
    const warnings = stderr.split('\n').filter(l => l.includes('CUDA kernels unavailable'));
    expect(warnings).toEqual(['tfjs-flash-attention: CUDA kernels unavailable on the tensorflow backend, using the blockwise fallback: no CUDA device is visible to the op library']);
  });
});
