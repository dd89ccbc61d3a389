// Tensor-core backward (precision 'fast'): the dK/dV pass and the dQ pass of the Triton
// tutorial on BF16 mma.sync with float32 accumulation, after the shared backward preprocess
// (delta = rowsum(dO * O), float32). As in the exact path, each output element is owned by one
// block, so there are no atomics and the result is deterministic. Operands come from the BF16
// staging pass in the layouts their fragments read (tc_common.cuh):
//   dK/dV pass: K, V rows are A operands; Q, dO rows are B operands of S^T and dP^T; Q^T and
//               dO^T are B operands of dK += dS^T Q and dV += P~^T dO.
//   dQ pass:    Q, dO rows in registers (A); K, V rows (B of S, dP); K^T (B of dQ += dS K).
#include "tc_common.cuh"

namespace fa {
namespace {

constexpr int NT = 128;

// Query tile of the dK/dV pass and key tile of the dQ pass, by padded head dimension: the
// accumulators (16 x DP per warp, twice in the dK/dV pass) leave fewer registers at DP = 128.
template <int DP> struct BwdTiles;
template <> struct BwdTiles<64> { static constexpr int QT = 64, KT = 64; };
template <> struct BwdTiles<128> { static constexpr int QT = 32, KT = 32; };

struct Staged {
  const __nv_bfloat16 *q, *qt, *k, *kt, *v, *dout, *doutt;
  int nqPad, nkPad;
};

// ---- dK/dV pass ("_attn_bwd_dkdv"): a block owns 64 keys (16 per warp) of one KV head ----
template <int DP, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) dkvTensorCoreKernel(Problem p, Staged st, const float* __restrict__ lse,
                                                          const float* __restrict__ delta,
                                                          float* __restrict__ dk, float* __restrict__ dv) {
  constexpr int BC = 64, QT = BwdTiles<DP>::QT;
  constexpr int LDR = DP + 8, LDT = QT + 8;
  constexpr int KSTEPS = DP / 16, NBLK = QT / 8, DBLK = DP / 8;
  extern __shared__ float4 smemRaw[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smemRaw);  // [BC][LDR]
  __nv_bfloat16* Vs = Ks + BC * LDR;                               // [BC][LDR]
  __nv_bfloat16* stages = Vs + BC * LDR;  // 2 x {Qs [QT][LDR], dOs [QT][LDR], Qts [DP][LDT], dOts [DP][LDT]}
  constexpr int STAGE = 2 * QT * LDR + 2 * DP * LDT;
  float* rowStats = reinterpret_cast<float*>(stages + 2 * STAGE);  // 2 x {lse2 [QT], delta [QT]}
  uint32_t* rowKeys = reinterpret_cast<uint32_t*>(rowStats + 4 * QT);  // 2 x [QT]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int j0 = blockIdx.x * BC;
  const Seq sq = sequence<VARLEN>(p, b);
  if (j0 >= sq.rowsK) return;  // packed: past this sequence's keys
  const long long kvOff = ((long long)b * p.kvHeads + kvh);
  copyTileAsync<BC, DP, LDR, NT>(Ks, st.k + (kvOff * st.nkPad + j0) * DP, DP);
  copyTileAsync<BC, DP, LDR, NT>(Vs, st.v + (kvOff * st.nkPad + j0) * DP, DP);
  cpAsyncCommit();

  int iLo = 0, iHi = sq.lenQ;
  if (LOCAL) queryRange(p, sq, j0, min(j0 + BC, sq.lenK) - 1, &iLo, &iHi);
  if (j0 >= sq.lenK) iLo = iHi = 0;  // a tile of padding keys only: zeros written below
  const int iStart = (iLo / QT) * QT;
  const int tilesPerHead = iHi > iStart ? (iHi - iStart + QT - 1) / QT : 0;
  const int numTiles = tilesPerHead * p.group;

  auto issue = [&](int it, int s) {
    const int h = kvh * p.group + it / tilesPerHead, i0 = iStart + (it % tilesPerHead) * QT;
    const long long qOff = (long long)b * p.heads + h;
    __nv_bfloat16* base = stages + s * STAGE;
    copyTileAsync<QT, DP, LDR, NT>(base, st.q + (qOff * st.nqPad + i0) * DP, DP);
    copyTileAsync<QT, DP, LDR, NT>(base + QT * LDR, st.dout + (qOff * st.nqPad + i0) * DP, DP);
    copyTileAsync<DP, QT, LDT, NT>(base + 2 * QT * LDR, st.qt + qOff * DP * st.nqPad + i0, st.nqPad);
    copyTileAsync<DP, QT, LDT, NT>(base + 2 * QT * LDR + DP * LDT, st.doutt + qOff * DP * st.nqPad + i0, st.nqPad);
    cpAsyncCommit();
    for (int r = threadIdx.x; r < QT; r += NT) {  // plain loads: visible after the next barrier
      const int i = i0 + r;
      const long long row = lseIndex(p, sq, h, i);
      rowStats[s * 2 * QT + r] = i < sq.lenQ ? lse[row] * kLog2e : INFINITY;
      rowStats[s * 2 * QT + QT + r] = i < sq.lenQ ? delta[row] : 0.f;
      if (GENERAL && p.hasDropout) rowKeys[s * QT + r] = dropoutRowKey(p.seed, b * p.heads + h, i);
    }
  };
  if (numTiles > 0) issue(0, 0);

  float dkAcc[DBLK][4], dvAcc[DBLK][4];
#pragma unroll
  for (int d = 0; d < DBLK; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) { dkAcc[d][e] = 0.f; dvAcc[d][e] = 0.f; }

  const int keyRow = warp * 16 + g;  // this thread's keys: j0 + keyRow and j0 + keyRow + 8
  for (int it = 0, s = 0; it < numTiles; ++it, s ^= 1) {
    if (it + 1 < numTiles) { issue(it + 1, s ^ 1); cpAsyncWait<1>(); }
    else cpAsyncWait<0>();
    __syncthreads();
    const int h = kvh * p.group + it / tilesPerHead, i0 = iStart + (it % tilesPerHead) * QT;
    const __nv_bfloat16* Qs = stages + s * STAGE;
    const __nv_bfloat16* dOs = Qs + QT * LDR;
    const __nv_bfloat16* Qts = Qs + 2 * QT * LDR;
    const __nv_bfloat16* dOts = Qts + DP * LDT;
    const float* lse2 = rowStats + s * 2 * QT;
    const float* dlt = lse2 + QT;
    const uint32_t* rk = rowKeys + s * QT;
    const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;

    // S^T = K Q^T and dP^T = V dO^T: rows are this warp's 16 keys, columns the QT queries.
    float sT[NBLK][4], dpT[NBLK][4];
#pragma unroll
    for (int nb = 0; nb < NBLK; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) { sT[nb][e] = 0.f; dpT[nb][e] = 0.f; }
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
      const __nv_bfloat16* kr = Ks + keyRow * LDR + kk * 16 + 2 * t;
      const __nv_bfloat16* vr = Vs + keyRow * LDR + kk * 16 + 2 * t;
      const uint32_t ka[4] = {ld32(kr), ld32(kr + 8 * LDR), ld32(kr + 8), ld32(kr + 8 * LDR + 8)};
      const uint32_t va[4] = {ld32(vr), ld32(vr + 8 * LDR), ld32(vr + 8), ld32(vr + 8 * LDR + 8)};
#pragma unroll
      for (int nb = 0; nb < NBLK; ++nb) {
        const __nv_bfloat16* qr = Qs + (nb * 8 + g) * LDR + kk * 16 + 2 * t;
        const __nv_bfloat16* dr = dOs + (nb * 8 + g) * LDR + kk * 16 + 2 * t;
        mmaBf16(sT[nb], ka, ld32(qr), ld32(qr + 8));
        mmaBf16(dpT[nb], va, ld32(dr), ld32(dr + 8));
      }
    }

    const bool edgeTile = j0 + BC > sq.lenK || i0 + QT > sq.lenQ ||
                          (LOCAL && !tileInsideWindow(p, sq, i0, i0 + QT - 1, j0, j0 + BC - 1));
    // P~^T into sT, dS^T into dpT (both then packed as A operands: k runs over queries).
#pragma unroll
    for (int nb = 0; nb < NBLK; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int il = nb * 8 + 2 * t + (e & 1), i = i0 + il;
        const int j = j0 + keyRow + (e >> 1) * 8;
        const ProbAndScoreGrad g = backwardStep<LOCAL, GENERAL>(
            p, sq, edgeTile, b, h, i, j, sT[nb][e], slope, lse2[il], dpT[nb][e], dlt[il], rk[il]);
        sT[nb][e] = g.p;
        dpT[nb][e] = g.ds;
      }

#pragma unroll
    for (int kk = 0; kk < QT / 16; ++kk) {
      const uint32_t pa[4] = {packBf16(sT[2 * kk][0], sT[2 * kk][1]), packBf16(sT[2 * kk][2], sT[2 * kk][3]),
                              packBf16(sT[2 * kk + 1][0], sT[2 * kk + 1][1]), packBf16(sT[2 * kk + 1][2], sT[2 * kk + 1][3])};
      const uint32_t da[4] = {packBf16(dpT[2 * kk][0], dpT[2 * kk][1]), packBf16(dpT[2 * kk][2], dpT[2 * kk][3]),
                              packBf16(dpT[2 * kk + 1][0], dpT[2 * kk + 1][1]), packBf16(dpT[2 * kk + 1][2], dpT[2 * kk + 1][3])};
#pragma unroll
      for (int db = 0; db < DBLK; ++db) {
        const __nv_bfloat16* orow = dOts + (db * 8 + g) * LDT + kk * 16 + 2 * t;
        const __nv_bfloat16* qrow = Qts + (db * 8 + g) * LDT + kk * 16 + 2 * t;
        mmaBf16(dvAcc[db], pa, ld32(orow), ld32(orow + 8));
        mmaBf16(dkAcc[db], da, ld32(qrow), ld32(qrow + 8));
      }
    }
    __syncthreads();  // stage s is refilled by the issue two tiles from now
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = j0 + keyRow + half * 8;
    if (j >= sq.rowsK) continue;
    const bool inSeq = j < sq.lenK;  // keys past the length (padded layout): zero gradient
    float* dkRow = dk + (((long long)sq.startK + j) * p.kvHeads + kvh) * p.headDim;
    float* dvRow = dv + (((long long)sq.startK + j) * p.kvHeads + kvh) * p.headDimV;
#pragma unroll
    for (int db = 0; db < DBLK; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = db * 8 + 2 * t + e;
        if (c < p.headDim) dkRow[c] = inSeq ? dkAcc[db][half * 2 + e] : 0.f;
        if (c < p.headDimV) dvRow[c] = inSeq ? dvAcc[db][half * 2 + e] : 0.f;
      }
  }
}

