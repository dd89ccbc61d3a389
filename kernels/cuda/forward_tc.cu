// Tensor-core forward (precision 'fast'): FlashAttention-2's forward inner loop (Triton
// tutorial: "_attn_fwd_inner") with Q K^T and P V on BF16 mma.sync (float32 accumulation,
// float32 softmax statistics and output). Operands
// come from the BF16 staging pass: Q [B, H, NqPad, DP], K [B, Hkv, NkPad, DP] and V transposed
// [B, Hkv, DP, NkPad]. Eight warps own 16 query rows each (BR = 128) and keep their Q fragments
// in registers; K and V tiles stream through a two-stage cp.async pipeline.
#include "tc_common.cuh"

namespace fa {
namespace {

constexpr int NT = 256, BR = 128, BC = 64;

template <int DP, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) forwardTensorCoreKernel(Problem p, const __nv_bfloat16* __restrict__ qb,
                                                              const __nv_bfloat16* __restrict__ kb,
                                                              const __nv_bfloat16* __restrict__ vtb,
                                                              int nqPad, int nkPad,
                                                              float* __restrict__ out, float* __restrict__ lse) {
  constexpr int LDK = DP + 8, LDV = BC + 8;  // +8 bf16 per row: fragment reads hit distinct banks
  constexpr int KSTEPS = DP / 16, NBLK = BC / 8, DBLK = DP / 8;
  extern __shared__ float4 smemRaw[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smemRaw);  // [2][BC][LDK]
  __nv_bfloat16* Vt = Ks + 2 * BC * LDK;                           // [2][DP][LDV]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int qTile = gridDim.x - 1 - blockIdx.x;  // heavy tiles first under causal
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int i0 = qTile * BR;
  const Seq sq = sequence<VARLEN>(p, b);
  if (i0 >= sq.rowsQ) return;  // packed: past this sequence's queries
  const __nv_bfloat16* kBase = kb + ((long long)b * p.kvHeads + kvh) * nkPad * DP;
  const __nv_bfloat16* vBase = vtb + ((long long)b * p.kvHeads + kvh) * DP * nkPad;
  const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;
  const float scaleLog2 = p.scale * kLog2e;

  int jLo = 0, jHi = sq.lenK;
  if (LOCAL) keyRange(p, sq, i0, min(i0 + BR, sq.lenQ) - 1, &jLo, &jHi);
  if (i0 >= sq.lenQ) jLo = jHi = 0;  // a tile of padding rows only: zeros written below
  const int jStart = (jLo / BC) * BC;

  auto issueTile = [&](int j0, int stage) {
    copyTileAsync<BC, DP, LDK, NT>(Ks + stage * BC * LDK, kBase + (long long)j0 * DP, DP);
    copyTileAsync<DP, BC, LDV, NT>(Vt + stage * DP * LDV, vBase + j0, nkPad);
    cpAsyncCommit();
  };
  if (jStart < jHi) issueTile(jStart, 0);

  // This warp's 16 query rows, as A fragments for the whole key loop.
  const int rLo = warp * 16 + g;
  uint32_t qf[KSTEPS][4];
  {
    const __nv_bfloat16* q0 = qb + (((long long)b * p.heads + h) * nqPad + i0 + rLo) * DP + 2 * t;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
      qf[kk][0] = __ldg(reinterpret_cast<const unsigned*>(q0 + kk * 16));
      qf[kk][1] = __ldg(reinterpret_cast<const unsigned*>(q0 + 8 * DP + kk * 16));
      qf[kk][2] = __ldg(reinterpret_cast<const unsigned*>(q0 + kk * 16 + 8));
      qf[kk][3] = __ldg(reinterpret_cast<const unsigned*>(q0 + 8 * DP + kk * 16 + 8));
    }
  }

  const int rows[2] = {i0 + rLo, i0 + rLo + 8};
  float o[DBLK][4], mRow[2] = {-INFINITY, -INFINITY}, lPart[2] = {0.f, 0.f};
#pragma unroll
  for (int db = 0; db < DBLK; ++db) o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.f;
  uint32_t rowKey[2] = {0u, 0u};
  if (GENERAL && p.hasDropout) {
    rowKey[0] = dropoutRowKey(p.seed, b * p.heads + h, rows[0]);
    rowKey[1] = dropoutRowKey(p.seed, b * p.heads + h, rows[1]);
  }

  int stage = 0;
  for (int j0 = jStart; j0 < jHi; j0 += BC, stage ^= 1) {
    if (j0 + BC < jHi) { issueTile(j0 + BC, stage ^ 1); cpAsyncWait<1>(); }
    else cpAsyncWait<0>();
    __syncthreads();
    const __nv_bfloat16* K = Ks + stage * BC * LDK;
    const __nv_bfloat16* V = Vt + stage * DP * LDV;

    float s[NBLK][4];
#pragma unroll
    for (int nb = 0; nb < NBLK; ++nb) {
      s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
      const __nv_bfloat16* krow = K + (nb * 8 + g) * LDK + 2 * t;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) mmaBf16(s[nb], qf[kk], ld32(krow + kk * 16), ld32(krow + kk * 16 + 8));
    }

