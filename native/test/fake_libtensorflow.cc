// A stand-in libtensorflow.so.2 for testing the loader and the op library's registration where
// TensorFlow cannot be installed: it implements the C API functions the op library binds to,
// records op definitions and kernel registrations, runs registered shape functions on given
// input shapes, and runs a registered kernel on caller-provided (device) buffers, playing
// TensorFlow's part: attributes, TF_GetInput, TF_AllocateOutput (handing out the caller's
// output buffers), failures. kernels/cuda/harness/tf_op_check.py drives that on the GPU.
// Built and used by test/tensorflow_backend.test.ts; never shipped.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

extern "C" {
struct TF_Status { int code = 0; std::string msg; };
struct TF_ShapeHandle { bool known = false; std::vector<int64_t> dims; };
struct TF_ShapeInferenceContext {
  std::vector<TF_ShapeHandle> inputs, outputs;
};
using ShapeFn = void (*)(TF_ShapeInferenceContext*, TF_Status*);
struct TF_OpDefinitionBuilder {
  std::string name;
  std::vector<std::string> inputs, outputs, attrs;
  ShapeFn shapeFn = nullptr;
};
struct TF_OpKernelConstruction;
struct TF_OpKernelContext;
struct TF_KernelBuilder {
  std::string op, device;
  void* (*create)(TF_OpKernelConstruction*);
  void (*compute)(void*, TF_OpKernelContext*);
  void (*destroy)(void*);
};
struct TF_Tensor { std::vector<int64_t> dims; void* data = nullptr; size_t bytes = 0; };
struct FakeAttr { char kind; double f; int64_t i; std::string s; };
struct TF_OpKernelConstruction { std::map<std::string, FakeAttr>* attrs; std::string failure; };
struct TF_OpKernelContext { std::vector<TF_Tensor> inputs, outputs; std::string failure; };
}

namespace {
std::vector<TF_OpDefinitionBuilder> ops;
std::vector<TF_KernelBuilder> kernels;
std::map<std::string, FakeAttr> attrs;
std::string json;

std::string quoteList(const std::vector<std::string>& v) {
  std::string r = "[";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ",\"" : "\"") + v[i] + "\"";
  return r + "]";
}
}  // namespace

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

FAKE_EXPORT TF_Status* TF_NewStatus() { return new TF_Status(); }
FAKE_EXPORT void TF_DeleteStatus(TF_Status* s) { delete s; }
FAKE_EXPORT void TF_SetStatus(TF_Status* s, int code, const char* msg) { s->code = code; s->msg = msg; }
FAKE_EXPORT int TF_GetCode(const TF_Status* s) { return s->code; }
FAKE_EXPORT const char* TF_Message(const TF_Status* s) { return s->msg.c_str(); }

FAKE_EXPORT void* TF_LoadLibrary(const char* path, TF_Status* s) {
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) { s->code = 5; s->msg = dlerror(); }
  return h;
}

FAKE_EXPORT TF_OpDefinitionBuilder* TF_NewOpDefinitionBuilder(const char* name) {
  auto* b = new TF_OpDefinitionBuilder();
  b->name = name;
  return b;
}
FAKE_EXPORT void TF_OpDefinitionBuilderAddAttr(TF_OpDefinitionBuilder* b, const char* s) { b->attrs.push_back(s); }
FAKE_EXPORT void TF_OpDefinitionBuilderAddInput(TF_OpDefinitionBuilder* b, const char* s) { b->inputs.push_back(s); }
FAKE_EXPORT void TF_OpDefinitionBuilderAddOutput(TF_OpDefinitionBuilder* b, const char* s) { b->outputs.push_back(s); }
FAKE_EXPORT void TF_OpDefinitionBuilderSetShapeInferenceFunction(TF_OpDefinitionBuilder* b, ShapeFn f) { b->shapeFn = f; }
FAKE_EXPORT void TF_RegisterOpDefinition(TF_OpDefinitionBuilder* b, TF_Status* s) {
  for (auto& o : ops) if (o.name == b->name) { s->code = 6; s->msg = "op already registered"; delete b; return; }
  ops.push_back(*b);
  delete b;
  s->code = 0;
}
FAKE_EXPORT TF_KernelBuilder* TF_NewKernelBuilder(const char* op, const char* device,
                                                  void* (*create)(TF_OpKernelConstruction*),
                                                  void (*compute)(void*, TF_OpKernelContext*),
                                                  void (*destroy)(void*)) {
  return new TF_KernelBuilder{op, device, create, compute, destroy};
}
FAKE_EXPORT void TF_RegisterKernelBuilder(const char*, TF_KernelBuilder* b, TF_Status* s) {
  kernels.push_back(*b);
  delete b;
  s->code = 0;
}