// ---- dQ pass ("_attn_bwd_dq"): a block owns 64 queries (16 per warp) of one head ----
template <int DP, bool LOCAL, bool GENERAL, bool VARLEN>
__global__ void __launch_bounds__(NT) dqTensorCoreKernel(Problem p, Staged st, const float* __restrict__ lse,
                                                         const float* __restrict__ delta, float* __restrict__ dq) {
  constexpr int BR = 64, KT = BwdTiles<DP>::KT;
  constexpr int LDR = DP + 8, LDT = KT + 8;
  constexpr int KSTEPS = DP / 16, NBLK = KT / 8, DBLK = DP / 8;
  constexpr int STAGE = 2 * KT * LDR + DP * LDT;  // Ks [KT][LDR], Vs [KT][LDR], Kts [DP][LDT]
  extern __shared__ float4 smemRaw[];
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(smemRaw);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int qTile = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int i0 = qTile * BR;
  const Seq sq = sequence<VARLEN>(p, b);
  if (i0 >= sq.rowsQ) return;  // packed: past this sequence's queries
  const long long kvOff = (long long)b * p.kvHeads + kvh, qOff = (long long)b * p.heads + h;
  const float slope = (GENERAL && p.hasAlibi) ? p.alibi[h] : 0.f;

  int jLo = 0, jHi = sq.lenK;
  if (LOCAL) keyRange(p, sq, i0, min(i0 + BR, sq.lenQ) - 1, &jLo, &jHi);
  if (i0 >= sq.lenQ) jLo = jHi = 0;  // a tile of padding rows only: zeros written below
  const int jStart = (jLo / KT) * KT;
  auto issue = [&](int j0, int s) {
    __nv_bfloat16* base = stages + s * STAGE;
    copyTileAsync<KT, DP, LDR, NT>(base, st.k + (kvOff * st.nkPad + j0) * DP, DP);
    copyTileAsync<KT, DP, LDR, NT>(base + KT * LDR, st.v + (kvOff * st.nkPad + j0) * DP, DP);
    copyTileAsync<DP, KT, LDT, NT>(base + 2 * KT * LDR, st.kt + kvOff * DP * st.nkPad + j0, st.nkPad);
    cpAsyncCommit();
  };
  if (jStart < jHi) issue(jStart, 0);

  const int rLo = warp * 16 + g;
  const int rows[2] = {i0 + rLo, i0 + rLo + 8};
  uint32_t qf[KSTEPS][4], df[KSTEPS][4];
  {
    const __nv_bfloat16* q0 = st.q + (qOff * st.nqPad + i0 + rLo) * DP + 2 * t;
    const __nv_bfloat16* d0 = st.dout + (qOff * st.nqPad + i0 + rLo) * DP + 2 * t;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
      const int o = kk * 16;
      qf[kk][0] = __ldg(reinterpret_cast<const unsigned*>(q0 + o));
      qf[kk][1] = __ldg(reinterpret_cast<const unsigned*>(q0 + 8 * DP + o));
      qf[kk][2] = __ldg(reinterpret_cast<const unsigned*>(q0 + o + 8));
      qf[kk][3] = __ldg(reinterpret_cast<const unsigned*>(q0 + 8 * DP + o + 8));
      df[kk][0] = __ldg(reinterpret_cast<const unsigned*>(d0 + o));
      df[kk][1] = __ldg(reinterpret_cast<const unsigned*>(d0 + 8 * DP + o));
      df[kk][2] = __ldg(reinterpret_cast<const unsigned*>(d0 + o + 8));
      df[kk][3] = __ldg(reinterpret_cast<const unsigned*>(d0 + 8 * DP + o + 8));
    }
  }
  float lse2[2], dlt[2];
  uint32_t rowKey[2] = {0u, 0u};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = rows[half];
    lse2[half] = i < sq.lenQ ? lse[lseIndex(p, sq, h, i)] * kLog2e : INFINITY;
    dlt[half] = i < sq.lenQ ? delta[lseIndex(p, sq, h, i)] : 0.f;
    if (GENERAL && p.hasDropout) rowKey[half] = dropoutRowKey(p.seed, b * p.heads + h, i);
  }
  float acc[DBLK][4];
