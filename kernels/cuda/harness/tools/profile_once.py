# One exact and one fast forward + backward at B=1, H=16, N=4096, d=64: a target for ncu.
import sys, ctypes, torch
sys.path.insert(0, 'kernels/cuda/harness')
import harness
kern = harness.Kernels(harness.load_library('build/cuda90/libflash_attention_cuda.so'))
c = harness.normalize(dict(B=1, Nq=4096, Nk=4096, H=16, D=64))
g = torch.Generator(device='cuda').manual_seed(0)
q, k, v, dy, _, _ = harness.make_inputs(c, g)
for prec in (0, 1):
    p = harness.params_for(c, None, None, prec)
    out, lse = kern.forward(p, q, k, v)
    kern.backward(p, q, k, v, out, lse, dy)
torch.cuda.synchronize()
