#!/usr/bin/env python3
"""Standalone harness of the CUDA kernels, through their C ABI (kernels/cuda/flash_attention.h).

  python3 harness.py --lib build/cuda/libflash_attention_cuda.so [--check] [--bench] [--out DIR]

--decode-check / --decode-bench: the split-KV decode forward (decode_splitkv.cu) against the
reference and the one-pass forward, and timed against it (GB/s over the bytes of K and V) and
against copy and read yardsticks measured the same way (CUDA graphs of back-to-back calls);
--decode-old-lib times another build beside it, --decode-sweep the forced split counts.
--check runs every option of the op, forward and gradients, against a float64 reference written
here from the contract in src/contract/kernel_names.ts (PyTorch on the GPU, float64, autograd for the
gradients; the dropout hash re-implemented and itself checked against dropout_vectors.json,
which src/contract/dropout.ts produced). --bench times the kernels against PyTorch's
scaled_dot_product_attention on the same GPU in the same process.
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
import zlib

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


class FaParams(ctypes.Structure):
    _fields_ = [
        ('batch', ctypes.c_int), ('seq_q', ctypes.c_int), ('seq_k', ctypes.c_int),
        ('heads', ctypes.c_int), ('kv_heads', ctypes.c_int), ('head_dim', ctypes.c_int),
        ('head_dim_v', ctypes.c_int), ('scale', ctypes.c_float), ('softcap', ctypes.c_float),
        ('window_left', ctypes.c_int), ('window_right', ctypes.c_int),
        ('alibi_slopes', ctypes.c_void_p), ('mask', ctypes.c_void_p),
        ('mask_strides', ctypes.c_int64 * 4), ('dropout_rate', ctypes.c_float),
        ('seed', ctypes.c_uint32), ('dropout_threshold', ctypes.c_int64), ('precision', ctypes.c_int),
        ('seq_layout', ctypes.c_int), ('seq_ranges_q', ctypes.c_void_p), ('seq_ranges_k', ctypes.c_void_p),
        ('rows_q', ctypes.c_int), ('rows_k', ctypes.c_int),
    ]


FA_SEQ_DENSE, FA_SEQ_PADDED, FA_SEQ_PACKED = 0, 1, 2


def load_library(path):
    lib = ctypes.CDLL(path)
    ptr = ctypes.c_void_p
    lib.fa_forward.argtypes = [ctypes.POINTER(FaParams)] + [ptr] * 7
    lib.fa_forward.restype = ctypes.c_int
    lib.fa_backward.argtypes = [ctypes.POINTER(FaParams)] + [ptr] * 11
    lib.fa_backward.restype = ctypes.c_int
    lib.fa_forward_workspace_size.argtypes = [ctypes.POINTER(FaParams)]
    lib.fa_forward_workspace_size.restype = ctypes.c_size_t
    lib.fa_backward_workspace_size.argtypes = [ctypes.POINTER(FaParams)]
    lib.fa_backward_workspace_size.restype = ctypes.c_size_t
    lib.fa_error_string.argtypes = [ctypes.c_int]
    lib.fa_error_string.restype = ctypes.c_char_p
    return lib


# ---------------------------------------------------------------- dropout hash (src/contract/dropout.ts)
M32 = 0xffffffff


def _mul32(x, c):
    # x * c mod 2^32 without overflowing int64: split c into 16-bit halves.
    return (x * (c & 0xffff) + (((x * (c >> 16)) & 0xffff) << 16)) & M32


def _mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7feb352d)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846ca68b)
    return x ^ (x >> 16)


def dropout_bits(seed, bh, i, j):
    """All int64 tensors (broadcastable) or ints; returns the uint32 bits as int64."""
    row = _mix32(_mix32(_mix32(torch.as_tensor((seed ^ 0x9e3779b9) & M32, dtype=torch.int64)) ^ bh) ^ i)
    return _mix32(row ^ j)


def dropout_threshold(rate):
    return min(math.floor(rate * 4294967296), 4294967295)


def check_dropout_vectors():
    with open(os.path.join(HERE, 'dropout_vectors.json')) as f:
        cases = json.load(f)['cases']
    bad = 0
    for c in cases:
        bits = int(dropout_bits(c['seed'], torch.tensor(c['bh']), torch.tensor(c['i']), torch.tensor(c['j'])))
        bad += bits != c['bits'] or dropout_threshold(c['rate']) != c['threshold'] or \
            (bits >= c['threshold']) != c['keep']
    return len(cases), bad


# ---------------------------------------------------------------- cases
def normalize(case):
    c = dict(B=1, Nq=64, Nk=64, H=2, Hkv=None, D=64, Dv=None, causal=False, window=None,
             softcap=0.0, alibi=False, mask=None, dropout=0.0, seed=1234, scale=None)
    c.update(case)
    c['Hkv'] = c['Hkv'] or c['H']
    c['Dv'] = c['Dv'] or c['D']
    c['scale'] = c['scale'] if c['scale'] is not None else 1 / math.sqrt(c['D'])
    wl, wr = c['window'] or (-1, -1)
    if c['causal']:
        wr = 0 if wr < 0 else min(wr, 0)
    c['wl'], c['wr'] = wl, wr
    return c


def make_inputs(c, gen):
    dev = 'cuda'
    q = torch.randn(c['B'], c['Nq'], c['H'], c['D'], generator=gen, device=dev)
    k = torch.randn(c['B'], c['Nk'], c['Hkv'], c['D'], generator=gen, device=dev)
    v = torch.randn(c['B'], c['Nk'], c['Hkv'], c['Dv'], generator=gen, device=dev)
    dy = torch.randn(c['B'], c['Nq'], c['H'], c['Dv'], generator=gen, device=dev)
    slopes = None
    if c['alibi']:
        slopes = torch.tensor([2 ** (-8 * (h + 1) / c['H']) for h in range(c['H'])], device=dev)
    mask = None
    if c['mask'] is not None:
        kind = c['mask']
        shape = [c['B'] if 'B' in kind else 1, c['H'] if 'H' in kind else 1,
                 c['Nq'] if 'Q' in kind else 1, c['Nk'] if 'K' in kind else 1]
        mask = torch.rand(*shape, generator=gen, device=dev) < 0.75
    return q, k, v, dy, slopes, mask


def reference(c, q, k, v, dy, slopes, mask, lens_q=None, lens_k=None, first_seq=0):
    """The contract of src/contract/kernel_names.ts, literally, in float64 (full score matrix).

    lens_q/lens_k (per batch element, the padded layout): the equivalent explicit mask (query i and
    key j exist when i < lens_q[b], j < lens_k[b]) with the offset lens_k[b] - lens_q[b] for the
    window, causal and ALiBi; rows past a length then come out 0 with logsumexp -inf and zero
    gradients, as the contract asks. first_seq: the sequence index of batch element 0 (dropout's
    b), for a reference run on one sequence of a larger call."""
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    dy = dy.double()
    B, Nq, H, D = q.shape
    Nk, g = k.shape[1], H // k.shape[2]
    kk, vv = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)  # kvh = h // g
    raw = torch.einsum('bihd,bjhd->bhij', q, kk) * c['scale']
    s = c['softcap'] * torch.tanh(raw / c['softcap']) if c['softcap'] > 0 else raw
    i = torch.arange(Nq, device=q.device)[:, None]
    j = torch.arange(Nk, device=q.device)[None, :]
    kept = torch.ones(1, 1, Nq, Nk, dtype=torch.bool, device=q.device)
    if lens_q is not None:
        lq = torch.tensor(lens_q, device=q.device)[:, None, None, None]
        lk = torch.tensor(lens_k, device=q.device)[:, None, None, None]
        off = lk - lq                                   # [B, 1, 1, 1]: per sequence
        kept = kept & (i < lq) & (j < lk)
    else:
        off = Nk - Nq
    if slopes is not None:
        s = s - slopes.double()[None, :, None, None] * (i + off - j).abs()
    if c['wl'] >= 0:
        kept = kept & (j >= i + off - c['wl'])
    if c['wr'] >= 0:
        kept = kept & (j <= i + off + c['wr'])
    kept = kept.expand(B, H, Nq, Nk)
    if mask is not None:
        kept = kept & mask.expand(B, H, Nq, Nk)
    # A large finite fill (not -inf) keeps autograd free of NaN; selecting by `kept` then zeroes
    # rows with no kept key, as the contract asks, and keeps a masked key out of every result
    # (its P and its gradient are exactly 0, even when NaN or Inf inputs make the row NaN).
    sm = s.masked_fill(~kept, -1e300)
    lse = torch.logsumexp(sm, dim=-1)
    p = torch.where(kept, torch.exp(sm - lse[..., None]), torch.zeros((), dtype=sm.dtype, device=sm.device))
    lse = lse.masked_fill(~kept.any(-1), -math.inf)
    if c['dropout'] > 0:
        bh = ((torch.arange(B, device=q.device)[:, None] + first_seq) * H + torch.arange(H, device=q.device)[None, :])
        bits = dropout_bits(c['seed'], bh[:, :, None, None], i[None, None], j[None, None])
        keep = bits >= dropout_threshold(c['dropout'])
        p = p * keep / (1 - c['dropout'])
    out = torch.einsum('bhij,bjhd->bihd', p, vv)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dy)
    return out.detach(), lse.detach(), dq, dk, dv


def params_for(c, slopes, mask, precision):
    p = FaParams()
    p.batch, p.seq_q, p.seq_k = c['B'], c['Nq'], c['Nk']
    p.heads, p.kv_heads, p.head_dim, p.head_dim_v = c['H'], c['Hkv'], c['D'], c['Dv']
    p.scale, p.softcap = c['scale'], c['softcap']
    p.window_left, p.window_right = c['wl'], c['wr']
    p.alibi_slopes = slopes.data_ptr() if slopes is not None else None
    if mask is not None:
        m = mask.contiguous()
        p.mask = m.data_ptr()
        for d in range(4):
            p.mask_strides[d] = m.stride(d) if m.shape[d] > 1 else 0
    p.dropout_rate = c['dropout']
    p.seed = c['seed'] & M32
    p.dropout_threshold = dropout_threshold(c['dropout']) if c['dropout'] > 0 else -1
    p.precision = precision
    p.seq_layout = FA_SEQ_DENSE
    return p


def set_ranges(p, layout, ranges_q, ranges_k, rows_q, rows_k, max_q, max_k):
    """Variable lengths (flash_attention.h): ranges int32 [numSeqs, 2] (start row, length) on the device."""
    p.seq_layout = layout
    p.batch, p.seq_q, p.seq_k = ranges_q.shape[0], max_q, max_k
    p.seq_ranges_q, p.seq_ranges_k = ranges_q.data_ptr(), ranges_k.data_ptr()
    p.rows_q, p.rows_k = rows_q, rows_k
    return p


class Kernels:
    def __init__(self, lib):
        self.lib = lib

    def _check(self, code):
        if code != 0:
            raise RuntimeError('fa error %d: %s' % (code, self.lib.fa_error_string(code).decode()))

    def forward_workspace(self, p, device='cuda'):
        return torch.empty(max(1, self.lib.fa_forward_workspace_size(ctypes.byref(p))), dtype=torch.uint8, device=device)

    def forward(self, p, q, k, v, out=None, lse=None, ws=None):
        B, Nq, H = q.shape[0], q.shape[1], q.shape[2]
        out = out if out is not None else torch.empty(B, Nq, H, v.shape[3], device=q.device)
        lse = lse if lse is not None else torch.empty(B, H, Nq, device=q.device)
        ws = ws if ws is not None else self.forward_workspace(p, q.device)
        self._check(self.lib.fa_forward(ctypes.byref(p), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                        out.data_ptr(), lse.data_ptr(), ws.data_ptr(),
                                        torch.cuda.current_stream().cuda_stream))
        return out, lse

    def backward(self, p, q, k, v, out, lse, dy, grads=None, ws=None):
        dq, dk, dv = grads if grads is not None else (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
        if ws is None:
            ws = torch.empty(self.lib.fa_backward_workspace_size(ctypes.byref(p)), dtype=torch.uint8, device=q.device)
        self._check(self.lib.fa_backward(ctypes.byref(p), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                         out.data_ptr(), lse.data_ptr(), dy.data_ptr(), dq.data_ptr(),
                                         dk.data_ptr(), dv.data_ptr(), ws.data_ptr(),
                                         torch.cuda.current_stream().cuda_stream))
        return dq, dk, dv


def rel_err(x, ref):
    """max |x - ref| / max |ref| (0 when both are all zero)."""
    ref = ref.double()
    scale = ref.abs().max().item()
    err = (x.double() - ref).abs().max().item()
    return err / scale if scale > 0 else err


def lse_err(x, ref):
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(x), finite) or not torch.equal(x[~finite], ref[~finite].float()):
        return math.inf
    return rel_err(x[finite], ref[finite]) if finite.any() else 0.0


CASES = [
    ('plain', dict(B=2, Nq=200, Nk=200, H=4)),
    ('causal', dict(B=2, Nq=200, Nk=200, H=4, causal=True)),
    ('causal seqQ<seqK', dict(Nq=130, Nk=257, H=3, causal=True)),
    ('causal seqQ>seqK (empty rows)', dict(Nq=300, Nk=170, H=2, causal=True)),
    ('window (32, 16)', dict(Nq=260, Nk=260, window=(32, 16))),
    ('window (-1, 8) seqQ!=seqK', dict(Nq=150, Nk=220, window=(-1, 8))),
    ('window (20, -1)', dict(Nq=190, Nk=190, window=(20, -1))),
    ('window (0, 0) seqQ>seqK', dict(Nq=100, Nk=70, window=(0, 0))),
    ('alibi + causal', dict(Nq=180, Nk=180, H=4, alibi=True, causal=True)),
    ('softcap 5', dict(Nq=160, Nk=140, softcap=5.0, scale=0.5)),
    ('mask [B,H,Nq,Nk]', dict(B=2, Nq=120, Nk=150, H=3, mask='BHQK')),
    ('mask [1,1,Nq,Nk]', dict(B=2, Nq=120, Nk=150, H=2, mask='QK')),
    ('mask [B,1,1,Nk]', dict(B=2, Nq=100, Nk=130, H=2, mask='BK')),
    ('mask [1,H,Nq,1] (empty rows)', dict(Nq=90, Nk=100, H=3, mask='HQ')),
    ('dropout 0.1', dict(B=2, Nq=150, Nk=170, H=2, dropout=0.1, seed=7)),
    ('dropout 0.5 causal', dict(Nq=140, Nk=140, H=2, dropout=0.5, seed=0xdeadbeef, causal=True)),
    ('GQA 8/2', dict(Nq=130, Nk=150, H=8, Hkv=2)),
    ('MQA 4/1 causal', dict(Nq=130, Nk=130, H=4, Hkv=1, causal=True)),
    ('headDim 32', dict(Nq=100, Nk=100, D=32)),
    ('headDim 33, Dv 17', dict(Nq=70, Nk=90, D=33, Dv=17)),
    ('headDim 80', dict(Nq=100, Nk=120, D=80)),
    ('headDim 128', dict(Nq=150, Nk=150, D=128, causal=True)),
    ('headDim 64, Dv 128', dict(Nq=100, Nk=100, D=64, Dv=128)),
    ('headDim 256', dict(Nq=100, Nk=110, D=256)),
    ('headDim 256 causal + alibi', dict(Nq=96, Nk=96, D=256, causal=True, alibi=True)),
    ('scale 0.3', dict(Nq=100, Nk=100, scale=0.3)),
    ('everything', dict(B=2, Nq=150, Nk=190, H=6, Hkv=2, D=96, Dv=80, window=(60, 4), causal=True,
                        alibi=True, softcap=8.0, mask='BHQK', dropout=0.2, seed=99)),
    ('long causal headDim 128', dict(Nq=1024, Nk=1024, H=2, D=128, causal=True)),
    ('long GQA dropout', dict(Nq=700, Nk=900, H=4, Hkv=2, dropout=0.3, alibi=True)),
]


# NaN and Inf in q, k, v must propagate as through the plain composite (a NaN query row gives a NaN
# output row and NaN logsumexp, not an empty row). Cases without masks or windows: there a dense
# reference and a tiled kernel agree on where 0 * NaN products land. (tensor, index, value);
# index None = the whole last dimension.
NONFINITE_CASES = [
    ('NaN in one q row', dict(B=2, Nq=100, Nk=90, H=2), ('q', (1, 37, 1, None), math.nan)),
    ('NaN in one q row, headDim 128', dict(Nq=150, Nk=150, D=128), ('q', (0, 140, 0, None), math.nan)),
    ('NaN in one k element, GQA 4/2', dict(Nq=80, Nk=130, H=4, Hkv=2), ('k', (0, 64, 1, 5), math.nan)),
    ('NaN in one v element', dict(Nq=90, Nk=110, H=2), ('v', (0, 20, 1, 9), math.nan)),
    ('+Inf in one v element', dict(Nq=90, Nk=110, H=2), ('v', (0, 20, 1, 9), math.inf)),
]


def nonfinite_err(x, ref):
    """inf unless x is non-finite exactly where ref is; else rel_err over the finite entries."""
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(x), finite):
        return math.inf
    return rel_err(x[finite], ref[finite]) if finite.any() else 0.0


def run_nonfinite_checks(kern, gen):
    rows, all_ok = [], True
    for name, spec, (tensor_name, index, value) in NONFINITE_CASES:
        c = normalize(spec)
        gen.manual_seed(zlib.crc32(name.encode()))
        q, k, v, dy, slopes, mask = make_inputs(c, gen)
        x = dict(q=q, k=k, v=v)[tensor_name]
        x[tuple(slice(None) if i is None else i for i in index)] = value
        ref = reference(c, q, k, v, dy, slopes, mask)
        e = {}
        for precision, label in ((0, ''), (1, 'fast_')):
            p = params_for(c, slopes, mask, precision)
            out, lse = kern.forward(p, q, k, v)
            got = (out, lse) + kern.backward(p, q, k, v, out, lse, dy)
            torch.cuda.synchronize()
            for key, g, r in zip(('out', 'lse', 'dq', 'dk', 'dv'), got, ref):
                e[label + key] = nonfinite_err(g, r)
        nonfinite = {key: int((~torch.isfinite(r)).sum()) for key, r in zip(('out', 'lse', 'dq', 'dk', 'dv'), ref)}
        ok = (max(e[k_] for k_ in ('out', 'lse')) < 1e-5 and max(e[k_] for k_ in ('dq', 'dk', 'dv')) < 1e-4
              and max(e[k_] for k_ in ('fast_out', 'fast_lse')) < 2e-2
              and max(e[k_] for k_ in ('fast_dq', 'fast_dk', 'fast_dv')) < 5e-2 and nonfinite['out'] > 0)
        all_ok &= ok
        rows.append(dict(name=name, errors=e, nonfinite_in_reference=nonfinite, ok=ok))
        print('%-34s %9.2e %9.2e %9.2e %9.2e %9.2e | %9.2e %9.2e %9.2e  non-finite in ref: %s %s' % (
            name, e['out'], e['lse'], e['dq'], e['dk'], e['dv'], e['fast_out'], e['fast_lse'],
            max(e['fast_dq'], e['fast_dk'], e['fast_dv']), nonfinite, 'ok' if ok else 'FAIL'))
    return rows, all_ok


def run_checks(kern, report):
    n, bad = check_dropout_vectors()
    report['dropout_vectors'] = {'cases': n, 'mismatches': bad}
    print('dropout hash vs src/contract/dropout.ts vectors: %d cases, %d mismatches' % (n, bad))
    gen = torch.Generator(device='cuda')
    rows = []
    worst = {'fwd': 0.0, 'lse': 0.0, 'grad': 0.0, 'fast_fwd': 0.0, 'fast_grad': 0.0}
    all_ok = bad == 0
    print('%-34s %9s %9s %9s %9s %9s | %9s %9s %9s  %s' % ('case', 'out', 'lse', 'dq', 'dk', 'dv', 'fast out', 'fast lse', 'fast grad', 'det'))
    for name, spec in CASES:
        c = normalize(spec)
        gen.manual_seed(zlib.crc32(name.encode()))
        q, k, v, dy, slopes, mask = make_inputs(c, gen)
        ref_out, ref_lse, ref_dq, ref_dk, ref_dv = reference(c, q, k, v, dy, slopes, mask)
        mask_c = mask.contiguous() if mask is not None else None
        p = params_for(c, slopes, mask_c, 0)
        out, lse = kern.forward(p, q, k, v)
        dq, dk, dv = kern.backward(p, q, k, v, out, lse, dy)
        dq2, dk2, dv2 = kern.backward(p, q, k, v, out, lse, dy)
        det = torch.equal(dq, dq2) and torch.equal(dk, dk2) and torch.equal(dv, dv2)
        pf = params_for(c, slopes, mask_c, 1)
        fout, flse = kern.forward(pf, q, k, v)
        fdq, fdk, fdv = kern.backward(pf, q, k, v, fout, flse, dy)
        torch.cuda.synchronize()
        e = dict(out=rel_err(out, ref_out), lse=lse_err(lse, ref_lse), dq=rel_err(dq, ref_dq),
                 dk=rel_err(dk, ref_dk), dv=rel_err(dv, ref_dv), fast_out=rel_err(fout, ref_out),
                 fast_lse=lse_err(flse, ref_lse), fast_grad=max(rel_err(fdq, ref_dq), rel_err(fdk, ref_dk), rel_err(fdv, ref_dv)),
                 deterministic=det)
        # 'fast' rounds operands to BF16 (8-bit mantissa): its bounds are sanity bounds, the
        # measured errors are what the report gives.
        ok = e['out'] < 1e-5 and e['lse'] < 1e-5 and max(e['dq'], e['dk'], e['dv']) < 1e-4 and det \
            and e['fast_out'] < 2e-2 and e['fast_lse'] < 2e-2 and e['fast_grad'] < 5e-2
        all_ok &= ok
        worst['fwd'] = max(worst['fwd'], e['out'])
        worst['lse'] = max(worst['lse'], e['lse'])
        worst['grad'] = max(worst['grad'], e['dq'], e['dk'], e['dv'])
        worst['fast_fwd'] = max(worst['fast_fwd'], e['fast_out'])
        worst['fast_grad'] = max(worst['fast_grad'], e['fast_grad'])
        rows.append(dict(name=name, case={k_: (list(v_) if isinstance(v_, tuple) else v_) for k_, v_ in c.items()},
                         errors=e, ok=ok))
        print('%-34s %9.2e %9.2e %9.2e %9.2e %9.2e | %9.2e %9.2e %9.2e  %s %s' % (
            name, e['out'], e['lse'], e['dq'], e['dk'], e['dv'], e['fast_out'], e['fast_lse'], e['fast_grad'],
            'yes' if det else 'NO', 'ok' if ok else 'FAIL'))
    print('NaN/Inf inputs: non-finite exactly where the float64 reference is, errors over the finite entries')
    report['nonfinite_checks'], nonfinite_ok = run_nonfinite_checks(kern, gen)
    all_ok &= nonfinite_ok
    all_ok &= run_varlen_checks(kern, gen, report, worst)
    report['checks'] = rows
    report['worst'] = worst
    report['checks_ok'] = all_ok
    print('worst: forward %.2e, lse %.2e, gradients %.2e, fast forward %.2e, fast gradients %.2e -> %s' % (
        worst['fwd'], worst['lse'], worst['grad'], worst['fast_fwd'], worst['fast_grad'], 'ALL OK' if all_ok else 'FAILURES'))
    return all_ok


# ---------------------------------------------------------------- variable lengths
# Padded layout: (name, case, lens_q, lens_k), one length per batch element, including 0, 1, the
# full length and others; seqQ != seqK; every option. Padding rows of q, k, v and dy are NaN in the
# kernels' inputs (the reference sees the clean values): nothing past a length may be read.
VARLEN_PADDED = [
    ('padded plain', dict(B=4, Nq=130, Nk=150, H=2), [0, 1, 130, 77], [150, 1, 0, 101]),
    ('padded causal', dict(B=4, Nq=130, Nk=150, H=2, causal=True), [0, 1, 130, 77], [150, 1, 0, 101]),
    ('padded causal lenQ>lenK (empty rows)', dict(B=4, Nq=200, Nk=120, H=2, causal=True),
     [200, 150, 1, 0], [120, 37, 120, 5]),
    ('padded window (32, 16)', dict(B=3, Nq=260, Nk=260, window=(32, 16)), [260, 100, 3], [200, 260, 1]),
    ('padded window (-1, 8)', dict(B=3, Nq=150, Nk=220, window=(-1, 8)), [150, 64, 17], [220, 65, 190]),
    ('padded window (20, -1)', dict(B=2, Nq=190, Nk=190, window=(20, -1)), [190, 55], [100, 190]),
    ('padded alibi + causal', dict(B=3, Nq=180, Nk=180, H=4, alibi=True, causal=True), [180, 97, 1], [180, 130, 64]),
    ('padded softcap 5', dict(B=2, Nq=160, Nk=140, softcap=5.0, scale=0.5), [160, 33], [1, 140]),
    ('padded mask [B,H,Nq,Nk]', dict(B=3, Nq=120, Nk=150, H=3, mask='BHQK'), [120, 70, 0], [150, 90, 40]),
    ('padded mask [B,1,1,Nk]', dict(B=2, Nq=100, Nk=130, H=2, mask='BK'), [64, 100], [130, 77]),
    ('padded dropout 0.3', dict(B=3, Nq=150, Nk=170, H=2, dropout=0.3, seed=7), [150, 81, 1], [170, 1, 99]),
    ('padded dropout 0.5 causal', dict(B=2, Nq=140, Nk=140, H=2, dropout=0.5, seed=0xdeadbeef, causal=True),
     [140, 70], [140, 120]),
    ('padded GQA 8/2', dict(B=3, Nq=130, Nk=150, H=8, Hkv=2), [130, 65, 0], [150, 1, 150]),
    ('padded MQA 4/1 causal', dict(B=2, Nq=130, Nk=130, H=4, Hkv=1, causal=True), [130, 90], [129, 100]),
    ('padded headDim 33, Dv 17', dict(B=2, Nq=70, Nk=90, D=33, Dv=17), [70, 35], [45, 90]),
    ('padded headDim 128 causal', dict(B=2, Nq=150, Nk=150, D=128, causal=True), [150, 77], [150, 140]),
    ('padded headDim 256 causal + alibi', dict(B=2, Nq=96, Nk=96, D=256, causal=True, alibi=True), [96, 40], [50, 96]),
    ('padded every length full', dict(B=2, Nq=120, Nk=150, H=2, causal=True), [120, 120], [150, 150]),
    ('padded everything', dict(B=3, Nq=150, Nk=190, H=6, Hkv=2, D=96, Dv=80, window=(60, 4), causal=True,
                                alibi=True, softcap=8.0, mask='BHQK', dropout=0.2, seed=99), [150, 81, 0], [190, 64, 33]),
    ('padded long GQA causal', dict(B=3, Nq=700, Nk=900, H=4, Hkv=2, causal=True), [700, 333, 1], [900, 500, 651]),
]

# Packed layout: (name, case, lens_q, lens_k); the case's B, Nq, Nk are ignored (set from the
# lengths). No mask (the op rejects one with packed sequences).
VARLEN_PACKED = [
    ('packed plain', dict(H=2), [37, 0, 1, 150, 64], [37, 5, 1, 150, 90]),
    ('packed causal (documents)', dict(H=2, causal=True), [100, 1, 257, 0, 64], [100, 1, 257, 0, 64]),
    ('packed causal lenQ!=lenK', dict(H=2, causal=True), [80, 130, 5], [120, 60, 5]),
    ('packed window (32, 16)', dict(window=(32, 16)), [260, 3, 100], [260, 3, 77]),
    ('packed window (20, -1)', dict(window=(20, -1)), [190, 55], [190, 55]),
    ('packed alibi + causal', dict(H=4, alibi=True, causal=True), [180, 97, 1], [180, 97, 1]),
    ('packed softcap 5', dict(softcap=5.0, scale=0.5), [160, 33], [140, 33]),
    ('packed dropout 0.3', dict(H=2, dropout=0.3, seed=7), [150, 81, 1], [170, 81, 9]),
    ('packed GQA 8/2 causal', dict(H=8, Hkv=2, causal=True), [130, 65, 0, 7], [130, 65, 3, 7]),
    ('packed headDim 33, Dv 17', dict(D=33, Dv=17), [70, 35], [45, 90]),
    ('packed headDim 128 causal', dict(D=128, causal=True), [150, 77, 20], [150, 77, 20]),
    ('packed headDim 256 alibi', dict(D=256, alibi=True), [96, 40], [50, 96]),
    ('packed everything', dict(H=6, Hkv=2, D=96, Dv=80, window=(60, 4), causal=True, alibi=True, softcap=8.0,
                               dropout=0.2, seed=99), [150, 81, 0, 12], [190, 64, 33, 12]),
    ('packed 9 documents causal', dict(H=4, Hkv=2, causal=True), [700, 1, 64, 129, 333, 2, 250, 0, 500],
     [700, 1, 64, 129, 333, 2, 250, 0, 500]),
]


def packed_ranges(lens):
    starts = [0]
    for n in lens[:-1]:
        starts.append(starts[-1] + n)
    return torch.tensor([[a, n] for a, n in zip(starts, lens)], dtype=torch.int32, device='cuda').reshape(-1, 2)


def pack_rows(x, lens):
    """[S, N, ...] -> [1, sum(lens), ...]: each sequence's first lens[s] rows, back to back."""
    return torch.cat([x[s, :n] for s, n in enumerate(lens)], dim=0)[None]


