/**
 * Which keys a block of queries can see (and which queries a block of keys can be seen by) under
 * the sliding window, causal included. Kernels use these to skip whole tiles that are fully
 * masked: this is what makes causal cost about half of full attention.
 * off = seqK - seqQ aligns the window bottom-right, as FlashAttention >= 2.1 does.
 */
import { FlashAttentionAttrs } from './kernel_names';

type Window = Pick<FlashAttentionAttrs, 'windowLeft' | 'windowRight'>;

/** Half-open key range [lo, hi) that queries [i0, i1) may attend to (empty when lo >= hi). */
export function keyRangeForQueries(w: Window, i0: number, i1: number, seqQ: number, seqK: number): [number, number] {
  const off = seqK - seqQ;
  const lo = w.windowLeft < 0 ? 0 : Math.max(0, i0 + off - w.windowLeft);
  const hi = w.windowRight < 0 ? seqK : Math.min(seqK, i1 - 1 + off + w.windowRight + 1);
  return [lo, hi];
}

/** Half-open query range [lo, hi) whose windows touch keys [j0, j1). */
export function queryRangeForKeys(w: Window, j0: number, j1: number, seqQ: number, seqK: number): [number, number] {
  const off = seqK - seqQ;
  const lo = w.windowRight < 0 ? 0 : Math.max(0, j0 - off - w.windowRight);
  const hi = w.windowLeft < 0 ? seqQ : Math.min(seqQ, j1 - 1 - off + w.windowLeft + 1);
  return [lo, hi];
}

/** True when key j is inside query i's window. */
export function inWindow(w: Window, i: number, j: number, seqQ: number, seqK: number): boolean {
  const d = j - (i + seqK - seqQ);
  return (w.windowLeft < 0 || d >= -w.windowLeft) && (w.windowRight < 0 || d <= w.windowRight);
}
