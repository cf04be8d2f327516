#include "dispatch.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>

namespace fusedops {
namespace {

std::set<int> archs_in_build() {
  std::set<int> archs;
  for (size_t i = 0; i < kNumVariants; ++i) archs.insert(kVariants[i].arch);
  return archs;
}

// FUSEDOPS_FORCE_ARCH=89: run that arch's kernels from PTX (JIT by the driver), e.g. to test the
// sm_89 code path on an sm_90 GPU. 0 when unset.
int forced_arch() {
  static const int forced = [] {
    const char* env = std::getenv("FUSEDOPS_FORCE_ARCH");
    if (env == nullptr || *env == '\0') return 0;
    std::string s(env);
    if (s.rfind("sm_", 0) == 0) s = s.substr(3);
    s.erase(std::remove(s.begin(), s.end(), '.'), s.end());
    TORCH_CHECK(!s.empty() && std::all_of(s.begin(), s.end(), ::isdigit),
                "fusedops: FUSEDOPS_FORCE_ARCH must be an arch number such as 89; got '", env, "'");
    return std::stoi(s);
  }();
  return forced;
}

struct DeviceInfo {
  int capability;  // 89 for 8.9
  int sm_count;
};

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  const DriverApi& d = driver();
  CUdevice dev;
  int major = 0, minor = 0, sms = 0;
  check_driver(d.cuDeviceGet(&dev, device), "cuDeviceGet");
  check_driver(d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute");
  check_driver(d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute");
  check_driver(d.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev), "cuDeviceGetAttribute");
  return cache[device] = DeviceInfo{major * 10 + minor, sms};
}

const Variant& select_variant(int arch, Op op, Precision precision, Layout layout, int64_t M, int64_t N,
                              int64_t K) {
  auto within = [](int64_t bound, int64_t value) { return bound < 0 || value <= bound; };
  for (size_t i = 0; i < kNumRules; ++i) {
    const Rule& r = kRules[i];
    if (r.arch == arch && r.op == op && r.precision == precision && r.layout == layout && within(r.max_m, M) &&
        within(r.max_n, N) && within(r.max_k, K))
      return kVariants[r.variant];
  }
  TORCH_CHECK(false, "fusedops: this build has no ", op_name(op), " kernel for precision ",
              precision_name(precision), ", layout ", layout_name(layout), " on sm_", arch);
}

struct LoadedKernel {
  CUfunction fn;
  int blocks_per_sm;  // how many of its blocks one SM holds at once (the driver's occupancy answer)
};

// Loads a variant's module into the device's primary context once; later calls hit the cache.
LoadedKernel load_function(int device, int variant_index, bool from_ptx) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, bool>, LoadedKernel> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(device, variant_index, from_ptx);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;

  const DriverApi& d = driver();
  const Variant& v = kVariants[variant_index];
  CUcontext ctx = nullptr;
  check_driver(d.cuCtxGetCurrent(&ctx), "cuCtxGetCurrent");
  if (ctx == nullptr) {  // torch normally made the primary context current already
    CUdevice dev;
    check_driver(d.cuDeviceGet(&dev, device), "cuDeviceGet");
    check_driver(d.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check_driver(d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  }
  CUmodule module;
  std::string what = std::string("loading ") + (from_ptx ? "PTX" : "cubin") + " of " + v.name;
  check_driver(d.cuModuleLoadData(&module, from_ptx ? static_cast<const void*>(v.ptx) : v.cubin), what.c_str());
  CUfunction fn;
  check_driver(d.cuModuleGetFunction(&fn, module, v.entry), "cuModuleGetFunction");
  if (v.shared_bytes > 48 * 1024) {
    int optin = 0;
    check_driver(d.cuDeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device),
                 "cuDeviceGetAttribute");
    TORCH_CHECK(static_cast<int>(v.shared_bytes) <= optin, "fusedops: kernel ", v.name, " needs ", v.shared_bytes,
                " bytes of shared memory per block; cuda:", device, " allows ", optin);
    check_driver(d.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v.shared_bytes),
                 "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");
  }
  int blocks_per_sm = 0;
  check_driver(d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, fn, v.num_warps * 32, v.shared_bytes),
               "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  TORCH_CHECK(blocks_per_sm > 0, "fusedops: kernel ", v.name, " cannot run on cuda:", device,
              " (the driver reports room for no block of it on one SM)");
  return cache.emplace(key, LoadedKernel{fn, blocks_per_sm}).first->second;
}

