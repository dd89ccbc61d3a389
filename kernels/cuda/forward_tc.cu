// Tensor-core forward (precision 'fast'): the same forward inner loop with Q K^T and P V on
// mma.sync m16n8k16 (BF16 operands, float32 accumulation), inputs and outputs float32.
// Q and K are rounded to BF16 as they are staged in shared memory, and so is P before P V; the
// softmax statistics and the output stay float32. Four warps, 16 query rows each; the score
// accumulator's register layout is reused as the A operand of P V, FlashAttention-2's way.
// headDim / headDimV up to 128 here (register budget); 'fast' falls back to the exact path above.
#include <cuda_bf16.h>

#include "common.cuh"

namespace fa {
namespace {

constexpr int NT = 128, BR = 64, BC = 64;

__device__ __forceinline__ void mmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  const __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&x);
}

// Rows [row0, row0 + ROWS) x [0, DMAX) of a float32 array into bf16 smem dst[r * LD + c].
template <int ROWS, int DMAX, int LD>
__device__ __forceinline__ void stageRows(__nv_bfloat16* dst, const float* src, long long rowStride,
                                          int row0, int rowsValid, int width) {
  for (int idx = threadIdx.x; idx < ROWS * DMAX / 2; idx += NT) {
    const int r = idx / (DMAX / 2), c = (idx % (DMAX / 2)) * 2;
    float x0 = 0.f, x1 = 0.f;
    if (row0 + r < rowsValid) {
      const float* s = src + (long long)(row0 + r) * rowStride;
      if (c < width) x0 = __ldg(s + c);
      if (c + 1 < width) x1 = __ldg(s + c + 1);
    }
    *reinterpret_cast<uint32_t*>(dst + r * LD + c) = packBf16(x0, x1);
  }
}
// Transposed: dst[c * LD + r], two consecutive rows per 32-bit store.
template <int ROWS, int DMAX, int LD>
__device__ __forceinline__ void stageTransposed(__nv_bfloat16* dst, const float* src,
                                                long long rowStride, int row0, int rowsValid, int width) {
  for (int idx = threadIdx.x; idx < ROWS / 2 * DMAX; idx += NT) {
    const int c = idx % DMAX, r = (idx / DMAX) * 2;
    float x0 = 0.f, x1 = 0.f;
    if (c < width) {
      if (row0 + r < rowsValid) x0 = __ldg(src + (long long)(row0 + r) * rowStride + c);
      if (row0 + r + 1 < rowsValid) x1 = __ldg(src + (long long)(row0 + r + 1) * rowStride + c);
    }
    *reinterpret_cast<uint32_t*>(dst + c * LD + r) = packBf16(x0, x1);
  }
}

template <int DMAX, bool LOCAL, bool GENERAL>
__global__ void __launch_bounds__(NT) forwardTensorCoreKernel(Problem p, const float* __restrict__ q,
                                                              const float* __restrict__ k,
                                                              const float* __restrict__ v,
                                                              float* __restrict__ out,
                                                              float* __restrict__ lse) {
  constexpr int LDQ = DMAX + 8, LDV = BC + 8;  // +8 bf16: fragment reads hit distinct banks
  constexpr int KSTEPS = DMAX / 16, NBLK = BC / 8, DBLK = DMAX / 8;
  extern __shared__ float4 smemRaw[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smemRaw);  // [BR][LDQ]
  __nv_bfloat16* Ks = Qs + BR * LDQ;                               // [BC][LDQ]
  __nv_bfloat16* Vt = Ks + BC * LDQ;                               // [DMAX][LDV]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int qTile = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int i0 = qTile * BR;
  const long long qStride = (long long)p.heads * p.headDim;
  const long long kStride = (long long)p.kvHeads * p.headDim;
  const long long vStride = (long long)p.kvHeads * p.headDimV;
  const float* qBase = q + ((long long)b * p.seqQ * p.heads + h) * p.headDim;
  const float* kBase = k + ((long long)b * p.seqK * p.kvHeads + kvh) * p.headDim;
  const float* vBase = v + ((long long)b * p.seqK * p.kvHeads + kvh) * p.headDimV;
  const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;
  const float scaleLog2 = p.scale * kLog2e;

  stageRows<BR, DMAX, LDQ>(Qs, qBase, qStride, i0, p.seqQ, p.headDim);
  __syncthreads();
  // This warp's Q rows stay in registers as A fragments for the whole key loop.
  uint32_t qf[KSTEPS][4];
  const int rLo = warp * 16 + g;  // rows rLo and rLo + 8 of the tile
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    qf[kk][0] = *reinterpret_cast<const uint32_t*>(Qs + rLo * LDQ + kk * 16 + 2 * t);
    qf[kk][1] = *reinterpret_cast<const uint32_t*>(Qs + (rLo + 8) * LDQ + kk * 16 + 2 * t);
    qf[kk][2] = *reinterpret_cast<const uint32_t*>(Qs + rLo * LDQ + kk * 16 + 2 * t + 8);
    qf[kk][3] = *reinterpret_cast<const uint32_t*>(Qs + (rLo + 8) * LDQ + kk * 16 + 2 * t + 8);
  }

  int jLo = 0, jHi = p.seqK;
  if (LOCAL) keyRange(p, i0, min(i0 + BR, p.seqQ) - 1, &jLo, &jHi);

  const int rows[2] = {i0 + rLo, i0 + rLo + 8};
  float o[DBLK][4], mRow[2] = {-INFINITY, -INFINITY}, lPart[2] = {0.f, 0.f};