def pack_lse(lse, lens):
    """[S, H, N] -> [1, H, sum(lens)]."""
    return torch.cat([lse[s, :, :n] for s, n in enumerate(lens)], dim=-1)[None]


def nan_padding(x, lens):
    """A copy of x [B, N, ...] with NaN in every row past lens[b]."""
    y = x.clone()
    for b, n in enumerate(lens):
        y[b, n:] = math.nan
    return y


def run_varlen_case(kern, gen, name, spec, lens_q, lens_k, layout):
    """Both precisions of one case: errors against the float64 reference, padding written as zeros,
    deterministic gradients, and (packed, no dropout) each sequence equal to running it alone."""
    packed = layout == FA_SEQ_PACKED
    base = dict(spec)
    if packed:
        base.update(B=len(lens_q), Nq=max(lens_q), Nk=max(lens_k))
    c = normalize(base)
    gen.manual_seed(zlib.crc32(name.encode()))
    q, k, v, dy, slopes, mask = make_inputs(c, gen)
    ref = reference(c, q, k, v, dy, slopes, mask, lens_q, lens_k)
    if packed:
        ins = [pack_rows(q, lens_q), pack_rows(k, lens_k), pack_rows(v, lens_k), pack_rows(dy, lens_q)]
        ref = (pack_rows(ref[0], lens_q), pack_lse(ref[1], lens_q), pack_rows(ref[2], lens_q),
               pack_rows(ref[3], lens_k), pack_rows(ref[4], lens_k))
        rq, rk = packed_ranges(lens_q), packed_ranges(lens_k)
        geometry = (sum(lens_q), sum(lens_k), max(lens_q), max(lens_k))
    else:
        ins = [nan_padding(q, lens_q), nan_padding(k, lens_k), nan_padding(v, lens_k), nan_padding(dy, lens_q)]
        B, Nq, Nk = c['B'], c['Nq'], c['Nk']
        rq = torch.tensor([[b * Nq, n] for b, n in enumerate(lens_q)], dtype=torch.int32, device='cuda')
        rk = torch.tensor([[b * Nk, n] for b, n in enumerate(lens_k)], dtype=torch.int32, device='cuda')
        geometry = (B * Nq, B * Nk, Nq, Nk)
    qi, ki, vi, dyi = ins
    mask_c = mask.contiguous() if mask is not None else None
    e = {}
    ok = True
    for precision, label in ((0, ''), (1, 'fast_')):
        p = set_ranges(params_for(c, slopes, mask_c, precision), layout, rq, rk, *geometry)
        # Outputs start as NaN: every element must be written.
        out = torch.full((qi.shape[0], qi.shape[1], c['H'], c['Dv']), math.nan, device='cuda')
        lse = torch.full((qi.shape[0], c['H'], qi.shape[1]), math.nan, device='cuda')
        kern.forward(p, qi, ki, vi, out, lse)
        grads = tuple(torch.full_like(t, math.nan) for t in (qi, ki, vi))
        kern.backward(p, qi, ki, vi, out, lse, dyi, grads)
        again = tuple(torch.full_like(t, math.nan) for t in (qi, ki, vi))
        kern.backward(p, qi, ki, vi, out, lse, dyi, again)
        torch.cuda.synchronize()
        got = (out, lse) + grads
        e[label + 'out'] = rel_err(out, ref[0])
        e[label + 'lse'] = lse_err(lse, ref[1])
        for key, g_, r_ in zip(('dq', 'dk', 'dv'), grads, ref[2:]):
            e[label + key] = rel_err(g_, r_)
        e[label + 'deterministic'] = all(torch.equal(a, b) for a, b in zip(grads, again))
        finite = all(bool(torch.isfinite(t).all()) for t in (out, ) + grads)
        e[label + 'finite'] = finite
        if not packed:  # rows and keys past a length: exactly 0 (and -inf)
            zero = True
            for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
                zero &= bool((out[b, lq:] == 0).all()) and bool((grads[0][b, lq:] == 0).all())
                zero &= bool((lse[b, :, lq:] == -math.inf).all())
                zero &= bool((grads[1][b, lk:] == 0).all()) and bool((grads[2][b, lk:] == 0).all())
            e[label + 'padding_zero'] = zero
        elif c['dropout'] == 0:  # each sequence alone (a dense call) gives the same numbers
            worst = 0.0
            sq = sk = 0
            for lq, lk in zip(lens_q, lens_k):
                if lq > 0 and lk > 0:
                    cs = normalize(dict(spec, B=1, Nq=lq, Nk=lk))
                    pa = params_for(cs, slopes, None, precision)
                    qa, ka, va, da = (x[:, a:a + n].contiguous() for x, a, n in
                                      ((qi, sq, lq), (ki, sk, lk), (vi, sk, lk), (dyi, sq, lq)))
                    oa, la = kern.forward(pa, qa, ka, va)
                    ga = kern.backward(pa, qa, ka, va, oa, la, da)
                    torch.cuda.synchronize()
                    worst = max(worst, rel_err(out[:, sq:sq + lq], oa), rel_err(grads[0][:, sq:sq + lq], ga[0]),
                                rel_err(grads[1][:, sk:sk + lk], ga[1]), rel_err(grads[2][:, sk:sk + lk], ga[2]),
                                lse_err(lse[:, :, sq:sq + lq], la.double()))
                sq += lq
                sk += lk
            e[label + 'vs_alone'] = worst
        fwd_tol, grad_tol = (1e-5, 1e-4) if precision == 0 else (2e-2, 5e-2)
        ok &= e[label + 'out'] < fwd_tol and e[label + 'lse'] < fwd_tol and finite
        ok &= max(e[label + 'dq'], e[label + 'dk'], e[label + 'dv']) < grad_tol and e[label + 'deterministic']
        ok &= e.get(label + 'padding_zero', True) and e.get(label + 'vs_alone', 0.0) < 1e-5
    return e, ok