#pragma unroll
  for (int d = 0; d < DBLK; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;

  int s = 0;
  for (int j0 = jStart; j0 < jHi; j0 += KT, s ^= 1) {
    if (j0 + KT < jHi) { issue(j0 + KT, s ^ 1); cpAsyncWait<1>(); }
    else cpAsyncWait<0>();
    __syncthreads();
    const __nv_bfloat16* Ks = stages + s * STAGE;
    const __nv_bfloat16* Vs = Ks + KT * LDR;
    const __nv_bfloat16* Kts = Vs + KT * LDR;

    float sc[NBLK][4], dp[NBLK][4];
#pragma unroll
    for (int nb = 0; nb < NBLK; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) { sc[nb][e] = 0.f; dp[nb][e] = 0.f; }
      const __nv_bfloat16* kr = Ks + (nb * 8 + g) * LDR + 2 * t;
      const __nv_bfloat16* vr = Vs + (nb * 8 + g) * LDR + 2 * t;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
        mmaBf16(sc[nb], qf[kk], ld32(kr + kk * 16), ld32(kr + kk * 16 + 8));
        mmaBf16(dp[nb], df[kk], ld32(vr + kk * 16), ld32(vr + kk * 16 + 8));
      }
    }
    const bool edgeTile = j0 + KT > sq.lenK || i0 + BR > sq.lenQ ||
                          (LOCAL && !tileInsideWindow(p, sq, i0, i0 + BR - 1, j0, j0 + KT - 1));
