/*
 * C ABI of the CUDA FlashAttention kernels: one entry for the forward, one for the backward,
 * shared by the TensorFlow op library (native/tf_op/) and the standalone harness
 * (kernels/cuda/harness/, through ctypes). Plain C types only, so any caller can bind it.
 *
 * Semantics are those of src/contract/kernel_names.ts (bottom-right aligned window, ALiBi, softcap,
 * rank-4 broadcast mask, counter-based dropout of src/contract/dropout.ts, GQA/MQA, seqQ != seqK).
 * Layouts (contiguous, float32): q [B, Nq, H, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv],
 * out [B, Nq, H, Dv], logsumexp [B, H, Nq]. headDim and headDimV are at most 256.
 * Variable lengths (seq_layout, the contract's seqLayout): FA_SEQ_PADDED keeps these layouts and
 * reads each sequence's (start row, length) from seq_ranges_q/k; FA_SEQ_PACKED has q [1, totalQ, H, D],
 * k and v [1, totalK, Hkv, *], out [1, totalQ, H, Dv], logsumexp [1, H, totalQ], with batch = the
 * number of sequences and seq_q/seq_k = the longest lengths.
 *
 * Every call is asynchronous on `stream` and returns 0 or a cudaError_t / FA_ERR_* code;
 * fa_error_string() describes it.
 */
#ifndef TFJS_FLASH_ATTENTION_CUDA_H_
#define TFJS_FLASH_ATTENTION_CUDA_H_

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define FA_API __attribute__((visibility("default")))
#else
#define FA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define FA_PRECISION_HIGHEST 0
#define FA_PRECISION_FAST 1

#define FA_SEQ_DENSE 0
#define FA_SEQ_PADDED 1
#define FA_SEQ_PACKED 2

/* Errors of our own, above the range of cudaError_t. */
#define FA_ERR_BAD_ARGUMENT 10001
#define FA_ERR_HEAD_DIM 10002

typedef struct {
  int batch, seq_q, seq_k, heads, kv_heads, head_dim, head_dim_v;
  float scale;
  float softcap;           /* 0 = off */
  int window_left;         /* -1 = unbounded */
  int window_right;        /* -1 = unbounded, 0 = causal */
  const float* alibi_slopes; /* [heads] or NULL */
  /* bool bytes of a rank-4 mask broadcast to [B, H, Nq, Nk], or NULL; mask_strides are element
     strides per dimension, 0 where the mask's dimension is 1. */
  const uint8_t* mask;
  int64_t mask_strides[4];
  float dropout_rate;      /* in [0, 1) */
  uint32_t seed;
  /* keep = hash >= threshold. src/contract/dropout.ts computes min(floor(rate * 2^32), 2^32 - 1) from
     the float64 rate; a float32 rate can round to a different threshold, so callers that have
     the float64 rate pass the threshold here; -1 derives it from dropout_rate. */
  int64_t dropout_threshold;
  int precision;           /* FA_PRECISION_* */
  /* Variable lengths (src/contract/kernel_names.ts). FA_SEQ_DENSE ignores the fields below.
     Otherwise batch is the number of sequences, seq_q/seq_k the longest lengths (the grid extents),
     seq_ranges_q/k device int32 [batch, 2] = (start row, length) of each sequence's queries / keys,
     rows counted over q's (k's) first two dimensions; rows_q/rows_k are those rows' totals
     (dimension 0 x dimension 1 of q / k). Lengths and seq_q/seq_k may be 0. */
  int seq_layout;          /* FA_SEQ_* */
  const int32_t* seq_ranges_q;
  const int32_t* seq_ranges_k;
  int rows_q, rows_k;
} fa_params;

/* Bytes of device workspace fa_forward needs: staged operand copies (K transposed, float32,
   for the exact path; BF16 Q, K, V for the tensor-core path). */
FA_API size_t fa_forward_workspace_size(const fa_params* p);

/* out [B, Nq, H, Dv], lse [B, H, Nq]. On the exact path, at most 16 query rows over at least 256
   keys run the split-KV forward (decode_splitkv.cu; environment FA_DECODE=0/1 forces it off/on). */
FA_API int fa_forward(const fa_params* p, const float* q, const float* k, const float* v,
                      float* out, float* lse, void* workspace, void* stream);

/* Bytes of device workspace fa_backward needs (the row dot products of dO and O). */
FA_API size_t fa_backward_workspace_size(const fa_params* p);

/* dq, dk, dv shaped like q, k, v; every element is written (no accumulation into the caller's
   buffers, no atomics: the result is deterministic). */
FA_API int fa_backward(const fa_params* p, const float* q, const float* k, const float* v,
                const float* out, const float* lse, const float* dout,
                float* dq, float* dk, float* dv, void* workspace, void* stream);

FA_API const char* fa_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* TFJS_FLASH_ATTENTION_CUDA_H_ */
