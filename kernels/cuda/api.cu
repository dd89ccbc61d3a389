// The C ABI (flash_attention.h): argument checks, the choice between the exact, the exact
// split-KV (decode) and the tensor-core path, and the backward's workspace.
#include "common.cuh"

namespace fa {

Problem makeProblem(const fa_params& a) {
  Problem p{};
  p.batch = a.batch; p.seqQ = a.seq_q; p.seqK = a.seq_k; p.heads = a.heads; p.kvHeads = a.kv_heads;
  p.headDim = a.head_dim; p.headDimV = a.head_dim_v; p.group = a.heads / a.kv_heads;
  p.offset = a.seq_k - a.seq_q;
  p.scale = a.scale; p.softcap = a.softcap;
  p.windowLeft = a.window_left < 0 ? -1 : a.window_left;
  p.windowRight = a.window_right < 0 ? -1 : a.window_right;
  p.alibi = a.alibi_slopes; p.mask = a.mask;
  for (int d = 0; d < 4; ++d) p.maskStride[d] = a.mask_strides[d];
  p.hasSoftcap = a.softcap > 0.f;
  p.hasAlibi = a.alibi_slopes != nullptr;
  p.hasMask = a.mask != nullptr;
  p.hasDropout = a.dropout_rate > 0.f;
  // threshold = min(floor(rate * 2^32), 2^32 - 1), as src/contract/dropout.ts.
  const double t = a.dropout_threshold >= 0 ? (double)a.dropout_threshold
                                            : floor((double)a.dropout_rate * 4294967296.0);
  p.dropoutThreshold = t >= 4294967295.0 ? 0xffffffffu : (uint32_t)t;
  p.dropoutScale = p.hasDropout ? 1.f / (1.f - a.dropout_rate) : 1.f;
  p.seed = a.seed;
  p.varlen = a.seq_layout != FA_SEQ_DENSE;
  p.packed = a.seq_layout == FA_SEQ_PACKED;
  p.rangesQ = p.varlen ? a.seq_ranges_q : nullptr;
  p.rangesK = p.varlen ? a.seq_ranges_k : nullptr;
  p.rowsQ = p.varlen ? a.rows_q : a.batch * a.seq_q;
  p.rowsK = p.varlen ? a.rows_k : a.batch * a.seq_k;
  // As src/contract/problem.ts: [B, H, seqQ] indexed by b * seqQ * H + h * seqQ + i, or packed
  // [1, H, totalQ] indexed by the row startQ + i.
  p.lseStartStride = p.packed ? 1 : a.heads;
  p.lseHeadStride = p.packed ? p.rowsQ : a.seq_q;
  return p;
}

// needRanges: false for the workspace sizes, which do not read the ranges.
static int checkParams(const fa_params* a, bool needRanges = true) {
  if (a == nullptr) return FA_ERR_BAD_ARGUMENT;
  if (a->heads <= 0 || a->kv_heads <= 0 || a->head_dim <= 0 || a->head_dim_v <= 0 ||
      a->heads % a->kv_heads != 0 || !(a->dropout_rate >= 0.f && a->dropout_rate < 1.f) ||
      !(a->softcap >= 0.f))
    return FA_ERR_BAD_ARGUMENT;
  if (a->seq_layout == FA_SEQ_DENSE) {
    if (a->batch <= 0 || a->seq_q <= 0 || a->seq_k <= 0) return FA_ERR_BAD_ARGUMENT;
  } else {
    // Empty sequences (and batches of them) are allowed; the packed layout has no mask.
    if ((a->seq_layout != FA_SEQ_PADDED && a->seq_layout != FA_SEQ_PACKED) || a->batch < 0 ||
        a->seq_q < 0 || a->seq_k < 0 || a->rows_q < 0 || a->rows_k < 0 ||
        (needRanges && a->batch > 0 && (a->seq_ranges_q == nullptr || a->seq_ranges_k == nullptr)) ||
        (a->seq_layout == FA_SEQ_PACKED && a->mask != nullptr))
      return FA_ERR_BAD_ARGUMENT;
  }
  if (a->head_dim > 256 || a->head_dim_v > 256) return FA_ERR_HEAD_DIM;
  return 0;
}

}  // namespace fa

