// Tensor-core helpers of precision 'fast': BF16 mma.sync m16n8k16 with float32 accumulation,
// cp.async copies, and the staging pass that rounds float32 operands to BF16 once per call in
// the layouts the fragments read (zero-padded to whole tiles, transposed where an operand is
// read along its other axis). Staging costs one pass over the operands (memory-bound) and halves
// the bytes every tile load moves afterwards.
//
// Fragment layouts of m16n8k16 (g = lane / 4, t = lane % 4), each register two BF16 values:
//   A (16x16, row-major):  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B (16x8, "col"):       b0 = (k 2t..2t+1, n g)  b1 = (k 2t+8.., n g)
//   C (16x8, float32):     c0, c1 = (g, 2t..2t+1)   c2, c3 = (g+8, 2t..2t+1)
// so a C tile pair (columns 0-7, 8-15) is, packed to BF16, the A fragment of the next product.
#pragma once
#include <cuda_bf16.h>

#include "common.cuh"

namespace fa {

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

__device__ __forceinline__ uint32_t ld32(const __nv_bfloat16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Copies a ROWS x COLS bf16 tile (row stride srcLd elements) into smem with row stride LD.
template <int ROWS, int COLS, int LD, int NT>
__device__ __forceinline__ void copyTileAsync(__nv_bfloat16* dst, const __nv_bfloat16* src, long long srcLd) {
  constexpr int CHUNKS = COLS / 8;  // 16 bytes = 8 bf16
  for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += NT) {
    const int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
    cpAsync16(dst + r * LD + c, src + r * srcLd + c);
  }
}

inline int roundUp(int x, int m) { return (x + m - 1) / m * m; }

// BF16 staging of one operand: src float32 [B, N, HX, W] to dst [B, HX, NPad, DP] (natural) or
// [B, HX, DP, NPad] (transposed), zeros in the padding. ranges: as stageTransposedF32 (common.cuh).
cudaError_t stageBf16(const float* src, const int* ranges, __nv_bfloat16* dst, int batch, int n, int hx, int w,
                      int nPad, int dp, bool transposed, cudaStream_t stream);

// Both layouts (rows and transposed) from one read of src.
cudaError_t stageBf16Both(const float* src, const int* ranges, __nv_bfloat16* rows, __nv_bfloat16* cols, int batch,
                          int n, int hx, int w, int nPad, int dp, cudaStream_t stream);

}  // namespace fa