def run_varlen_checks(kern, gen, report, worst):
    print('variable lengths: padded (NaN in the padding of the inputs) and packed, vs the float64 reference '
          'with the equivalent mask; packed also vs each sequence alone')
    print('%-40s %9s %9s %9s %9s %9s | %9s %9s %9s  %s' % ('case', 'out', 'lse', 'dq', 'dk', 'dv', 'fast out',
                                                          'fast lse', 'fast grad', 'det pad/alone'))
    rows, all_ok = [], True
    for layout, cases in ((FA_SEQ_PADDED, VARLEN_PADDED), (FA_SEQ_PACKED, VARLEN_PACKED)):
        for name, spec, lens_q, lens_k in cases:
            e, ok = run_varlen_case(kern, gen, name, spec, lens_q, lens_k, layout)
            all_ok &= ok
            worst['fwd'] = max(worst['fwd'], e['out'])
            worst['lse'] = max(worst['lse'], e['lse'])
            worst['grad'] = max(worst['grad'], e['dq'], e['dk'], e['dv'])
            worst['fast_fwd'] = max(worst['fast_fwd'], e['fast_out'])
            worst['fast_grad'] = max(worst['fast_grad'], e['fast_dq'], e['fast_dk'], e['fast_dv'])
            rows.append(dict(name=name, layout='packed' if layout == FA_SEQ_PACKED else 'padded', lens_q=lens_q,
                             lens_k=lens_k, case={k_: (list(v_) if isinstance(v_, tuple) else v_) for k_, v_ in spec.items()},
                             errors=e, ok=ok))
            extra = ('pad0 %s' % ('yes' if e['padding_zero'] and e['fast_padding_zero'] else 'NO')) \
                if 'padding_zero' in e else ('alone %.1e/%.1e' % (e['vs_alone'], e['fast_vs_alone'])
                                             if 'vs_alone' in e else 'alone -')
            print('%-40s %9.2e %9.2e %9.2e %9.2e %9.2e | %9.2e %9.2e %9.2e  %s %s %s' % (
                name, e['out'], e['lse'], e['dq'], e['dk'], e['dv'], e['fast_out'], e['fast_lse'],
                max(e['fast_dq'], e['fast_dk'], e['fast_dv']),
                'yes' if e['deterministic'] and e['fast_deterministic'] else 'NO', extra, 'ok' if ok else 'FAIL'),
                flush=True)
    report['varlen_checks'] = rows
    return all_ok


