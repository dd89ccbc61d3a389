// Pieces shared by every kernel of the family: the problem description, the score function
// (softcap, ALiBi, window, mask), the counter-based dropout hash of src/contract/dropout.ts, and
// shared-memory tile loaders. Kernels are templates over three compile-time switches
// (OPTIONS_SWITCH in static_switch.h dispatches them once per launch):
//   LOCAL   - a window (causal included) is active: key tiles outside it are skipped and the
//             boundary tiles test each element;
//   GENERAL - ALiBi, softcap, mask or dropout is on: per-element work beyond the dot product,
//             selected inside by warp-uniform runtime flags. Splitting these four into their own
//             switches would multiply the instantiations (and the CI compile time) by 8 for a
//             few uniform branches;
//   VARLEN  - sequences have their own lengths (seqLayout 'padded' or 'packed'): each block reads
//             its sequence's (start, length) pairs, and tiles past a length are skipped.
// Every kernel sees sequences b in [0, batch) through a Seq (sequence<VARLEN>): rows in memory
// start at startQ/startK, lengths lenQ/lenK, and the causal/window/ALiBi offset is lenK - lenQ.
// Staged operand copies (stage_bf16.cu) are per sequence, [batch, heads, seqPad, ...] with zeros
// past each length, so kernels index them with the local row whatever the layout.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>
#include <math.h>

#include "flash_attention.h"
#include "static_switch.h"

namespace fa {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Problem {
  int batch, seqQ, seqK, heads, kvHeads, headDim, headDimV, group;  // group = heads / kvHeads
  int offset;                                                         // seqK - seqQ (dense)
  float scale, softcap;
  int windowLeft, windowRight;
  const float* alibi;
  const uint8_t* mask;
  long long maskStride[4];
  bool hasSoftcap, hasAlibi, hasMask, hasDropout;
  uint32_t dropoutThreshold;
  float dropoutScale;  // 1 / (1 - rate)
  uint32_t seed;
  // Variable lengths: batch = sequences, seqQ/seqK = the longest lengths (the grid extents).
  const int* rangesQ;  // int32 [batch, 2] (start row, length); null when dense
  const int* rangesK;
  bool varlen, packed;
  int rowsQ, rowsK;    // rows of q / k in memory (dimension 0 x dimension 1)
  // logSumExp (and the backward's delta) index = startQ * lseStartStride + h * lseHeadStride + i.
  long long lseStartStride, lseHeadStride;
};

Problem makeProblem(const fa_params& p);

// The compile-time switches of the kernels (dispatched by OPTIONS_SWITCH, static_switch.h).
inline bool isLocal(const Problem& p) { return p.windowLeft >= 0 || p.windowRight >= 0; }
inline bool isGeneral(const Problem& p) { return p.hasAlibi || p.hasSoftcap || p.hasMask || p.hasDropout; }
inline bool isVarlen(const Problem& p) { return p.varlen; }
inline bool emptyGrid(const dim3& g) { return g.x == 0 || g.y == 0 || g.z == 0; }

// ---- the sequence a block works on ----
struct Seq {
  int startQ, lenQ, startK, lenK;  // first row in memory and length, queries and keys
  // Rows of out/dq (dk/dv) this sequence owns: the padded layout's rows past a length are the
  // sequence's too (written as zeros), the packed layout's belong to the next sequence.
  int rowsQ, rowsK;
  int offset;                      // lenK - lenQ: causal, window and ALiBi are bottom-right aligned
};
template <bool VARLEN>
__device__ __forceinline__ Seq sequence(const Problem& p, int b) {
  Seq s;
  if (VARLEN) {
    // Lengths clamped to the grid extents, so a range can never send a block past its tiles.
    s.startQ = p.rangesQ[2 * b]; s.lenQ = min(max(p.rangesQ[2 * b + 1], 0), p.seqQ);
    s.startK = p.rangesK[2 * b]; s.lenK = min(max(p.rangesK[2 * b + 1], 0), p.seqK);
    s.rowsQ = p.packed ? s.lenQ : p.seqQ;
    s.rowsK = p.packed ? s.lenK : p.seqK;
  } else {
    s.startQ = b * p.seqQ; s.lenQ = s.rowsQ = p.seqQ;
    s.startK = b * p.seqK; s.lenK = s.rowsK = p.seqK;
  }
  s.offset = s.lenK - s.lenQ;
  return s;
}
// Index of (sequence, head h, local row i) in logSumExp [B, H, seqQ] or, packed, [1, H, totalQ].
__device__ __forceinline__ long long lseIndex(const Problem& p, const Seq& s, int h, int i) {
  return (long long)s.startQ * p.lseStartStride + (long long)h * p.lseHeadStride + i;
}

// ---- counter-based dropout (bit-exact with src/contract/dropout.ts) ----
__device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
  return x;
}
__device__ __forceinline__ uint32_t dropoutRowKey(uint32_t seed, uint32_t bh, uint32_t i) {
  return mix32(mix32(mix32(seed ^ 0x9e3779b9u) ^ bh) ^ i);
}
// Whether dropout keeps element (row key, j).
__device__ __forceinline__ bool dropoutKeeps(const Problem& p, uint32_t rowKey, int j) {
  return mix32(rowKey ^ (uint32_t)j) >= p.dropoutThreshold;
}
// Multiplier of P for element (row key, j): 0 when dropped, 1/(1-rate) when kept.
__device__ __forceinline__ float dropoutMultiplier(const Problem& p, uint32_t rowKey, int j) {
  return dropoutKeeps(p, rowKey, j) ? p.dropoutScale : 0.f;
}

