// torch.ops.fusedops: schemas (one TORCH_LIBRARY block), input checks shared by every backend,
// and the CPU (ATen reference), Meta (shapes only) and CUDA (AOT Triton kernels) implementations.
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/accumulate.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "dispatch.h"

#ifndef FUSEDOPS_VERSION
#define FUSEDOPS_VERSION "unknown"
#endif
#ifndef FUSEDOPS_TORCH_VERSION
#define FUSEDOPS_TORCH_VERSION "unknown"
#endif

namespace fusedops {
namespace {

using OptTensor = c10::optional<at::Tensor>;

// The per-call precision names; "auto" follows torch's float32 matmul setting like F.linear.
const char* const kPrecisionHelp = "'auto', 'ieee', 'tf32' or 'fp16'";

// Checks and shapes go through sym_sizes so the Meta kernels trace symbolic (dynamic) sizes too.
std::string shape_str(const at::Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t i = 0; i < t.dim(); ++i) out << (i ? ", " : "") << t.sym_size(i);
  out << "]";
  return out.str();
}

// Everything an op call carries, checked once for all backends.
struct Call {
  const char* op_name;
  Op op;
  const at::Tensor& x;
  const at::Tensor& weight;
  const OptTensor& bias;
  const OptTensor& running_mean;  // present only for linear_bn_gelu_relu
  const OptTensor& running_var;
  const OptTensor& bn_weight;
  const OptTensor& bn_bias;
  double eps;
  c10::string_view precision;
};

void check_vector(const Call& c, const char* name, const OptTensor& t, const c10::SymInt& n) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->defined(), c.op_name, ": argument '", name, "' must be a tensor; got None");
  TORCH_CHECK(t->dim() == 1 && t->sym_size(0) == n, c.op_name, ": argument '", name, "' must be a 1-D tensor of size N = ",
              n, " (weight.size(0)); got shape ", shape_str(*t));
  TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == c.x.scalar_type(), c.op_name, ": argument '",
              name, "' must be float32 or x's dtype (", c.x.scalar_type(), "); got ", t->scalar_type());
  TORCH_CHECK(t->device() == c.x.device(), c.op_name, ": argument '", name, "' is on ", t->device(),
              " but x is on ", c.x.device(), "; all tensors must be on one device");
}

void check_call(const Call& c) {
  const at::Tensor& x = c.x;
  const at::Tensor& w = c.weight;
  // (a Python None where the schema says Tensor arrives as an undefined tensor)
  TORCH_CHECK(x.defined(), c.op_name, ": argument 'x' must be a tensor; got None");
  TORCH_CHECK(w.defined(), c.op_name, ": argument 'weight' must be a tensor; got None");
  TORCH_CHECK(x.dim() >= 1, c.op_name, ": argument 'x' must have shape [..., K] (at least 1-D); got a 0-D tensor");
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              c.op_name, ": argument 'x' must be float16, bfloat16 or float32; got ", x.scalar_type());
  TORCH_CHECK(w.dim() == 2, c.op_name, ": argument 'weight' must be 2-D [N, K] as nn.Linear stores it; got shape ",
              shape_str(w));
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), c.op_name, ": argument 'weight' must have x's dtype (",
              x.scalar_type(), "); got ", w.scalar_type());
  TORCH_CHECK(w.device() == x.device(), c.op_name, ": argument 'weight' is on ", w.device(), " but x is on ",
              x.device(), "; all tensors must be on one device");
  TORCH_CHECK(w.sym_size(1) == x.sym_size(-1), c.op_name,
              ": argument 'weight' must be [N, K] with K = x.size(-1) = ", x.sym_size(-1), "; got shape ",
              shape_str(w));
  const c10::SymInt n = w.sym_size(0);
  check_vector(c, "bias", c.bias, n);
  if (c.op == Op::linear_bn_gelu_relu) {
    TORCH_CHECK(c.running_mean.has_value() && c.running_var.has_value(), c.op_name,
                ": running_mean and running_var are required");
    check_vector(c, "running_mean", c.running_mean, n);
    check_vector(c, "running_var", c.running_var, n);
    check_vector(c, "bn_weight", c.bn_weight, n);
    check_vector(c, "bn_bias", c.bn_bias, n);
    TORCH_CHECK(c.eps >= 0, c.op_name, ": argument 'eps' must be >= 0; got ", c.eps);
  }
  TORCH_CHECK(c.precision == "auto" || c.precision == "ieee" || c.precision == "tf32" || c.precision == "fp16",
              c.op_name, ": argument 'precision' must be ", kPrecisionHelp, "; got '", std::string(c.precision), "'");
}

