// The shapes of the generated tables (build/aot/fusedops_kernels.cpp, written by aot/build.py, which names every
// field it fills: {.name = ..., .arch = ...}; a field added here must be filled there, in declaration order).
#pragma once
#include <cstddef>
#include <cstdint>

#include "driver.h"
#include "fusedops_spec.h"  // generated: enum class Op / Precision / Layout from aot/spec.py

namespace fusedops {

// One launch's runtime arguments. Field names are the kernel's argument names: each generated
// launcher passes exactly the fields its compiled variant kept (constexpr-specialised ones drop out).
struct LaunchArgs {
  CUdeviceptr x_ptr, w_ptr, y_ptr;
  CUdeviceptr bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr;
  int32_t M, N, K;
  int64_t stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn;
  int32_t has_bias, has_gamma, has_beta;
  float eps;
  int32_t num_sms;             // persistent kernels: programs launched
  CUdeviceptr partials_ptr;    // split-K kernels: fp32 [split_k, M, N] workspace
  CUdeviceptr tile_counters_ptr;  // split-K kernels: int32 [tiles], zero on entry (the kernel leaves it zero)
  CUdeviceptr global_scratch;  // kernels with scratch_bytes > 0: grid * scratch_bytes, aligned
};

using LaunchFn = CUresult (*)(const DriverApi&, CUfunction, CUstream, unsigned grid, const LaunchArgs&);

struct Variant {
  const char* name;
  int arch;  // 89 = sm_89
  Op op;
  Precision precision;
  Layout layout;
  int block_m, block_n, block_k, group_m, num_warps, num_stages;
  bool persistent;        // grid = min(tiles, SMs); programs loop over tiles
  bool cublas_gemm;       // cuBLAS (at::mm) writes x @ W^T into y first; the kernel applies the epilogue in place
  bool weight_fp16;       // the launcher passes the weight rounded to fp16 (aot/spec.py LAUNCHER_KNOBS)
  int split_k;            // programs per output tile, each over a slice of K (grid = tiles x split_k)
  unsigned shared_bytes;  // dynamic shared memory per block
  unsigned scratch_bytes, scratch_align;  // global scratch per program (TMA descriptors built on device)
  const char* entry;      // kernel symbol inside the module
  const unsigned char* cubin;
  size_t cubin_size;
  const char* ptx;  // NUL-terminated
  LaunchFn launch;
};

// Tile-config choice: for (arch, op, precision, layout) the first rule whose bounds hold wins. A fallback rule (one
// per arch, op and precision, never cuBLAS) serves calls that the cuBLAS-GEMM variant a rule names cannot take.
struct Rule {
  int arch;
  Op op;
  Precision precision;
  Layout layout;
  int64_t max_m, max_n, max_k;  // -1: unbounded
  bool fallback;
  int variant;
};

extern const Variant kVariants[];
extern const size_t kNumVariants;
extern const Rule kRules[];
extern const size_t kNumRules;
extern const char* const kManifestJson;

}  // namespace fusedops
