#!/usr/bin/env python3
"""Renders the benchmark parts of harness.py's cuda_harness.json as the markdown tables of the
## CUDA section of BENCHMARKS.md:  python3 render_bench.py cuda_harness.json
(--bench: the dense table; --varlen-bench: the ragged-batch and packed-documents table)."""
import json
import sys


def render_varlen(r):
    print('| case | d | causal | Σlen²/dense | path | varlen fwd | masked fwd | dense fwd | varlen f+b | masked f+b '
          '| dense f+b | varlen ÷ masked (fwd / f+b) |')
    print('|' + '---|' * 12)
    for b in r['varlen_bench']:
        case = ('ragged batch of %d, lengths %d..%d' % (b['B'], b['lens'][0], b['lens'][-1]) if b['kind'] == 'ragged batch'
                else 'packed: %d documents in %d tokens' % (len(b['lens']), b['n']))
        for label in ('exact', 'fast'):
            t = {k: b['%s_%s' % (label, k)] for k in ('varlen_fwd', 'masked_fwd', 'dense_fwd', 'varlen_fwdbwd',
                                                     'masked_fwdbwd', 'dense_fwdbwd')}
            print('| %s | %d | %s | %.2f | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.2f / %.2f |' % (
                case, b['D'], 'yes' if b['causal'] else 'no', b['work_ratio'], label, t['varlen_fwd'], t['masked_fwd'],
                t['dense_fwd'], t['varlen_fwdbwd'], t['masked_fwdbwd'], t['dense_fwdbwd'],
                t['varlen_fwd'] / t['masked_fwd'], t['varlen_fwdbwd'] / t['masked_fwdbwd']))


def main():
    r = json.load(open(sys.argv[1]))
    if 'bench' not in r:
        render_varlen(r)
        return
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
    if 'varlen_bench' in r:
        print()
        render_varlen(r)


if __name__ == '__main__':
    main()