// Split-K tile counters. A kernel's last program per tile sets that tile's counter back to 0, so one zeroed buffer
// per (device, stream) serves every later launch on that stream (launches on one stream run one after another):
// no memset per call. A launch being captured into a CUDA graph gets fresh zeroed counters instead (the memset
// becomes part of the graph), since work captured before any of it has run cannot zero a shared buffer.
at::Tensor tile_counters_for(const at::Tensor& like, int64_t tiles, int device, CUstream stream) {
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  check_driver(driver().cuStreamIsCapturing(stream, &capture), "cuStreamIsCapturing");
  const auto options = like.options().dtype(at::kInt);
  if (capture != CU_STREAM_CAPTURE_STATUS_NONE) return at::zeros({tiles}, options);
  static std::mutex mutex;
  // never destroyed: tensors freed during static destruction could outlive the CUDA allocator
  static auto* cache = new std::map<std::tuple<int, CUstream, std::thread::id>, at::Tensor>();
  // the per-thread default stream has one handle but is another stream in each thread
  const std::thread::id thread = stream == CU_STREAM_PER_THREAD ? std::this_thread::get_id() : std::thread::id();
  std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& counters = (*cache)[std::make_tuple(device, stream, thread)];
  if (!counters.defined() || counters.numel() < tiles) {
    // the old buffer goes back to the caching allocator, which reuses it only for work ordered after this launch
    counters = at::zeros({std::max<int64_t>(tiles, 4096)}, options);
  }
  return counters;
}

thread_local std::string last_launch_description;

bool divisible16(int64_t v) { return v % 16 == 0; }
bool aligned16(CUdeviceptr p) { return p % 16 == 0; }

}  // namespace

std::string last_launch() { return last_launch_description; }

std::string built_archs() {
  std::string out;
  for (int a : archs_in_build()) out += (out.empty() ? "sm_" : ", sm_") + std::to_string(a);
  return out;
}

int arch_for_capability(int capability) {
  const std::set<int> archs = archs_in_build();
  if (int forced = forced_arch()) {
    TORCH_CHECK(archs.count(forced), "fusedops: FUSEDOPS_FORCE_ARCH=", forced, " but this build holds ",
                built_archs());
    TORCH_CHECK(forced <= capability, "fusedops: FUSEDOPS_FORCE_ARCH=", forced, " cannot run on a device of sm_",
                capability, " (PTX runs only on the same or a newer arch)");
    return forced;
  }
  int best = -1;
  for (int a : archs)
    if (a / 10 == capability / 10 && a <= capability) best = a;  // archs is ascending: keeps the nearest
  TORCH_CHECK(best > 0, "fusedops: no kernels for this GPU (sm_", capability, "); this build holds ", built_archs(),
              ". Rebuild with FUSEDOPS_CUDA_ARCHS including ", capability, ".");
  return best;
}

bool is_aligned_call(const LaunchArgs& a) {
  return a.stride_xk == 1 && a.stride_wk == 1 && a.stride_yn == 1 && divisible16(a.N) && divisible16(a.K) &&
         divisible16(a.stride_xm) && divisible16(a.stride_wn) && divisible16(a.stride_ym) && aligned16(a.x_ptr) &&
         aligned16(a.w_ptr) && aligned16(a.y_ptr);
}