FAKE_EXPORT TF_ShapeHandle* TF_NewShapeHandle() { return new TF_ShapeHandle(); }
FAKE_EXPORT void TF_DeleteShapeHandle(TF_ShapeHandle* h) { delete h; }
FAKE_EXPORT void TF_ShapeInferenceContextGetInput(TF_ShapeInferenceContext* c, int i, TF_ShapeHandle* h, TF_Status* s) {
  if (i < 0 || i >= (int)c->inputs.size()) { s->code = 11; s->msg = "input out of range"; return; }
  *h = c->inputs[i];
}
FAKE_EXPORT void TF_ShapeInferenceContextSetOutput(TF_ShapeInferenceContext* c, int i, TF_ShapeHandle* h, TF_Status*) {
  if ((int)c->outputs.size() <= i) c->outputs.resize(i + 1);
  c->outputs[i] = *h;
}
FAKE_EXPORT void TF_ShapeInferenceContextWithRank(TF_ShapeInferenceContext*, TF_ShapeHandle* h, int64_t rank,
                                                  TF_ShapeHandle* r, TF_Status* s) {
  if (h->known && (int64_t)h->dims.size() != rank) { s->code = 3; s->msg = "Shape must be rank " + std::to_string(rank); return; }
  *r = *h;
}
FAKE_EXPORT void TF_ShapeInferenceContextSubshape(TF_ShapeInferenceContext*, TF_ShapeHandle* h, int64_t a, int64_t b,
                                                  TF_ShapeHandle* r, TF_Status*) {
  r->known = h->known;
  r->dims.assign(h->dims.begin() + a, h->dims.begin() + b);
}
FAKE_EXPORT void TF_ShapeInferenceContextConcatenateShapes(TF_ShapeInferenceContext*, TF_ShapeHandle* x,
                                                           TF_ShapeHandle* y, TF_ShapeHandle* r, TF_Status*) {
  r->known = x->known && y->known;
  r->dims = x->dims;
  r->dims.insert(r->dims.end(), y->dims.begin(), y->dims.end());
}

// ---- what kernels call ----
FAKE_EXPORT void TF_DeleteTensor(TF_Tensor* t) { delete t; }
FAKE_EXPORT int TF_NumDims(const TF_Tensor* t) { return (int)t->dims.size(); }
FAKE_EXPORT int64_t TF_Dim(const TF_Tensor* t, int i) { return t->dims[i]; }
FAKE_EXPORT void* TF_TensorData(const TF_Tensor* t) { return t->data; }
FAKE_EXPORT int TF_NumInputs(TF_OpKernelContext* c) { return (int)c->inputs.size(); }
FAKE_EXPORT void TF_GetInput(TF_OpKernelContext* c, int i, TF_Tensor** t, TF_Status* s) {
  if (i < 0 || i >= (int)c->inputs.size()) { s->code = 11; s->msg = "input out of range"; return; }
  *t = new TF_Tensor(c->inputs[i]);
  s->code = 0;
}
// Hands out the caller's buffer for output i after checking shape and size.
FAKE_EXPORT TF_Tensor* TF_AllocateOutput(TF_OpKernelContext* c, int i, int, const int64_t* dims, int n,
                                         size_t len, TF_Status* s) {
  if (i < 0 || i >= (int)c->outputs.size()) { s->code = 11; s->msg = "output out of range"; return nullptr; }
  const TF_Tensor& o = c->outputs[i];
  if (std::vector<int64_t>(dims, dims + n) != o.dims || len != o.bytes) {
    s->code = 3; s->msg = "output " + std::to_string(i) + ": kernel asked for another shape or size than the caller's";
    return nullptr;
  }
  s->code = 0;
  return new TF_Tensor(o);
}
FAKE_EXPORT void TF_OpKernelContext_Failure(TF_OpKernelContext* c, TF_Status* s) { c->failure = s->msg; }
FAKE_EXPORT void TF_OpKernelConstruction_Failure(TF_OpKernelConstruction* c, TF_Status* s) { c->failure = s->msg; }

namespace {
const FakeAttr* findAttr(TF_OpKernelConstruction* c, const char* name, char kind, TF_Status* s) {
  auto it = c->attrs->find(name);
  if (it == c->attrs->end() || it->second.kind != kind) {
    s->code = 3; s->msg = std::string("attr '") + name + "' missing or of another type";
    return nullptr;
  }
  s->code = 0;
  return &it->second;
}
}  // namespace

FAKE_EXPORT void TF_OpKernelConstruction_GetAttrFloat(TF_OpKernelConstruction* c, const char* n, float* v, TF_Status* s) {
  if (auto* a = findAttr(c, n, 'f', s)) *v = (float)a->f;
}
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrInt64(TF_OpKernelConstruction* c, const char* n, int64_t* v, TF_Status* s) {
  if (auto* a = findAttr(c, n, 'i', s)) *v = a->i;
}
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrBool(TF_OpKernelConstruction* c, const char* n, unsigned char* v, TF_Status* s) {
  if (auto* a = findAttr(c, n, 'b', s)) *v = a->i != 0;
}
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrString(TF_OpKernelConstruction* c, const char* n, char* v, size_t max,
                                                       TF_Status* s) {
  if (auto* a = findAttr(c, n, 's', s)) { std::strncpy(v, a->s.c_str(), max); }
}

