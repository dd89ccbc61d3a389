/**
 * WGSL shared by the forward and backward programs: the contract's per-element semantics
 * (src/contract/kernel_names.ts) as helper functions. Each option is a compile-time switch: a disabled
 * option compiles to a stub (onnxruntime's WGSL-template style), so one kernel family serves
 * every combination and the disabled cases cost nothing.
 */
import { OptionFlags } from '../../src/contract';

/**
 * Masked scores are set to this finite sentinel rather than -inf: WGSL lets implementations
 * assume finite math, so no infinity is ever produced inside the kernels.
 */
export const NEG_BIG = '-3.0e38';
export const NEG_HALF = '-1.0e38';

/**
 * Helpers, all taking the query row i and key column j in sequence coordinates (local to the
 * sequence when lengths are given), and off = seqK - seqQ (bottom-right alignment, per sequence):
 *  - scoreOf(raw, i, j, off, slope) -> s after softcap and ALiBi;
 *  - scoreAndGrad(raw, ...) -> vec2(s, ds/draw) for the backward (softcap's 1 - tanh^2);
 *  - isKept(b, h, i, j, nq, nk, off): window, bounds and mask;
 *  - tileFullyKept(i0, i1, j0, j1, nq, nk, off): every (i, j) of the tile is kept, so the
 *    per-element test can be skipped (interior tiles of causal/windowed attention);
 *  - dropoutRowKey(bh, i), dropoutScale(rowKey, j): the counter-based hash of src/contract/dropout.ts.
 */
export function optionHelpers(f: OptionFlags): string {
  return `${NON_FINITE_HELPERS}${optionFunctions(f)}`;
}

/**
 * Non-finite values tested on their bits: implementations may assume finite math, and exp, log,
 * max and comparisons do not pass NaN on reliably (SwiftShader: exp(NaN) = +inf, log(NaN) = +inf,
 * max(NaN, x) = x), so a kernel that must propagate NaN decides it with these.
 *  - poisons(x): x is NaN or +inf, a score that turns its row into NaN in the composite
 *    (exp(inf - inf)); -inf is not: its probability is 0;
 *  - quietNaN(x): a NaN made from x's bits (WGSL has no NaN literal; x is NaN or +inf).
 */
const NON_FINITE_HELPERS = `
    fn poisons(x : f32) -> bool {
      let bits = bitcast<u32>(x);
      return ((bits & 0x7fffffffu) > 0x7f800000u) | (bits == 0x7f800000u);
    }
    fn quietNaN(x : f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) | 0x7fc00000u); }`;

function optionFunctions(f: OptionFlags): string {
  const softcapTerms = `
    // (softcap * tanh(raw / softcap), 1 - tanh^2) from e = exp(-2|x|), x = raw / softcap: GPU
    // tanh built-ins may be low-precision approximations. Below |x| = 1/4, 1 - e cancels (the
    // error grew with the softcap), so there the score is raw times the odd series of tanh(x) / x
    // (truncation < 1e-8 relative; exact even where x underflows, softcap near 3e38);
    // 1 - tanh^2 is 4e / (1 + e)^2, which has no cancellation anywhere.
    fn softcapTerms(raw : f32) -> vec2<f32> {
      let x = raw / uniforms.softcap;
      let a = abs(x);
      let e = exp(-2.0 * a);
      let x2 = x * x;
      let nearZero = raw * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
      let s = select(uniforms.softcap * sign(x) * (1.0 - e) / (1.0 + e), nearZero, a < 0.25);
      return vec2<f32>(s, 4.0 * e / ((1.0 + e) * (1.0 + e)));
    }`;
  const softcapped = f.softcap ? 'softcapTerms(raw).x' : 'raw';
  const alibi = f.alibi ? ' - slope * f32(abs(i + off - j))' : '';
  // An always-valid mask coordinate: the index clamped to the sequence (whose length may be 0 with ranges).
  const lastAt = (x: string, len: string) => f.seqRanges ? `min(${x}, max(${len} - 1, 0))` : `min(${x}, ${len} - 1)`;
  return `
    ${f.softcap ? softcapTerms : ''}
    fn scoreOf(raw : f32, i : i32, j : i32, off : i32, slope : f32) -> f32 {
      return ${softcapped}${alibi};
    }
    fn scoreAndGrad(raw : f32, i : i32, j : i32, off : i32, slope : f32) -> vec2<f32> {
      ${f.softcap ? `let t = softcapTerms(raw);
      return vec2<f32>(t.x${alibi}, t.y);`
                  : `return vec2<f32>(raw${alibi}, 1.0);`}
    }
    ${f.mask ? `
    // The mask broadcasts against [batch, heads, seqQ, seqK]: its size-1 dims repeat.
    fn maskAt(b : i32, h : i32, i : i32, j : i32) -> bool {
      let s = uniforms.maskShape;
      let idx = ((select(b, 0, s.x == 1) * s.y + select(h, 0, s.y == 1)) * s.z +
                 select(i, 0, s.z == 1)) * s.w + select(j, 0, s.w == 1);
      return mask[idx] != 0;
    }` : ''}
    // Branch-free (non-short-circuit & and an always-valid mask index): nested per-element
    // branches made SwiftShader's shader compiler blow up when window and mask combine.
    fn isKept(b : i32, h : i32, i : i32, j : i32, nq : i32, nk : i32, off : i32) -> bool {
      var keep = (i < nq) & (j < nk);
      ${f.window ? `
      // Offsets from the diagonal are bounded by the sequence lengths; i + off + window could
      // overflow i32 for windows near 2^31.
      keep = keep & ((uniforms.windowLeft < 0) | (i + off - j <= uniforms.windowLeft));
      keep = keep & ((uniforms.windowRight < 0) | (j - i - off <= uniforms.windowRight));` : ''}
      ${f.mask ? `keep = keep & maskAt(b, h, ${lastAt('i', 'nq')}, ${lastAt('j', 'nk')});` : ''}
      return keep;
    }
    // Query rows [i0, i1) x key columns [j0, j1).
    fn tileFullyKept(i0 : i32, i1 : i32, j0 : i32, j1 : i32, nq : i32, nk : i32, off : i32) -> bool {
      ${f.mask ? 'return false;' : `
      var full = i1 <= nq && j1 <= nk;
      ${f.window ? `
      if (uniforms.windowLeft >= 0) { full = full && i1 - 1 + off - j0 <= uniforms.windowLeft; }
      if (uniforms.windowRight >= 0) { full = full && j1 - 1 - i0 - off <= uniforms.windowRight; }` : ''}
      return full;`}
    }
    ${f.dropout ? `
    fn mix32(x0 : u32) -> u32 {
      var x = x0;
      x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
      return x;
    }
    fn dropoutRowKey(bh : i32, i : i32) -> u32 {
      return mix32(mix32(mix32(uniforms.seed ^ 0x9e3779b9u) ^ u32(bh)) ^ u32(i));
    }
    // keep / (1 - rate) for element (row of rowKey, j).
    fn dropoutScale(rowKey : u32, j : i32) -> f32 {
      return select(0.0, uniforms.dropScale, mix32(rowKey ^ u32(j)) >= uniforms.dropThreshold);
    }` : `
    fn dropoutRowKey(bh : i32, i : i32) -> u32 { return 0u; }
    fn dropoutScale(rowKey : u32, j : i32) -> f32 { return 1.0; }`}
    fn slopeOf(h : i32) -> f32 { return ${f.alibi ? 'alibiSlopes[h]' : '0.0'}; }
  `;
}
