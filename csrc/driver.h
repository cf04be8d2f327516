// The CUDA driver API, reached lazily (dlopen of libcuda.so.1 on first GPU use), so the library
// loads and its CPU path works on machines with no driver at all.
#pragma once
#include <cuda.h>

#include <string>

namespace fusedops {

struct DriverApi {
  decltype(&::cuGetErrorName) cuGetErrorName;
  decltype(&::cuGetErrorString) cuGetErrorString;
  decltype(&::cuCtxGetCurrent) cuCtxGetCurrent;
  decltype(&::cuCtxSetCurrent) cuCtxSetCurrent;
  decltype(&::cuCtxPushCurrent) cuCtxPushCurrent;
  decltype(&::cuCtxPopCurrent) cuCtxPopCurrent;
  decltype(&::cuDevicePrimaryCtxRetain) cuDevicePrimaryCtxRetain;
  decltype(&::cuDeviceGet) cuDeviceGet;
  decltype(&::cuDeviceGetCount) cuDeviceGetCount;
  decltype(&::cuDeviceGetAttribute) cuDeviceGetAttribute;
  decltype(&::cuModuleLoadData) cuModuleLoadData;
  decltype(&::cuModuleUnload) cuModuleUnload;
  decltype(&::cuModuleGetFunction) cuModuleGetFunction;
  decltype(&::cuFuncSetAttribute) cuFuncSetAttribute;
  decltype(&::cuLaunchKernel) cuLaunchKernel;
  decltype(&::cuOccupancyMaxActiveBlocksPerMultiprocessor) cuOccupancyMaxActiveBlocksPerMultiprocessor;
  decltype(&::cuStreamIsCapturing) cuStreamIsCapturing;
  decltype(&::cuThreadExchangeStreamCaptureMode) cuThreadExchangeStreamCaptureMode;
};

// Loads the driver once (thread-safe); throws a torch error if it cannot.
const DriverApi& driver();

// "fusedops: <what> failed: <error name> (<description>)".
std::string driver_error(CUresult result, const char* what);

// Throws a torch error naming `what` and the driver's error if `result` is not CUDA_SUCCESS.
void check_driver(CUresult result, const char* what);

}  // namespace fusedops
