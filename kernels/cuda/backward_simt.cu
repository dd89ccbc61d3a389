// Exact float32 backward: FlashAttention-2's recompute gradient in the three steps of the Triton
// tutorial, each a separate kernel so that no output is accumulated by atomics (deterministic):
//   1. backward preprocess: delta_i = sum_c dO[i, c] * O[i, c]  (= sum_j P~_ij dP~_ij);
//   2. dK/dV pass: a block owns a key tile of one KV head and walks every query tile of every
//      query head that shares it (GQA), recomputing P from the saved log-sum-exp;
//   3. dQ pass: a block owns a query tile and walks the key tiles.
// Also used by precision 'fast' (see api.cu).
#include <cuda_bf16.h>

#include "common.cuh"

namespace fa {
namespace {

constexpr int NT = 128;

// Backward preprocess (Triton tutorial: "_attn_bwd_preprocess").
// BF16_DOUT (the tensor-core backward): dO rounded to BF16 as its dP = dO V^T products see it,
// so that delta_i = sum_j P_ij dP_ij holds for the dP the passes compute. Otherwise a row whose
// probability sits on one key (P = 1: one key left by a window or a length of 1) gets
// dS = dP - delta = (the BF16 rounding of dO) . v instead of 0, and dK of that key sums that
// noise over every query.
template <bool BF16_DOUT>
__global__ void backwardPreprocessKernel(Problem p, const float* __restrict__ out,
                                         const float* __restrict__ dout, float* __restrict__ delta) {
  const long long rows = (long long)p.rowsQ * p.heads;
  const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const float* o = out + row * p.headDimV;
  const float* d = dout + row * p.headDimV;
  float acc = 0.f;
  for (int c = lane; c < p.headDimV; c += 32)
    acc = fmaf(o[c], BF16_DOUT ? __bfloat162float(__float2bfloat16_rn(d[c])) : d[c], acc);
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) {
    // Indexed as logsumexp: row r = startQ + i of q; packed, the index is simply h * rowsQ + r.
    const int h = (int)(row % p.heads);
    const long long r = row / p.heads;
    const long long i = p.packed ? 0 : r % p.seqQ;
    delta[(r - i) * p.lseStartStride + h * p.lseHeadStride + i] = acc;
  }
}

// ---- dQ pass (Triton tutorial: "_attn_bwd_dq") ----
template <int DMAX> struct DqTile;
template <> struct DqTile<64> { static constexpr int BR = 64, BC = 64; };
template <> struct DqTile<128> { static constexpr int BR = 64, BC = 32; };
template <> struct DqTile<256> { static constexpr int BR = 32, BC = 32; };

template <int DMAX>
constexpr size_t dqSmemBytes() {
  using T = DqTile<DMAX>;
  return sizeof(float) * (2 * DMAX * T::BR + 3 * DMAX * T::BC + T::BC * T::BR);
}

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) dqKernel(Problem p, const float* __restrict__ q,
                                               const float* __restrict__ k,
                                               const float* __restrict__ ktS,
                                               const float* __restrict__ vtS, int nkPad,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta,
                                               const float* __restrict__ dout,
                                               float* __restrict__ dq) {
  constexpr int BR = DqTile<DMAX>::BR, BC = DqTile<DMAX>::BC;
  constexpr int TM = BR / 8, TN = BC / 16, TD = DMAX / 16;
  extern __shared__ float4 smemRaw[];
  float* Qt = reinterpret_cast<float*>(smemRaw);  // [DMAX][BR]
  float* dOt = Qt + DMAX * BR;                    // [DMAX][BR]
  float* Kt = dOt + DMAX * BR;                    // [DMAX][BC]
  float* Vt = Kt + DMAX * BC;                     // [DMAX][BC]
  float* Ks = Vt + DMAX * BC;                     // [BC][DMAX]
  float* dSt = Ks + BC * DMAX;                    // [BC][BR]

  const int rowGroup = threadIdx.x / 16, colGroup = threadIdx.x % 16;
  const int qTile = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int i0 = qTile * BR;
  const Seq sq = sequence<VARLEN>(p, b);
  if (i0 >= sq.rowsQ) return;  // packed: past this sequence's queries
  const long long qStride = (long long)p.heads * p.headDim;
  const long long oStride = (long long)p.heads * p.headDimV;
  const long long kStride = (long long)p.kvHeads * p.headDim;
  const float* qBase = q + ((long long)sq.startQ * p.heads + h) * p.headDim;
  const float* dOBase = dout + ((long long)sq.startQ * p.heads + h) * p.headDimV;
  const float* kBase = k + ((long long)sq.startK * p.kvHeads + kvh) * p.headDim;
  const float* ktBase = ktS + ((long long)b * p.kvHeads + kvh) * DMAX * nkPad;
  const float* vtBase = vtS + ((long long)b * p.kvHeads + kvh) * DMAX * nkPad;
  const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;

  loadTransposed<BR, DMAX, BR, NT>(Qt, qBase, qStride, i0, sq.lenQ, p.headDim);
  loadTransposed<BR, DMAX, BR, NT>(dOt, dOBase, oStride, i0, sq.lenQ, p.headDimV);

  float lse2[TM], dlt[TM], acc[TM][TD];
  uint32_t rowKey[TM];
#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int i = i0 + rowGroup * TM + m;
    const long long r = lseIndex(p, sq, h, i);
    // Padding rows get +inf so that P = exp2(s - lse2) = 0 there.
    lse2[m] = i < sq.lenQ ? lse[r] * kLog2e : INFINITY;
    dlt[m] = i < sq.lenQ ? delta[r] : 0.f;
    if (GENERAL && p.hasDropout) rowKey[m] = dropoutRowKey(p.seed, b * p.heads + h, i);
#pragma unroll
    for (int d = 0; d < TD; ++d) acc[m][d] = 0.f;
  }

  int jLo = 0, jHi = sq.lenK;
  if (LOCAL) keyRange(p, sq, i0, min(i0 + BR, sq.lenQ) - 1, &jLo, &jHi);
  if (i0 >= sq.lenQ) jLo = jHi = 0;  // a tile of padding rows only: zeros written below

  // Loads overlap compute: K rows of tile t arrive during S and dP of tile t, K^T and V^T
  // (staged) of tile t+1 during dQ += dS K of tile t.
  const int jStart = (jLo / BC) * BC;
  const bool asyncRows = (p.headDim & 3) == 0;
  auto issueScoreOperands = [&](int j0) {
    loadStagedAsync<DMAX, BC, NT>(Kt, ktBase, nkPad, j0);
    loadStagedAsync<DMAX, BC, NT>(Vt, vtBase, nkPad, j0);
    cpAsyncCommitGroup();
  };
  if (jStart < jHi) issueScoreOperands(jStart);
  for (int j0 = jStart; j0 < jHi; j0 += BC) {
    if (asyncRows) loadRowsAsync<BC, DMAX, DMAX, NT>(Ks, kBase, kStride, j0, sq.lenK, p.headDim);
    else loadRows<BC, DMAX, DMAX, NT>(Ks, kBase, kStride, j0, sq.lenK, p.headDim);
    cpAsyncCommitGroup();
    cpAsyncWaitGroup<1>();
    __syncthreads();

    float s[TM][TN], dp[TM][TN];
#pragma unroll
    for (int m = 0; m < TM; ++m)
#pragma unroll
      for (int n = 0; n < TN; ++n) { s[m][n] = 0.f; dp[m][n] = 0.f; }
    mmaSmem<TM, TN, DMAX, BR, BC>(s, Qt, rowGroup * TM, Kt, colGroup);
    mmaSmem<TM, TN, DMAX, BR, BC>(dp, dOt, rowGroup * TM, Vt, colGroup);

    const bool edgeTile = j0 + BC > sq.lenK || i0 + BR > sq.lenQ ||
                          (LOCAL && !tileInsideWindow(p, sq, i0, i0 + BR - 1, j0, j0 + BC - 1));
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      const int i = i0 + rowGroup * TM + m;
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        const int jl = ColMap<TN>::col(colGroup, n), j = j0 + jl;
        dSt[jl * BR + rowGroup * TM + m] = backwardStep<LOCAL, GENERAL>(
            p, sq, edgeTile, b, h, i, j, s[m][n], slope, lse2[m], dp[m][n], dlt[m], rowKey[m]).ds;
      }
    }
    cpAsyncWaitGroup<0>();
    __syncthreads();
    if (j0 + BC < jHi) issueScoreOperands(j0 + BC);
    mmaSmem<TM, TD, BC, BR, DMAX>(acc, dSt, rowGroup * TM, Ks, colGroup);
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int i = i0 + rowGroup * TM + m;
    if (i >= sq.rowsQ) continue;
    const bool inSeq = i < sq.lenQ;  // rows past the length (padded layout): zero gradient
    float* row = dq + (((long long)sq.startQ + i) * p.heads + h) * p.headDim;
