// Exact float32 split-KV forward ("flash-decoding") for a few query rows over many keys. The
// one-pass forward gives such a call only batch x heads blocks of mostly idle rows; this splits
// each (sequence, kv head)'s keys across blocks and reads K and V once for the whole query-head
// group (GQA/MQA), which is what decode costs.
//   split pass:   block (row chunk, split, sequence x kv head) walks its keys in tiles (K and V
//                 tiles double-buffered through 16-byte cp.async), keeping per row the running
//                 max m, sum l and the unnormalised output; writes (o, m, l) of its split;
//   combine pass: block (query row, head, sequence) merges the splits' partials by their
//                 logsumexp: split weights in shared memory, the splits' output rows summed by
//                 several threads per column quad (several loads in flight), every sum in a fixed
//                 order (deterministic), out = O / L, logSumExp = M + log L.
// Decode is bound by reading K and V, so the tiles are sized for residency: every head dimension
// up to 128 uses 32 KB key tiles (three blocks of 4 warps per SM; d 128 used to take one block of
// 64-key tiles per SM, too few warps to keep the loads coming), and the split count is chosen from
// the device's resident blocks so that the split pass fills whole waves (decodePlan).
// Same outputs as the one-pass forward (forward_simt.cu) in meaning and to rounding, every
// option through OPTIONS_SWITCH; the backward is unchanged (it reads only out and logSumExp).
#include <stdlib.h>

#include <algorithm>
#include <atomic>

#include "common.cuh"