// ---- test hooks ----
// {"ops":[{"name","inputs","outputs","attrs","hasShapeFn"}],"kernels":[{"op","device"}]}
FAKE_EXPORT const char* fake_tf_registry_json() {
  json = "{\"ops\":[";
  for (size_t i = 0; i < ops.size(); ++i) {
    const auto& o = ops[i];
    json += std::string(i ? "," : "") + "{\"name\":\"" + o.name + "\",\"inputs\":" + quoteList(o.inputs) +
            ",\"outputs\":" + quoteList(o.outputs) + ",\"attrs\":" + quoteList(o.attrs) +
            ",\"hasShapeFn\":" + (o.shapeFn ? "true" : "false") + "}";
  }
  json += "],\"kernels\":[";
  for (size_t i = 0; i < kernels.size(); ++i)
    json += std::string(i ? "," : "") + "{\"op\":\"" + kernels[i].op + "\",\"device\":\"" + kernels[i].device + "\"}";
  return (json += "]}").c_str();
}

// Runs op's shape function on rank-n input shapes given as one flat array with their ranks;
// writes the output shapes as JSON ("error: ..." on failure).
FAKE_EXPORT const char* fake_tf_infer(const char* op, const int64_t* dims, const int* ranks, int numInputs) {
  for (auto& o : ops) {
    if (o.name != op) continue;
    TF_ShapeInferenceContext ctx;
    for (int i = 0; i < numInputs; ++i) {
      TF_ShapeHandle h;
      h.known = true;
      h.dims.assign(dims, dims + ranks[i]);
      dims += ranks[i];
      ctx.inputs.push_back(h);
    }
    TF_Status st;
    o.shapeFn(&ctx, &st);
    if (st.code != 0) return (json = "error: " + st.msg).c_str();
    json = "[";
    for (size_t i = 0; i < ctx.outputs.size(); ++i) {
      json += i ? ",[" : "[";
      for (size_t d = 0; d < ctx.outputs[i].dims.size(); ++d)
        json += (d ? "," : "") + std::to_string(ctx.outputs[i].dims[d]);
      json += "]";
    }
    return (json += "]").c_str();
  }
  return (json = "error: no such op").c_str();
}

// Attributes of the next fake_tf_run (TensorFlow would take them from the op's NodeDef).
FAKE_EXPORT void fake_tf_clear_attrs() { attrs.clear(); }
FAKE_EXPORT void fake_tf_attr_float(const char* n, double v) { attrs[n] = FakeAttr{'f', v, 0, ""}; }
FAKE_EXPORT void fake_tf_attr_int(const char* n, int64_t v) { attrs[n] = FakeAttr{'i', 0, v, ""}; }
FAKE_EXPORT void fake_tf_attr_bool(const char* n, int v) { attrs[n] = FakeAttr{'b', 0, v, ""}; }
FAKE_EXPORT void fake_tf_attr_string(const char* n, const char* v) { attrs[n] = FakeAttr{'s', 0, 0, v}; }

// Runs op's registered kernel once: construction with the attributes above, one compute call
// over the given buffers (dims flat, ranks per tensor, byte sizes per tensor), destruction.
// Returns NULL, or the failure the kernel reported.
FAKE_EXPORT const char* fake_tf_run(const char* op, int nIn, void** inData, const int64_t* inDims, const int* inRanks,
                                    const size_t* inBytes, int nOut, void** outData, const int64_t* outDims,
                                    const int* outRanks, const size_t* outBytes) {
  const TF_KernelBuilder* k = nullptr;
  for (auto& kb : kernels) if (kb.op == op) k = &kb;
  if (!k) return (json = "no kernel registered for this op").c_str();
  TF_OpKernelConstruction ctor{&attrs, ""};
  void* instance = k->create(&ctor);
  if (!ctor.failure.empty()) { k->destroy(instance); return (json = ctor.failure).c_str(); }
  TF_OpKernelContext ctx;
  auto fill = [](std::vector<TF_Tensor>& v, int n, void** data, const int64_t* dims, const int* ranks, const size_t* bytes) {
    for (int i = 0; i < n; ++i) {
      TF_Tensor t;
      t.dims.assign(dims, dims + ranks[i]);
      dims += ranks[i];
      t.data = data[i];
      t.bytes = bytes[i];
      v.push_back(t);
    }
  };
  fill(ctx.inputs, nIn, inData, inDims, inRanks, inBytes);
  fill(ctx.outputs, nOut, outData, outDims, outRanks, outBytes);
  k->compute(instance, &ctx);
  k->destroy(instance);
  if (!ctx.failure.empty()) return (json = ctx.failure).c_str();
  return nullptr;
}