// ---- the score of (b, h, i, j) ----
// Key tile range that a query range [iLo, iHi] can see under the window: [*jLo, *jHi).
__device__ __forceinline__ void keyRange(const Problem& p, const Seq& s, int iLo, int iHi, int* jLo, int* jHi) {
  int lo = 0, hi = s.lenK;
  if (p.windowLeft >= 0) lo = max(lo, iLo + s.offset - p.windowLeft);
  if (p.windowRight >= 0) hi = min(hi, iHi + s.offset + p.windowRight + 1);
  *jLo = lo; *jHi = hi;
}
// Query range that a key range [jLo, jHi] is seen from: [*iLo, *iHi).
__device__ __forceinline__ void queryRange(const Problem& p, const Seq& s, int jLo, int jHi, int* iLo, int* iHi) {
  int lo = 0, hi = s.lenQ;
  if (p.windowRight >= 0) lo = max(lo, jLo - s.offset - p.windowRight);
  if (p.windowLeft >= 0) hi = min(hi, jHi - s.offset + p.windowLeft + 1);
  *iLo = lo; *iHi = hi;
}

// True when every (i, j) of the rectangle is inside the window (no per-element test needed).
__device__ __forceinline__ bool tileInsideWindow(const Problem& p, const Seq& s, int iLo, int iHi, int jLo, int jHi) {
  return (p.windowRight < 0 || jHi <= iLo + s.offset + p.windowRight) &&
         (p.windowLeft < 0 || jLo >= iHi + s.offset - p.windowLeft);
}

template <bool LOCAL, bool GENERAL>
__device__ __forceinline__ bool isKept(const Problem& p, const Seq& s, int b, int h, int i, int j) {
  if (j >= s.lenK || i >= s.lenQ) return false;
  if (LOCAL) {
    const int d = i + s.offset;
    if (p.windowLeft >= 0 && j < d - p.windowLeft) return false;
    if (p.windowRight >= 0 && j > d + p.windowRight) return false;
  }
  if (GENERAL && p.hasMask) {
    const long long idx = b * p.maskStride[0] + h * p.maskStride[1] + i * p.maskStride[2] +
                          j * p.maskStride[3];
    if (!p.mask[idx]) return false;
  }
  return true;
}

// Score after softcap and ALiBi, from raw = scale * q.k (natural-log units).
template <bool GENERAL>
__device__ __forceinline__ float applyScoreMods(const Problem& p, const Seq& sq, float raw, float slope, int i,
                                                int j) {
  float s = raw;
  if (GENERAL) {
    if (p.hasSoftcap) s = p.softcap * tanhf(raw / p.softcap);
    if (p.hasAlibi) s -= slope * fabsf((float)(i + sq.offset - j));
  }
  return s;
}
// d(score)/d(raw): 1 - tanh^2 under softcap, else 1.
template <bool GENERAL>
__device__ __forceinline__ float softcapDerivative(const Problem& p, float raw) {
  if (GENERAL && p.hasSoftcap) { const float t = tanhf(raw / p.softcap); return 1.f - t * t; }
  return 1.f;
}

