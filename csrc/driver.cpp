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
#define FUSEDOPS_RESOLVE(name) resolve(lib, api.name, #name)
  FUSEDOPS_RESOLVE(cuGetErrorName);
  FUSEDOPS_RESOLVE(cuGetErrorString);
  FUSEDOPS_RESOLVE(cuCtxGetCurrent);
  FUSEDOPS_RESOLVE(cuCtxSetCurrent);
  FUSEDOPS_RESOLVE(cuDevicePrimaryCtxRetain);
  FUSEDOPS_RESOLVE(cuDeviceGet);
  FUSEDOPS_RESOLVE(cuDeviceGetAttribute);
  FUSEDOPS_RESOLVE(cuModuleLoadData);
  FUSEDOPS_RESOLVE(cuModuleGetFunction);
  FUSEDOPS_RESOLVE(cuFuncSetAttribute);
  FUSEDOPS_RESOLVE(cuLaunchKernel);
  FUSEDOPS_RESOLVE(cuOccupancyMaxActiveBlocksPerMultiprocessor);
  FUSEDOPS_RESOLVE(cuStreamIsCapturing);
#undef FUSEDOPS_RESOLVE
  return api;
}

}  // namespace

const DriverApi& driver() {
  static const DriverApi api = load_driver();  // C++ guarantees one thread-safe initialisation
  return api;
}

void check_driver(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const char* name = nullptr;
  const char* text = nullptr;
  driver().cuGetErrorName(result, &name);
  driver().cuGetErrorString(result, &text);
  TORCH_CHECK(false, "fusedops: ", what, " failed: ", name ? name : "unknown CUDA error", " (",
              text ? text : "no description", ")");
}

}  // namespace fusedops