    const bool edgeTile = j0 + BC > sq.lenK || (LOCAL && !tileInsideWindow(p, sq, i0, i0 + BR - 1, j0, j0 + BC - 1));
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = rows[half];
      float tileMax = -INFINITY;
      bool kept[NBLK][2];
#pragma unroll
      for (int nb = 0; nb < NBLK; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = j0 + nb * 8 + 2 * t + e;
          float& x = s[nb][half * 2 + e];
          kept[nb][e] = (edgeTile || GENERAL) ? isKept<LOCAL, GENERAL>(p, sq, b, h, i, j) : true;
          x = !kept[nb][e] ? -INFINITY
                           : GENERAL ? applyScoreMods<GENERAL>(p, sq, x * p.scale, slope, i, j) * kLog2e : x * scaleLog2;
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
          float pv = softmaxWeight(kept[nb][e], x, mNew);
          rowSum += pv;
          // Dropped or kept (0 or 1, exact in BF16); 1 / (1 - rate) is applied to O in float32 at
          // the end, so that P~ = P exactly where P = 1 (the backward's delta relies on it).
          if (GENERAL && p.hasDropout && !dropoutKeeps(p, rowKey[half], j0 + nb * 8 + 2 * t + e)) pv = 0.f;
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
        const __nv_bfloat16* vrow = V + (db * 8 + g) * LDV + kk * 16 + 2 * t;
        mmaBf16(o[db], pa, ld32(vrow), ld32(vrow + 8));
      }
    }
    __syncthreads();  // this stage's buffers are refilled two tiles from now
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = lPart[half];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int i = rows[half];
    if (i >= sq.rowsQ) continue;
    // Rows past the length (padded layout) are written as zeros, whatever the accumulators hold.
    const bool inSeq = i < sq.lenQ;
    const float inv = outputScale(l) * ((GENERAL && p.hasDropout) ? p.dropoutScale : 1.f);
    float* orow = out + (((long long)sq.startQ + i) * p.heads + h) * p.headDimV;
#pragma unroll
    for (int db = 0; db < DBLK; ++db) {
      const int c = db * 8 + 2 * t;
      const float o0 = inSeq ? o[db][half * 2] * inv : 0.f, o1 = inSeq ? o[db][half * 2 + 1] * inv : 0.f;
      // float2 stores need an even element offset: (startQ + i) * heads * Dv is even when Dv is.
      if (c + 1 < p.headDimV && (p.headDimV & 1) == 0) {
        *reinterpret_cast<float2*>(orow + c) = make_float2(o0, o1);
      } else {
        if (c < p.headDimV) orow[c] = o0;
        if (c + 1 < p.headDimV) orow[c + 1] = o1;
      }
    }
    if (t == 0) lse[lseIndex(p, sq, h, i)] = inSeq ? rowLogSumExp(mRow[half], l) : -INFINITY;
  }
}

template <int DP, bool LOCAL, bool GENERAL, bool VARLEN>
cudaError_t launch(const Problem& p, const __nv_bfloat16* qb, const __nv_bfloat16* kb,
                   const __nv_bfloat16* vtb, int nqPad, int nkPad, float* out, float* lse, cudaStream_t stream) {
  constexpr size_t smem = sizeof(__nv_bfloat16) * 2 * (BC * (DP + 8) + DP * (BC + 8));
  auto kernel = forwardTensorCoreKernel<DP, LOCAL, GENERAL, VARLEN>;
  const dim3 grid(nqPad / BR, p.heads, p.batch);
  if (emptyGrid(grid)) return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  kernel<<<grid, NT, smem, stream>>>(p, qb, kb, vtb, nqPad, nkPad, out, lse);
  return cudaGetLastError();
}

template <int DP>
cudaError_t dispatchFlags(const Problem& p, const __nv_bfloat16* qb, const __nv_bfloat16* kb,
                          const __nv_bfloat16* vtb, int nqPad, int nkPad, float* out, float* lse, cudaStream_t s) {
  return OPTIONS_SWITCH(p, [&] { return launch<DP, LOCAL, GENERAL, VARLEN>(p, qb, kb, vtb, nqPad, nkPad, out, lse, s); });
}

}  // namespace

int tensorCoreHeadDim(const Problem& p) {
  const int d = max(p.headDim, p.headDimV);
  return d <= 64 ? 64 : d <= 128 ? 128 : 0;
}

size_t tensorCoreForwardWorkspace(const Problem& p) {
  const size_t dp = tensorCoreHeadDim(p);
  const size_t nqPad = roundUp(p.seqQ, BR), nkPad = roundUp(p.seqK, BC);
  return sizeof(__nv_bfloat16) * dp * ((size_t)p.batch * p.heads * nqPad + 2 * (size_t)p.batch * p.kvHeads * nkPad);
}

cudaError_t launchForwardTensorCore(const Problem& p, const float* q, const float* k, const float* v,
                                    float* out, float* lse, void* workspace, cudaStream_t stream) {
  const int dp = tensorCoreHeadDim(p);
  const int nqPad = roundUp(p.seqQ, BR), nkPad = roundUp(p.seqK, BC);
  auto* qb = static_cast<__nv_bfloat16*>(workspace);
  auto* kb = qb + (size_t)p.batch * p.heads * nqPad * dp;
  auto* vtb = kb + (size_t)p.batch * p.kvHeads * nkPad * dp;
  cudaError_t err;
  if ((err = stageBf16(q, p.rangesQ, qb, p.batch, p.seqQ, p.heads, p.headDim, nqPad, dp, false, stream))) return err;
  if ((err = stageBf16(k, p.rangesK, kb, p.batch, p.seqK, p.kvHeads, p.headDim, nkPad, dp, false, stream))) return err;
  if ((err = stageBf16(v, p.rangesK, vtb, p.batch, p.seqK, p.kvHeads, p.headDimV, nkPad, dp, true, stream))) return err;
  return dp == 64 ? dispatchFlags<64>(p, qb, kb, vtb, nqPad, nkPad, out, lse, stream)
                  : dispatchFlags<128>(p, qb, kb, vtb, nqPad, nkPad, out, lse, stream);
}

}  // namespace fa
