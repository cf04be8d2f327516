// Arch -> variant -> loaded function -> launch. The only code that picks a kernel.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "kernel_table.h"

namespace fusedops {

// The largest M, N or K the CUDA kernels take: they index in int32 and round each extent up to whole tiles (at most
// 1024 wide: aot/manifest.py MAX_TILE_EXTENT) or whole k-step sets, so an extent plus that rounding must stay below
// 2^31. 2^31 - 4096 leaves room for every variant.
constexpr int64_t kMaxKernelExtent = (int64_t{1} << 31) - 4096;

// The arch whose binaries serve a device of this compute capability (89 for 8.9): the exact arch,
// else the nearest lower arch of the same major; FUSEDOPS_FORCE_ARCH overrides (then PTX is used).
// Throws a torch error listing the archs this build holds when none fits.
int arch_for_capability(int capability);

// Comma-separated archs in this build, e.g. "sm_89, sm_90".
std::string built_archs();

// True when the call meets every assumption of the "aligned" layout (see aot/spec.py LAYOUTS).
bool is_aligned_call(const LaunchArgs& a);

// "<variant name> (cubin|ptx)" of this thread's latest launch, "" before any: lets tests see dispatch.
std::string last_launch();

// How many split-K tile-counter buffers (one per stream that ran a split-K variant) are kept now: lets tests see the
// bound hold.
int64_t tile_counter_buffers();

// The variant a call runs on this arch: the first rule of (arch, op, precision, layout) whose bounds hold, except that
// a variant whose GEMM is cuBLAS's gives way to the fallback rule's where cuBLAS cannot take the call (fp32 'ieee'
// while torch lets cuBLAS run fp32 in TF32; operands of 2^31 elements or more).
const Variant& select_variant(int arch, Op op, Precision precision, Layout layout, int64_t M, int64_t N, int64_t K);

// select_variant by the names aot/spec.py gives arch, op, precision and layout: the one rule matcher the tests, the
// tuner and the probe ask (torch.ops.fusedops._select_variant), so none keeps a copy of the dispatch logic.
std::string select_variant_name(int64_t arch, const std::string& op, const std::string& precision,
                                const std::string& layout, int64_t M, int64_t N, int64_t K);

// Picks the variant for this device and shape and launches it on the current stream of x's device.
// x [M, K], weight [N, K] and y [M, N] are the tensors behind args.x_ptr, w_ptr and y_ptr: variants that read an
// fp16 copy of the weight make that copy here, and cuBLAS-GEMM variants have at::mm write x @ W^T into y first.
void launch_fused_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor y, Op op,
                         Precision precision, const LaunchArgs& args);

}  // namespace fusedops