#pragma unroll
    for (int nb = 0; nb < NBLK; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int half = e >> 1, i = rows[half], j = j0 + nb * 8 + 2 * t + (e & 1);
        sc[nb][e] = backwardStep<LOCAL, GENERAL>(p, sq, edgeTile, b, h, i, j, sc[nb][e], slope, lse2[half],
                                                 dp[nb][e], dlt[half], rowKey[half]).ds;
      }
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk) {
      const uint32_t da[4] = {packBf16(sc[2 * kk][0], sc[2 * kk][1]), packBf16(sc[2 * kk][2], sc[2 * kk][3]),
                              packBf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]), packBf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int db = 0; db < DBLK; ++db) {
        const __nv_bfloat16* kr = Kts + (db * 8 + g) * LDT + kk * 16 + 2 * t;
        mmaBf16(acc[db], da, ld32(kr), ld32(kr + 8));
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = rows[half];
    if (i >= sq.rowsQ) continue;
    const bool inSeq = i < sq.lenQ;  // rows past the length (padded layout): zero gradient
    float* row = dq + (((long long)sq.startQ + i) * p.heads + h) * p.headDim;
#pragma unroll
    for (int db = 0; db < DBLK; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = db * 8 + 2 * t + e;
        if (c < p.headDim) row[c] = inSeq ? acc[db][half * 2 + e] : 0.f;
      }
  }
}