namespace fa {
namespace {

constexpr int NT = 128;  // split-pass threads
constexpr int RB = 8;    // query rows (query row x head of the group) per split-pass block
constexpr int COMBINE_NT = 128;
constexpr int MAX_SPLITS = 256;

// Key tile of BC keys: 32 KB of K and V at d 64 and d 128 (72 KB of shared memory per block with
// two stages, so three blocks per SM), 64 KB at d 256 (one block per SM).
template <int DMAX> struct DecodeTile { static constexpr int BC = DMAX <= 64 ? 64 : 32; };
inline int decodeTileKeys(int dmax) { return dmax <= 64 ? 64 : 32; }
// Splits are at least this many tiles long; decodePlan's cost model charges each block this much
// for its start (Q load, the first tile's latency) and end (writing its partials).
constexpr int MIN_SPLIT_TILES = 2;
constexpr int BLOCK_OVERHEAD_TILES = 2;

template <int DMAX>
constexpr size_t decodeSmemFloats() {
  constexpr int BC = DecodeTile<DMAX>::BC;
  // Two stages of K [BC][DMAX + 4] and V [BC][DMAX]; Q [RB][DMAX]; P [BC][RB]; row maxima.
  return 2 * (BC * (DMAX + 4) + BC * DMAX) + RB * DMAX + BC * RB + RB * 4;
}

// Rows [row0, row0 + ROWS) x columns [0, width) of a row-major array into dst[r * LD + c];
// 16-byte asynchronous copies when aligned (columns past width left as they are: never read),
// else plain loads with zeros past rowsValid / width. Index arithmetic over the compile-time
// DMAX, so that it is shifts and masks, not divisions.
template <int ROWS, int LD, int DMAX>
__device__ __forceinline__ void loadTile(float* dst, const float* src, long long rowStride, int row0,
                                         int rowsValid, int width, bool aligned) {
  if (aligned) {
    constexpr int W4 = DMAX / 4;
#pragma unroll 4
    for (int idx = threadIdx.x; idx < ROWS * W4; idx += NT) {
      const int r = idx / W4, c = (idx % W4) * 4;
      if (c >= width) continue;
      const bool valid = row0 + r < rowsValid;
      cpAsync16Zfill(dst + r * LD + c, valid ? src + (long long)(row0 + r) * rowStride + c : src, valid);
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * DMAX; idx += NT) {
      const int r = idx / DMAX, c = idx % DMAX;
      float x = 0.f;
      if (row0 + r < rowsValid && c < width) x = __ldg(src + (long long)(row0 + r) * rowStride + c);
      dst[r * LD + c] = x;
    }
  }
}

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) decodeSplitKernel(Problem p, const float* __restrict__ q,
                                                        const float* __restrict__ k,
                                                        const float* __restrict__ v, int splitLen,
                                                        int partLd, float* __restrict__ partO,
                                                        float* __restrict__ partM,
                                                        float* __restrict__ partL) {
  constexpr int BC = DecodeTile<DMAX>::BC, KLD = DMAX + 4;
  constexpr int TPK = NT / BC;       // score phase: threads per key, each owning RPT rows
  constexpr int RPT = RB / TPK;
  constexpr int WPR = BC / 32;       // warps per row part
  constexpr int CG = DMAX / 4;       // P V phase: column groups of 4, and key slices
  constexpr int SL = NT / CG;
  extern __shared__ float4 smemRaw[];
  float* stage = reinterpret_cast<float*>(smemRaw);      // 2 x (K [BC][KLD], V [BC][DMAX])
  float* Qs = stage + 2 * (BC * KLD + BC * DMAX);        // [RB][DMAX]
  float* Ps = Qs + RB * DMAX;                            // [BC][RB]
  float* redMax = Ps + BC * RB;                          // [RB][WPR]

  const int chunk = blockIdx.x, split = blockIdx.y;
  const int b = blockIdx.z / p.kvHeads, kvh = blockIdx.z % p.kvHeads;
  const Seq sq = sequence<VARLEN>(p, b);
  const int nRows = sq.lenQ * p.group;  // (query row, head of the group), query-row major
  const int r0 = chunk * RB;
  const int splitBeg = split * splitLen;
  if (r0 >= nRows || splitBeg >= sq.lenK) return;  // the combine pass reads no partial of these
  const int splitEnd = min(splitBeg + splitLen, sq.lenK);
  const long long nIdx = (long long)p.heads * p.rowsQ;  // partials indexed as logSumExp, per split

  const int tid = threadIdx.x;
  const float* qBase = q + (long long)sq.startQ * p.heads * p.headDim;
  const float* kBase = k + ((long long)sq.startK * p.kvHeads + kvh) * p.headDim;
  const float* vBase = v + ((long long)sq.startK * p.kvHeads + kvh) * p.headDimV;
  const long long kStride = (long long)p.kvHeads * p.headDim, vStride = (long long)p.kvHeads * p.headDimV;
  const bool alignedK = (p.headDim & 3) == 0, alignedV = (p.headDimV & 3) == 0;

  // Q rows of the chunk: row r is query i = r / group of head kvh * group + r % group.
  if (alignedK) {
    for (int idx = tid; idx < RB * DMAX / 4; idx += NT) {
      const int rr = idx / (DMAX / 4), c = (idx % (DMAX / 4)) * 4, r = r0 + rr;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (r < nRows && c < p.headDim)
        x = *reinterpret_cast<const float4*>(
            qBase + ((long long)(r / p.group) * p.heads + kvh * p.group + r % p.group) * p.headDim + c);
      *reinterpret_cast<float4*>(Qs + rr * DMAX + c) = x;
    }
  } else {
    for (int idx = tid; idx < RB * DMAX; idx += NT) {
      const int rr = idx / DMAX, c = idx % DMAX, r = r0 + rr;
      float x = 0.f;
      if (r < nRows && c < p.headDim)
        x = qBase[((long long)(r / p.group) * p.heads + kvh * p.group + r % p.group) * p.headDim + c];
      Qs[idx] = x;
    }
  }

  // Keys this block sees: its split, narrowed by the window of its first and last query rows.
  const int iFirst = r0 / p.group, iLast = min(r0 + RB, nRows) - 1;
  const int iLastQ = iLast / p.group;
  int jLo = splitBeg, jHi = splitEnd;
  if (LOCAL) {
    int wLo, wHi;
    keyRange(p, sq, iFirst, iLastQ, &wLo, &wHi);
    jLo = max(jLo, wLo); jHi = min(jHi, wHi);
  }
  const int jStart = jLo < jHi ? (jLo - splitBeg) / BC * BC + splitBeg : jHi;

  // Score-phase identity: key jj of the tile, rows rPart * RPT + t.
  const int jj = tid % BC, rPart = tid / BC;
  int rowI[RPT], rowH[RPT];
  float slope[RPT];
  uint32_t rowKey[RPT];
#pragma unroll
  for (int t = 0; t < RPT; ++t) {
    const int r = r0 + rPart * RPT + t;
    rowI[t] = r < nRows ? r / p.group : sq.lenQ;  // lenQ: not a row, never kept
    rowH[t] = kvh * p.group + r % p.group;
    slope[t] = (GENERAL && p.hasAlibi && r < nRows) ? p.alibi[rowH[t]] : 0.f;
    rowKey[t] = (GENERAL && p.hasDropout) ? dropoutRowKey(p.seed, b * p.heads + rowH[t], rowI[t]) : 0u;
  }
  // P V identity: columns cg * 4 .. + 3, keys jj = slice, slice + SL, ...
  const int cg = tid % CG, slice = tid / CG;

  float mRow[RB], lPart[RPT], o[RB][4];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    mRow[r] = -INFINITY;
#pragma unroll
    for (int c = 0; c < 4; ++c) o[r][c] = 0.f;
  }
#pragma unroll
  for (int t = 0; t < RPT; ++t) lPart[t] = 0.f;

