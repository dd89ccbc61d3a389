// TensorFlow custom op library: ops FlashAttention and FlashAttentionGrad (same inputs, outputs
// and attributes as the tfjs kernels of src/contract/kernel_names.ts) with GPU kernels that call the
// CUDA kernels through their C ABI. Built against TensorFlow's stable C API only (tf_c_api.h);
// loaded into a running TensorFlow with TF_LoadLibrary (native/loader/).
//
// Stream ordering. A C-API kernel on TensorFlow's own GPU device cannot get TensorFlow's CUDA
// stream (TF_GetStream answers only for pluggable devices). So each compute call
//   1. waits for all work queued on the device (cudaDeviceSynchronize: TensorFlow's streams live
//      in the device's primary context, which the runtime API shares), so the inputs are ready
//      and the output buffers TensorFlow just handed out are no longer in use by earlier ops;
//   2. launches on a stream of our own;
//   3. waits for that stream before returning, so the ops TensorFlow queues next see the results.
// The cost: two host-device round trips per op (tens of microseconds each) and no overlap with
// other work on the GPU. See docs/cuda.md.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "flash_attention.h"
#include "tf_c_api.h"

namespace {

const char* const kAttrSpecs[] = {
    "scale: float",       "softcap: float",     "windowLeft: int",    "windowRight: int",
    "hasAlibi: bool",     "hasMask: bool",      "dropoutRate: float", "seed: int",
    "precision: {'highest', 'fast'}", "dropoutThreshold: int = -1",
    "seqLayout: {'dense', 'padded', 'packed'} = 'dense'", "maxSeqLenQ: int = 0", "maxSeqLenK: int = 0",
    "numSeqs: int = 0",
};

// Input positions: the forward's, then (gradient) out, logsumexp, dy.
enum Input { kQ, kK, kV, kAlibi, kMask, kRangesQ, kRangesK, kOut, kLse, kDy };
constexpr int kForwardInputs = kRangesK + 1, kGradInputs = kDy + 1;

struct Attrs {
  float scale = 0, softcap = 0, dropoutRate = 0;
  int64_t windowLeft = -1, windowRight = -1, seed = 0, dropoutThreshold = -1;
  bool hasAlibi = false, hasMask = false, fast = false;
  int seqLayout = FA_SEQ_DENSE;
  int64_t maxSeqLenQ = 0, maxSeqLenK = 0, numSeqs = 0;
};

// Every kernel instance owns a stream; TensorFlow may run instances concurrently.
struct Kernel {
  Attrs attrs;
  cudaStream_t stream = nullptr;
  int device = -1;
};

std::string registrationError;  // empty when both ops and kernels registered

void fail(TF_OpKernelContext* ctx, TF_Code code, const std::string& msg) {
  TF_Status* s = TF_NewStatus();
  TF_SetStatus(s, code, ("Error in flashAttention: " + msg).c_str());
  TF_OpKernelContext_Failure(ctx, s);
  TF_DeleteStatus(s);
}

// ---- shape inference ----
struct Shapes {
  std::vector<TF_ShapeHandle*> owned;
  TF_ShapeHandle* make() { owned.push_back(TF_NewShapeHandle()); return owned.back(); }
  ~Shapes() { for (auto* h : owned) TF_DeleteShapeHandle(h); }
};

TF_ShapeHandle* rank4Input(TF_ShapeInferenceContext* ctx, Shapes& sh, int i, TF_Status* st) {
  TF_ShapeHandle* in = sh.make();
  TF_ShapeHandle* checked = sh.make();
  TF_ShapeInferenceContextGetInput(ctx, i, in, st);
  if (TF_GetCode(st) != TF_OK) return nullptr;
  TF_ShapeInferenceContextWithRank(ctx, in, 4, checked, st);
  return TF_GetCode(st) == TF_OK ? checked : nullptr;
}

TF_ShapeHandle* sub(TF_ShapeInferenceContext* ctx, Shapes& sh, TF_ShapeHandle* s, int a, int b, TF_Status* st) {
  TF_ShapeHandle* r = sh.make();
  TF_ShapeInferenceContextSubshape(ctx, s, a, b, r, st);
  return r;
}
TF_ShapeHandle* cat(TF_ShapeInferenceContext* ctx, Shapes& sh, TF_ShapeHandle* x, TF_ShapeHandle* y, TF_Status* st) {
  TF_ShapeHandle* r = sh.make();
  TF_ShapeInferenceContextConcatenateShapes(ctx, x, y, r, st);
  return r;
}

// out [B, Nq, H, Dv] = q[0:3] ++ v[3:4]; logsumexp [B, H, Nq] = q[0:1] ++ q[2:3] ++ q[1:2].
void forwardShapes(TF_ShapeInferenceContext* ctx, TF_Status* st) {
  Shapes sh;
  TF_ShapeHandle* q = rank4Input(ctx, sh, 0, st);
  if (!q) return;
  TF_ShapeHandle* v = rank4Input(ctx, sh, 2, st);
  if (!v) return;
  TF_ShapeHandle* out = cat(ctx, sh, sub(ctx, sh, q, 0, 3, st), sub(ctx, sh, v, 3, 4, st), st);
  TF_ShapeHandle* bh = cat(ctx, sh, sub(ctx, sh, q, 0, 1, st), sub(ctx, sh, q, 2, 3, st), st);
  TF_ShapeHandle* lse = cat(ctx, sh, bh, sub(ctx, sh, q, 1, 2, st), st);
  if (TF_GetCode(st) != TF_OK) return;
  TF_ShapeInferenceContextSetOutput(ctx, 0, out, st);
  if (TF_GetCode(st) == TF_OK) TF_ShapeInferenceContextSetOutput(ctx, 1, lse, st);
}

// dq, dk, dv are shaped like q, k, v.
void gradShapes(TF_ShapeInferenceContext* ctx, TF_Status* st) {
  Shapes sh;
  for (int i = 0; i < 3 && TF_GetCode(st) == TF_OK; ++i) {
    TF_ShapeHandle* s = rank4Input(ctx, sh, i, st);
    if (!s) return;
    TF_ShapeInferenceContextSetOutput(ctx, i, s, st);
  }
}

// ---- kernels ----
void* createKernel(TF_OpKernelConstruction* ctx) {
  auto* k = new Kernel();
  TF_Status* st = TF_NewStatus();
  Attrs& a = k->attrs;
  TF_Bool b = 0;
  char precision[16] = {0}, layout[16] = {0};
  TF_OpKernelConstruction_GetAttrFloat(ctx, "scale", &a.scale, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrFloat(ctx, "softcap", &a.softcap, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "windowLeft", &a.windowLeft, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "windowRight", &a.windowRight, st);
  if (TF_GetCode(st) == TF_OK) { TF_OpKernelConstruction_GetAttrBool(ctx, "hasAlibi", &b, st); a.hasAlibi = b; }
  if (TF_GetCode(st) == TF_OK) { TF_OpKernelConstruction_GetAttrBool(ctx, "hasMask", &b, st); a.hasMask = b; }
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrFloat(ctx, "dropoutRate", &a.dropoutRate, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "seed", &a.seed, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "dropoutThreshold", &a.dropoutThreshold, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrString(ctx, "precision", precision, sizeof(precision) - 1, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrString(ctx, "seqLayout", layout, sizeof(layout) - 1, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "maxSeqLenQ", &a.maxSeqLenQ, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "maxSeqLenK", &a.maxSeqLenK, st);
  if (TF_GetCode(st) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, "numSeqs", &a.numSeqs, st);
  if (TF_GetCode(st) == TF_OK) {
    if (std::strcmp(precision, "fast") == 0) a.fast = true;
    else if (std::strcmp(precision, "highest") != 0)
      TF_SetStatus(st, TF_INVALID_ARGUMENT, "Error in flashAttention: precision must be 'highest' or 'fast'");
  }
  if (TF_GetCode(st) == TF_OK) {
    if (std::strcmp(layout, "padded") == 0) a.seqLayout = FA_SEQ_PADDED;
    else if (std::strcmp(layout, "packed") == 0) a.seqLayout = FA_SEQ_PACKED;
    else if (std::strcmp(layout, "dense") != 0)
      TF_SetStatus(st, TF_INVALID_ARGUMENT, "Error in flashAttention: seqLayout must be 'dense', 'padded' or 'packed'");
  }
  if (TF_GetCode(st) != TF_OK) TF_OpKernelConstruction_Failure(ctx, st);
  TF_DeleteStatus(st);
  return k;
}

void deleteKernel(void* p) {
  auto* k = static_cast<Kernel*>(p);
  if (k->stream) {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(k->device);
    cudaStreamDestroy(k->stream);
    cudaSetDevice(prev);
  }
  delete k;
}

// Inputs fetched from the context, released on scope exit.
struct Inputs {
  std::vector<TF_Tensor*> t;
  ~Inputs() { for (auto* x : t) if (x) TF_DeleteTensor(x); }
  bool fetch(TF_OpKernelContext* ctx, int n, TF_Status* st) {
    t.assign(n, nullptr);
    for (int i = 0; i < n; ++i) {
      TF_GetInput(ctx, i, &t[i], st);
      if (TF_GetCode(st) != TF_OK) return false;
    }
    return true;
  }
  std::vector<int64_t> shape(int i) const {
    std::vector<int64_t> s(TF_NumDims(t[i]));
    for (size_t d = 0; d < s.size(); ++d) s[d] = TF_Dim(t[i], (int)d);
    return s;
  }
  const float* f(int i) const { return static_cast<const float*>(TF_TensorData(t[i])); }
};

std::string shapeString(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Fills fa_params from the inputs' shapes and the attributes; returns an error message or "".
// The ranges pointers are left null: the caller copies the ranges to the device (copyRanges).
std::string describe(const Inputs& in, const Attrs& a, fa_params* p) {
  const auto q = in.shape(kQ), k = in.shape(kK), v = in.shape(kV), mask = in.shape(kMask);
  if (q.size() != 4 || k.size() != 4 || v.size() != 4)
    return "q, k, v must be rank 4, got " + shapeString(q) + ", " + shapeString(k) + ", " + shapeString(v);
  if (k[0] != q[0] || v[0] != q[0] || k[3] != q[3] || v[1] != k[1] || v[2] != k[2] || q[2] % k[2] != 0)
    return "incompatible shapes q " + shapeString(q) + ", k " + shapeString(k) + ", v " + shapeString(v);
  std::memset(p, 0, sizeof(*p));
  p->batch = (int)q[0]; p->seq_q = (int)q[1]; p->heads = (int)q[2]; p->head_dim = (int)q[3];
  p->seq_k = (int)k[1]; p->kv_heads = (int)k[2]; p->head_dim_v = (int)v[3];
  p->seq_layout = a.seqLayout;
  p->rows_q = (int)(q[0] * q[1]);
  p->rows_k = (int)(k[0] * k[1]);
  if (a.seqLayout != FA_SEQ_DENSE) {
    if (a.seqLayout == FA_SEQ_PACKED) {
      // q [1, totalQ, H, D]: the grid runs over the sequences and their longest lengths.
      if (q[0] != 1 || a.hasMask) return "the packed layout takes q [1, totalQ, H, D] and no mask, got q " + shapeString(q);
      p->batch = (int)a.numSeqs; p->seq_q = (int)a.maxSeqLenQ; p->seq_k = (int)a.maxSeqLenK;
      if (a.numSeqs < 0 || a.maxSeqLenQ < 0 || a.maxSeqLenK < 0 || a.maxSeqLenQ > q[1] || a.maxSeqLenK > k[1])
        return "numSeqs, maxSeqLenQ, maxSeqLenK out of range for q " + shapeString(q) + ", k " + shapeString(k);
    }
    const std::vector<int64_t> ranges = {p->batch, 2};
    if (in.shape(kRangesQ) != ranges || in.shape(kRangesK) != ranges)
      return "seqRangesQ and seqRangesK must be " + shapeString(ranges) + ", got " + shapeString(in.shape(kRangesQ)) +
             " and " + shapeString(in.shape(kRangesK));
  }
  p->scale = a.scale; p->softcap = a.softcap;
  p->window_left = (int)a.windowLeft; p->window_right = (int)a.windowRight;
  p->dropout_rate = a.dropoutRate; p->seed = (uint32_t)a.seed; p->dropout_threshold = a.dropoutThreshold;
  p->precision = a.fast ? FA_PRECISION_FAST : FA_PRECISION_HIGHEST;
  if (a.hasAlibi) {
    const auto s = in.shape(kAlibi);
    if (s.size() != 1 || s[0] != q[2]) return "alibiSlopes must be [heads], got " + shapeString(s);
    p->alibi_slopes = in.f(kAlibi);
  }
  if (a.hasMask) {
    const int64_t full[4] = {q[0], q[2], q[1], k[1]};
    if (mask.size() != 4) return "mask must be rank 4, got " + shapeString(mask);
    int64_t stride = 1;
    for (int d = 3; d >= 0; --d) {
      if (mask[d] != 1 && mask[d] != full[d])
        return "mask " + shapeString(mask) + " is not broadcastable to [batch, heads, seqQ, seqK]";
      p->mask_strides[d] = mask[d] == 1 ? 0 : stride;
      stride *= mask[d];
    }
    p->mask = static_cast<const uint8_t*>(TF_TensorData(in.t[kMask]));
  }
  return "";
}

// The ranges in device memory. TensorFlow keeps a GPU kernel's int32 inputs in host memory, so
// they are copied (cudaMemcpyDefault reads host or device memory alike) into the front of the
// workspace: rangesBytes(p) bytes, then the kernels' own workspace.
size_t rangesBytes(const fa_params& p) {
  return p.seq_layout == FA_SEQ_DENSE ? 0 : (2 * 2 * sizeof(int32_t) * (size_t)p.batch + 255) / 256 * 256;
}
int copyRanges(const Inputs& in, fa_params* p, void* ws, cudaStream_t stream) {
  if (p->seq_layout == FA_SEQ_DENSE || p->batch == 0) return 0;
  const size_t bytes = 2 * sizeof(int32_t) * (size_t)p->batch;
  auto* d = static_cast<int32_t*>(ws);
  if (int e = cudaMemcpyAsync(d, TF_TensorData(in.t[kRangesQ]), bytes, cudaMemcpyDefault, stream)) return e;
  if (int e = cudaMemcpyAsync(d + 2 * p->batch, TF_TensorData(in.t[kRangesK]), bytes, cudaMemcpyDefault, stream))
    return e;
  p->seq_ranges_q = d;
  p->seq_ranges_k = d + 2 * p->batch;
  return 0;
}

// Steps 1 and 2 of the ordering above; returns false (and fails ctx) on a CUDA error.
bool prepareStream(TF_OpKernelContext* ctx, Kernel* k, const void* anyInput) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, anyInput) != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
    cudaGetLastError();
    fail(ctx, TF_INTERNAL, "inputs are not in GPU memory");
    return false;
  }
  cudaSetDevice(attr.device);
  if (!k->stream) {
    k->device = attr.device;
    if (cudaStreamCreateWithFlags(&k->stream, cudaStreamNonBlocking) != cudaSuccess) {
      fail(ctx, TF_INTERNAL, "cudaStreamCreate failed");
      return false;
    }
  }
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    fail(ctx, TF_INTERNAL, std::string("waiting for TensorFlow's GPU work: ") + cudaGetErrorString(e));
    return false;
  }
  return true;
}

// Scratch memory of one call: a temp tensor from TensorFlow's own GPU allocator (TF_AllocateTemp,
// TensorFlow 2.5 on), else CUDA's stream-ordered pool (cudaMallocAsync). Taken after
// prepareStream's device synchronisation (TensorFlow's allocator may hand out memory that ops
// still queued on its stream freed) and released after finish()'s stream synchronisation.
struct Scratch {
  TF_Tensor* tensor = nullptr;
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  int acquire(TF_OpKernelContext* ctx, size_t bytes, cudaStream_t s) {
    stream = s;
    if (bytes == 0) return 0;
    if (TF_AllocateTemp) {
      TF_Status* st = TF_NewStatus();
      TF_AllocatorAttributes attrs{};
      attrs.struct_size = TF_ALLOCATOR_ATTRIBUTES_STRUCT_SIZE;
      attrs.on_host = 0;
      const int64_t dims[1] = {(int64_t)bytes};
      tensor = TF_AllocateTemp(ctx, TF_UINT8, dims, 1, &attrs, st);
      const bool ok = TF_GetCode(st) == TF_OK && tensor != nullptr;
      TF_DeleteStatus(st);
      if (ok) {
        ptr = TF_TensorData(tensor);
        return 0;
      }
      if (tensor) TF_DeleteTensor(tensor);
      tensor = nullptr;  // out of TensorFlow's memory: try the pool
    }
    return cudaMallocAsync(&ptr, bytes, stream);
  }
  ~Scratch() {
    if (tensor) {
      cudaStreamSynchronize(stream);  // already done unless a launch failed midway
      TF_DeleteTensor(tensor);
    } else if (ptr) {
      cudaFreeAsync(ptr, stream);
    }
  }
};

bool finish(TF_OpKernelContext* ctx, Kernel* k, int code) {
  if (code == 0) code = cudaStreamSynchronize(k->stream);
  if (code != 0) fail(ctx, TF_INTERNAL, fa_error_string(code));
  return code == 0;
}

TF_Tensor* allocate(TF_OpKernelContext* ctx, int index, const std::vector<int64_t>& dims, TF_Status* st) {
  size_t n = 1;
  for (int64_t d : dims) n *= (size_t)d;
  return TF_AllocateOutput(ctx, index, TF_FLOAT, dims.data(), (int)dims.size(), n * sizeof(float), st);
}

void computeForward(void* kernel, TF_OpKernelContext* ctx) {
  auto* k = static_cast<Kernel*>(kernel);
  TF_Status* st = TF_NewStatus();
  Inputs in;
  fa_params p;
  if (!in.fetch(ctx, kForwardInputs, st)) { TF_OpKernelContext_Failure(ctx, st); TF_DeleteStatus(st); return; }
  const std::string err = describe(in, k->attrs, &p);
  if (!err.empty()) { fail(ctx, TF_INVALID_ARGUMENT, err); TF_DeleteStatus(st); return; }
  // out [B, Nq, H, Dv] and logsumexp [B, H, Nq] (packed: B = 1, Nq = totalQ), from q's shape.
  const auto q = in.shape(kQ);
  TF_Tensor* out = allocate(ctx, 0, {q[0], q[1], q[2], p.head_dim_v}, st);
  TF_Tensor* lse = TF_GetCode(st) == TF_OK ? allocate(ctx, 1, {q[0], q[2], q[1]}, st) : nullptr;
  if (TF_GetCode(st) != TF_OK) {
    TF_OpKernelContext_Failure(ctx, st);
  } else if (p.rows_q == 0) {
    // No query rows: nothing to compute or write.
  } else if (prepareStream(ctx, k, in.f(kQ))) {
    Scratch ws;
    const size_t front = rangesBytes(p);
    int code = ws.acquire(ctx, front + fa_forward_workspace_size(&p), k->stream);
    if (code == 0) code = copyRanges(in, &p, ws.ptr, k->stream);
    if (code == 0)
      code = fa_forward(&p, in.f(kQ), in.f(kK), in.f(kV), static_cast<float*>(TF_TensorData(out)),
                        static_cast<float*>(TF_TensorData(lse)),
                        ws.ptr ? static_cast<char*>(ws.ptr) + front : nullptr, k->stream);
    finish(ctx, k, code);
  }
  if (out) TF_DeleteTensor(out);
  if (lse) TF_DeleteTensor(lse);
  TF_DeleteStatus(st);
}

void computeGrad(void* kernel, TF_OpKernelContext* ctx) {
  auto* k = static_cast<Kernel*>(kernel);
  TF_Status* st = TF_NewStatus();
  Inputs in;
  fa_params p;
  if (!in.fetch(ctx, kGradInputs, st)) { TF_OpKernelContext_Failure(ctx, st); TF_DeleteStatus(st); return; }
  const std::string err = describe(in, k->attrs, &p);
  if (!err.empty()) { fail(ctx, TF_INVALID_ARGUMENT, err); TF_DeleteStatus(st); return; }
  TF_Tensor* grads[3] = {nullptr, nullptr, nullptr};
  for (int i = 0; i < 3 && TF_GetCode(st) == TF_OK; ++i) grads[i] = allocate(ctx, i, in.shape(kQ + i), st);
  if (TF_GetCode(st) != TF_OK) {
    TF_OpKernelContext_Failure(ctx, st);
  } else if (p.rows_q == 0 && p.rows_k == 0) {
    // Empty q and k: nothing to write.
  } else if (prepareStream(ctx, k, in.f(p.rows_q ? kQ : kK))) {
    Scratch ws;
    const size_t front = rangesBytes(p);
    int code = ws.acquire(ctx, front + fa_backward_workspace_size(&p), k->stream);
    if (code == 0) code = copyRanges(in, &p, ws.ptr, k->stream);
    if (code == 0)
      code = fa_backward(&p, in.f(kQ), in.f(kK), in.f(kV), in.f(kOut), in.f(kLse), in.f(kDy),
                         static_cast<float*>(TF_TensorData(grads[0])), static_cast<float*>(TF_TensorData(grads[1])),
                         static_cast<float*>(TF_TensorData(grads[2])),
                         ws.ptr ? static_cast<char*>(ws.ptr) + front : nullptr, k->stream);
    finish(ctx, k, code);
  }
  for (auto* g : grads) if (g) TF_DeleteTensor(g);
  TF_DeleteStatus(st);
}

// ---- registration (runs when TF_LoadLibrary opens this library) ----
#define FA_REQUIRED_SYMBOLS(X)                                                                      \
  X(TF_NewStatus) X(TF_DeleteStatus) X(TF_SetStatus) X(TF_GetCode) X(TF_Message) X(TF_DeleteTensor)  \
  X(TF_NumDims) X(TF_Dim) X(TF_TensorData) X(TF_NewOpDefinitionBuilder) X(TF_RegisterOpDefinition)   \
  X(TF_OpDefinitionBuilderAddAttr) X(TF_OpDefinitionBuilderAddInput) X(TF_OpDefinitionBuilderAddOutput) \
  X(TF_OpDefinitionBuilderSetShapeInferenceFunction) X(TF_NewShapeHandle) X(TF_DeleteShapeHandle)    \
  X(TF_ShapeInferenceContextGetInput) X(TF_ShapeInferenceContextSetOutput)                           \
  X(TF_ShapeInferenceContextWithRank) X(TF_ShapeInferenceContextSubshape)                            \
  X(TF_ShapeInferenceContextConcatenateShapes) X(TF_NewKernelBuilder) X(TF_RegisterKernelBuilder)     \
  X(TF_GetInput) X(TF_AllocateOutput) X(TF_OpKernelContext_Failure) X(TF_OpKernelConstruction_Failure) \
  X(TF_OpKernelConstruction_GetAttrFloat) X(TF_OpKernelConstruction_GetAttrInt64)                    \
  X(TF_OpKernelConstruction_GetAttrBool) X(TF_OpKernelConstruction_GetAttrString)

std::string missingSymbols() {
  std::string missing;
#define FA_CHECK_SYMBOL(name) if (!(name)) missing += std::string(missing.empty() ? "" : ", ") + #name;
  FA_REQUIRED_SYMBOLS(FA_CHECK_SYMBOL)
#undef FA_CHECK_SYMBOL
  return missing;
}

bool registerOp(const char* name, const std::vector<const char*>& inputs,
                const std::vector<const char*>& outputs,
                void (*shapeFn)(TF_ShapeInferenceContext*, TF_Status*),
                void (*compute)(void*, TF_OpKernelContext*), TF_Status* st) {
  TF_OpDefinitionBuilder* b = TF_NewOpDefinitionBuilder(name);
  for (const char* i : inputs) TF_OpDefinitionBuilderAddInput(b, i);
  for (const char* o : outputs) TF_OpDefinitionBuilderAddOutput(b, o);
  for (const char* a : kAttrSpecs) TF_OpDefinitionBuilderAddAttr(b, a);
  TF_OpDefinitionBuilderSetShapeInferenceFunction(b, shapeFn);
  TF_RegisterOpDefinition(b, st);
  if (TF_GetCode(st) != TF_OK) return false;
  TF_KernelBuilder* kb = TF_NewKernelBuilder(name, "GPU", createKernel, compute, deleteKernel);
  TF_RegisterKernelBuilder((std::string(name) + "_GPU").c_str(), kb, st);
  return TF_GetCode(st) == TF_OK;
}

void registerAll() {
  const std::string missing = missingSymbols();
  if (!missing.empty()) {
    registrationError = "this TensorFlow lacks C API functions: " + missing;
    return;
  }
  TF_Status* st = TF_NewStatus();
  const std::vector<const char*> fwdInputs = {"q: float", "k: float", "v: float", "alibi_slopes: float", "mask: bool",
                                              "seq_ranges_q: int32", "seq_ranges_k: int32"};
  std::vector<const char*> gradInputs = fwdInputs;
  gradInputs.insert(gradInputs.end(), {"out: float", "logsumexp: float", "dy: float"});
  if (!registerOp("FlashAttention", fwdInputs, {"out: float", "logsumexp: float"}, forwardShapes,
                  computeForward, st) ||
      !registerOp("FlashAttentionGrad", gradInputs, {"dq: float", "dk: float", "dv: float"}, gradShapes,
                  computeGrad, st)) {
    registrationError = std::string("registration failed: ") + TF_Message(st);
  }
  TF_DeleteStatus(st);
}

struct Registrar {
  Registrar() { registerAll(); }
} registrar;

}  // namespace

// Queried by the loader after TF_LoadLibrary: NULL when the ops are registered, else why not.
extern "C" __attribute__((visibility("default"))) const char* fa_tf_registration_error() {
  return registrationError.empty() ? nullptr : registrationError.c_str();
}

// Number of CUDA devices this library's runtime sees (0 when there is no usable driver).
extern "C" __attribute__((visibility("default"))) int fa_tf_cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
  return n;
}
