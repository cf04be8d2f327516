// Arch -> variant -> loaded function -> launch. The only code that picks a kernel.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "kernel_table.h"

namespace fusedops {

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

// Picks the variant for this device and shape and launches it on the current stream of x's device.
// `weight` is the tensor behind args.w_ptr: variants that read an fp16 copy of it make that copy here.
void launch_fused_linear(const at::Tensor& x, const at::Tensor& weight, Op op, Precision precision,
                         const LaunchArgs& args);

}  // namespace fusedops