def time_varlen_variants(kern, row, c, mask, q, k, v, dy, reps, with_ranges):
    """Times forward and forward+backward of the same work three ways, in both precisions, into
    row['<precision>_<variant>_fwd|fwdbwd']: with_ranges(params) (the lengths), the explicit mask,
    and dense without a mask."""
    for precision, label in ((0, 'exact'), (1, 'fast')):
        variants = {
            'varlen': with_ranges(params_for(c, None, None, precision)),
            'masked': params_for(c, None, mask, precision),
            'dense': params_for(c, None, None, precision),
        }
        for vname, p in variants.items():
            out, lse = kern.forward(p, q, k, v)
            ws = kern.forward_workspace(p)
            grads = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
            wsb = torch.empty(kern.lib.fa_backward_workspace_size(ctypes.byref(p)), dtype=torch.uint8, device='cuda')
            row['%s_%s_fwd' % (label, vname)] = time_ms(lambda: kern.forward(p, q, k, v, out, lse, ws), 2, reps)
            row['%s_%s_fwdbwd' % (label, vname)] = time_ms(
                lambda: (kern.forward(p, q, k, v, out, lse, ws), kern.backward(p, q, k, v, out, lse, dy, grads, wsb)),
                2, reps)


def run_varlen_bench(kern, report, n, dims):
    """A ragged batch (8 sequences, lengths n/8 .. n) and packed causal documents, each against the
    same work done today: a dense call with the equivalent explicit mask; and the dense call
    without any mask (8·n², or the whole causal triangle) as the cost a batch pays without lengths."""
    torch.backends.cuda.matmul.allow_tf32 = False
    H, reps = 16, 5
    rows = []
    print('variable lengths, ms (median of %d): varlen call | dense call with the equivalent mask | dense call, no mask'
          % reps)
    for D in dims:
        # Ragged batch: padded layout.
        B = 8
        lens = [n * (b + 1) // 8 for b in range(B)]
        for causal in (False, True):
            c = normalize(dict(B=B, Nq=n, Nk=n, H=H, D=D, causal=causal))
            g = torch.Generator(device='cuda').manual_seed(n + D)
            q, k, v, dy, _, _ = make_inputs(c, g)
            idx = torch.arange(n, device='cuda')
            lt = torch.tensor(lens, device='cuda')
            mask = ((idx[None, :, None] < lt[:, None, None]) & (idx[None, None, :] < lt[:, None, None]))[:, None]
            r_ = torch.tensor([[b * n, m] for b, m in enumerate(lens)], dtype=torch.int32, device='cuda')
            row = dict(kind='ragged batch', D=D, n=n, B=B, lens=lens, causal=causal,
                       work_ratio=sum(m * m for m in lens) / (B * n * n))
            time_varlen_variants(kern, row, c, mask, q, k, v, dy, reps, lambda p: set_ranges(
                p, FA_SEQ_PADDED, r_, r_, B * n, B * n, n, n))
            rows.append(row)
            print_varlen_row(row)
            del q, k, v, dy, mask
            torch.cuda.empty_cache()
        # Packed documents: 2n tokens in 8 documents of uneven lengths, causal (document masking).
        T = 2 * n
        doc = [T * w // 36 for w in (1, 2, 3, 4, 5, 6, 7)]
        doc.append(T - sum(doc))
        c = normalize(dict(B=1, Nq=T, Nk=T, H=H, D=D, causal=True))
        g = torch.Generator(device='cuda').manual_seed(T + D)
        q, k, v, dy, _, _ = make_inputs(c, g)
        seq_id = torch.repeat_interleave(torch.arange(len(doc), device='cuda'), torch.tensor(doc, device='cuda'))
        mask = (seq_id[:, None] == seq_id[None, :])[None, None]  # block diagonal; causal from the window
        r_ = packed_ranges(doc)
        row = dict(kind='packed documents', D=D, n=T, B=1, lens=doc, causal=True,
                   work_ratio=sum(m * m for m in doc) / (T * T))
        time_varlen_variants(kern, row, c, mask, q, k, v, dy, reps, lambda p: set_ranges(
            p, FA_SEQ_PACKED, r_, r_, T, T, max(doc), max(doc)))
        rows.append(row)
        print_varlen_row(row)
        del q, k, v, dy, mask
        torch.cuda.empty_cache()
    report['varlen_bench'] = rows


def print_varlen_row(r):
    parts = []
    for label in ('exact', 'fast'):
        for kind in ('fwd', 'fwdbwd'):
            vl, mk, dn = (r['%s_%s_%s' % (label, v_, kind)] for v_ in ('varlen', 'masked', 'dense'))
            parts.append('%s %s %.3f | %.3f | %.3f (x%.2f of masked)' % (label, kind, vl, mk, dn, vl / mk))
    print('%-16s D=%d n=%d causal=%s lens=%s sum(len^2)/dense=%.2f\n    %s' % (
        r['kind'], r['D'], r['n'], r['causal'], r['lens'], r['work_ratio'], '\n    '.join(parts)), flush=True)


# ---------------------------------------------------------------- split-KV decode forward
# decode_splitkv.cu: picked by fa_forward for <= 16 query rows over >= 256 keys on the exact path;
# FA_DECODE=0 forces the one-pass forward, FA_DECODE=1 the split-KV forward, FA_DECODE_SPLITS=n
# the split count. (name, case, lens_q, lens_k, layout, splits): lens None = dense.
DECODE_CASES = [
    ('decode seqQ 1 MHA 16', dict(B=2, Nq=1, Nk=300, H=16), None, None, FA_SEQ_DENSE, None),
    ('decode seqQ 1 GQA 16/2 d128', dict(Nq=1, Nk=5000, H=16, Hkv=2, D=128), None, None, FA_SEQ_DENSE, None),
    ('decode seqQ 4 causal GQA 8/2', dict(B=2, Nq=4, Nk=1000, H=8, Hkv=2, causal=True), None, None, FA_SEQ_DENSE, None),
    ('decode seqQ 16 causal GQA 16/2', dict(Nq=16, Nk=777, H=16, Hkv=2), None, None, FA_SEQ_DENSE, None),
    ('decode seqQ 16 window (100, 0)', dict(Nq=16, Nk=2000, H=4, window=(100, 0)), None, None, FA_SEQ_DENSE, None),
    ('decode seqQ 4 window (64, 8)', dict(Nq=4, Nk=1500, H=4, window=(64, 8)), None, None, FA_SEQ_DENSE, None),
    ('decode alibi + causal', dict(Nq=4, Nk=900, H=4, alibi=True, causal=True), None, None, FA_SEQ_DENSE, None),
    ('decode softcap 5', dict(Nq=1, Nk=3000, H=4, softcap=5.0, scale=0.5), None, None, FA_SEQ_DENSE, None),
    ('decode mask [B,H,Nq,Nk]', dict(B=2, Nq=4, Nk=600, H=4, Hkv=2, mask='BHQK'), None, None, FA_SEQ_DENSE, None),
    ('decode mask [B,1,1,Nk]', dict(B=2, Nq=1, Nk=1200, H=4, mask='BK'), None, None, FA_SEQ_DENSE, None),
    ('decode dropout 0.3', dict(B=2, Nq=4, Nk=800, H=4, Hkv=2, dropout=0.3, seed=7), None, None, FA_SEQ_DENSE, None),
    ('decode MQA 8/1 causal seqQ 16', dict(Nq=16, Nk=1000, H=8, Hkv=1, causal=True), None, None, FA_SEQ_DENSE, None),
    ('decode headDim 33, Dv 17', dict(Nq=4, Nk=400, H=2, D=33, Dv=17), None, None, FA_SEQ_DENSE, None),
    ('decode headDim 256 alibi', dict(Nq=2, Nk=700, H=4, D=256, alibi=True), None, None, FA_SEQ_DENSE, None),
    ('decode headDim 64, Dv 128', dict(Nq=3, Nk=513, H=4, D=64, Dv=128), None, None, FA_SEQ_DENSE, None),
    ('decode everything', dict(B=2, Nq=8, Nk=1300, H=6, Hkv=2, D=96, Dv=80, window=(600, 4), causal=True, alibi=True,
                               softcap=8.0, mask='BHQK', dropout=0.2, seed=99), None, None, FA_SEQ_DENSE, None),
    ('decode 1 split', dict(Nq=1, Nk=2000, H=4), None, None, FA_SEQ_DENSE, 1),
    ('decode 79 splits causal window', dict(Nq=4, Nk=5000, H=4, Hkv=2, causal=True, window=(300, -1)), None, None,
     FA_SEQ_DENSE, 79),
    ('decode padded causal GQA 16/2', dict(B=4, Nq=16, Nk=3000, H=16, Hkv=2, causal=True),
     [16, 1, 0, 7], [3000, 1, 257, 0], FA_SEQ_PADDED, None),
    ('decode padded seqQ 1 alibi dropout', dict(B=5, Nq=1, Nk=4096, H=4, alibi=True, dropout=0.3, seed=5),
     [1, 1, 1, 0, 1], [0, 1, 300, 2000, 4096], FA_SEQ_PADDED, None),
    ('decode padded mask + softcap', dict(B=3, Nq=4, Nk=700, H=4, Hkv=2, mask='BHQK', softcap=5.0),
     [4, 2, 1], [700, 256, 1], FA_SEQ_PADDED, None),
    ('decode packed causal GQA 16/2', dict(H=16, Hkv=2, causal=True), [1, 4, 0, 16, 1], [500, 3000, 10, 16, 0],
     FA_SEQ_PACKED, None),
    ('decode packed window softcap dropout', dict(H=4, window=(200, 0), softcap=6.0, dropout=0.2, seed=3),
     [2, 1, 8], [2500, 1, 900], FA_SEQ_PACKED, None),
    # The split count of decodePlan at d 128 (32-key tiles), a length that is no multiple of a tile.
    ('decode seqQ 1 MHA 16 d128 planned splits', dict(Nq=1, Nk=20011, H=16, D=128), None, None, FA_SEQ_DENSE, None),
    # More splits than combine threads (each thread weighs two), and two row chunks per kv head.
    ('decode MQA 16/1 d128 256 splits', dict(Nq=1, Nk=9000, H=16, Hkv=1, D=128), None, None, FA_SEQ_DENSE, 256),
    # Partial rows padded to a float4 (Dv 17 -> 20) through the combine's column quads.
    ('decode headDim 33, Dv 17, 200 splits', dict(Nq=2, Nk=6400, H=4, Hkv=2, D=33, Dv=17), None, None,
     FA_SEQ_DENSE, 200),
]

# Decode shapes with a non-finite input: NaN and Inf reach out and logsumexp where the float64
# reference has them (compared as the pattern of non-finite entries, the rest to 1e-5).
DECODE_NONFINITE_CASES = [
    ('decode NaN in one k row, GQA 16/2 d128', dict(Nq=1, Nk=3000, H=16, Hkv=2, D=128), ('k', (0, 1700, 1, None), math.nan)),
    ('decode +Inf in one v element, seqQ 4', dict(Nq=4, Nk=2000, H=4, Hkv=2), ('v', (0, 900, 0, 7), math.inf)),
    ('decode NaN in one q row, B 2', dict(B=2, Nq=2, Nk=1500, H=4), ('q', (1, 1, 2, None), math.nan)),
]


class decode_env:
    """FA_DECODE / FA_DECODE_SPLITS for the calls inside (read by fa_forward and its workspace size)."""
    def __init__(self, mode, splits=None):
        self.vals = {'FA_DECODE': mode, 'FA_DECODE_SPLITS': None if splits is None else str(splits)}

    def __enter__(self):
        self.old = {k_: os.environ.get(k_) for k_ in self.vals}
        for k_, v_ in self.vals.items():
            if v_ is None:
                os.environ.pop(k_, None)
            else:
                os.environ[k_] = v_

    def __exit__(self, *a):
        for k_, v_ in self.old.items():
            if v_ is None:
                os.environ.pop(k_, None)
            else:
                os.environ[k_] = v_


def run_decode_case(kern, gen, name, spec, lens_q, lens_k, layout, splits):
    base = dict(spec)
    if layout == FA_SEQ_PACKED:
        base.update(B=len(lens_q), Nq=max(lens_q), Nk=max(lens_k))
    c = normalize(base)
    gen.manual_seed(zlib.crc32(name.encode()))
    q, k, v, dy, slopes, mask = make_inputs(c, gen)
    ref = reference(c, q, k, v, dy, slopes, mask, lens_q, lens_k)
    mask_c = mask.contiguous() if mask is not None else None
    p = params_for(c, slopes, mask_c, 0)
    if layout == FA_SEQ_PACKED:
        qi, ki, vi, dyi = pack_rows(q, lens_q), pack_rows(k, lens_k), pack_rows(v, lens_k), pack_rows(dy, lens_q)
        ref = (pack_rows(ref[0], lens_q), pack_lse(ref[1], lens_q), pack_rows(ref[2], lens_q),
               pack_rows(ref[3], lens_k), pack_rows(ref[4], lens_k))
        rq, rk = packed_ranges(lens_q), packed_ranges(lens_k)  # kept alive: p holds their device pointers
        set_ranges(p, layout, rq, rk, sum(lens_q), sum(lens_k), max(lens_q), max(lens_k))
    elif layout == FA_SEQ_PADDED:
        qi, ki, vi, dyi = (nan_padding(x, l_) for x, l_ in ((q, lens_q), (k, lens_k), (v, lens_k), (dy, lens_q)))
        B, Nq, Nk = c['B'], c['Nq'], c['Nk']
        rq = torch.tensor([[b * Nq, n] for b, n in enumerate(lens_q)], dtype=torch.int32, device='cuda')
        rk = torch.tensor([[b * Nk, n] for b, n in enumerate(lens_k)], dtype=torch.int32, device='cuda')
        set_ranges(p, layout, rq, rk, B * Nq, B * Nk, Nq, Nk)
    else:
        qi, ki, vi, dyi = q, k, v, dy

    def fwd(mode, s=None):
        out = torch.full((qi.shape[0], qi.shape[1], c['H'], c['Dv']), math.nan, device='cuda')
        lse = torch.full((qi.shape[0], c['H'], qi.shape[1]), math.nan, device='cuda')
        with decode_env(mode, s):
            kern.forward(p, qi, ki, vi, out, lse)
        return out, lse
    auto = fwd(None, splits)
    forced = fwd('1', splits)
    again = fwd('1', splits)
    one = fwd('0')
    grads = kern.backward(p, qi, ki, vi, auto[0], auto[1], dyi)
    torch.cuda.synchronize()
    e = dict(out=rel_err(auto[0], ref[0]), lse=lse_err(auto[1], ref[1]),
             grad=max(rel_err(g_, r_) for g_, r_ in zip(grads, ref[2:])),
             vs_one_pass=max(rel_err(auto[0], one[0]), lse_err(auto[1], one[1].double())),
             picked=bool(torch.equal(auto[0], forced[0]) and torch.equal(auto[1], forced[1])),
             bitwise_one_pass=bool(torch.equal(auto[0], one[0])),
             deterministic=bool(torch.equal(forced[0], again[0]) and torch.equal(forced[1], again[1])),
             finite=bool(torch.isfinite(auto[0]).all()))
    if layout == FA_SEQ_PADDED:
        e['padding_zero'] = all(bool((auto[0][b, lq:] == 0).all()) and bool((auto[1][b, :, lq:] == -math.inf).all())
                                for b, lq in enumerate(lens_q))
    ok = e['out'] < 1e-5 and e['lse'] < 1e-5 and e['vs_one_pass'] < 1e-5 and e['grad'] < 1e-4 and e['picked'] \
        and e['deterministic'] and e['finite'] and e.get('padding_zero', True)
    return e, ok


def run_decode_checks(kern, report, only=None):
    print('split-KV decode forward (exact) vs the float64 reference and vs the one-pass forward (FA_DECODE=0); '
          'grad = the regular backward from its out/logsumexp; picked = the automatic choice equals FA_DECODE=1 bitwise')
    print('%-40s %9s %9s %9s %9s  %s' % ('case', 'out', 'lse', 'vs 1-pass', 'grad', 'picked det pad'))
    gen = torch.Generator(device='cuda')
    rows, all_ok = [], True
    for name, spec, lens_q, lens_k, layout, splits in DECODE_CASES:
        if only and only not in name:
            continue
        try:
            e, ok = run_decode_case(kern, gen, name, spec, lens_q, lens_k, layout, splits)
        except Exception as ex:  # noqa: BLE001 - report, keep going
            e, ok = {'error': str(ex)[:300]}, False
            print('%-40s ERROR %s' % (name, e['error']), flush=True)
            rows.append(dict(name=name, errors=e, ok=ok))
            all_ok = False
            continue
        all_ok &= ok
        rows.append(dict(name=name, lens_q=lens_q, lens_k=lens_k, splits=splits,
                         case={k_: (list(v_) if isinstance(v_, tuple) else v_) for k_, v_ in spec.items()},
                         errors=e, ok=ok))
        print('%-40s %9.2e %9.2e %9.2e %9.2e  %s %s %s %s' % (
            name, e['out'], e['lse'], e['vs_one_pass'], e['grad'], 'yes' if e['picked'] else 'NO',
            'yes' if e['deterministic'] else 'NO',
            {True: 'yes', False: 'NO', None: '-'}[e.get('padding_zero')], 'ok' if ok else 'FAIL'), flush=True)
    for name, spec, (tensor_name, index, value) in DECODE_NONFINITE_CASES:
        if only and only not in name:
            continue
        c = normalize(spec)
        gen.manual_seed(zlib.crc32(name.encode()))
        q, k, v, dy, slopes, mask = make_inputs(c, gen)
        dict(q=q, k=k, v=v)[tensor_name][tuple(slice(None) if i is None else i for i in index)] = value
        ref = reference(c, q, k, v, dy, slopes, mask)
        p = params_for(c, slopes, mask, 0)
        out, lse = kern.forward(p, q, k, v)
        with decode_env('0'):
            one = kern.forward(p, q, k, v)
        torch.cuda.synchronize()
        e = dict(out=nonfinite_err(out, ref[0]), lse=nonfinite_err(lse, ref[1]),
                 vs_one_pass=max(nonfinite_err(out, one[0]), nonfinite_err(lse, one[1])),
                 nonfinite_in_reference=int((~torch.isfinite(ref[0])).sum()))
        ok = max(e['out'], e['lse'], e['vs_one_pass']) < 1e-5 and e['nonfinite_in_reference'] > 0
        all_ok &= ok
        rows.append(dict(name=name, errors=e, ok=ok))
        print('%-40s %9.2e %9.2e %9.2e %9s  non-finite outputs in ref: %d %s' % (
            name, e['out'], e['lse'], e['vs_one_pass'], '-', e['nonfinite_in_reference'], 'ok' if ok else 'FAIL'),
            flush=True)
    report['decode_checks'] = rows
    report['decode_checks_ok'] = all_ok
    print('decode checks:', 'ALL OK' if all_ok else 'FAILURES', flush=True)
    return all_ok


def graph_time_ms(fn, calls, reps=5):
    """GPU time of one call of fn: `calls` back-to-back calls captured in a CUDA graph and replayed
    between two CUDA events (median over reps), so the host's cost of launching (Python, ctypes,
    the driver) is outside the measurement. Falls back to events around a loop of `calls` calls
    when capture fails. Returns (ms per call, 'graph' or 'loop')."""
    fn()
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode='relaxed'):
            for _ in range(calls):
                fn()
        how, run = 'graph', g.replay
    except Exception:  # noqa: BLE001 - measured without a graph instead
        torch.cuda.synchronize()
        g = None

        def run():
            for _ in range(calls):
                fn()
        how = 'loop'
    ms = time_ms(run, warmup=1, reps=reps) / calls
    del g
    return ms, how


def loop_time_ms(fn, calls, reps=3):
    """Events around `calls` calls enqueued back to back (no graph): the GPU time when the host
    keeps ahead of it, else the host's launch rate. Also the host's time per call (enqueue only)."""
    fn()
    torch.cuda.synchronize()
    times, host = [], []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        host.append((time.perf_counter() - t0) / calls * 1e3)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times), statistics.median(host)