#pragma unroll
    for (int d = 0; d < TD; ++d) {
      const int c = ColMap<TD>::col(colGroup, d);
      if (c < p.headDim) row[c] = inSeq ? acc[m][d] : 0.f;
    }
  }
}

// ---- dK/dV pass (Triton tutorial: "_attn_bwd_dkdv") ----
template <int DMAX> struct DkvTile;
template <> struct DkvTile<64> { static constexpr int BC = 64, BR = 32; };
template <> struct DkvTile<128> { static constexpr int BC = 32, BR = 32; };
template <> struct DkvTile<256> { static constexpr int BC = 16, BR = 32; };

template <int DMAX>
constexpr size_t dkvSmemBytes() {
  using T = DkvTile<DMAX>;
  return sizeof(float) * (2 * DMAX * T::BC + 4 * DMAX * T::BR + 2 * T::BR * T::BC) +
         sizeof(float) * 2 * T::BR + sizeof(uint32_t) * T::BR;
}

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) dkvKernel(Problem p, const float* __restrict__ q,
                                                const float* __restrict__ k,
                                                const float* __restrict__ v,
                                                const float* __restrict__ qtS,
                                                const float* __restrict__ dotS, int nqPad,
                                                const float* __restrict__ lse,
                                                const float* __restrict__ delta,
                                                const float* __restrict__ dout,
                                                float* __restrict__ dk, float* __restrict__ dv) {
  constexpr int BC = DkvTile<DMAX>::BC, BR = DkvTile<DMAX>::BR;
  constexpr int TM = BC / 8, TN = BR / 16, TD = DMAX / 16;
  extern __shared__ float4 smemRaw[];
  float* Kt = reinterpret_cast<float*>(smemRaw);  // [DMAX][BC]
  float* Vt = Kt + DMAX * BC;                     // [DMAX][BC]
  float* Qt = Vt + DMAX * BC;                     // [DMAX][BR]
  float* dOt = Qt + DMAX * BR;                    // [DMAX][BR]
  float* Qs = dOt + DMAX * BR;                    // [BR][DMAX]
  float* dOs = Qs + BR * DMAX;                    // [BR][DMAX]
  float* Ps = dOs + BR * DMAX;                    // [BR][BC], dropout applied
  float* dSs = Ps + BR * BC;                      // [BR][BC]
  float* lseS = dSs + BR * BC;                    // [BR], log2 units
  float* deltaS = lseS + BR;                      // [BR]
  uint32_t* rowKeyS = reinterpret_cast<uint32_t*>(deltaS + BR);  // [BR]

  const int rowGroup = threadIdx.x / 16, colGroup = threadIdx.x % 16;
  const int kTile = blockIdx.x;  // early key tiles see the most queries under causal: first
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int j0 = kTile * BC;
  const Seq sq = sequence<VARLEN>(p, b);
  if (j0 >= sq.rowsK) return;  // packed: past this sequence's keys
  const long long qStride = (long long)p.heads * p.headDim;
  const long long oStride = (long long)p.heads * p.headDimV;
  const long long kStride = (long long)p.kvHeads * p.headDim;
  const long long vStride = (long long)p.kvHeads * p.headDimV;
  const float* kBase = k + ((long long)sq.startK * p.kvHeads + kvh) * p.headDim;
  const float* vBase = v + ((long long)sq.startK * p.kvHeads + kvh) * p.headDimV;

  loadTransposed<BC, DMAX, BC, NT>(Kt, kBase, kStride, j0, sq.lenK, p.headDim);
  loadTransposed<BC, DMAX, BC, NT>(Vt, vBase, vStride, j0, sq.lenK, p.headDimV);

  float dkAcc[TM][TD], dvAcc[TM][TD];
#pragma unroll
  for (int m = 0; m < TM; ++m)
#pragma unroll
    for (int d = 0; d < TD; ++d) { dkAcc[m][d] = 0.f; dvAcc[m][d] = 0.f; }

  int iLo = 0, iHi = sq.lenQ;
  if (LOCAL) queryRange(p, sq, j0, min(j0 + BC, sq.lenK) - 1, &iLo, &iHi);
  if (j0 >= sq.lenK) iLo = iHi = 0;  // a tile of padding keys only: zeros written below

  for (int h = kvh * p.group; h < (kvh + 1) * p.group; ++h) {
    const float* qBase = q + ((long long)sq.startQ * p.heads + h) * p.headDim;
    const float* dOBase = dout + ((long long)sq.startQ * p.heads + h) * p.headDimV;
    const float* qtBase = qtS + ((long long)b * p.heads + h) * DMAX * nqPad;
    const float* dotBase = dotS + ((long long)b * p.heads + h) * DMAX * nqPad;
    const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;
    const long long rowBase = lseIndex(p, sq, h, 0);
    // Loads overlap compute: Q and dO rows of tile t arrive during S^T and dP^T of tile t,
    // Q^T and dO^T (staged) of tile t+1 during the dV and dK products of tile t.
    const int iStart = (iLo / BR) * BR;
    const bool asyncRows = ((p.headDim | p.headDimV) & 3) == 0;
    auto issueScoreOperands = [&](int i0) {
      loadStagedAsync<DMAX, BR, NT>(Qt, qtBase, nqPad, i0);
      loadStagedAsync<DMAX, BR, NT>(dOt, dotBase, nqPad, i0);
      cpAsyncCommitGroup();
    };
    if (iStart < iHi) issueScoreOperands(iStart);
    for (int i0 = iStart; i0 < iHi; i0 += BR) {
      if (asyncRows) {
        loadRowsAsync<BR, DMAX, DMAX, NT>(Qs, qBase, qStride, i0, sq.lenQ, p.headDim);
        loadRowsAsync<BR, DMAX, DMAX, NT>(dOs, dOBase, oStride, i0, sq.lenQ, p.headDimV);
      } else {
        loadRows<BR, DMAX, DMAX, NT>(Qs, qBase, qStride, i0, sq.lenQ, p.headDim);
        loadRows<BR, DMAX, DMAX, NT>(dOs, dOBase, oStride, i0, sq.lenQ, p.headDimV);
      }
      cpAsyncCommitGroup();
      for (int r = threadIdx.x; r < BR; r += NT) {
        const int i = i0 + r;
        lseS[r] = i < sq.lenQ ? lse[rowBase + i] * kLog2e : INFINITY;
        deltaS[r] = i < sq.lenQ ? delta[rowBase + i] : 0.f;
        if (GENERAL && p.hasDropout) rowKeyS[r] = dropoutRowKey(p.seed, b * p.heads + h, i);
      }
      cpAsyncWaitGroup<1>();
      __syncthreads();

      // Transposed scores: rows are keys, columns are queries.
      float s[TM][TN], dp[TM][TN];
#pragma unroll
      for (int m = 0; m < TM; ++m)
#pragma unroll
        for (int n = 0; n < TN; ++n) { s[m][n] = 0.f; dp[m][n] = 0.f; }
      mmaSmem<TM, TN, DMAX, BC, BR>(s, Kt, rowGroup * TM, Qt, colGroup);
      mmaSmem<TM, TN, DMAX, BC, BR>(dp, Vt, rowGroup * TM, dOt, colGroup);

      const bool edgeTile = j0 + BC > sq.lenK || i0 + BR > sq.lenQ ||
                            (LOCAL && !tileInsideWindow(p, sq, i0, i0 + BR - 1, j0, j0 + BC - 1));
#pragma unroll
      for (int n = 0; n < TN; ++n) {
        const int il = ColMap<TN>::col(colGroup, n), i = i0 + il;
#pragma unroll
        for (int m = 0; m < TM; ++m) {
          const int jl = rowGroup * TM + m, j = j0 + jl;
          const ProbAndScoreGrad g = backwardStep<LOCAL, GENERAL>(
              p, sq, edgeTile, b, h, i, j, s[m][n], slope, lseS[il], dp[m][n], deltaS[il], rowKeyS[il]);
          Ps[il * BC + jl] = g.p;
          dSs[il * BC + jl] = g.ds;
        }
      }
      cpAsyncWaitGroup<0>();
      __syncthreads();
      if (i0 + BR < iHi) issueScoreOperands(i0 + BR);
      mmaSmem<TM, TD, BR, BC, DMAX>(dvAcc, Ps, rowGroup * TM, dOs, colGroup);
      mmaSmem<TM, TD, BR, BC, DMAX>(dkAcc, dSs, rowGroup * TM, Qs, colGroup);
      __syncthreads();
    }
  }

#pragma unroll
  for (int m = 0; m < TM; ++m) {
    const int j = j0 + rowGroup * TM + m;
    if (j >= sq.rowsK) continue;
    const bool inSeq = j < sq.lenK;  // keys past the length (padded layout): zero gradient
    float* dkRow = dk + (((long long)sq.startK + j) * p.kvHeads + kvh) * p.headDim;
    float* dvRow = dv + (((long long)sq.startK + j) * p.kvHeads + kvh) * p.headDimV;
#pragma unroll
    for (int d = 0; d < TD; ++d) {
      const int c = ColMap<TD>::col(colGroup, d);
      if (c < p.headDim) dkRow[c] = inSeq ? dkAcc[m][d] : 0.f;
      if (c < p.headDimV) dvRow[c] = inSeq ? dvAcc[m][d] : 0.f;
    }
  }
}