// ---- kept -> P -> dropout -> dS: the steps every kernel takes per (query i, key j) ----
// Masking is decided by the keep condition, never by comparing a score with a sentinel, so NaN
// and infinite scores of kept keys (from NaN/Inf in q, k) propagate as through the plain
// composite: a row whose kept scores are all NaN or -inf gives NaN, not an empty row.

// Forward inner loop: weight of a score x (log2 units) under the running max mNew; 0 when masked.
__device__ __forceinline__ float softmaxWeight(bool kept, float x, float mNew) {
  return kept ? exp2f(x - mNew) : 0.f;
}
// End of the forward inner loop, from the row sum l: a row with no kept key has l == 0 (out 0,
// logsumexp -inf); a NaN that reached the row makes l NaN, and both outputs NaN.
__device__ __forceinline__ float outputScale(float l) { return l == 0.f ? 0.f : 1.f / l; }
__device__ __forceinline__ float rowLogSumExp(float m2, float l) {
  return l == 0.f ? -INFINITY : (m2 + log2f(l)) * kLn2;
}

// Backward, shared by the exact and tensor-core dK/dV and dQ passes: from the recomputed raw dot
// q.k, P = exp(s - logsumexp) (lse2: logsumexp in log2 units), then
//   p  = P * dropout multiplier                                   (dV accumulates P~^T dO),
//   ds = P * (dP * dropout multiplier - delta) * ds/draw * scale  (dK, dQ accumulate dS).
// A masked key contributes exactly 0 to both.
struct ProbAndScoreGrad { float p, ds; };
template <bool LOCAL, bool GENERAL>
__device__ __forceinline__ ProbAndScoreGrad backwardStep(const Problem& p, const Seq& s, bool edgeTile, int b,
                                                         int h, int i, int j, float dot, float slope, float lse2,
                                                         float dp, float delta, uint32_t rowKey) {
  const bool kept = (edgeTile || GENERAL) ? isKept<LOCAL, GENERAL>(p, s, b, h, i, j) : true;
  const float raw = dot * p.scale;
  const float pr = exp2f(applyScoreMods<GENERAL>(p, s, raw, slope, i, j) * kLog2e - lse2);
  const float drop = (GENERAL && p.hasDropout) ? dropoutMultiplier(p, rowKey, j) : 1.f;
  const float ds = pr * (dp * drop - delta) * softcapDerivative<GENERAL>(p, raw) * p.scale;
  return {kept ? pr * drop : 0.f, kept ? ds : 0.f};
}

