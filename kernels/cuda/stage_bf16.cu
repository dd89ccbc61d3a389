// The BF16 staging pass of precision 'fast' (see tc_common.cuh).
#include "tc_common.cuh"

namespace fa {
namespace {

constexpr int ROWS = 64, NT = 256;

__device__ __forceinline__ void transposeToBf16(float* tile, const float* s, long long rowStride, __nv_bfloat16* d,
                                                int n0, int n, int w, int nPad, int dp) {
  for (int idx = threadIdx.x; idx < ROWS * dp; idx += NT) {
    const int r = idx / dp, c = idx % dp, row = n0 + r;
    tile[r * (dp + 1) + c] = row < n && c < w ? s[row * rowStride + c] : 0.f;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < dp * ROWS / 2; idx += NT) {
    const int c = idx / (ROWS / 2), r = (idx % (ROWS / 2)) * 2;
    *reinterpret_cast<uint32_t*>(d + (long long)c * nPad + n0 + r) =
        packBf16(tile[r * (dp + 1) + c], tile[(r + 1) * (dp + 1) + c]);
  }
}

template <bool TRANSPOSED>
__global__ void __launch_bounds__(NT) stageBf16Kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                                      int n, int hx, int w, int nPad, int dp) {
  extern __shared__ float tile[];  // [ROWS][dp + 1], transposed staging only
  const int n0 = blockIdx.x * ROWS, h = blockIdx.y, b = blockIdx.z;
  const float* s = src + ((long long)b * n * hx + h) * w;  // row r at s + r * hx * w
  const long long rowStride = (long long)hx * w;
  if (!TRANSPOSED) {
    __nv_bfloat16* d = dst + ((long long)b * hx + h) * nPad * dp;
    for (int idx = threadIdx.x; idx < ROWS * dp / 2; idx += NT) {
      const int r = idx / (dp / 2), c = (idx % (dp / 2)) * 2, row = n0 + r;
      const float x0 = row < n && c < w ? s[row * rowStride + c] : 0.f;
      const float x1 = row < n && c + 1 < w ? s[row * rowStride + c + 1] : 0.f;
      *reinterpret_cast<uint32_t*>(d + (long long)row * dp + c) = packBf16(x0, x1);
    }
  } else {
    transposeToBf16(tile, s, rowStride, dst + ((long long)b * hx + h) * dp * nPad, n0, n, w, nPad, dp);
  }
}

}  // namespace

cudaError_t stageBf16(const float* src, __nv_bfloat16* dst, int batch, int n, int hx, int w, int nPad,
                      int dp, bool transposed, cudaStream_t stream) {
  const dim3 grid(nPad / ROWS, hx, batch);
  if (transposed) {
    const size_t smem = sizeof(float) * ROWS * (dp + 1);
    cudaError_t err = cudaFuncSetAttribute(stageBf16Kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    stageBf16Kernel<true><<<grid, NT, smem, stream>>>(src, dst, n, hx, w, nPad, dp);
  } else {
    stageBf16Kernel<false><<<grid, NT, 0, stream>>>(src, dst, n, hx, w, nPad, dp);
  }
  return cudaGetLastError();
}

}  // namespace fa
