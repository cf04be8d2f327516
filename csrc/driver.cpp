#include "driver.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include <c10/util/Exception.h>

namespace fusedops {
namespace {

template <typename Fn>
void resolve(void* lib, Fn& fn, const char* name) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  TORCH_CHECK(fn != nullptr, "fusedops: the CUDA driver (libcuda.so.1) has no symbol ", name,
              "; the driver is too old for this build");
}

DriverApi load_driver() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(lib != nullptr, "fusedops: cannot load the CUDA driver (libcuda.so.1): ", dlerror());
  DriverApi api{};
// By the name cuda.h maps it to (cuCtxPushCurrent -> cuCtxPushCurrent_v2): the versioned entry point has the
// signature this build was compiled against.
#define FUSEDOPS_SYMBOL_NAME(name) #name
#define FUSEDOPS_RESOLVE(name) resolve(lib, api.name, FUSEDOPS_SYMBOL_NAME(name))
  FUSEDOPS_RESOLVE(cuGetErrorName);
  FUSEDOPS_RESOLVE(cuGetErrorString);
  FUSEDOPS_RESOLVE(cuCtxGetCurrent);
  FUSEDOPS_RESOLVE(cuCtxSetCurrent);
  FUSEDOPS_RESOLVE(cuCtxPushCurrent);
  FUSEDOPS_RESOLVE(cuCtxPopCurrent);
  FUSEDOPS_RESOLVE(cuDevicePrimaryCtxRetain);
  FUSEDOPS_RESOLVE(cuDeviceGet);
  FUSEDOPS_RESOLVE(cuDeviceGetCount);
  FUSEDOPS_RESOLVE(cuDeviceGetAttribute);
  FUSEDOPS_RESOLVE(cuModuleLoadData);
  FUSEDOPS_RESOLVE(cuModuleUnload);
  FUSEDOPS_RESOLVE(cuModuleGetFunction);
  FUSEDOPS_RESOLVE(cuFuncSetAttribute);
  FUSEDOPS_RESOLVE(cuLaunchKernel);
  FUSEDOPS_RESOLVE(cuOccupancyMaxActiveBlocksPerMultiprocessor);
  FUSEDOPS_RESOLVE(cuStreamIsCapturing);
  FUSEDOPS_RESOLVE(cuThreadExchangeStreamCaptureMode);
#undef FUSEDOPS_RESOLVE
#undef FUSEDOPS_SYMBOL_NAME
  return api;
}

}  // namespace

const DriverApi& driver() {
  static const DriverApi api = load_driver();  // C++ guarantees one thread-safe initialisation
  return api;
}

std::string driver_error(CUresult result, const char* what) {
  const char* name = nullptr;
  const char* text = nullptr;
  driver().cuGetErrorName(result, &name);
  driver().cuGetErrorString(result, &text);
  return std::string("fusedops: ") + what + " failed: " + (name ? name : "unknown CUDA error") + " (" +
         (text ? text : "no description") + ")";
}

void check_driver(CUresult result, const char* what) {
  if (result != CUDA_SUCCESS) TORCH_CHECK(false, driver_error(result, what));
}

}  // namespace fusedops