std::vector<c10::SymInt> output_shape(const Call& c) {
  std::vector<c10::SymInt> shape(c.x.sym_sizes().begin(), c.x.sym_sizes().end() - 1);
  shape.push_back(c.weight.sym_size(0));
  return shape;
}

// The kernel flavour a call runs: fp16/bf16 inputs have one; float32 follows the request.
Precision resolve_precision(const Call& c) {
  switch (c.x.scalar_type()) {
    case at::kHalf: return Precision::fp16;
    case at::kBFloat16: return Precision::bf16;
    default: break;
  }
  if (c.precision == "ieee") return Precision::fp32_ieee;
  if (c.precision == "tf32") return Precision::fp32_tf32;
  if (c.precision == "fp16") return Precision::fp32_fp16;
  // "auto": like F.linear on CUDA, TF32 only where torch allows it for cuBLAS ('high'/'medium').
  return at::globalContext().allowTF32CuBLAS() ? Precision::fp32_tf32 : Precision::fp32_ieee;
}

at::Tensor run_meta(const Call& c) {
  check_call(c);
  return at::empty_symint(output_shape(c), c.x.options());
}

// Reference from ATen ops, in fp32, rounded to x's dtype at the end (the kernels' contract).
at::Tensor run_cpu(const Call& c) {
  check_call(c);
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // see run_cuda
  auto f32 = [](const OptTensor& t) -> OptTensor { return t.has_value() ? OptTensor(t->to(at::kFloat)) : t; };
  const int64_t n = c.weight.size(0);
  at::Tensor y = at::linear(c.x.to(at::kFloat), c.weight.to(at::kFloat), f32(c.bias));
  if (y.numel() == 0) return y.to(c.x.scalar_type());  // (no rows, or N = 0: nothing for BatchNorm to reshape)
  if (c.op == Op::linear_bn_gelu_relu) {
    y = at::batch_norm(y.reshape({-1, n}), f32(c.bn_weight), f32(c.bn_bias), f32(c.running_mean),
                       f32(c.running_var), /*training=*/false, /*momentum=*/0.0, c.eps, /*cudnn_enabled=*/false)
            .reshape_symint(output_shape(c));
    y = at::gelu(y, "none");
  }
  return at::relu(y).to(c.x.scalar_type());
}

at::Tensor run_cuda(const Call& c) {
  check_call(c);
  // This op has no autograd kernel (torch's fallback passes parameters that require grad straight through), so the
  // ATen calls below must not see autograd either: at::mm_out would refuse an out= with such inputs.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t K = c.x.size(-1);
  const int64_t N = c.weight.size(0);
  const int64_t M = c10::multiply_integers(c.x.sizes().begin(), c.x.sizes().end() - 1);
  // before allocating: an output too large for the kernels must fail with this message, not out of memory
  TORCH_CHECK(M <= kMaxKernelExtent && N <= kMaxKernelExtent && K <= kMaxKernelExtent, c.op_name,
              ": M (rows of x), N and K must each be at most 2^31 - 4096 = ", kMaxKernelExtent,
              " for the CUDA kernels; got M = ", M, ", N = ", N, ", K = ", K);
  at::Tensor y = at::empty_symint(output_shape(c), c.x.options());
  if (y.numel() == 0) return y;
  c10::cuda::CUDAGuard guard(c.x.device());

  const at::Tensor x2 = c.x.reshape({M, K});  // a view whenever the leading dims allow one
  // The epilogue reads fp32 vectors; these are N elements, converted only when given in x's dtype.
  auto f32 = [](const OptTensor& t) { return t.has_value() ? t->to(at::kFloat).contiguous() : at::Tensor(); };
  const at::Tensor bias = f32(c.bias), mean = f32(c.running_mean), var = f32(c.running_var);
  const at::Tensor gamma = f32(c.bn_weight), beta = f32(c.bn_bias);
  auto ptr = [](const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<CUdeviceptr>(t.data_ptr()) : CUdeviceptr{0};
  };

  LaunchArgs a{};
  a.x_ptr = ptr(x2);
  a.w_ptr = ptr(c.weight);
  a.y_ptr = ptr(y);
  a.bias_ptr = ptr(bias);
  a.mean_ptr = ptr(mean);
  a.var_ptr = ptr(var);
  a.gamma_ptr = ptr(gamma);
  a.beta_ptr = ptr(beta);
  a.M = static_cast<int32_t>(M);
  a.N = static_cast<int32_t>(N);
  a.K = static_cast<int32_t>(K);
  a.stride_xm = x2.stride(0);
  a.stride_xk = x2.stride(1);
  a.stride_wn = c.weight.stride(0);
  a.stride_wk = c.weight.stride(1);
  a.stride_ym = N;
  a.stride_yn = 1;
  a.has_bias = bias.defined();
  a.has_gamma = gamma.defined();
  a.has_beta = beta.defined();
  a.eps = static_cast<float>(c.eps);
  launch_fused_linear(x2, c.weight, y.view({M, N}), c.op, resolve_precision(c), a);
  return y;
}

