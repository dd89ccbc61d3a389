// Exact float32 forward (precision 'highest'): FlashAttention-2's forward inner loop on CUDA
// cores. One block of 128 threads owns BR query rows of one (batch, head) and walks the key
// tiles in range, keeping the running row max m, row sum l and the output accumulator in
// registers (Triton tutorial: "_attn_fwd_inner").
#include "common.cuh"

namespace fa {
namespace {

constexpr int NT = 128;

template <int DMAX> struct FwdTile;
template <> struct FwdTile<64> { static constexpr int BR = 64, BC = 64; };
template <> struct FwdTile<128> { static constexpr int BR = 64, BC = 64; };
template <> struct FwdTile<256> { static constexpr int BR = 32, BC = 64; };

template <int DMAX>
constexpr size_t forwardSmemBytes() {
  using T = FwdTile<DMAX>;
  return sizeof(float) * (DMAX * T::BR + DMAX * T::BC + T::BC * DMAX + T::BC * T::BR);
}

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) forwardSimtKernel(Problem p, const float* __restrict__ q,
                                                        const float* __restrict__ kt, int nkPad,
                                                        const float* __restrict__ v,
                                                        float* __restrict__ out,
                                                        float* __restrict__ lse) {
  constexpr int BR = FwdTile<DMAX>::BR, BC = FwdTile<DMAX>::BC;
  constexpr int TM = BR / 8, TN = BC / 16, TD = DMAX / 16;
  extern __shared__ float4 smemRaw[];
  float* Qt = reinterpret_cast<float*>(smemRaw);  // [DMAX][BR]
  float* Kt = Qt + DMAX * BR;                     // [DMAX][BC]
  float* Vs = Kt + DMAX * BC;                     // [BC][DMAX]
  float* Pt = Vs + BC * DMAX;                     // [BC][BR]

  const int rowGroup = threadIdx.x / 16, colGroup = threadIdx.x % 16;
  // Heavy query tiles first: under a causal window the last tiles see the most keys.
  const int qTile = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int i0 = qTile * BR;
  const Seq sq = sequence<VARLEN>(p, b);
  if (i0 >= sq.rowsQ) return;  // packed: past this sequence's queries (their rows are the next one's)
  const long long qStride = (long long)p.heads * p.headDim;
  const long long vStride = (long long)p.kvHeads * p.headDimV;
  const float* qBase = q + ((long long)sq.startQ * p.heads + h) * p.headDim;
  const float* ktBase = kt + ((long long)b * p.kvHeads + kvh) * DMAX * nkPad;  // staged K^T
  const float* vBase = v + ((long long)sq.startK * p.kvHeads + kvh) * p.headDimV;
  const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;

  loadTransposed<BR, DMAX, BR, NT>(Qt, qBase, qStride, i0, sq.lenQ, p.headDim);

  int jLo = 0, jHi = sq.lenK;
  if (LOCAL) keyRange(p, sq, i0, min(i0 + BR, sq.lenQ) - 1, &jLo, &jHi);
  if (i0 >= sq.lenQ) jLo = jHi = 0;  // a tile of padding rows only: no key tile, zeros written below

  float o[TM][TD], mRow[TM], lPart[TM];
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    mRow[m] = -INFINITY; lPart[m] = 0.f;
#pragma unroll
    for (int d = 0; d < TD; ++d) o[m][d] = 0.f;
  }
  uint32_t rowKey[TM];
  if (GENERAL && p.hasDropout) {
#pragma unroll
    for (int m = 0; m < TM; ++m)
      rowKey[m] = dropoutRowKey(p.seed, b * p.heads + h, i0 + rowGroup * TM + m);
  }

  // Loads overlap compute without a second buffer: V of tile t arrives while S = Q K^T of
  // tile t is computed, and K^T of tile t+1 while P V of tile t is.
  const int jStart = (jLo / BC) * BC;
  const bool asyncV = (p.headDimV & 3) == 0;
  auto issueK = [&](int j0) {
    for (int idx = threadIdx.x; idx < DMAX * BC / 4; idx += NT) {
      const int c = idx / (BC / 4), r = (idx % (BC / 4)) * 4;
      cpAsync16Zfill(Kt + c * BC + r, ktBase + (long long)c * nkPad + j0 + r, true);
    }
    cpAsyncCommitGroup();
  };
  if (jStart < jHi) issueK(jStart);
  for (int j0 = jStart; j0 < jHi; j0 += BC) {
    if (asyncV) loadRowsAsync<BC, DMAX, DMAX, NT>(Vs, vBase, vStride, j0, sq.lenK, p.headDimV);
    else loadRows<BC, DMAX, DMAX, NT>(Vs, vBase, vStride, j0, sq.lenK, p.headDimV);
    cpAsyncCommitGroup();
    cpAsyncWaitGroup<1>();  // K^T of this tile has landed
    __syncthreads();

    float s[TM][TN];
#pragma unroll
    for (int m = 0; m < TM; ++m)
#pragma unroll
      for (int n = 0; n < TN; ++n) s[m][n] = 0.f;
    mmaSmem<TM, TN, DMAX, BR, BC>(s, Qt, rowGroup * TM, Kt, colGroup);

    // Scores in log2 units; masked elements become -inf.
    const bool edgeTile = j0 + BC > sq.lenK || (LOCAL && !tileInsideWindow(p, sq, i0, i0 + BR - 1, j0, j0 + BC - 1));
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      const int i = i0 + rowGroup * TM + m;
      float tileMax = -INFINITY;
      bool kept[TN];
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        const int j = j0 + ColMap<TN>::col(colGroup, n);
        kept[n] = (edgeTile || GENERAL) ? isKept<LOCAL, GENERAL>(p, sq, b, h, i, j) : true;
        const float x = kept[n] ? applyScoreMods<GENERAL>(p, sq, s[m][n] * p.scale, slope, i, j) * kLog2e : -INFINITY;
        s[m][n] = x;
        tileMax = fmaxf(tileMax, x);
      }
      tileMax = groupMax(tileMax);
      const float mNew = fmaxf(mRow[m], tileMax);
      // Nothing finite so far: m stays -inf and the (zero or NaN) accumulators stay as they are.
      const float alpha = mNew == -INFINITY ? 1.f : exp2f(mRow[m] - mNew);
      mRow[m] = mNew;
      float rowSum = 0.f;
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        float pv = softmaxWeight(kept[n], s[m][n], mNew);
        rowSum += pv;
        if (GENERAL && p.hasDropout) {
          const int j = j0 + ColMap<TN>::col(colGroup, n);
          pv *= dropoutMultiplier(p, rowKey[m], j);
        }
        s[m][n] = pv;
      }
      lPart[m] = lPart[m] * alpha + rowSum;
