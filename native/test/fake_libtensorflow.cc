// A stand-in libtensorflow.so.2 for testing the loader and the op library's registration where
// TensorFlow cannot be installed: it implements the C API functions the op library binds to,
// records op definitions and kernel registrations, and runs registered shape functions on
// given input shapes. Kernels are never run through it (their compute functions abort).
// Built and used by test/tensorflow_backend.test.ts; never shipped.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
struct TF_KernelBuilder { std::string op, device; };
}

namespace {
std::vector<TF_OpDefinitionBuilder> ops;
std::vector<TF_KernelBuilder> kernels;
std::string json;

std::string quoteList(const std::vector<std::string>& v) {
  std::string r = "[";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ",\"" : "\"") + v[i] + "\"";
  return r + "]";
}
[[noreturn]] void notInFake(const char* fn) {
  std::fprintf(stderr, "fake libtensorflow: %s is not implemented\n", fn);
  std::abort();
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
FAKE_EXPORT TF_KernelBuilder* TF_NewKernelBuilder(const char* op, const char* device, void* (*)(void*),
                                                  void (*)(void*, void*), void (*)(void*)) {
  return new TF_KernelBuilder{op, device};
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

// Functions that only kernels call: present (so registration finds them), never run here.
FAKE_EXPORT void TF_DeleteTensor(void*) { notInFake("TF_DeleteTensor"); }
FAKE_EXPORT int TF_NumDims(const void*) { notInFake("TF_NumDims"); }
FAKE_EXPORT int64_t TF_Dim(const void*, int) { notInFake("TF_Dim"); }
FAKE_EXPORT void* TF_TensorData(const void*) { notInFake("TF_TensorData"); }
FAKE_EXPORT int TF_NumInputs(void*) { notInFake("TF_NumInputs"); }
FAKE_EXPORT void TF_GetInput(void*, int, void**, TF_Status*) { notInFake("TF_GetInput"); }
FAKE_EXPORT void* TF_AllocateOutput(void*, int, int, const int64_t*, int, size_t, TF_Status*) { notInFake("TF_AllocateOutput"); }
FAKE_EXPORT void TF_OpKernelContext_Failure(void*, TF_Status*) { notInFake("TF_OpKernelContext_Failure"); }
FAKE_EXPORT void TF_OpKernelConstruction_Failure(void*, TF_Status*) { notInFake("TF_OpKernelConstruction_Failure"); }
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrFloat(void*, const char*, float*, TF_Status*) { notInFake("GetAttrFloat"); }
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrInt64(void*, const char*, int64_t*, TF_Status*) { notInFake("GetAttrInt64"); }
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrBool(void*, const char*, unsigned char*, TF_Status*) { notInFake("GetAttrBool"); }
FAKE_EXPORT void TF_OpKernelConstruction_GetAttrString(void*, const char*, char*, size_t, TF_Status*) { notInFake("GetAttrString"); }

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