void launch_fused_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor y, Op op,
                         Precision precision, const LaunchArgs& call_args) {
  const int device = x.get_device();
  const DeviceInfo& info = device_info(device);
  const int arch = arch_for_capability(info.capability);
  LaunchArgs args = call_args;
  const bool from_ptx = forced_arch() != 0;
  const Layout layout = is_aligned_call(args) ? Layout::aligned : Layout::generic;
  const Variant* chosen = &select_variant(arch, op, precision, layout, args.M, args.N, args.K);
  // at::mm runs cuBLAS in TF32 while torch allows it, so an explicit precision="ieee" then takes the generic rule's
  // kernel (true fp32 products on the FMA units; the generic rule never names a cuBLAS variant: aot/spec.py)
  if (chosen->cublas_gemm && at::globalContext().allowTF32CuBLAS())
    chosen = &select_variant(arch, op, precision, Layout::generic, args.M, args.N, args.K);
  const Variant& v = *chosen;
  const int64_t tiles = ((args.M + v.block_m - 1) / v.block_m) * ((args.N + v.block_n - 1) / v.block_n);
  TORCH_CHECK(tiles <= INT32_MAX, "fusedops: output of ", args.M, " x ", args.N, " needs ", tiles,
              " tiles, more than one launch can hold");
  const LoadedKernel kernel = load_function(device, static_cast<int>(&v - kVariants), from_ptx);
  // Launch only as many persistent programs as stay resident: more would wait for the first ones to finish.
  const int64_t grid =
      v.persistent ? std::min<int64_t>(tiles, int64_t{info.sm_count} * std::min(v.ctas_per_sm, kernel.blocks_per_sm))
                   : tiles * v.split_k;
  TORCH_CHECK(grid <= INT32_MAX, "fusedops: output of ", args.M, " x ", args.N, " needs ", grid,
              " programs, more than one launch can hold");
  args.num_sms = static_cast<int32_t>(grid);
  at::Tensor weight_fp16;  // like scratch below: freed after the launch, reuse ordered on this stream
  if (v.weight_fp16) {     // one rounding pass over W so that the kernel converts only x's tiles
    weight_fp16 = weight.to(at::kHalf).contiguous();
    args.w_ptr = reinterpret_cast<CUdeviceptr>(weight_fp16.data_ptr());
    args.stride_wn = weight_fp16.stride(0);
    args.stride_wk = 1;
  }
  CUstream stream = c10::cuda::getCurrentCUDAStream(device).stream();
  at::Tensor partials, tile_counters;  // split-K: each program's partial sum, and arrivals per tile
  if (v.split_k > 1) {
    partials = at::empty({int64_t{v.split_k} * args.M * args.N}, x.options().dtype(at::kFloat));
    tile_counters = tile_counters_for(x, tiles, device, stream);
    args.partials_ptr = reinterpret_cast<CUdeviceptr>(partials.data_ptr());
    args.tile_counters_ptr = reinterpret_cast<CUdeviceptr>(tile_counters.data_ptr());
  }
  at::Tensor scratch;  // freed after the launch: the caching allocator orders reuse on this stream
  if (v.scratch_bytes > 0) {
    scratch = at::empty({grid * v.scratch_bytes + v.scratch_align}, x.options().dtype(at::kByte));
    const CUdeviceptr base = reinterpret_cast<CUdeviceptr>(scratch.data_ptr());
    args.global_scratch = (base + v.scratch_align - 1) / v.scratch_align * v.scratch_align;
  }
  if (v.cublas_gemm) at::mm_out(y, x, weight.t());  // on this stream
  check_driver(v.launch(driver(), kernel.fn, stream, static_cast<unsigned>(grid), args), v.name);
  last_launch_description = std::string(v.name) + (from_ptx ? " (ptx, " : " (cubin, ") +
                            (v.cublas_gemm ? "after cuBLAS's GEMM, grid " : "grid ") + std::to_string(grid) + ")";
}

}  // namespace fusedops