template <int DP, bool LOCAL, bool GENERAL, bool VARLEN>
cudaError_t launchPasses(const Problem& p, const Staged& st, const float* lse, const float* delta, float* dq,
                         float* dk, float* dv, cudaStream_t stream) {
  constexpr int QT = BwdTiles<DP>::QT, KT = BwdTiles<DP>::KT;
  {
    constexpr size_t smem = sizeof(__nv_bfloat16) * (2 * 64 * (DP + 8) + 2 * (2 * QT * (DP + 8) + 2 * DP * (QT + 8))) +
                            sizeof(float) * 4 * QT + sizeof(uint32_t) * 2 * QT;
    auto kernel = dkvTensorCoreKernel<DP, LOCAL, GENERAL, VARLEN>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(st.nkPad / 64, p.kvHeads, p.batch);
    if (!emptyGrid(grid)) {
      kernel<<<grid, NT, smem, stream>>>(p, st, lse, delta, dk, dv);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  {
    constexpr size_t smem = sizeof(__nv_bfloat16) * 2 * (2 * KT * (DP + 8) + DP * (KT + 8));
    auto kernel = dqTensorCoreKernel<DP, LOCAL, GENERAL, VARLEN>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(st.nqPad / 64, p.heads, p.batch);
    if (emptyGrid(grid)) return cudaSuccess;
    kernel<<<grid, NT, smem, stream>>>(p, st, lse, delta, dq);
    return cudaGetLastError();
  }
}

template <int DP>
cudaError_t dispatchFlags(const Problem& p, const Staged& st, const float* lse, const float* delta, float* dq,
                          float* dk, float* dv, cudaStream_t s) {
  return OPTIONS_SWITCH(p, [&] { return launchPasses<DP, LOCAL, GENERAL, VARLEN>(p, st, lse, delta, dq, dk, dv, s); });
}

}  // namespace

size_t tensorCoreBackwardWorkspace(const Problem& p) {
  const size_t dp = tensorCoreHeadDim(p);
  const size_t nqPad = roundUp(p.seqQ, 64), nkPad = roundUp(p.seqK, 64);
  return sizeof(__nv_bfloat16) * dp * (4 * (size_t)p.batch * p.heads * nqPad + 3 * (size_t)p.batch * p.kvHeads * nkPad);
}

cudaError_t launchBackwardTensorCore(const Problem& p, const float* q, const float* k, const float* v,
                                     const float* lse, const float* dout, const float* delta, float* dq,
                                     float* dk, float* dv, void* workspace, cudaStream_t stream) {
  const int dp = tensorCoreHeadDim(p);
  Staged st;
  st.nqPad = roundUp(p.seqQ, 64);
  st.nkPad = roundUp(p.seqK, 64);
  const size_t qElems = (size_t)p.batch * p.heads * st.nqPad * dp, kElems = (size_t)p.batch * p.kvHeads * st.nkPad * dp;
  auto* w = static_cast<__nv_bfloat16*>(workspace);
  __nv_bfloat16 *qb = w, *qtb = qb + qElems, *db = qtb + qElems, *dtb = db + qElems;
  __nv_bfloat16 *kb = dtb + qElems, *ktb = kb + kElems, *vb = ktb + kElems;
  cudaError_t err;
  if ((err = stageBf16Both(q, p.rangesQ, qb, qtb, p.batch, p.seqQ, p.heads, p.headDim, st.nqPad, dp, stream))) return err;
  if ((err = stageBf16Both(dout, p.rangesQ, db, dtb, p.batch, p.seqQ, p.heads, p.headDimV, st.nqPad, dp, stream)))
    return err;
  if ((err = stageBf16Both(k, p.rangesK, kb, ktb, p.batch, p.seqK, p.kvHeads, p.headDim, st.nkPad, dp, stream))) return err;
  if ((err = stageBf16(v, p.rangesK, vb, p.batch, p.seqK, p.kvHeads, p.headDimV, st.nkPad, dp, false, stream))) return err;
  st.q = qb; st.qt = qtb; st.dout = db; st.doutt = dtb; st.k = kb; st.kt = ktb; st.v = vb;
  return dp == 64 ? dispatchFlags<64>(p, st, lse, delta, dq, dk, dv, stream)
                  : dispatchFlags<128>(p, st, lse, delta, dq, dk, dv, stream);
}

}  // namespace fa