using Backend = at::Tensor (*)(const Call&);

template <Backend run>
at::Tensor linear_relu(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias) {
  const OptTensor none;
  return run({"fusedops.linear_relu", Op::linear_relu, x, weight, bias, none, none, none, none, 0.0, "auto"});
}

template <Backend run>
at::Tensor linear_relu_precision(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                 c10::string_view precision) {
  const OptTensor none;
  return run({"fusedops.linear_relu", Op::linear_relu, x, weight, bias, none, none, none, none, 0.0, precision});
}

template <Backend run>
at::Tensor linear_bn_gelu_relu_precision(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                         const at::Tensor& running_mean, const at::Tensor& running_var,
                                         const OptTensor& bn_weight, const OptTensor& bn_bias, double eps,
                                         c10::string_view precision) {
  const OptTensor mean(running_mean), var(running_var);
  return run({"fusedops.linear_bn_gelu_relu", Op::linear_bn_gelu_relu, x, weight, bias, mean, var, bn_weight,
              bn_bias, eps, precision});
}

template <Backend run>
at::Tensor linear_bn_gelu_relu(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               const OptTensor& bn_weight, const OptTensor& bn_bias, double eps) {
  return linear_bn_gelu_relu_precision<run>(x, weight, bias, running_mean, running_var, bn_weight, bn_bias, eps,
                                            "auto");
}

std::string build_info() {
  return std::string("{\"version\": \"") + FUSEDOPS_VERSION + "\", \"built_with_torch\": \"" +
         FUSEDOPS_TORCH_VERSION + "\", \"manifest\": " + kManifestJson + "}";
}

int64_t arch_for_capability_op(int64_t capability) { return arch_for_capability(static_cast<int>(capability)); }

}  // namespace

TORCH_LIBRARY(fusedops, m) {
  m.def("linear_relu(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_relu.precision(Tensor x, Tensor weight, Tensor? bias, *, str precision) -> Tensor");
  m.def(
      "linear_bn_gelu_relu(Tensor x, Tensor weight, Tensor? bias, Tensor running_mean, Tensor running_var, "
      "Tensor? bn_weight, Tensor? bn_bias, float eps=1e-05) -> Tensor");
  m.def(
      "linear_bn_gelu_relu.precision(Tensor x, Tensor weight, Tensor? bias, Tensor running_mean, "
      "Tensor running_var, Tensor? bn_weight, Tensor? bn_bias, float eps=1e-05, *, str precision) -> Tensor");
  // Introspection for `python -m fusedops info` and the tests: the manifest compiled into this binary.
  m.def("_build_info() -> str", &build_info);
  m.def("_arch_for_capability(int capability) -> int", &arch_for_capability_op);
  m.def("_last_launch() -> str", &last_launch);
  m.def("_tile_counter_buffers() -> int", &tile_counter_buffers);
  m.def("_select_variant(int arch, str op, str precision, str layout, int M, int N, int K) -> str",
        &select_variant_name);
}

#define FUSEDOPS_IMPL_BACKEND(DispatchKey, run)                                   \
  TORCH_LIBRARY_IMPL(fusedops, DispatchKey, m) {                                  \
    m.impl("linear_relu", &linear_relu<run>);                                     \
    m.impl("linear_relu.precision", &linear_relu_precision<run>);                 \
    m.impl("linear_bn_gelu_relu", &linear_bn_gelu_relu<run>);                     \
    m.impl("linear_bn_gelu_relu.precision", &linear_bn_gelu_relu_precision<run>); \
  }

FUSEDOPS_IMPL_BACKEND(CPU, run_cpu)
FUSEDOPS_IMPL_BACKEND(Meta, run_meta)
FUSEDOPS_IMPL_BACKEND(CUDA, run_cuda)

}  // namespace fusedops