extern "C" {

static bool useTensorCores(const fa_params* a, const fa::Problem& p) {
  return a->precision == FA_PRECISION_FAST && fa::tensorCoreHeadDim(p) != 0;
}

// The exact path's split-KV forward for decode shapes (few query rows, many keys).
static bool useDecode(const fa_params* a, const fa::Problem& p) {
  return !useTensorCores(a, p) && fa::decodeEligible(p);
}

size_t fa_forward_workspace_size(const fa_params* a) {
  if (fa::checkParams(a, false)) return 0;
  const fa::Problem p = fa::makeProblem(*a);
  if (useDecode(a, p)) return fa::decodeForwardWorkspace(p);
  return useTensorCores(a, p) ? fa::tensorCoreForwardWorkspace(p) : fa::simtForwardWorkspace(p);
}

int fa_forward(const fa_params* a, const float* q, const float* k, const float* v, float* out,
               float* lse, void* workspace, void* stream) {
  if (int e = fa::checkParams(a)) return e;
  const fa::Problem p = fa::makeProblem(*a);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (workspace == nullptr && fa_forward_workspace_size(a) > 0) return FA_ERR_BAD_ARGUMENT;
  if (p.rowsQ == 0) return 0;  // no query rows: nothing to write
  if (useTensorCores(a, p)) return fa::launchForwardTensorCore(p, q, k, v, out, lse, workspace, s);
  if (useDecode(a, p)) return fa::launchForwardDecode(p, q, k, v, out, lse, workspace, s);
  return fa::launchForwardSimt(p, q, k, v, out, lse, workspace, s);
}

// Backward workspace: delta (float32, indexed as logsumexp: heads x rows of q), then the staged
// operands of the path taken.
static size_t deltaBytes(const fa_params* a) {
  const fa::Problem p = fa::makeProblem(*a);
  return (sizeof(float) * (size_t)p.rowsQ * a->heads + 255) / 256 * 256;
}

size_t fa_backward_workspace_size(const fa_params* a) {
  if (fa::checkParams(a, false)) return 0;
  const fa::Problem p = fa::makeProblem(*a);
  return deltaBytes(a) + (useTensorCores(a, p) ? fa::tensorCoreBackwardWorkspace(p) : fa::simtBackwardWorkspace(p));
}

int fa_backward(const fa_params* a, const float* q, const float* k, const float* v,
                const float* out, const float* lse, const float* dout, float* dq, float* dk,
                float* dv, void* workspace, void* stream) {
  if (int e = fa::checkParams(a)) return e;
  if (workspace == nullptr && fa_backward_workspace_size(a) > 0) return FA_ERR_BAD_ARGUMENT;
  const fa::Problem p = fa::makeProblem(*a);
  if (p.rowsQ == 0 && p.rowsK == 0) return 0;  // nothing to write
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  float* delta = static_cast<float*>(workspace);
  if (useTensorCores(a, p)) {
    if (cudaError_t e = fa::launchBackwardPreprocess(p, out, dout, delta, true, s)) return e;
    return fa::launchBackwardTensorCore(p, q, k, v, lse, dout, delta, dq, dk, dv,
                                        static_cast<char*>(workspace) + deltaBytes(a), s);
  }
  return fa::launchBackwardSimt(p, q, k, v, out, lse, dout, dq, dk, dv, delta,
                                static_cast<char*>(workspace) + deltaBytes(a), s);
}

const char* fa_error_string(int code) {
  switch (code) {
    case 0: return "no error";
    case FA_ERR_BAD_ARGUMENT: return "invalid argument (shapes, heads % kvHeads, dropout rate, softcap, sequence layout or ranges, or workspace)";
    case FA_ERR_HEAD_DIM: return "headDim and headDimV must be at most 256";
    default: return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}

}  // extern "C"
