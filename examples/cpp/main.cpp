// fusedops_client: runs a model that calls torch.ops.fusedops.* from C++ (libtorch only: no Python, no
// Triton). The fusedops extension library is dlopen-ed at run time, which registers the ops with the
// dispatcher before the model is loaded. The model is either TorchScript (torch.jit.save, any other
// file name) or an AOTInductor package (torch._inductor.aoti_compile_and_package, a .pt2 file; it runs
// on the device it was compiled for).
//
//   fusedops_client <fusedops/_C.abi3.so> <model.pt|model.pt2> <dim>... [--device cpu|cuda]
//
// The input has shape <dim>... and values sin(0.37 * i) for i = 0, 1, ... in row-major order
// (float32), so a Python check can build the same tensor. Prints the output's shape, sum and
// absolute sum.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

namespace {

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s <fusedops extension .so> <model.pt> <dim>... [--device cpu|cuda]\n", argv0);
  return 2;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool op_registered(const char* name) {
  return c10::Dispatcher::singleton().findSchema({name, ""}).has_value();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string device_name = "cpu";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--device" && i + 1 < argc) {
      device_name = argv[++i];
    } else if (arg.rfind("--device=", 0) == 0) {
      device_name = arg.substr(9);
    } else if (arg == "-h" || arg == "--help") {
      usage(argv[0]);
      return 0;
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 3) return usage(argv[0]);

  // RTLD_GLOBAL is not needed by the ops themselves, but keeps the library's symbols available to
  // anything loaded later that links against it. The handle stays open for the process lifetime.
  void* handle = dlopen(positional[0].c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (handle == nullptr) {
    std::fprintf(stderr, "error: cannot load %s: %s\n", positional[0].c_str(), dlerror());
    return 1;
  }
  for (const char* op : {"fusedops::linear_relu", "fusedops::linear_bn_gelu_relu"}) {
    if (!op_registered(op)) {
      std::fprintf(stderr, "error: %s did not register %s\n", positional[0].c_str(), op);
      return 1;
    }
  }

  std::vector<int64_t> shape;
  for (size_t i = 2; i < positional.size(); ++i) {
    char* end = nullptr;
    const long long dim = std::strtoll(positional[i].c_str(), &end, 10);
    if (end == positional[i].c_str() || *end != '\0' || dim < 0) {
      std::fprintf(stderr, "error: bad dimension '%s'\n", positional[i].c_str());
      return 2;
    }
    shape.push_back(dim);
  }

  try {
    const torch::Device device(device_name);
    if (device.is_cuda() && !torch::cuda::is_available()) {
      std::fprintf(stderr, "error: --device %s but no CUDA device is available\n", device_name.c_str());
      return 1;
    }
    c10::InferenceMode inference;
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const at::Tensor x = (torch::arange(numel, torch::kFloat) * 0.37).sin().reshape(shape).to(device);

    at::Tensor y;
    if (ends_with(positional[1], ".pt2")) {
      torch::inductor::AOTIModelPackageLoader package(positional[1]);
      y = package.run({x}).at(0);
    } else {
      torch::jit::Module model = torch::jit::load(positional[1], device);
      model.eval();
      y = model.forward({x}).toTensor();
    }
    y = y.to(torch::kCPU, torch::kDouble);

    std::printf("device %s\n", device.str().c_str());
    std::printf("shape");
    for (int64_t d : y.sizes()) std::printf(" %lld", static_cast<long long>(d));
    std::printf("\nsum %.17g\nabs_sum %.17g\n", y.sum().item<double>(), y.abs().sum().item<double>());
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