#pragma unroll
  for (int db = 0; db < DBLK; ++db) o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.f;
  uint32_t rowKey[2] = {0u, 0u};
  if (GENERAL && p.hasDropout) {
    rowKey[0] = dropoutRowKey(p.seed, b * p.heads + h, rows[0]);
    rowKey[1] = dropoutRowKey(p.seed, b * p.heads + h, rows[1]);
  }

  for (int j0 = (jLo / BC) * BC; j0 < jHi; j0 += BC) {
    __syncthreads();
    stageRows<BC, DMAX, LDQ>(Ks, kBase, kStride, j0, p.seqK, p.headDim);
    stageTransposed<BC, DMAX, LDV>(Vt, vBase, vStride, j0, p.seqK, p.headDimV);
    __syncthreads();

    float s[NBLK][4];
#pragma unroll
    for (int nb = 0; nb < NBLK; ++nb) {
      s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
      const __nv_bfloat16* krow = Ks + (nb * 8 + g) * LDQ + 2 * t;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk)
        mmaBf16(s[nb], qf[kk], *reinterpret_cast<const uint32_t*>(krow + kk * 16),
                *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8));
    }

    const bool edgeTile = j0 + BC > p.seqK || (LOCAL && !tileInsideWindow(p, i0, i0 + BR - 1, j0, j0 + BC - 1));
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = rows[half];
      float tileMax = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < NBLK; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = j0 + nb * 8 + 2 * t + e;
          float& x = s[nb][half * 2 + e];
          const bool kept = (edgeTile || GENERAL) ? isKept<LOCAL, GENERAL>(p, b, h, i, j) : true;
          x = !kept ? -INFINITY
                    : GENERAL ? applyScoreMods<GENERAL>(p, x * p.scale, slope, i, j) * kLog2e : x * scaleLog2;
          tileMax = fmaxf(tileMax, x);
        }
      tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
      tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
      const float mNew = fmaxf(mRow[half], tileMax);
      const float alpha = mNew == -INFINITY ? 1.f : exp2f(mRow[half] - mNew);
      mRow[half] = mNew;
      float rowSum = 0.f;
#pragma unroll
      for (int nb = 0; nb < NBLK; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nb][half * 2 + e];
          float pv = mNew == -INFINITY ? 0.f : exp2f(x - mNew);
          rowSum += pv;
          if (GENERAL && p.hasDropout) pv *= dropoutMultiplier(p, rowKey[half], j0 + nb * 8 + 2 * t + e);
          x = pv;
        }
      lPart[half] = lPart[half] * alpha + rowSum;
#pragma unroll
      for (int db = 0; db < DBLK; ++db) { o[db][half * 2] *= alpha; o[db][half * 2 + 1] *= alpha; }
    }

#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      const uint32_t pa[4] = {packBf16(s[2 * kk][0], s[2 * kk][1]), packBf16(s[2 * kk][2], s[2 * kk][3]),
                              packBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              packBf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int db = 0; db < DBLK; ++db) {
        const __nv_bfloat16* vrow = Vt + (db * 8 + g) * LDV + kk * 16 + 2 * t;
        mmaBf16(o[db], pa, *reinterpret_cast<const uint32_t*>(vrow),
                *reinterpret_cast<const uint32_t*>(vrow + 8));
      }
    }
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = lPart[half];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int i = rows[half];
    if (i >= p.seqQ) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float* orow = out + (((long long)b * p.seqQ + i) * p.heads + h) * p.headDimV;
#pragma unroll
    for (int db = 0; db < DBLK; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = db * 8 + 2 * t + e;
        if (c < p.headDimV) orow[c] = o[db][half * 2 + e] * inv;
      }
    if (t == 0) lse[((long long)b * p.heads + h) * p.seqQ + i] = l > 0.f ? (mRow[half] + log2f(l)) * kLn2 : -INFINITY;
  }
}

template <int DMAX, bool LOCAL, bool GENERAL>
cudaError_t launch(const Problem& p, const float* q, const float* k, const float* v, float* out,
                   float* lse, cudaStream_t stream) {
  constexpr size_t smem = sizeof(__nv_bfloat16) * ((BR + BC) * (DMAX + 8) + DMAX * (BC + 8));
  auto kernel = forwardTensorCoreKernel<DMAX, LOCAL, GENERAL>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.seqQ + BR - 1) / BR, p.heads, p.batch);
  kernel<<<grid, NT, smem, stream>>>(p, q, k, v, out, lse);
  return cudaGetLastError();
}

template <int DMAX>
cudaError_t dispatchFlags(const Problem& p, const float* q, const float* k, const float* v,
                          float* out, float* lse, cudaStream_t s) {
  const bool local = p.windowLeft >= 0 || p.windowRight >= 0;
  const bool general = p.hasAlibi || p.hasSoftcap || p.hasMask || p.hasDropout;
  if (local) return general ? launch<DMAX, true, true>(p, q, k, v, out, lse, s)
                            : launch<DMAX, true, false>(p, q, k, v, out, lse, s);
  return general ? launch<DMAX, false, true>(p, q, k, v, out, lse, s)
                 : launch<DMAX, false, false>(p, q, k, v, out, lse, s);
}

}  // namespace

bool tensorCoreForwardSupports(const Problem& p) { return max(p.headDim, p.headDimV) <= 128; }

cudaError_t launchForwardTensorCore(const Problem& p, const float* q, const float* k, const float* v,
                                    float* out, float* lse, cudaStream_t stream) {
  if (max(p.headDim, p.headDimV) <= 64) return dispatchFlags<64>(p, q, k, v, out, lse, stream);
  return dispatchFlags<128>(p, q, k, v, out, lse, stream);
}

}  // namespace fa