// ---- shared-memory tile loaders (global float32, rows of `width` valid elements) ----
// Loads rows [row0, row0 + ROWS) x columns [0, COLS) of a strided row-major array into
// smem as dst[c * LD + r] (transposed, "k-major"), zero-filling outside rows/width. Threads
// walk rows fastest so that the transposed stores of a warp hit consecutive banks.
template <int ROWS, int COLS, int LD, int NT>
__device__ __forceinline__ void loadTransposed(float* dst, const float* src, long long rowStride,
                                               int row0, int rowsValid, int width) {
  if ((width & 3) == 0 && (rowStride & 3) == 0 && (COLS & 3) == 0) {
    for (int idx = threadIdx.x; idx < ROWS * COLS / 4; idx += NT) {
      const int r = idx % ROWS, c = (idx / ROWS) * 4;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (row0 + r < rowsValid && c < width)
        x = __ldg(reinterpret_cast<const float4*>(src + (long long)(row0 + r) * rowStride + c));
      dst[c * LD + r] = x.x; dst[(c + 1) * LD + r] = x.y;
      dst[(c + 2) * LD + r] = x.z; dst[(c + 3) * LD + r] = x.w;
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * COLS; idx += NT) {
      const int r = idx % ROWS, c = idx / ROWS;
      float x = 0.f;
      if (row0 + r < rowsValid && c < width) x = __ldg(src + (long long)(row0 + r) * rowStride + c);
      dst[c * LD + r] = x;
    }
  }
}
// Same rows, kept row-major: dst[r * LD + c].
template <int ROWS, int COLS, int LD, int NT>
__device__ __forceinline__ void loadRows(float* dst, const float* src, long long rowStride,
                                         int row0, int rowsValid, int width) {
  if ((width & 3) == 0 && (rowStride & 3) == 0 && (COLS & 3) == 0 && (LD & 3) == 0) {
    for (int idx = threadIdx.x; idx < ROWS * COLS / 4; idx += NT) {
      const int r = idx / (COLS / 4), c = (idx % (COLS / 4)) * 4;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (row0 + r < rowsValid && c < width)
        x = __ldg(reinterpret_cast<const float4*>(src + (long long)(row0 + r) * rowStride + c));
      *reinterpret_cast<float4*>(dst + r * LD + c) = x;
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * COLS; idx += NT) {
      const int r = idx / COLS, c = idx % COLS;
      float x = 0.f;
      if (row0 + r < rowsValid && c < width) x = __ldg(src + (long long)(row0 + r) * rowStride + c);
      dst[r * LD + c] = x;
    }
  }
}

// ---- asynchronous copies (cp.async): a tile load proceeds while the block computes ----
// src-size 0 zero-fills the destination without reading memory.
__device__ __forceinline__ void cpAsync16Zfill(float* dst, const float* src, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsyncCommitGroup() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWaitGroup() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// loadRows with 16-byte asynchronous copies; needs width, rowStride, COLS, LD multiples of 4
// (callers fall back to loadRows otherwise).
template <int ROWS, int COLS, int LD, int NT>
__device__ __forceinline__ void loadRowsAsync(float* dst, const float* src, long long rowStride,
                                              int row0, int rowsValid, int width) {
  for (int idx = threadIdx.x; idx < ROWS * COLS / 4; idx += NT) {
    const int r = idx / (COLS / 4), c = (idx % (COLS / 4)) * 4;
    const bool valid = row0 + r < rowsValid && c < width;
    cpAsync16Zfill(dst + r * LD + c, valid ? src + (long long)(row0 + r) * rowStride + c : src, valid);
  }
}

// Copies columns [col0, col0 + COLS) of the DROWS rows of a staged transposed array (row
// stride nPad, col0 + COLS <= nPad) into smem dst[r * COLS + c] with 16-byte async copies.
template <int DROWS, int COLS, int NT>
__device__ __forceinline__ void loadStagedAsync(float* dst, const float* src, int nPad, int col0) {
  for (int idx = threadIdx.x; idx < DROWS * COLS / 4; idx += NT) {
    const int r = idx / (COLS / 4), c = (idx % (COLS / 4)) * 4;
    cpAsync16Zfill(dst + r * COLS + c, src + (long long)r * nPad + col0 + c, true);
  }
}

// Float32 staging of an operand transposed, [B, N, HX, W] -> [B, HX, DP, NPad] (zero padding),
// so that the exact kernels load its tiles with 16-byte copies instead of transposing them.
// ranges (int32 [B, 2], or null for dense): sequence b's rows are src rows start .. start + len - 1.
cudaError_t stageTransposedF32(const float* src, const int* ranges, float* dst, int batch, int n, int hx, int w,
                               int nPad, int dp, cudaStream_t stream);

// ---- register-tiled product over shared memory (SIMT, float32 FMA) ----
// 128 threads = 8 row groups x 16 column groups. A thread owns TM consecutive rows
// (rowGroup * TM + m) and TN columns spread so that a half-warp reads contiguous vectors:
// column(n) = colGroup * VEC + (n / VEC) * 16 * VEC + n % VEC, VEC = min(TN, 4).
template <int TN> struct ColMap {
  static constexpr int VEC = TN >= 4 ? 4 : TN;
  __device__ __forceinline__ static int col(int colGroup, int n) {
    return colGroup * VEC + (n / VEC) * 16 * VEC + n % VEC;
  }
};

template <int N>
__device__ __forceinline__ void loadVec(float (&dst)[N], const float* src);
template <> __device__ __forceinline__ void loadVec<1>(float (&d)[1], const float* s) { d[0] = s[0]; }
template <> __device__ __forceinline__ void loadVec<2>(float (&d)[2], const float* s) {
  const float2 x = *reinterpret_cast<const float2*>(s); d[0] = x.x; d[1] = x.y;
}
template <> __device__ __forceinline__ void loadVec<4>(float (&d)[4], const float* s) {
  const float4 x = *reinterpret_cast<const float4*>(s); d[0] = x.x; d[1] = x.y; d[2] = x.z; d[3] = x.w;
}

// acc[m][n] += sum_{k < K} A[k * LDA + row0 + m] * B[k * LDB + ColMap<TN>::col(colGroup, n)]
template <int TM, int TN, int K, int LDA, int LDB>
__device__ __forceinline__ void mmaSmem(float (&acc)[TM][TN], const float* A, int row0,
                                        const float* B, int colGroup) {
  constexpr int VA = TM >= 4 ? 4 : TM;
  constexpr int VB = ColMap<TN>::VEC;
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float a[TM], bv[TN];
#pragma unroll
    for (int m = 0; m < TM; m += VA) {
      float t[VA]; loadVec<VA>(t, A + k * LDA + row0 + m);
#pragma unroll
      for (int u = 0; u < VA; ++u) a[m + u] = t[u];
    }
#pragma unroll
    for (int n = 0; n < TN; n += VB) {
      float t[VB]; loadVec<VB>(t, B + k * LDB + ColMap<TN>::col(colGroup, n));
#pragma unroll
      for (int u = 0; u < VB; ++u) bv[n + u] = t[u];
    }
#pragma unroll
    for (int m = 0; m < TM; ++m)
#pragma unroll
      for (int n = 0; n < TN; ++n) acc[m][n] = fmaf(a[m], bv[n], acc[m][n]);
  }
}

