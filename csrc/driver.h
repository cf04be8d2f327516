// The CUDA driver API, reached lazily (dlopen of libcuda.so.1 on first GPU use), so the library
// loads and its CPU path works on machines with no driver at all.
#pragma once
#include <cuda.h>

namespace fusedops {

struct DriverApi {
  decltype(&::cuGetErrorName) cuGetErrorName;
  decltype(&::cuGetErrorString) cuGetErrorString;
  decltype(&::cuCtxGetCurrent) cuCtxGetCurrent;
  decltype(&::cuCtxSetCurrent) cuCtxSetCurrent;
  decltype(&::cuDevicePrimaryCtxRetain) cuDevicePrimaryCtxRetain;
  decltype(&::cuDeviceGet) cuDeviceGet;
  decltype(&::cuDeviceGetAttribute) cuDeviceGetAttribute;
  decltype(&::cuModuleLoadData) cuModuleLoadData;
  decltype(&::cuModuleGetFunction) cuModuleGetFunction;
  decltype(&::cuFuncSetAttribute) cuFuncSetAttribute;
  decltype(&::cuLaunchKernel) cuLaunchKernel;
  decltype(&::cuOccupancyMaxActiveBlocksPerMultiprocessor) cuOccupancyMaxActiveBlocksPerMultiprocessor;
  decltype(&::cuStreamIsCapturing) cuStreamIsCapturing;
};

// Loads the driver once (thread-safe); throws a torch error if it cannot.
const DriverApi& driver();

// Throws a torch error naming `what` and the driver's error if `result` is not CUDA_SUCCESS.
void check_driver(CUresult result, const char* what);

}  // namespace fusedops
