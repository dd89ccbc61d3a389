// Node addon (N-API) that loads the FlashAttention op library into the libtensorflow that
// tfjs-node-gpu has already loaded in this process. tfjs-node has no binding for
// TF_LoadLibrary, so we find it ourselves:
//   - Node opens addons RTLD_LOCAL, so libtensorflow's symbols are not globally visible, and the
//     op library's undefined TF_* symbols would not bind. Re-opening the already loaded library
//     with RTLD_NOLOAD | RTLD_GLOBAL promotes it to the global scope without loading anything.
//   - TF_LoadLibrary then dlopens the op library, whose static initializer registers the ops
//     and their GPU kernels with that TensorFlow.
// JavaScript: load(path) -> { loaded: boolean, reason: string | null, cudaDevices: number }.
#include <dlfcn.h>
#include <node_api.h>

#include <string>

namespace {

struct TF_Status;
struct TF_Library;
using NewStatusFn = TF_Status* (*)();
using DeleteStatusFn = void (*)(TF_Status*);
using GetCodeFn = int (*)(const TF_Status*);
using MessageFn = const char* (*)(const TF_Status*);
using LoadLibraryFn = TF_Library* (*)(const char*, TF_Status*);

const char* const kTensorflowNames[] = {"libtensorflow.so.2", "libtensorflow.so"};

struct Result {
  bool loaded = false;
  std::string reason;
  int cudaDevices = 0;
};

Result loadOpLibrary(const std::string& path) {
  Result r;
  void* tf = nullptr;
  for (const char* name : kTensorflowNames) {
    if ((tf = dlopen(name, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) != nullptr) break;
  }
  if (tf == nullptr) {
    r.reason = "libtensorflow is not loaded in this process (import @tensorflow/tfjs-node-gpu before tfjs-flash-attention)";
    return r;
  }
  auto newStatus = reinterpret_cast<NewStatusFn>(dlsym(tf, "TF_NewStatus"));
  auto deleteStatus = reinterpret_cast<DeleteStatusFn>(dlsym(tf, "TF_DeleteStatus"));
  auto getCode = reinterpret_cast<GetCodeFn>(dlsym(tf, "TF_GetCode"));
  auto message = reinterpret_cast<MessageFn>(dlsym(tf, "TF_Message"));
  auto loadLibrary = reinterpret_cast<LoadLibraryFn>(dlsym(tf, "TF_LoadLibrary"));
  if (!newStatus || !deleteStatus || !getCode || !message || !loadLibrary) {
    r.reason = "the loaded libtensorflow does not export TF_LoadLibrary and the TF_Status functions";
    return r;
  }
  TF_Status* status = newStatus();
  loadLibrary(path.c_str(), status);  // the TF_Library handle is kept for the process's lifetime
  if (getCode(status) != 0) {
    r.reason = std::string("TF_LoadLibrary failed: ") + message(status);
    deleteStatus(status);
    return r;
  }
  deleteStatus(status);
  // The op library is open now; ask it whether registration and CUDA are fine.
  void* op = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
  if (op == nullptr) {
    r.reason = "the op library loaded but could not be reopened to query it";
    return r;
  }
  auto registrationError = reinterpret_cast<const char* (*)()>(dlsym(op, "fa_tf_registration_error"));
  auto deviceCount = reinterpret_cast<int (*)()>(dlsym(op, "fa_tf_cuda_device_count"));
  if (!registrationError || !deviceCount) {
    r.reason = "the op library does not export its status functions (stale build?)";
  } else if (const char* err = registrationError()) {
    r.reason = err;
  } else if ((r.cudaDevices = deviceCount()) == 0) {
    r.reason = "no CUDA device is visible to the op library";
  } else {
    r.loaded = true;
  }
  dlclose(op);  // drops only our extra reference
  return r;
}

napi_value throwError(napi_env env, const char* msg) {
  napi_throw_error(env, nullptr, msg);
  return nullptr;
}

napi_value Load(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1)
    return throwError(env, "load(path) expects the op library's path");
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], nullptr, 0, &len) != napi_ok)
    return throwError(env, "load(path): path must be a string");
  std::string path(len, '\0');
  napi_get_value_string_utf8(env, argv[0], &path[0], len + 1, &len);

  const Result r = loadOpLibrary(path);
  napi_value obj, loaded, reason, devices;
  napi_create_object(env, &obj);
  napi_get_boolean(env, r.loaded, &loaded);
  if (r.loaded) napi_get_null(env, &reason);
  else napi_create_string_utf8(env, r.reason.c_str(), r.reason.size(), &reason);
  napi_create_int32(env, r.cudaDevices, &devices);
  napi_set_named_property(env, obj, "loaded", loaded);
  napi_set_named_property(env, obj, "reason", reason);
  napi_set_named_property(env, obj, "cudaDevices", devices);
  return obj;
}

}  // namespace

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "load", NAPI_AUTO_LENGTH, Load, nullptr, &fn);
  napi_set_named_property(env, exports, "load", fn);
  return exports;
}