// Staged float32 transposes of the backward (staging area of the workspace): Q^T and dO^T
// [B, H, DMAX, NqPad], K^T and V^T [B, Hkv, DMAX, NkPad].
struct StagedF32 {
  const float *qt, *dot, *kt, *vt;
  int nqPad, nkPad;
};

template <int DMAX, bool LOCAL, bool GENERAL, bool VARLEN>
cudaError_t launchPasses(const Problem& p, const float* q, const float* k, const float* v,
                         const float* lse, const float* delta, const float* dout, float* dq,
                         float* dk, float* dv, const StagedF32& st, cudaStream_t stream) {
  {
    constexpr size_t smem = dkvSmemBytes<DMAX>();
    auto kernel = dkvKernel<DMAX, LOCAL, GENERAL, VARLEN>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    const dim3 grid((p.seqK + DkvTile<DMAX>::BC - 1) / DkvTile<DMAX>::BC, p.kvHeads, p.batch);
    if (!emptyGrid(grid)) {
      kernel<<<grid, NT, smem, stream>>>(p, q, k, v, st.qt, st.dot, st.nqPad, lse, delta, dout, dk, dv);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  {
    constexpr size_t smem = dqSmemBytes<DMAX>();
    auto kernel = dqKernel<DMAX, LOCAL, GENERAL, VARLEN>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    const dim3 grid((p.seqQ + DqTile<DMAX>::BR - 1) / DqTile<DMAX>::BR, p.heads, p.batch);
    if (emptyGrid(grid)) return cudaSuccess;
    kernel<<<grid, NT, smem, stream>>>(p, q, k, st.kt, st.vt, st.nkPad, lse, delta, dout, dq);
    return cudaGetLastError();
  }
}

template <int DMAX>
cudaError_t dispatchFlags(const Problem& p, const float* q, const float* k, const float* v,
                          const float* lse, const float* delta, const float* dout, float* dq,
                          float* dk, float* dv, void* staging, cudaStream_t s) {
  StagedF32 st;
  st.nqPad = (p.seqQ + 63) / 64 * 64;
  st.nkPad = (p.seqK + 63) / 64 * 64;
  float* w = static_cast<float*>(staging);
  float* qt = w;
  float* dot = qt + (size_t)p.batch * p.heads * DMAX * st.nqPad;
  float* kt = dot + (size_t)p.batch * p.heads * DMAX * st.nqPad;
  float* vt = kt + (size_t)p.batch * p.kvHeads * DMAX * st.nkPad;
  cudaError_t err;
  if ((err = stageTransposedF32(q, p.rangesQ, qt, p.batch, p.seqQ, p.heads, p.headDim, st.nqPad, DMAX, s))) return err;
  if ((err = stageTransposedF32(dout, p.rangesQ, dot, p.batch, p.seqQ, p.heads, p.headDimV, st.nqPad, DMAX, s))) return err;
  if ((err = stageTransposedF32(k, p.rangesK, kt, p.batch, p.seqK, p.kvHeads, p.headDim, st.nkPad, DMAX, s))) return err;
  if ((err = stageTransposedF32(v, p.rangesK, vt, p.batch, p.seqK, p.kvHeads, p.headDimV, st.nkPad, DMAX, s))) return err;
  st.qt = qt; st.dot = dot; st.kt = kt; st.vt = vt;
  return OPTIONS_SWITCH(p, [&] {
    return launchPasses<DMAX, LOCAL, GENERAL, VARLEN>(p, q, k, v, lse, delta, dout, dq, dk, dv, st, s);
  });
}

int simtHeadDim(const Problem& p) {
  const int d = max(p.headDim, p.headDimV);
  return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

}  // namespace

size_t simtBackwardWorkspace(const Problem& p) {
  const size_t dp = simtHeadDim(p), nqPad = (p.seqQ + 63) / 64 * 64, nkPad = (p.seqK + 63) / 64 * 64;
  return sizeof(float) * dp * 2 * ((size_t)p.batch * p.heads * nqPad + (size_t)p.batch * p.kvHeads * nkPad);
}

cudaError_t launchBackwardPreprocess(const Problem& p, const float* out, const float* dout, float* delta,
                                     bool bf16Dout, cudaStream_t stream) {
  const long long rows = (long long)p.rowsQ * p.heads;
  if (rows == 0) return cudaSuccess;
  auto kernel = bf16Dout ? backwardPreprocessKernel<true> : backwardPreprocessKernel<false>;
  kernel<<<(unsigned)((rows + 7) / 8), 256, 0, stream>>>(p, out, dout, delta);
  return cudaGetLastError();
}

cudaError_t launchBackwardSimt(const Problem& p, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv, float* delta, void* staging, cudaStream_t stream) {
  cudaError_t err = launchBackwardPreprocess(p, out, dout, delta, false, stream);
  if (err != cudaSuccess) return err;
  switch (simtHeadDim(p)) {
    case 64: return dispatchFlags<64>(p, q, k, v, lse, delta, dout, dq, dk, dv, staging, stream);
    case 128: return dispatchFlags<128>(p, q, k, v, lse, delta, dout, dq, dk, dv, staging, stream);
    default: return dispatchFlags<256>(p, q, k, v, lse, delta, dout, dq, dk, dv, staging, stream);
  }
}

}  // namespace fa