  auto issue = [&](int j0, int buf) {
    float* Ks = stage + buf * (BC * KLD + BC * DMAX);
    loadTile<BC, KLD, DMAX>(Ks, kBase, kStride, j0, sq.lenK, p.headDim, alignedK);
    loadTile<BC, DMAX, DMAX>(Ks + BC * KLD, vBase, vStride, j0, sq.lenK, p.headDimV, alignedV);
    cpAsyncCommitGroup();
  };
  if (jStart < jHi) issue(jStart, 0);
  const int dq4 = (p.headDim + 3) / 4;
  int s = 0;
  for (int j0 = jStart; j0 < jHi; j0 += BC, s ^= 1) {
    if (j0 + BC < jHi) issue(j0 + BC, s ^ 1);
    else cpAsyncCommitGroup();
    cpAsyncWaitGroup<1>();  // this tile has landed
    __syncthreads();
    const float* Ks = stage + s * (BC * KLD + BC * DMAX);
    const float* Vs = Ks + BC * KLD;

    // Forward inner loop, scores: S = Q K^T for this thread's key and rows (log2 units).
    float x[RPT];
#pragma unroll
    for (int t = 0; t < RPT; ++t) x[t] = 0.f;
    // Rows past the chunk's last are skipped (warp-uniform: a warp shares rPart).
    const int tValid = min(RPT, nRows - r0 - rPart * RPT);
#pragma unroll 4
    for (int d4 = 0; d4 < dq4; ++d4) {
      const float4 kk = *reinterpret_cast<const float4*>(Ks + jj * KLD + d4 * 4);
#pragma unroll
      for (int t = 0; t < RPT; ++t) {
        if (t >= tValid) break;
        const float4 qq = *reinterpret_cast<const float4*>(Qs + (rPart * RPT + t) * DMAX + d4 * 4);
        x[t] = fmaf(qq.x, kk.x, fmaf(qq.y, kk.y, fmaf(qq.z, kk.z, fmaf(qq.w, kk.w, x[t]))));
      }
    }
    const int j = j0 + jj;
    const bool edgeTile = j0 + BC > jHi || j0 < jLo ||
                          (LOCAL && !tileInsideWindow(p, sq, iFirst, iLastQ, j0, j0 + BC - 1));
    bool kept[RPT];
#pragma unroll
    for (int t = 0; t < RPT; ++t) {
      kept[t] = rowI[t] < sq.lenQ && j < jHi &&
                ((edgeTile || GENERAL) ? isKept<LOCAL, GENERAL>(p, sq, b, rowH[t], rowI[t], j) : true);
      x[t] = kept[t] ? applyScoreMods<GENERAL>(p, sq, x[t] * p.scale, slope[t], rowI[t], j) * kLog2e : -INFINITY;
      float mx = x[t];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      if ((tid & 31) == 0) redMax[(rPart * RPT + t) * WPR + (jj / 32)] = mx;
    }
    __syncthreads();
    // Every thread keeps the same running maxima of all RB rows.
    float alpha[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      float mNew = mRow[r];
#pragma unroll
      for (int w = 0; w < WPR; ++w) mNew = fmaxf(mNew, redMax[r * WPR + w]);
      // Nothing finite so far: m stays -inf and the (zero or NaN) accumulators stay as they are.
      alpha[r] = mNew == -INFINITY ? 1.f : exp2f(mRow[r] - mNew);
      mRow[r] = mNew;
    }
#pragma unroll
    for (int t = 0; t < RPT; ++t) {
      const int rr = rPart * RPT + t;
      float pv = softmaxWeight(kept[t], x[t], mRow[rr]);
      lPart[t] = lPart[t] * alpha[rr] + pv;
      if (GENERAL && p.hasDropout) pv *= dropoutMultiplier(p, rowKey[t], j);
      Ps[jj * RB + rr] = pv;
    }
    __syncthreads();
    // Forward inner loop, output: O = O * alpha + P V.
#pragma unroll
    for (int r = 0; r < RB; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) o[r][c] *= alpha[r];
    if (cg * 4 < p.headDimV) {
      for (int kj = slice; kj < BC; kj += SL) {
        const float4 vv = *reinterpret_cast<const float4*>(Vs + kj * DMAX + cg * 4);
        const float4 pa = *reinterpret_cast<const float4*>(Ps + kj * RB);
        const float4 pb = *reinterpret_cast<const float4*>(Ps + kj * RB + 4);
        const float pr[RB] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
        for (int r = 0; r < RB; ++r) {
          o[r][0] = fmaf(pr[r], vv.x, o[r][0]); o[r][1] = fmaf(pr[r], vv.y, o[r][1]);
          o[r][2] = fmaf(pr[r], vv.z, o[r][2]); o[r][3] = fmaf(pr[r], vv.w, o[r][3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled two tiles on
  }
  cpAsyncWaitGroup<0>();
  __syncthreads();

  // The split's partials: l summed over keys (fixed order), o over key slices (fixed order).
  float* lRed = stage;                 // [RB][WPR]
  float* oRed = stage + RB * WPR + 4;  // [SL][RB][DMAX]
#pragma unroll
  for (int t = 0; t < RPT; ++t) {
    float l = lPart[t];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    if ((tid & 31) == 0) lRed[(rPart * RPT + t) * WPR + (jj / 32)] = l;
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    *reinterpret_cast<float4*>(oRed + (slice * RB + r) * DMAX + cg * 4) = make_float4(o[r][0], o[r][1], o[r][2], o[r][3]);
  __syncthreads();
  // Partial rows have partLd (headDimV rounded up to 4) floats, so both passes move float4s; the
  // columns past headDimV hold zeros (the unaligned V loader zero-fills them).
  for (int idx = tid; idx < RB * DMAX / 4; idx += NT) {
    const int rr = idx / (DMAX / 4), c = (idx % (DMAX / 4)) * 4, r = r0 + rr;
    if (r >= nRows || c >= partLd) continue;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int sl = 0; sl < SL; ++sl) {
      const float4 x = *reinterpret_cast<const float4*>(oRed + (sl * RB + rr) * DMAX + c);
      acc.x += x.x; acc.y += x.y; acc.z += x.z; acc.w += x.w;
    }
    const long long at = split * nIdx + lseIndex(p, sq, kvh * p.group + r % p.group, r / p.group);
    *reinterpret_cast<float4*>(partO + at * partLd + c) = acc;
    if (c == 0) {
      float l = 0.f;
#pragma unroll
      for (int w = 0; w < WPR; ++w) l += lRed[rr * WPR + w];
      partM[at] = mRow[rr];
      partL[at] = l;
    }
  }
}

// Combine pass: block (query row i, head h, sequence b). The split weights w_s = 2^(m_s - M) go
// to shared memory once; thread (quad, slice) then sums w_s * o_s over the splits slice,
// slice + slices, ... (four loads in flight), and the slices' sums are added in slice order: every
// sum has a fixed order, so the result does not depend on timing.
template <bool VARLEN>
__global__ void __launch_bounds__(COMBINE_NT) decodeCombineKernel(Problem p, int splitLen, int partLd,
                                                                  const float* __restrict__ partO,
                                                                  const float* __restrict__ partM,
                                                                  const float* __restrict__ partL,
                                                                  float* __restrict__ out,
                                                                  float* __restrict__ lse) {
  __shared__ float weight[MAX_SPLITS];
  __shared__ float red[COMBINE_NT];
  __shared__ float4 sums[COMBINE_NT];
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  const Seq sq = sequence<VARLEN>(p, b);
  if (i >= sq.rowsQ) return;  // packed: past this sequence's queries
  float* orow = out + (((long long)sq.startQ + i) * p.heads + h) * p.headDimV;
  const long long at = lseIndex(p, sq, h, i);
  if (i >= sq.lenQ) {  // padding rows: zeros, logsumexp -inf
    for (int c = tid; c < p.headDimV; c += COMBINE_NT) orow[c] = 0.f;
    if (tid == 0) lse[at] = -INFINITY;
    return;
  }
  const int splits = (sq.lenK + splitLen - 1) / splitLen;
  const long long nIdx = (long long)p.heads * p.rowsQ;

  // M = the largest split maximum (a maximum: any order gives the same).
  float m = -INFINITY;
  for (int s = tid; s < splits; s += COMBINE_NT) m = fmaxf(m, partM[s * nIdx + at]);
  red[tid] = m;
  __syncthreads();
  for (int w = COMBINE_NT / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] = fmaxf(red[tid], red[tid + w]);
    __syncthreads();
  }
  const float mMax = red[0];
  __syncthreads();  // red is reused for L
  // L = sum of w_s l_s: per thread in split order, then a fixed tree.
  float l = 0.f;
  for (int s = tid; s < splits; s += COMBINE_NT) {
    const float w = mMax == -INFINITY ? 1.f : exp2f(partM[s * nIdx + at] - mMax);
    weight[s] = w;
    l = fmaf(w, partL[s * nIdx + at], l);
  }
  red[tid] = l;
  __syncthreads();
  for (int w = COMBINE_NT / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] += red[tid + w];
    __syncthreads();
  }
  const float lSum = red[0];

  // O = sum of w_s o_s, column quads of the partial rows (partLd floats each).
  const int quads = partLd / 4, slices = COMBINE_NT / quads;
  const int quad = tid % quads, slice = tid / quads;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (slice < slices) {
    const float4* col = reinterpret_cast<const float4*>(partO + at * partLd) + quad;
    const long long step = nIdx * partLd / 4;  // float4s from one split's row to the next
    int s = slice;
    for (; s + 3 * slices < splits; s += 4 * slices) {
      float4 x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) x[u] = col[(s + u * slices) * step];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const float w = weight[s + u * slices];
        acc.x = fmaf(w, x[u].x, acc.x); acc.y = fmaf(w, x[u].y, acc.y);
        acc.z = fmaf(w, x[u].z, acc.z); acc.w = fmaf(w, x[u].w, acc.w);
      }
    }
    for (; s < splits; s += slices) {
      const float4 x = col[s * step];
      const float w = weight[s];
      acc.x = fmaf(w, x.x, acc.x); acc.y = fmaf(w, x.y, acc.y);
      acc.z = fmaf(w, x.z, acc.z); acc.w = fmaf(w, x.w, acc.w);
    }
  }
  sums[tid] = acc;
  __syncthreads();
  if (tid < quads) {
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int sl = 0; sl < slices; ++sl) {
      const float4 x = sums[sl * quads + tid];
      o.x += x.x; o.y += x.y; o.z += x.z; o.w += x.w;
    }
    const float inv = outputScale(lSum);
    const float v[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (tid * 4 + u < p.headDimV) orow[tid * 4 + u] = v[u] * inv;
  }
  if (tid == 0) lse[at] = rowLogSumExp(mMax, lSum);
}

int decodeHeadDim(const Problem& p) {
  const int d = max(p.headDim, p.headDimV);
  return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

constexpr int kMaxDevices = 64;

// Allows the split pass's dynamic shared memory, once per device and instantiation (outside
// the launch path: a captured CUDA graph then holds only the two launches).
template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
cudaError_t allowSplitSmem(int dev) {
  static std::atomic<bool> done[kMaxDevices];
  const bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached && done[dev].load(std::memory_order_relaxed)) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(decodeSplitKernel<DMAX, LOCAL, GENERAL, VARLEN>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)(sizeof(float) * decodeSmemFloats<DMAX>()));
  if (err == cudaSuccess && cached) done[dev].store(true, std::memory_order_relaxed);
  return err;
}

