#!/usr/bin/env python3
"""Runs the TensorFlow op library's GPU kernels (native/tf_op/) on the GPU without TensorFlow:

  python3 tf_op_check.py --fake build/cuda/fakes/libtensorflow.so.2 --op build/cuda/flash_attention_op.so

The fake libtensorflow (native/test/fake_libtensorflow.cc) plays TensorFlow's part:
TF_LoadLibrary opens the op library, whose static initializer registers the ops and kernels; then
each case sets the op's attributes, hands the kernel device buffers as inputs and outputs (made by
PyTorch) and runs its compute function, which validates shapes, waits for the device, launches
the CUDA kernels through the C ABI and synchronizes, as it would inside TensorFlow. Results are
compared with the float64 reference of harness.py. What this does not cover: TensorFlow's own
allocator, streams and executor around the kernel.
"""
import argparse
import ctypes
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def load_fake(path):
    fake = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # as the loader's RTLD_NOLOAD | RTLD_GLOBAL
    fake.TF_NewStatus.restype = ctypes.c_void_p
    fake.TF_LoadLibrary.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    fake.TF_LoadLibrary.restype = ctypes.c_void_p
    fake.TF_GetCode.argtypes = [ctypes.c_void_p]
    fake.TF_Message.argtypes = [ctypes.c_void_p]
    fake.TF_Message.restype = ctypes.c_char_p
    fake.fake_tf_attr_float.argtypes = [ctypes.c_char_p, ctypes.c_double]
    fake.fake_tf_attr_int.argtypes = [ctypes.c_char_p, ctypes.c_int64]
    fake.fake_tf_attr_bool.argtypes = [ctypes.c_char_p, ctypes.c_int]
    fake.fake_tf_attr_string.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    fake.fake_tf_run.restype = ctypes.c_char_p
    return fake


def set_attrs(fake, c, precision, layout='dense', max_q=0, max_k=0, num_seqs=0):
    """The attributes the tfjs kernels send (kernels/tensorflow/flash_attention_tensorflow.ts)."""
    fake.fake_tf_clear_attrs()
    fake.fake_tf_attr_float(b'scale', c['scale'])
    fake.fake_tf_attr_float(b'softcap', c['softcap'])
    fake.fake_tf_attr_int(b'windowLeft', c['wl'])
    fake.fake_tf_attr_int(b'windowRight', c['wr'])
    fake.fake_tf_attr_bool(b'hasAlibi', int(c['alibi']))
    fake.fake_tf_attr_bool(b'hasMask', int(c['mask'] is not None))
    fake.fake_tf_attr_float(b'dropoutRate', c['dropout'])
    seed = c['seed'] & 0xffffffff
    fake.fake_tf_attr_int(b'seed', seed - (1 << 32) if seed >= 1 << 31 else seed)  # as int32, like tfjs
    fake.fake_tf_attr_string(b'precision', precision.encode())
    fake.fake_tf_attr_int(b'dropoutThreshold', harness.dropout_threshold(c['dropout']) if c['dropout'] > 0 else -1)
    fake.fake_tf_attr_string(b'seqLayout', layout.encode())
    fake.fake_tf_attr_int(b'maxSeqLenQ', max_q or c['Nq'])
    fake.fake_tf_attr_int(b'maxSeqLenK', max_k or c['Nk'])
    fake.fake_tf_attr_int(b'numSeqs', num_seqs or c['B'])


def run(fake, op, inputs, outputs):
    def arrays(ts):
        n = len(ts)
        data = (ctypes.c_void_p * n)(*[t.data_ptr() for t in ts])
        dims = [d for t in ts for d in t.shape]
        dims_arr = (ctypes.c_int64 * max(1, len(dims)))(*dims)
        ranks = (ctypes.c_int * n)(*[t.dim() for t in ts])
        nbytes = (ctypes.c_size_t * n)(*[t.numel() * t.element_size() for t in ts])
        return n, data, dims_arr, ranks, nbytes
    ni, idata, idims, iranks, ibytes = arrays(inputs)
    no, odata, odims, oranks, obytes = arrays(outputs)
    err = fake.fake_tf_run(op, ni, idata, idims, iranks, ibytes, no, odata, odims, oranks, obytes)
    return err.decode() if err else None


