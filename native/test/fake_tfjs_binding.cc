// Stands in for tfjs-node's binding in tests: a Node addon linked against libtensorflow.so.2, so
// that requiring it loads that library the way tfjs-node-gpu does (as a dependency of an addon
// that Node opens RTLD_LOCAL). Its functions read the fake's registry (fake_libtensorflow.cc).
#include <node_api.h>

#include <cstdint>
#include <string>
#include <vector>

extern "C" const char* fake_tf_registry_json();
extern "C" const char* fake_tf_infer(const char* op, const int64_t* dims, const int* ranks, int n);

namespace {
napi_value str(napi_env env, const char* s) {
  napi_value v;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

napi_value Registry(napi_env env, napi_callback_info) { return str(env, fake_tf_registry_json()); }

// infer(opName, [[dims...], ...]) -> JSON string of the output shapes, or "error: ...".
napi_value Infer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  char op[64] = {0};
  size_t len = 0;
  napi_get_value_string_utf8(env, argv[0], op, sizeof(op), &len);
  uint32_t n = 0;
  napi_get_array_length(env, argv[1], &n);
  std::vector<int64_t> dims;
  std::vector<int> ranks;
  for (uint32_t i = 0; i < n; ++i) {
    napi_value shape;
    napi_get_element(env, argv[1], i, &shape);
    uint32_t r = 0;
    napi_get_array_length(env, shape, &r);
    ranks.push_back((int)r);
    for (uint32_t d = 0; d < r; ++d) {
      napi_value x;
      napi_get_element(env, shape, d, &x);
      int64_t v = 0;
      napi_get_value_int64(env, x, &v);
      dims.push_back(v);
    }
  }
  return str(env, fake_tf_infer(op, dims.data(), ranks.data(), (int)n));
}
}  // namespace

NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "registry", NAPI_AUTO_LENGTH, Registry, nullptr, &f);
  napi_set_named_property(env, exports, "registry", f);
  napi_create_function(env, "infer", NAPI_AUTO_LENGTH, Infer, nullptr, &f);
  napi_set_named_property(env, exports, "infer", f);
  return exports;
}