// Split-pass blocks resident per SM (the occupancy calculator on the option-free instantiation;
// the others differ by a few registers), per device.
template <int DMAX>
int residentSplitBlocks(int dev) {
  static std::atomic<int> cache[kMaxDevices];
  const bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached) { if (const int n = cache[dev].load(std::memory_order_relaxed)) return n; }
  int n = 0;
  if (allowSplitSmem<DMAX, false, false, false>(dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decodeSplitKernel<DMAX, false, false, false>, NT,
                                                    sizeof(float) * decodeSmemFloats<DMAX>()) != cudaSuccess ||
      n < 1)
    n = 1;
  cudaGetLastError();  // a failed query leaves the estimate, not a sticky error
  if (cached) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

int residentSplitBlocks(int dmax, int dev) {
  switch (dmax) {
    case 64: return residentSplitBlocks<64>(dev);
    case 128: return residentSplitBlocks<128>(dev);
    default: return residentSplitBlocks<256>(dev);
  }
}

// partLd: floats per partial output row (headDimV rounded up to 4: float4 rows).
struct DecodePlan { int rowChunks, splits, splitLen, partLd; };

// Split count from the device and the shapes: the split pass runs units x splits blocks (units =
// sequences x kv heads x row chunks) in waves of SMs x resident blocks; a split of n tiles costs
// its wave n + BLOCK_OVERHEAD_TILES tile times. The count with the least total (waves x that)
// wins, the fewest splits on a tie: whole waves for large K/V (one wave when it can), and for
// small K/V no more splits than fill the device with blocks of at least MIN_SPLIT_TILES tiles.
// FA_DECODE_SPLITS=n overrides (tests and tuning).
DecodePlan decodePlan(const Problem& p) {
  DecodePlan d{};
  const int dmax = decodeHeadDim(p);
  const int bc = decodeTileKeys(dmax);
  d.rowChunks = (p.seqQ * p.group + RB - 1) / RB;
  d.partLd = (p.headDimV + 3) / 4 * 4;
  int sms = 132, dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    sms = 132;
  cudaGetLastError();
  const long long slots = (long long)sms * residentSplitBlocks(dmax, dev);
  const long long units = (long long)max(p.batch, 1) * p.kvHeads * d.rowChunks;
  const int seqK = max(p.seqK, 1);
  const int tiles = (seqK + bc - 1) / bc;
  int lenTiles = tiles;
  const char* forced = getenv("FA_DECODE_SPLITS");
  if (forced && atoi(forced) > 0) {
    const int want = min(atoi(forced), MAX_SPLITS);
    lenTiles = ((seqK + want - 1) / want + bc - 1) / bc;
  } else {
    long long best = -1;
    for (int s = 1; s <= MAX_SPLITS; ++s) {
      const int n = (tiles + s - 1) / s;  // tiles per split
      if (s > 1 && n < MIN_SPLIT_TILES) break;
      const long long used = (tiles + n - 1) / n;
      const long long cost = (units * used + slots - 1) / slots * (n + BLOCK_OVERHEAD_TILES);
      if (best < 0 || cost < best) { best = cost; lenTiles = n; }
    }
  }
  d.splitLen = lenTiles * bc;
  d.splits = (seqK + d.splitLen - 1) / d.splitLen;
  return d;
}

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
cudaError_t launchSplit(const Problem& p, const DecodePlan& d, const float* q, const float* k, const float* v,
                        float* partO, float* partM, float* partL, cudaStream_t stream) {
  constexpr size_t smem = sizeof(float) * decodeSmemFloats<DMAX>();
  const dim3 grid(d.rowChunks, d.splits, p.batch * p.kvHeads);
  if (emptyGrid(grid)) return cudaSuccess;
  int dev = -1;
  cudaGetDevice(&dev);
  cudaError_t err = allowSplitSmem<DMAX, LOCAL, GENERAL, VARLEN>(dev);
  if (err != cudaSuccess) return err;
  decodeSplitKernel<DMAX, LOCAL, GENERAL, VARLEN><<<grid, NT, smem, stream>>>(p, q, k, v, d.splitLen, d.partLd,
                                                                              partO, partM, partL);
  return cudaGetLastError();
}