CASES = [
    ('causal', dict(B=2, Nq=200, Nk=200, H=4, causal=True)),
    ('everything (GQA, window, ALiBi, softcap, mask, dropout, Nq != Nk)',
     dict(B=2, Nq=150, Nk=190, H=6, Hkv=2, D=96, Dv=80, window=(60, 4), causal=True, alibi=True,
          softcap=8.0, mask='BHQK', dropout=0.2, seed=0xfffffff0)),
    ('mask [1,H,Nq,1] with empty rows', dict(Nq=90, Nk=100, H=3, mask='HQ')),
]


# The op's placeholder ranges when seqLayout is 'dense' (src/contract/kernel_names.ts). TensorFlow
# keeps a GPU kernel's int32 inputs in host memory: ranges here are CPU tensors, as they would be there.
NO_RANGES = torch.zeros(1, 2, dtype=torch.int32)

VARLEN_CASES = [
    # (name, case, lens_q, lens_k, layout)
    ('padded causal GQA, lengths 0, 1, full', dict(B=3, Nq=130, Nk=150, H=4, Hkv=2, causal=True),
     [0, 1, 130], [150, 1, 90], 'padded'),
    ('packed documents, ALiBi + dropout', dict(H=2, causal=True, alibi=True, dropout=0.1, seed=5),
     [100, 0, 257, 64], [100, 0, 257, 64], 'packed'),
]


