#include "dispatch.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
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

// FUSEDOPS_FORCE_ARCH=89 (also sm_89, 8.9): run that arch's kernels from PTX (JIT by the driver), e.g. to test the
// sm_89 code path on an sm_90 GPU. Read once; 0 when unset. Any value that is not an arch this build holds is an error,
// raised by every CUDA call, so a typo never runs the native kernels unnoticed.
int forced_arch() {
  struct Setting {
    int arch = 0;
    std::string error;
  };
  static const Setting setting = [] {
    Setting out;
    const char* env = std::getenv("FUSEDOPS_FORCE_ARCH");
    if (env == nullptr || *env == '\0') return out;
    std::string s(env);
    if (s.rfind("sm_", 0) == 0) s = s.substr(3);
    s.erase(std::remove(s.begin(), s.end(), '.'), s.end());
    // at most 4 digits: no overflow in stoi, and every CUDA arch fits
    const bool number = !s.empty() && s.size() <= 4 && std::all_of(s.begin(), s.end(), ::isdigit);
    out.arch = number ? std::stoi(s) : -1;
    if (!archs_in_build().count(out.arch))
      out.error = std::string("fusedops: FUSEDOPS_FORCE_ARCH='") + env + "' is not an arch this build holds (" +
                  built_archs() + "); set it to one of them, e.g. FUSEDOPS_FORCE_ARCH=89, or unset it";
    return out;
  }();
  if (!setting.error.empty()) TORCH_CHECK(false, setting.error);
  return setting.arch;
}

struct LoadedKernel {
  CUfunction fn = nullptr;
};

// One variant's module on one device, loaded on first use.
struct KernelSlot {
  std::atomic<bool> ready{false};
  std::mutex loading;  // held while this variant loads (a PTX JIT can take a while): calls of other variants go on
  LoadedKernel kernel;
  std::string error;  // a load that failed for good (not for lack of memory): later calls raise it without retrying
};

// What fusedops keeps per device: its primary context (the one torch's runtime uses; retained once for the life of
// the process), the attributes dispatch reads, and the kernels loaded into that context.
struct DeviceState {
  std::once_flag init;
  CUcontext primary = nullptr;
  int capability = 0;  // 89 for 8.9
  int sm_count = 0;
  int max_shared_optin = 0;
  std::unique_ptr<KernelSlot[]> kernels;  // [variant * 2 + from_ptx]
};