template <int DMAX>
cudaError_t dispatchFlags(const Problem& p, const DecodePlan& d, const float* q, const float* k, const float* v,
                          float* partO, float* partM, float* partL, cudaStream_t s) {
  return OPTIONS_SWITCH(p, [&] { return launchSplit<DMAX, LOCAL, GENERAL, VARLEN>(p, d, q, k, v, partO, partM, partL, s); });
}

}  // namespace

bool decodeEligible(const Problem& p) {
  if ((long long)p.batch * p.kvHeads > 65535) return false;  // the split pass's grid z
  if (const char* e = getenv("FA_DECODE")) {  // 0: never (the one-pass forward), 1: every shape
    if (e[0] == '0') return false;
    if (e[0] == '1') return true;
  }
  return p.seqQ <= kDecodeMaxSeqQ && p.seqK >= kDecodeMinSeqK;
}

size_t decodeForwardWorkspace(const Problem& p) {
  const DecodePlan d = decodePlan(p);
  const size_t idx = (size_t)d.splits * p.heads * p.rowsQ;
  return sizeof(float) * (idx * d.partLd + 2 * ((idx + 63) / 64 * 64));
}

cudaError_t launchForwardDecode(const Problem& p, const float* q, const float* k, const float* v, float* out,
                                float* lse, void* workspace, cudaStream_t stream) {
  const DecodePlan d = decodePlan(p);
  const size_t idx = (size_t)d.splits * p.heads * p.rowsQ;
  float* partO = static_cast<float*>(workspace);
  float* partM = partO + idx * d.partLd;
  float* partL = partM + (idx + 63) / 64 * 64;
  cudaError_t err;
  switch (decodeHeadDim(p)) {
    case 64: err = dispatchFlags<64>(p, d, q, k, v, partO, partM, partL, stream); break;
    case 128: err = dispatchFlags<128>(p, d, q, k, v, partO, partM, partL, stream); break;
    default: err = dispatchFlags<256>(p, d, q, k, v, partO, partM, partL, stream); break;
  }
  if (err != cudaSuccess) return err;
  const dim3 grid(p.seqQ, p.heads, p.batch);
  if (emptyGrid(grid)) return cudaSuccess;
  return BOOL_SWITCH(isVarlen(p), VARLEN, [&] {
    decodeCombineKernel<VARLEN><<<grid, COMBINE_NT, 0, stream>>>(p, d.splitLen, d.partLd, partO, partM, partL, out,
                                                                 lse);
    return cudaGetLastError();
  });
}

}  // namespace fa
