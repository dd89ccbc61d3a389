// Staging passes: BF16 copies of the operands for precision 'fast' (see tc_common.cuh), and
// float32 transposed copies for the exact kernels' 16-byte tile loads.
#include "tc_common.cuh"

namespace fa {
namespace {

constexpr int ROWS = 64, NT = 256;

__device__ __forceinline__ void storePair(__nv_bfloat16* d, float x0, float x1) {
  *reinterpret_cast<uint32_t*>(d) = packBf16(x0, x1);
}
__device__ __forceinline__ void storePair(float* d, float x0, float x1) {
  *reinterpret_cast<float2*>(d) = make_float2(x0, x1);
}

// Head h of sequence b's first row in src [B, n, hx, w], and in *len its length: from ranges
// (int32 [B, 2]: start row, length clamped to n) when given, else row b * n and n. Rows past the
// length are staged as zeros.
__device__ __forceinline__ const float* sequenceRows(const float* src, const int* ranges, int b, int n, int hx,
                                                     int w, int h, int* len) {
  long long start = (long long)b * n;
  *len = n;
  if (ranges != nullptr) {
    start = ranges[2 * b];
    *len = min(max(ranges[2 * b + 1], 0), n);
  }
  return src + (start * hx + h) * w;
}

template <typename T>
__device__ __forceinline__ void transposeTile(float* tile, const float* s, long long rowStride, T* d,
                                              int n0, int n, int w, int nPad, int dp) {
  for (int idx = threadIdx.x; idx < ROWS * dp; idx += NT) {
    const int r = idx / dp, c = idx % dp, row = n0 + r;
    tile[r * (dp + 1) + c] = row < n && c < w ? s[row * rowStride + c] : 0.f;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < dp * ROWS / 2; idx += NT) {
    const int c = idx / (ROWS / 2), r = (idx % (ROWS / 2)) * 2;
    storePair(d + (long long)c * nPad + n0 + r, tile[r * (dp + 1) + c], tile[(r + 1) * (dp + 1) + c]);
  }
}

// Both BF16 layouts of one operand from a single read of it (the backward needs both).
__global__ void __launch_bounds__(NT) stageBf16BothKernel(const float* __restrict__ src, const int* __restrict__ ranges,
                                                          __nv_bfloat16* __restrict__ rows,
                                                          __nv_bfloat16* __restrict__ cols, int n, int hx, int w,
                                                          int nPad, int dp) {
  extern __shared__ float tile[];  // [ROWS][dp + 1]
  const int n0 = blockIdx.x * ROWS, h = blockIdx.y, b = blockIdx.z;
  int len;
  const float* s = sequenceRows(src, ranges, b, n, hx, w, h, &len);
  transposeTile(tile, s, (long long)hx * w, cols + ((long long)b * hx + h) * dp * nPad, n0, len, w, nPad, dp);
  __nv_bfloat16* d = rows + ((long long)b * hx + h) * nPad * dp;
  for (int idx = threadIdx.x; idx < ROWS * dp / 2; idx += NT) {  // the tile is complete: see transposeTile
    const int r = idx / (dp / 2), c = (idx % (dp / 2)) * 2;
    storePair(d + (long long)(n0 + r) * dp + c, tile[r * (dp + 1) + c], tile[r * (dp + 1) + c + 1]);
  }
}

template <typename T>
__global__ void __launch_bounds__(NT) stageTransposedKernel(const float* __restrict__ src, const int* __restrict__ ranges,
                                                            T* __restrict__ dst, int n, int hx, int w, int nPad, int dp) {
  extern __shared__ float tile[];  // [ROWS][dp + 1]
  const int n0 = blockIdx.x * ROWS, h = blockIdx.y, b = blockIdx.z;
  int len;
  const float* s = sequenceRows(src, ranges, b, n, hx, w, h, &len);
  transposeTile(tile, s, (long long)hx * w, dst + ((long long)b * hx + h) * dp * nPad, n0, len, w, nPad, dp);
}

__global__ void __launch_bounds__(NT) stageBf16RowsKernel(const float* __restrict__ src, const int* __restrict__ ranges,
                                                          __nv_bfloat16* __restrict__ dst, int n, int hx, int w,
                                                          int nPad, int dp) {
  const int n0 = blockIdx.x * ROWS, h = blockIdx.y, b = blockIdx.z;
  int len;
  const float* s = sequenceRows(src, ranges, b, n, hx, w, h, &len);  // row r at s + r * hx * w
  const long long rowStride = (long long)hx * w;
  __nv_bfloat16* d = dst + ((long long)b * hx + h) * nPad * dp;
  for (int idx = threadIdx.x; idx < ROWS * dp / 2; idx += NT) {
    const int r = idx / (dp / 2), c = (idx % (dp / 2)) * 2, row = n0 + r;
    const float x0 = row < len && c < w ? s[row * rowStride + c] : 0.f;
    const float x1 = row < len && c + 1 < w ? s[row * rowStride + c + 1] : 0.f;
    storePair(d + (long long)row * dp + c, x0, x1);
  }
}

template <typename T>
cudaError_t launchTransposed(const float* src, const int* ranges, T* dst, int batch, int n, int hx, int w, int nPad,
                             int dp, cudaStream_t stream) {
  const dim3 grid(nPad / ROWS, hx, batch);
  if (emptyGrid(grid)) return cudaSuccess;
  const size_t smem = sizeof(float) * ROWS * (dp + 1);
  cudaError_t err = cudaFuncSetAttribute(stageTransposedKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  stageTransposedKernel<T><<<grid, NT, smem, stream>>>(src, ranges, dst, n, hx, w, nPad, dp);
  return cudaGetLastError();
}

}  // namespace

cudaError_t stageBf16(const float* src, const int* ranges, __nv_bfloat16* dst, int batch, int n, int hx, int w,
                      int nPad, int dp, bool transposed, cudaStream_t stream) {
  if (transposed) return launchTransposed(src, ranges, dst, batch, n, hx, w, nPad, dp, stream);
  const dim3 grid(nPad / ROWS, hx, batch);
  if (emptyGrid(grid)) return cudaSuccess;
  stageBf16RowsKernel<<<grid, NT, 0, stream>>>(src, ranges, dst, n, hx, w, nPad, dp);
  return cudaGetLastError();
}

cudaError_t stageBf16Both(const float* src, const int* ranges, __nv_bfloat16* rows, __nv_bfloat16* cols, int batch,
                          int n, int hx, int w, int nPad, int dp, cudaStream_t stream) {
  const dim3 grid(nPad / ROWS, hx, batch);
  if (emptyGrid(grid)) return cudaSuccess;
  const size_t smem = sizeof(float) * ROWS * (dp + 1);
  cudaError_t err = cudaFuncSetAttribute(stageBf16BothKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  stageBf16BothKernel<<<grid, NT, smem, stream>>>(src, ranges, rows, cols, n, hx, w, nPad, dp);
  return cudaGetLastError();
}

cudaError_t stageTransposedF32(const float* src, const int* ranges, float* dst, int batch, int n, int hx, int w,
                               int nPad, int dp, cudaStream_t stream) {
  return launchTransposed(src, ranges, dst, batch, n, hx, w, nPad, dp, stream);
}

}  // namespace fa