DeviceState& device_state(int device) {
  static const int count = [] {
    int n = 0;
    check_driver(driver().cuDeviceGetCount(&n), "cuDeviceGetCount");
    return n;
  }();
  static const std::unique_ptr<DeviceState[]> states(new DeviceState[count > 0 ? count : 1]);
  TORCH_CHECK(device >= 0 && device < count, "fusedops: no CUDA device ", device, " (the driver reports ", count, ")");
  DeviceState& state = states[device];
  std::call_once(state.init, [&] {  // a throw leaves it to the next call to try again
    const DriverApi& d = driver();
    CUdevice dev;
    int major = 0, minor = 0;
    check_driver(d.cuDeviceGet(&dev, device), "cuDeviceGet");
    auto attribute = [&](int* value, CUdevice_attribute which) {
      check_driver(d.cuDeviceGetAttribute(value, which, dev), "cuDeviceGetAttribute");
    };
    attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
    attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    attribute(&state.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    attribute(&state.max_shared_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
    check_driver(d.cuDevicePrimaryCtxRetain(&state.primary, dev), "cuDevicePrimaryCtxRetain");
    state.capability = major * 10 + minor;
    state.kernels.reset(new KernelSlot[kNumVariants * 2]);
  });
  return state;
}

// Runs the scope with `primary` as this thread's current context. A thread whose first CUDA work is a fusedops call
// has none yet (torch's runtime binds the primary context lazily, on the thread's first runtime call), and the driver
// API launches into the current context: that thread gets the primary context bound for good, as the runtime would.
// A thread with another context current (one it made through the driver API) gets it back when the scope ends.
class PrimaryContextScope {
 public:
  explicit PrimaryContextScope(CUcontext primary) {
    const DriverApi& d = driver();
    CUcontext current = nullptr;
    check_driver(d.cuCtxGetCurrent(&current), "cuCtxGetCurrent");
    if (current == primary) return;
    if (current == nullptr) {
      check_driver(d.cuCtxSetCurrent(primary), "cuCtxSetCurrent");
      return;
    }
    check_driver(d.cuCtxPushCurrent(primary), "cuCtxPushCurrent");
    pushed_ = true;
  }
  ~PrimaryContextScope() {
    CUcontext popped = nullptr;
    if (pushed_) driver().cuCtxPopCurrent(&popped);
  }
  PrimaryContextScope(const PrimaryContextScope&) = delete;
  PrimaryContextScope& operator=(const PrimaryContextScope&) = delete;

 private:
  bool pushed_ = false;
};

// While a stream is being captured into a CUDA graph in the default (global) mode, CUDA refuses "potentially unsafe"
// calls on every thread. Loading a module enqueues no work on any stream, so a first call made during a capture loads
// its kernel in relaxed mode (what torch does for its own lazy initialisation under capture).
class RelaxedCaptureModeScope {
 public:
  RelaxedCaptureModeScope() {
    check_driver(driver().cuThreadExchangeStreamCaptureMode(&mode_), "cuThreadExchangeStreamCaptureMode");
  }
  ~RelaxedCaptureModeScope() { driver().cuThreadExchangeStreamCaptureMode(&mode_); }
  RelaxedCaptureModeScope(const RelaxedCaptureModeScope&) = delete;
  RelaxedCaptureModeScope& operator=(const RelaxedCaptureModeScope&) = delete;

 private:
  CUstreamCaptureMode mode_ = CU_STREAM_CAPTURE_MODE_RELAXED;
};

// Loads a variant's module into the device's primary context. Returns "" and fills `out`, or returns the error after
// unloading whatever it loaded; `lasting` says whether trying again could succeed (only a lack of memory can pass).
std::string try_load(const DeviceState& state, int device, const Variant& v, bool from_ptx, LoadedKernel* out,
                     bool* lasting) {
  const DriverApi& d = driver();
  PrimaryContextScope context(state.primary);
  RelaxedCaptureModeScope capture_mode;
  *lasting = true;
  CUmodule module = nullptr;
  const std::string what = std::string("loading ") + (from_ptx ? "PTX" : "cubin") + " of " + v.name;
  CUresult r = d.cuModuleLoadData(&module, from_ptx ? static_cast<const void*>(v.ptx) : v.cubin);
  if (r != CUDA_SUCCESS) {
    *lasting = r != CUDA_ERROR_OUT_OF_MEMORY;
    return driver_error(r, what.c_str());
  }
  auto fail = [&](std::string error) {
    d.cuModuleUnload(module);
    return error;
  };
  if ((r = d.cuModuleGetFunction(&out->fn, module, v.entry)) != CUDA_SUCCESS)
    return fail(driver_error(r, (std::string("finding ") + v.entry + " in " + v.name).c_str()));
  if (v.shared_bytes > 48 * 1024) {
    if (static_cast<int>(v.shared_bytes) > state.max_shared_optin)
      return fail(std::string("fusedops: kernel ") + v.name + " needs " + std::to_string(v.shared_bytes) +
                  " bytes of shared memory per block; cuda:" + std::to_string(device) + " allows " +
                  std::to_string(state.max_shared_optin));
    if ((r = d.cuFuncSetAttribute(out->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v.shared_bytes)) !=
        CUDA_SUCCESS)
      return fail(driver_error(r, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)"));
  }
  int blocks_per_sm = 0;  // how many of its blocks one SM holds at once
  if ((r = d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, out->fn, v.num_warps * 32,
                                                          v.shared_bytes)) != CUDA_SUCCESS)
    return fail(driver_error(r, "cuOccupancyMaxActiveBlocksPerMultiprocessor"));
  if (blocks_per_sm <= 0)
    return fail(std::string("fusedops: kernel ") + v.name + " cannot run on cuda:" + std::to_string(device) +
                " (the driver reports room for no block of it on one SM)");
  return "";  // the module stays loaded for the life of the process: its function is cached below
}

// The variant's loaded function on this device, loading it on first use.
LoadedKernel load_function(DeviceState& state, int device, int variant_index, bool from_ptx) {
  KernelSlot& slot = state.kernels[variant_index * 2 + (from_ptx ? 1 : 0)];
  if (slot.ready.load(std::memory_order_acquire)) return slot.kernel;
  std::lock_guard<std::mutex> lock(slot.loading);
  if (slot.ready.load(std::memory_order_relaxed)) return slot.kernel;
  if (!slot.error.empty()) TORCH_CHECK(false, slot.error);
  LoadedKernel loaded;
  bool lasting = true;
  std::string error = try_load(state, device, kVariants[variant_index], from_ptx, &loaded, &lasting);
  if (!error.empty()) {
    if (lasting) slot.error = error;
    TORCH_CHECK(false, error);
  }
  slot.kernel = loaded;
  slot.ready.store(true, std::memory_order_release);
  return loaded;
}

// The first (non-fallback) rule of (arch, op, precision, layout) whose bounds hold; with `fallback`, the fallback
// rule of (arch, op, precision).
const Variant& first_matching_rule(int arch, Op op, Precision precision, Layout layout, int64_t M, int64_t N,
                                   int64_t K, bool fallback = false) {
  auto within = [](int64_t bound, int64_t value) { return bound < 0 || value <= bound; };
  for (size_t i = 0; i < kNumRules; ++i) {
    const Rule& r = kRules[i];
    if (r.arch == arch && r.op == op && r.precision == precision && r.fallback == fallback &&
        (fallback || (r.layout == layout && within(r.max_m, M) && within(r.max_n, N) && within(r.max_k, K))))
      return kVariants[r.variant];
  }
  TORCH_CHECK(false, "fusedops: this build has no ", op_name(op), " kernel for precision ",
              precision_name(precision), ", layout ", layout_name(layout), " on sm_", arch);
}

// Whether cuBLAS's GEMM, as at::mm runs it now, can serve a call: for fp32 'ieee' only while torch keeps cuBLAS off
// TF32; and every operand within cuBLAS's int32 element counts (it fails on an M x N output of 2^31 elements).
bool cublas_takes(Precision precision, int64_t M, int64_t N, int64_t K) {
  if (precision == Precision::fp32_ieee && at::globalContext().allowTF32CuBLAS()) return false;
  const int64_t most = std::max({M * N, M * K, N * K});  // each extent < 2^31 (run_cuda): no overflow
  return most <= INT32_MAX;
}

// Split-K tile counters. A kernel's last program per tile sets that tile's counter back to 0, so one zeroed buffer
// per (device, stream) serves every later launch on that stream (launches on one stream run one after another):
// no memset per call. A launch being captured into a CUDA graph gets fresh zeroed counters instead (the memset
// becomes part of the graph), since work captured before any of it has run cannot zero a shared buffer. At most
// kMaxCounterBuffers buffers (16 KB each at first) are kept, the least recently used going first: a server that
// makes streams or threads as it goes must not grow this without end. A dropped buffer goes back to the caching
// allocator, which hands it out again only to work ordered after its last use on its stream.
constexpr size_t kMaxCounterBuffers = 64;

struct CounterBuffers {
  struct Entry {
    at::Tensor buffer;
    uint64_t last_use = 0;
  };
  std::mutex mutex;
  std::map<std::tuple<int, CUstream, std::thread::id>, Entry> by_stream;
  uint64_t uses = 0;
};

CounterBuffers& counter_buffers() {
  static auto* buffers = new CounterBuffers();  // never destroyed: tensors freed in static destruction could outlive
  return *buffers;                              // the CUDA allocator
}

at::Tensor tile_counters_for(const at::Tensor& like, int64_t tiles, int device, CUstream stream) {
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  check_driver(driver().cuStreamIsCapturing(stream, &capture), "cuStreamIsCapturing");
  const auto options = like.options().dtype(at::kInt);
  if (capture != CU_STREAM_CAPTURE_STATUS_NONE) return at::zeros({tiles}, options);
  // the per-thread default stream has one handle but is another stream in each thread
  const std::thread::id thread = stream == CU_STREAM_PER_THREAD ? std::this_thread::get_id() : std::thread::id();
  CounterBuffers& cache = counter_buffers();
  std::lock_guard<std::mutex> lock(cache.mutex);
  CounterBuffers::Entry& counters = cache.by_stream[std::make_tuple(device, stream, thread)];
  counters.last_use = ++cache.uses;
  if (!counters.buffer.defined() || counters.buffer.numel() < tiles) {
    // the old buffer goes back to the caching allocator, which reuses it only for work ordered after this launch
    counters.buffer = at::zeros({std::max<int64_t>(tiles, 4096)}, options);
  }
  at::Tensor buffer = counters.buffer;
  if (cache.by_stream.size() > kMaxCounterBuffers) {
    auto oldest = std::min_element(cache.by_stream.begin(), cache.by_stream.end(), [](const auto& a, const auto& b) {
      return a.second.last_use < b.second.last_use;
    });
    cache.by_stream.erase(oldest);
  }
  return buffer;
}

thread_local std::string last_launch_description;

bool divisible16(int64_t v) { return v % 16 == 0; }
bool aligned16(CUdeviceptr p) { return p % 16 == 0; }

}  // namespace

std::string last_launch() { return last_launch_description; }

int64_t tile_counter_buffers() {
  CounterBuffers& cache = counter_buffers();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return static_cast<int64_t>(cache.by_stream.size());
}

const Variant& select_variant(int arch, Op op, Precision precision, Layout layout, int64_t M, int64_t N,
                              int64_t K) {
  const Variant& v = first_matching_rule(arch, op, precision, layout, M, N, K);
  if (v.cublas_gemm && !cublas_takes(precision, M, N, K))
    return first_matching_rule(arch, op, precision, layout, M, N, K, /*fallback=*/true);
  return v;
}

std::string select_variant_name(int64_t arch, const std::string& op, const std::string& precision,
                                const std::string& layout, int64_t M, int64_t N, int64_t K) {
  for (size_t i = 0; i < kNumRules; ++i) {  // the enums behind the names, from any rule that carries them
    const Rule& r = kRules[i];
    if (r.arch == arch && op == op_name(r.op) && precision == precision_name(r.precision) &&
        layout == layout_name(r.layout))
      return select_variant(r.arch, r.op, r.precision, r.layout, M, N, K).name;
  }
  TORCH_CHECK(false, "fusedops: this build has no rule for sm_", arch, " ", op, " ", precision, " ", layout);
}

std::string built_archs() {
  std::string out;
  for (int a : archs_in_build()) out += (out.empty() ? "sm_" : ", sm_") + std::to_string(a);
  return out;
}

int arch_for_capability(int capability) {
  if (int forced = forced_arch()) {  // (an arch this build holds: forced_arch checks)
    TORCH_CHECK(forced <= capability, "fusedops: FUSEDOPS_FORCE_ARCH=", forced, " cannot run on a device of sm_",
                capability, " (PTX runs only on the same or a newer arch)");
    return forced;
  }
  int best = -1;
  for (int a : archs_in_build())
    if (a / 10 == capability / 10 && a <= capability) best = a;  // ascending: keeps the nearest
  TORCH_CHECK(best > 0, "fusedops: no kernels for this GPU (sm_", capability, "); this build holds ", built_archs(),
              ". Rebuild with FUSEDOPS_CUDA_ARCHS including ", capability, ".");
  return best;
}

bool is_aligned_call(const LaunchArgs& a) {
  // K > 0: the aligned kernels build TMA descriptors over x and W, which need non-empty extents
  return a.K > 0 && a.stride_xk == 1 && a.stride_wk == 1 && a.stride_yn == 1 && divisible16(a.N) &&
         divisible16(a.K) && divisible16(a.stride_xm) && divisible16(a.stride_wn) && divisible16(a.stride_ym) &&
         aligned16(a.x_ptr) && aligned16(a.w_ptr) && aligned16(a.y_ptr);
}

void launch_fused_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor y, Op op,
                         Precision precision, const LaunchArgs& call_args) {
  const int device = x.get_device();
  DeviceState& state = device_state(device);
  const int arch = arch_for_capability(state.capability);
  PrimaryContextScope context(state.primary);  // the launch, and the torch calls below, in torch's context
  LaunchArgs args = call_args;
  const bool from_ptx = forced_arch() != 0;
  const Layout layout = is_aligned_call(args) ? Layout::aligned : Layout::generic;
  const Variant& v = select_variant(arch, op, precision, layout, args.M, args.N, args.K);
  const int64_t tiles = ((args.M + v.block_m - 1) / v.block_m) * ((args.N + v.block_n - 1) / v.block_n);
  TORCH_CHECK(tiles <= INT32_MAX, "fusedops: output of ", args.M, " x ", args.N, " needs ", tiles,
              " tiles, more than one launch can hold");
  const LoadedKernel kernel = load_function(state, device, static_cast<int>(&v - kVariants), from_ptx);
  // One persistent program per SM: more would only wait for the first ones to finish.
  const int64_t grid = v.persistent ? std::min<int64_t>(tiles, state.sm_count) : tiles * v.split_k;
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
