// The C ABI of kernels/cuda/flash_attention.h with no kernels behind it, so that tests can
// build the op library with a plain C++ compiler in seconds (the registration and loading
// paths under test never launch a kernel). Every call reports that the kernels are absent.
#include "flash_attention.h"

extern "C" {
size_t fa_forward_workspace_size(const fa_params*) { return 0; }
int fa_forward(const fa_params*, const float*, const float*, const float*, float*, float*, void*, void*) { return FA_ERR_BAD_ARGUMENT; }
size_t fa_backward_workspace_size(const fa_params*) { return 0; }
int fa_backward(const fa_params*, const float*, const float*, const float*, const float*, const float*,
                const float*, float*, float*, float*, void*, void*) { return FA_ERR_BAD_ARGUMENT; }
const char* fa_error_string(int) { return "test build of the op library: no CUDA kernels linked"; }
}