// Reduction across the 16 column groups (lanes that share lane / 16 within a warp).
__device__ __forceinline__ float groupMax(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float groupSum(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Launch helpers implemented per file.
size_t simtForwardWorkspace(const Problem& p);
cudaError_t launchForwardSimt(const Problem& p, const float* q, const float* k, const float* v,
                              float* out, float* lse, void* workspace, cudaStream_t stream);
// Split-KV forward (decode_splitkv.cu): chosen for at most kDecodeMaxSeqQ query rows over at least
// kDecodeMinSeqK keys (environment FA_DECODE=0 / 1 forces it off / on, for tests and benches).
constexpr int kDecodeMaxSeqQ = 16;
constexpr int kDecodeMinSeqK = 256;
bool decodeEligible(const Problem& p);
size_t decodeForwardWorkspace(const Problem& p);
cudaError_t launchForwardDecode(const Problem& p, const float* q, const float* k, const float* v,
                                float* out, float* lse, void* workspace, cudaStream_t stream);
// Tensor-core path: the padded head dimension it runs at (64 or 128), 0 when it cannot.
int tensorCoreHeadDim(const Problem& p);
size_t tensorCoreForwardWorkspace(const Problem& p);
cudaError_t launchForwardTensorCore(const Problem& p, const float* q, const float* k, const float* v,
                                    float* out, float* lse, void* workspace, cudaStream_t stream);
size_t tensorCoreBackwardWorkspace(const Problem& p);
cudaError_t launchBackwardTensorCore(const Problem& p, const float* q, const float* k, const float* v,
                                     const float* lse, const float* dout, const float* delta, float* dq,
                                     float* dk, float* dv, void* workspace, cudaStream_t stream);
// delta = rowsum(dO * O); bf16Dout: with dO rounded to BF16 (the tensor-core passes' dP operand).
cudaError_t launchBackwardPreprocess(const Problem& p, const float* out, const float* dout, float* delta,
                                     bool bf16Dout, cudaStream_t stream);
size_t simtBackwardWorkspace(const Problem& p);
cudaError_t launchBackwardSimt(const Problem& p, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv, float* delta, void* staging, cudaStream_t stream);

}  // namespace fa