def decode_splits(lib, p, heads, rows_q, dv):
    """The split count fa_forward plans, read back from its workspace size (decode_splitkv.cu's
    layout: splits x heads x rows partial rows of headDimV rounded up to 4, then m and l)."""
    ws = lib.fa_forward_workspace_size(ctypes.byref(p))
    for ld in ((dv + 3) // 4 * 4, dv):
        for s in range(1, 257):
            idx = s * heads * rows_q
            if 4 * (idx * ld + 2 * ((idx + 63) // 64 * 64)) == ws:
                return s
    return None


def calls_for(ms):
    """Calls per measurement: about 3 ms of GPU work, 1 to 200."""
    return max(1, min(200, int(3.0 / max(ms, 1e-3))))


def run_decode_bench(kern, report, seqs, batches, dims, old=None):
    """seqQ = 1, H = 16, MHA and GQA 16/2: the split-KV forward (and, given old, the split-KV forward
    of another build of the library, side by side) against the one-pass exact and fast forwards,
    and against three yardsticks measured the same way in the same process: a 2 GiB device-to-device
    copy (read + write), a 2 GiB read (torch.sum), and a read of exactly this shape's K and V once
    (torch.sum of each). Times are GPU time per call from CUDA graphs of back-to-back calls
    (graph_time_ms); the single-call time with the host's launch (as measured before) is kept."""
    torch.backends.cuda.matmul.allow_tf32 = False
    H = 16
    x = torch.empty(1 << 29, device='cuda')  # 2 GiB
    x.normal_()
    y = torch.empty_like(x)
    # The copy three ways: a copy kernel (x + 0 into y) in a graph, which the yardstick uses;
    # cudaMemcpyAsync one call at a time (as the first decode bench measured it); and the same
    # memcpy captured in a graph (a memcpy node: the copy engines, slower).
    copy_ms, _ = graph_time_ms(lambda: torch.add(x, 0.0, out=y), 2)
    memcpy_call_ms = time_ms(lambda: y.copy_(x), 3, 10)
    memcpy_graph_ms, _ = graph_time_ms(lambda: y.copy_(x), 2)
    read_peak_ms, _ = graph_time_ms(lambda: x.sum(), 2)
    gbs = lambda ms, n: n * x.numel() * 4 / ms / 1e6  # noqa: E731
    copy_gbs, read_peak_gbs = gbs(copy_ms, 2), gbs(read_peak_ms, 1)
    report.update(copy_gbs=copy_gbs, read_peak_gbs=read_peak_gbs, memcpy_call_gbs=gbs(memcpy_call_ms, 2),
                  memcpy_graph_gbs=gbs(memcpy_graph_ms, 2))
    del x, y
    torch.cuda.empty_cache()
    report['timing'] = 'CUDA graph of back-to-back calls, events around its replay, median of 5'
    print('2 GiB: copy kernel %.3f ms, %.0f GB/s (read + write); cudaMemcpy one call %.0f GB/s, in a graph %.0f GB/s; '
          'read (sum) %.3f ms, %.0f GB/s' % (copy_ms, copy_gbs, report['memcpy_call_gbs'], report['memcpy_graph_gbs'],
                                           read_peak_ms, read_peak_gbs), flush=True)
    print('%3s %2s %6s %3s | %8s %8s %8s %8s %8s | %8s %7s | %6s %6s %6s | %5s %5s | %s' % (
        'd', 'B', 'seqK', 'Hkv', 'split', 'old', '1-pass', 'fast', 'read KV', 'call', 'host us',
        'GB/s', 'old', 'read', 'xread', 'xcopy', 'splits new/old'))
    rows = []
    for D in dims:
        for B in batches:
            for N in seqs:
                for Hkv in (16, 2):
                    c = normalize(dict(B=B, Nq=1, Nk=N, H=H, Hkv=Hkv, D=D))
                    g = torch.Generator(device='cuda').manual_seed(N + D + B + Hkv)
                    q, k, v, _, _, _ = make_inputs(c, g)
                    out = torch.empty(B, 1, H, D, device='cuda')
                    lse = torch.empty(B, H, 1, device='cuda')
                    kv_bytes = k.numel() * 4 + v.numel() * 4
                    r = dict(D=D, B=B, seqK=N, H=H, Hkv=Hkv, kv_bytes=kv_bytes)
                    est = kv_bytes / 2e9  # ms at 2 TB/s: sizes the graphs
                    try:
                        r['read_ms'], r['read_timing'] = graph_time_ms(lambda: (k.sum(), v.sum()), calls_for(est))
                    except Exception as ex:  # noqa: BLE001
                        r['read_error'] = str(ex)[:200]
                    variants = [('split', kern, '1', 0), ('one_pass', kern, '0', 0), ('fast_one_pass', kern, '0', 1)]
                    if old is not None:
                        variants.insert(1, ('split_old', old, '1', 0))
                    for label, kk, mode, prec in variants:
                        try:
                            p = params_for(c, None, None, prec)
                            with decode_env(mode):
                                ws = kk.forward_workspace(p)
                                fn = lambda: kk.forward(p, q, k, v, out, lse, ws)  # noqa: E731
                                if label.startswith('split'):
                                    r[label + '_splits'] = decode_splits(kk.lib, p, H, B, D)
                                    r[label + '_call_ms'] = time_ms(fn, 2, 7)
                                    r[label + '_loop_ms'], r[label + '_host_ms'] = loop_time_ms(fn, calls_for(est))
                                    ms_est = r[label + '_call_ms']
                                else:
                                    ms_est = est * (40 if prec == 0 else 15)
                                r[label + '_ms'], r[label + '_timing'] = graph_time_ms(fn, calls_for(ms_est))
                        except Exception as ex:  # noqa: BLE001
                            r[label + '_error'] = str(ex)[:200]
                    t = r.get('split_ms', math.nan)
                    for label in ('split', 'split_old', 'one_pass', 'read'):
                        r[label + '_gbs'] = kv_bytes / r.get(label + '_ms', math.nan) / 1e6
                    r['vs_read'] = t / r.get('read_ms', math.nan)              # target: <= 2
                    r['vs_copy_bw'] = t / (kv_bytes / copy_gbs / 1e6)          # target: <= 2
                    r['vs_read_peak_bw'] = t / (kv_bytes / read_peak_gbs / 1e6)
                    rows.append(r)
                    print('%3d %2d %6d %3d | %8.4f %8.4f %8.4f %8.4f %8.4f | %8.4f %7.1f | %6.0f %6.0f %6.0f | %5.2f %5.2f | %s/%s' % (
                        D, B, N, Hkv, t, r.get('split_old_ms', math.nan), r.get('one_pass_ms', math.nan),
                        r.get('fast_one_pass_ms', math.nan), r.get('read_ms', math.nan), r.get('split_call_ms', math.nan),
                        1e3 * r.get('split_host_ms', math.nan), r['split_gbs'], r['split_old_gbs'], r['read_gbs'],
                        r['vs_read'], r['vs_copy_bw'], r.get('split_splits'), r.get('split_old_splits')), flush=True)
                    del q, k, v, out, lse
                    torch.cuda.empty_cache()
    report['decode_bench'] = rows


def run_decode_split_sweep(kern, report):
    """GPU time against a forced split count (FA_DECODE_SPLITS), beside the planned count: how
    near decodePlan's cost model comes to the best count on small and large K/V."""
    H, sweep = 16, []
    print('split sweep (ms per call, graph-timed): planned count first', flush=True)
    for D, B, N, Hkv in ((128, 1, 16384, 2), (64, 1, 16384, 2), (64, 1, 65536, 2), (128, 1, 65536, 2),
                         (64, 8, 16384, 2), (128, 1, 16384, 16), (128, 8, 65536, 2)):
        c = normalize(dict(B=B, Nq=1, Nk=N, H=H, Hkv=Hkv, D=D))
        g = torch.Generator(device='cuda').manual_seed(7)
        q, k, v, _, _, _ = make_inputs(c, g)
        out, lse = torch.empty(B, 1, H, D, device='cuda'), torch.empty(B, H, 1, device='cuda')
        kv_bytes = k.numel() * 4 + v.numel() * 4
        r = dict(D=D, B=B, seqK=N, Hkv=Hkv, kv_bytes=kv_bytes, ms={})
        for splits in (None, 8, 16, 32, 64, 128, 256):
            p = params_for(c, None, None, 0)
            with decode_env('1', splits):
                ws = kern.forward_workspace(p)
                n = decode_splits(kern.lib, p, H, B, D)
                r['ms'][str(n) if splits is None else str(splits)] = graph_time_ms(
                    lambda: kern.forward(p, q, k, v, out, lse, ws), calls_for(kv_bytes / 2e9))[0]
                if splits is None:
                    r['planned'] = n
        sweep.append(r)
        print('  d %d B %d seqK %d Hkv %d: planned %s; %s' % (D, B, N, Hkv, r['planned'], ', '.join(
            '%s: %.4f' % kv for kv in r['ms'].items())), flush=True)
        del q, k, v, out, lse
        torch.cuda.empty_cache()
    report['decode_split_sweep'] = sweep


# ---------------------------------------------------------------- benchmark
def time_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def run_bench(kern, report, seqs, dims):
    from torch.nn.attention import sdpa_kernel, SDPBackend
    torch.backends.cuda.matmul.allow_tf32 = False
    H, B = 16, 1
    results = []
    # Warm the GPU clock before the first measurement (it idles at a low clock).
    x = torch.randn(8192, 8192, device='cuda')
    for _ in range(20):
        x @ x
    torch.cuda.synchronize()
    del x
    print('%5s %6s %6s | %9s %9s %9s %9s | %9s %9s %9s %9s %9s %9s' % (
        'D', 'N', 'causal', 'ours fwd', 'ours f+b', 'fast fwd', 'fast f+b', 'pt32 fwd', 'pt32 f+b',
        'fa2bf16 f', 'fa2bf16 fb', 'cudnn f', 'cudnn fb'))
    for D in dims:
        for N in seqs:
            for causal in (False, True):
                c = normalize(dict(B=B, Nq=N, Nk=N, H=H, D=D, causal=causal))
                g = torch.Generator(device='cuda').manual_seed(N + D)
                q, k, v, dy, _, _ = make_inputs(c, g)
                reps = 10 if N <= 4096 else 5
                p_hi, p_fast = params_for(c, None, None, 0), params_for(c, None, None, 1)
                out, lse = kern.forward(p_hi, q, k, v)
                grads = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
                ws = torch.empty(kern.lib.fa_backward_workspace_size(ctypes.byref(p_hi)), dtype=torch.uint8, device='cuda')
                r = dict(D=D, N=N, causal=causal)
                r['ours_fwd'] = time_ms(lambda: kern.forward(p_hi, q, k, v, out, lse), reps=reps)
                r['ours_fwdbwd'] = time_ms(lambda: (kern.forward(p_hi, q, k, v, out, lse),
                                                    kern.backward(p_hi, q, k, v, out, lse, dy, grads, ws)), reps=reps)
                wsf = kern.forward_workspace(p_fast)
                wsbf = torch.empty(kern.lib.fa_backward_workspace_size(ctypes.byref(p_fast)), dtype=torch.uint8, device='cuda')
                r['fast_fwd'] = time_ms(lambda: kern.forward(p_fast, q, k, v, out, lse, wsf), reps=reps)
                r['fast_fwdbwd'] = time_ms(lambda: (kern.forward(p_fast, q, k, v, out, lse, wsf),
                                                    kern.backward(p_fast, q, k, v, out, lse, dy, grads, wsbf)), reps=reps)
                qt, kt, vt, dyt = (t.transpose(1, 2) for t in (q, k, v, dy))  # [B, H, N, D] views

                def torch_case(dtype, backend):
                    qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (qt, kt, vt))
                    d = dyt.to(dtype)
                    ctx = sdpa_kernel(backend) if backend is not None else None

                    def fwd():
                        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)

                    def fwdbwd():
                        o = fwd()
                        o.backward(d)
                    if ctx:
                        with ctx:
                            return time_ms(fwd, reps=reps), time_ms(fwdbwd, reps=reps)
                    return time_ms(fwd, reps=reps), time_ms(fwdbwd, reps=reps)
                try:
                    r['torch_fp32_fwd'], r['torch_fp32_fwdbwd'] = torch_case(torch.float32, None)
                except Exception as ex:  # noqa: BLE001 - report, keep going
                    r['torch_fp32_error'] = str(ex)[:200]
                try:
                    r['torch_fa2_bf16_fwd'], r['torch_fa2_bf16_fwdbwd'] = torch_case(torch.bfloat16, SDPBackend.FLASH_ATTENTION)
                except Exception as ex:  # noqa: BLE001
                    r['torch_fa2_error'] = str(ex)[:200]
                try:
                    r['torch_bf16_default_fwd'], r['torch_bf16_default_fwdbwd'] = torch_case(torch.bfloat16, None)
                except Exception as ex:  # noqa: BLE001
                    r['torch_bf16_error'] = str(ex)[:200]
                flops = 4.0 * B * H * N * N * D * (0.5 if causal else 1.0)
                r['fwd_flop'] = flops
                results.append(r)
                f = lambda key: ('%9.3f' % r[key]) if key in r else '%9s' % '-'  # noqa: E731
                print('%5d %6d %6s | %s %s %s %s | %s %s %s %s %s %s  (ours %.1f TFLOP/s fwd, fast %.1f)' % (
                    D, N, causal, f('ours_fwd'), f('ours_fwdbwd'), f('fast_fwd'), f('fast_fwdbwd'),
                    f('torch_fp32_fwd'), f('torch_fp32_fwdbwd'), f('torch_fa2_bf16_fwd'), f('torch_fa2_bf16_fwdbwd'),
                    f('torch_bf16_default_fwd'), f('torch_bf16_default_fwdbwd'),
                    flops / r['ours_fwd'] / 1e9, flops / r['fast_fwd'] / 1e9), flush=True)
                del q, k, v, dy, out, lse, grads, ws, wsf, wsbf
                torch.cuda.empty_cache()
    report['bench'] = results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--lib', required=True)
    ap.add_argument('--check', action='store_true')
    ap.add_argument('--bench', action='store_true')
    ap.add_argument('--seqs', default='1024,2048,4096,8192,16384')
    ap.add_argument('--dims', default='64,128')
    ap.add_argument('--out', default=None)
    ap.add_argument('--varlen-bench', action='store_true', help='ragged batch and packed documents vs the masked call')
    ap.add_argument('--varlen-n', type=int, default=4096)
    ap.add_argument('--varlen-dims', default='64')
    ap.add_argument('--decode-check', action='store_true', help='split-KV decode forward vs the reference and the one-pass forward')
    ap.add_argument('--decode-bench', action='store_true', help='split-KV decode forward vs the one-pass forward, seqQ = 1')
    ap.add_argument('--decode-only', default=None, help='decode checks whose name contains this')
    ap.add_argument('--decode-seqs', default='4096,16384,65536')
    ap.add_argument('--decode-batches', default='1,8')
    ap.add_argument('--decode-dims', default='64,128')
    ap.add_argument('--decode-old-lib', default=None, help='another build of the library, timed beside --lib in --decode-bench')
    ap.add_argument('--decode-sweep', action='store_true', help='split-KV decode time against a forced split count')
    a = ap.parse_args()
    kern = Kernels(load_library(a.lib))
    report = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__}
    print('device:', report['device'], 'torch', report['torch'])
    ok = True
    try:
        if a.check:
            ok = run_checks(kern, report)
        if a.bench:
            run_bench(kern, report, [int(s) for s in a.seqs.split(',')], [int(d) for d in a.dims.split(',')])
        if a.varlen_bench:
            run_varlen_bench(kern, report, a.varlen_n, [int(d) for d in a.varlen_dims.split(',')])
        if a.decode_check:
            ok &= run_decode_checks(kern, report, a.decode_only)
        if a.decode_bench:
            old = Kernels(load_library(a.decode_old_lib)) if a.decode_old_lib else None
            run_decode_bench(kern, report, [int(s) for s in a.decode_seqs.split(',')],
                             [int(b) for b in a.decode_batches.split(',')], [int(d) for d in a.decode_dims.split(',')],
                             old)
        if a.decode_sweep:
            run_decode_split_sweep(kern, report)
    finally:
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, 'cuda_harness.json'), 'w') as f:
                json.dump(report, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
