#!/usr/bin/env python3
"""Renders the benchmark part of harness.py's cuda_harness.json as the markdown table of the
## CUDA section of BENCHMARKS.md:  python3 render_bench.py cuda_harness.json"""
import json
import sys


def main():
    r = json.load(open(sys.argv[1]))
    print('Device: %s, PyTorch %s. B = 1, H = 16, float32 in and out; ms = median of CUDA-event '
          'timings after warm-up; TFLOP/s = 4·N²·d·H (halved for causal) ÷ forward time.\n' % (r['device'], r['torch']))
    cols = [('ours_fwd', 'exact fwd'), ('ours_fwdbwd', 'exact f+b'), ('torch_fp32_fwd', 'PyTorch fp32 fwd'),
            ('torch_fp32_fwdbwd', 'PyTorch fp32 f+b'), ('fast_fwd', 'fast fwd'), ('fast_fwdbwd', 'fast f+b'),
            ('torch_fa2_bf16_fwd', 'PyTorch FA2 bf16 fwd'), ('torch_fa2_bf16_fwdbwd', 'PyTorch FA2 bf16 f+b'),
            ('torch_bf16_default_fwd', 'PyTorch bf16 default fwd'), ('torch_bf16_default_fwdbwd', 'PyTorch bf16 default f+b')]
    print('| d | N | causal | ' + ' | '.join(c[1] for c in cols) + ' | exact / fast fwd TFLOP/s |')
    print('|' + '---|' * (len(cols) + 4))
    for b in r['bench']:
        cells = [('%.3f' % b[k]) if k in b else '–' for k, _ in cols]
        tf = '%.1f / %.1f' % (b['fwd_flop'] / b['ours_fwd'] / 1e9, b['fwd_flop'] / b['fast_fwd'] / 1e9)
        print('| %d | %d | %s | %s | %s |' % (b['D'], b['N'], 'yes' if b['causal'] else 'no', ' | '.join(cells), tf))


if __name__ == '__main__':
    main()