def run_varlen_cases(fake, gen):
    ok = True
    for name, spec, lens_q, lens_k, layout in VARLEN_CASES:
        packed = layout == 'packed'
        base = dict(spec, B=len(lens_q), Nq=max(lens_q), Nk=max(lens_k)) if packed else dict(spec)
        c = harness.normalize(base)
        gen.manual_seed(len(name))
        q, k, v, dy, slopes, _ = harness.make_inputs(c, gen)
        ref = harness.reference(c, q, k, v, dy, slopes, None, lens_q, lens_k)
        if packed:
            q, dy = harness.pack_rows(q, lens_q), harness.pack_rows(dy, lens_q)
            k, v = harness.pack_rows(k, lens_k), harness.pack_rows(v, lens_k)
            ref = (harness.pack_rows(ref[0], lens_q), harness.pack_lse(ref[1], lens_q), harness.pack_rows(ref[2], lens_q),
                   harness.pack_rows(ref[3], lens_k), harness.pack_rows(ref[4], lens_k))
            rq, rk = harness.packed_ranges(lens_q).cpu(), harness.packed_ranges(lens_k).cpu()
        else:
            rq = torch.tensor([[b * c['Nq'], n] for b, n in enumerate(lens_q)], dtype=torch.int32)
            rk = torch.tensor([[b * c['Nk'], n] for b, n in enumerate(lens_k)], dtype=torch.int32)
        alibi_in = slopes if slopes is not None else torch.zeros(1, device='cuda')
        mask_in = torch.ones(1, 1, 1, 1, dtype=torch.bool, device='cuda')
        for precision, tol_fwd, tol_grad in (('highest', 1e-5, 1e-4), ('fast', 2e-2, 5e-2)):
            set_attrs(fake, c, precision, layout, max(lens_q), max(lens_k), len(lens_q))
            out = torch.full((q.shape[0], q.shape[1], c['H'], c['Dv']), float('nan'), device='cuda')
            lse = torch.full((q.shape[0], c['H'], q.shape[1]), float('nan'), device='cuda')
            err = run(fake, b'FlashAttention', [q, k, v, alibi_in, mask_in, rq, rk], [out, lse])
            dq, dk, dv = (torch.full_like(t, float('nan')) for t in (q, k, v))
            gerr = err or run(fake, b'FlashAttentionGrad', [q, k, v, alibi_in, mask_in, rq, rk, out, lse, dy], [dq, dk, dv])
            if gerr:
                print('%-70s %-8s FAILED: %s' % (name, precision, gerr))
                ok = False
                continue
            e_out, e_lse = harness.rel_err(out, ref[0]), harness.lse_err(lse, ref[1])
            e_grad = max(harness.rel_err(dq, ref[2]), harness.rel_err(dk, ref[3]), harness.rel_err(dv, ref[4]))
            good = e_out < tol_fwd and e_lse < tol_fwd and e_grad < tol_grad
            ok &= good
            print('%-70s %-8s out %.2e  lse %.2e  grads %.2e  %s' % (name, precision, e_out, e_lse, e_grad,
                                                                    'ok' if good else 'FAIL'))
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--fake', required=True)
    ap.add_argument('--op', required=True)
    a = ap.parse_args()
    fake = load_fake(a.fake)
    status = fake.TF_NewStatus()
    fake.TF_LoadLibrary(os.path.abspath(a.op).encode(), status)
    if fake.TF_GetCode(status) != 0:
        print('TF_LoadLibrary failed:', fake.TF_Message(status).decode())
        sys.exit(1)
    ok = True
    gen = torch.Generator(device='cuda')
    for name, spec in CASES:
        c = harness.normalize(spec)
        gen.manual_seed(len(name))
        q, k, v, dy, slopes, mask = harness.make_inputs(c, gen)
        ref_out, ref_lse, ref_dq, ref_dk, ref_dv = harness.reference(c, q, k, v, dy, slopes, mask)
        # Placeholders as the op sends them when an option is off (src/contract/kernel_names.ts).
        alibi_in = slopes if slopes is not None else torch.zeros(1, device='cuda')
        mask_in = mask.contiguous() if mask is not None else torch.ones(1, 1, 1, 1, dtype=torch.bool, device='cuda')
        for precision, tol_fwd, tol_grad in (('highest', 1e-5, 1e-4), ('fast', 2e-2, 5e-2)):
            set_attrs(fake, c, precision)
            out = torch.empty(c['B'], c['Nq'], c['H'], c['Dv'], device='cuda')
            lse = torch.empty(c['B'], c['H'], c['Nq'], device='cuda')
            err = run(fake, b'FlashAttention', [q, k, v, alibi_in, mask_in, NO_RANGES, NO_RANGES], [out, lse])
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            gerr = err or run(fake, b'FlashAttentionGrad', [q, k, v, alibi_in, mask_in, NO_RANGES, NO_RANGES, out, lse, dy],
                              [dq, dk, dv])
            if gerr:
                print('%-70s %-8s FAILED: %s' % (name, precision, gerr))
                ok = False
                continue
            e_out, e_lse = harness.rel_err(out, ref_out), harness.lse_err(lse, ref_lse)
            e_grad = max(harness.rel_err(dq, ref_dq), harness.rel_err(dk, ref_dk), harness.rel_err(dv, ref_dv))
            good = e_out < tol_fwd and e_lse < tol_fwd and e_grad < tol_grad
            ok &= good
            print('%-70s %-8s out %.2e  lse %.2e  grads %.2e  %s' % (name, precision, e_out, e_lse, e_grad, 'ok' if good else 'FAIL'))
    ok &= run_varlen_cases(fake, gen)
    # The kernel's own validation, reported through TF_OpKernelContext_Failure.
    c = harness.normalize(dict(Nq=64, Nk=64, H=4, Hkv=3))
    set_attrs(fake, c, 'highest')
    q = torch.zeros(1, 64, 4, 64, device='cuda')
    k = torch.zeros(1, 64, 3, 64, device='cuda')
    err = run(fake, b'FlashAttention', [q, k, k, torch.zeros(1, device='cuda'),
                                        torch.ones(1, 1, 1, 1, dtype=torch.bool, device='cuda'), NO_RANGES, NO_RANGES],
              [torch.empty(1, 64, 4, 64, device='cuda'), torch.empty(1, 4, 64, device='cuda')])
    shape_ok = err is not None and err.startswith('Error in flashAttention:')
    print('heads % kvHeads != 0 rejected:', repr(err), 'ok' if shape_ok else 'FAIL')
    set_attrs(fake, harness.normalize(dict()), 'medium')
    err = run(fake, b'FlashAttention', [q, q, q, torch.zeros(1, device='cuda'),
                                        torch.ones(1, 1, 1, 1, dtype=torch.bool, device='cuda'), NO_RANGES, NO_RANGES],
              [torch.empty(1, 64, 4, 64, device='cuda'), torch.empty(1, 4, 64, device='cuda')])
    prec_ok = err is not None and 'precision' in err
    print("precision 'medium' rejected:", repr(err), 'ok' if prec_ok else 'FAIL')
    ok &= shape_ok and prec_ok
    print('TF op library on the GPU through the fake TensorFlow:', 'ALL OK' if ok else 'FAILURES')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