#pragma unroll
      for (int d = 0; d < TD; ++d) o[m][d] *= alpha;
    }
#pragma unroll
    for (int n = 0; n < TN; ++n)
#pragma unroll
      for (int m = 0; m < TM; ++m)
        Pt[ColMap<TN>::col(colGroup, n) * BR + rowGroup * TM + m] = s[m][n];
    cpAsyncWaitGroup<0>();  // V of this tile has landed
    __syncthreads();        // ... for every thread; Pt is written and Kt no longer read
    if (j0 + BC < jHi) issueK(j0 + BC);
    mmaSmem<TM, TD, BC, BR, DMAX>(o, Pt, rowGroup * TM, Vs, colGroup);
    __syncthreads();  // Vs and Pt are refilled next iteration
  }

#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int i = i0 + rowGroup * TM + m;
    const float l = groupSum(lPart[m]);
    if (i >= sq.rowsQ) continue;
    // Rows past the length (padded layout) are written as zeros, whatever the accumulators hold.
    const bool inSeq = i < sq.lenQ;
    const float inv = outputScale(l);
    float* orow = out + (((long long)sq.startQ + i) * p.heads + h) * p.headDimV;
#pragma unroll
    for (int d = 0; d < TD; ++d) {
      const int c = ColMap<TD>::col(colGroup, d);
      if (c < p.headDimV) orow[c] = inSeq ? o[m][d] * inv : 0.f;
    }
    if (colGroup == 0) lse[lseIndex(p, sq, h, i)] = inSeq ? rowLogSumExp(mRow[m], l) : -INFINITY;
  }
}

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
cudaError_t launch(const Problem& p, const float* q, const float* kt, int nkPad, const float* v, float* out,
                   float* lse, cudaStream_t stream) {
  constexpr size_t smem = forwardSmemBytes<DMAX>();
  auto kernel = forwardSimtKernel<DMAX, LOCAL, GENERAL, VARLEN>;
  // Sequences x query tiles of the longest one; a block past its sequence's length returns.
  const dim3 grid((p.seqQ + FwdTile<DMAX>::BR - 1) / FwdTile<DMAX>::BR, p.heads, p.batch);
  if (emptyGrid(grid)) return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  kernel<<<grid, NT, smem, stream>>>(p, q, kt, nkPad, v, out, lse);
  return cudaGetLastError();
}

template <int DMAX>
cudaError_t dispatchFlags(const Problem& p, const float* q, const float* k, const float* v,
                          float* out, float* lse, void* workspace, cudaStream_t s) {
  const int nkPad = (p.seqK + 63) / 64 * 64;
  float* kt = static_cast<float*>(workspace);
  cudaError_t err = stageTransposedF32(k, p.rangesK, kt, p.batch, p.seqK, p.kvHeads, p.headDim, nkPad, DMAX, s);
  if (err != cudaSuccess) return err;
  return OPTIONS_SWITCH(p, [&] { return launch<DMAX, LOCAL, GENERAL, VARLEN>(p, q, kt, nkPad, v, out, lse, s); });
}

int simtHeadDim(const Problem& p) {
  const int d = max(p.headDim, p.headDimV);
  return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

}  // namespace

size_t simtForwardWorkspace(const Problem& p) {
  return sizeof(float) * (size_t)p.batch * p.kvHeads * simtHeadDim(p) * ((p.seqK + 63) / 64 * 64);
}

cudaError_t launchForwardSimt(const Problem& p, const float* q, const float* k, const float* v,
                              float* out, float* lse, void* workspace, cudaStream_t stream) {
  switch (simtHeadDim(p)) {
    case 64: return dispatchFlags<64>(p, q, k, v, out, lse, workspace, stream);
    case 128: return dispatchFlags<128>(p, q, k, v, out, lse, workspace, stream);
    default: return dispatchFlags<256>(p, q, k, v, out, lse, workspace, stream);
  }
}

}  // namespace fa
