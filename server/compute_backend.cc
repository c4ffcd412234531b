#include "server/compute_backend.h"

#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/merge_reference.h"

#if defined(DCPMERGE_WITH_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda/merge_launcher.h"
#endif

namespace dcpmerge {
namespace {

// Up to this many element-parts (T*H*D*N) MergeOnCpu runs on one thread
// (decode steps of 16-64 K element-parts took 28-56 us on the build
// machine, docs/benchmarks.md): short enough for the thread that completed
// the step. Larger merges go to the merge thread and use MergeOnCpu's
// worker threads.
constexpr int64_t kCpuInlineWork = int64_t{1} << 17;

class CpuBackend : public ComputeBackend {
 public:
  explicit CpuBackend(int threads) : threads_(threads) {}
  std::string name() const override { return "cpu"; }
  absl::StatusOr<std::unique_ptr<Staging>> BeginStep(int, size_t, size_t) override { return nullptr; }
  absl::Status StagePart(Staging*, int, const void*, const void*) override { return absl::OkStatus(); }
  absl::Status MergeStaged(const MergeArgs& args, Staging*, DeviceTimes*) override {
    return MergeOnCpu(args, threads_);
  }
  bool MergesInline(const MergeShape& s) const override {
    return s.num_tokens * s.num_heads * s.head_size * s.num_parts <= kCpuInlineWork;
  }

 private:
  const int threads_;
};

#if defined(DCPMERGE_WITH_CUDA)
// 256 bytes: the alignment cudaMalloc gives, which the kernel's 16-byte
// vector loads need of every part.
size_t Align(size_t n) { return (n + 255) & ~size_t{255}; }

absl::Status CudaError(const char* what, cudaError_t err) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

// One step's buffers, allocated once and reused by later steps (grown when
// a larger step comes): the parts and the outputs in pinned host memory and
// on the device, a stream per part and one for the merge, and the events
// that order them and time the copies and the kernel.
struct BufferSet {
  int parts = 0;
  size_t in_capacity = 0;      // every part
  size_t in_stride = 0;        // per part, as the current step lays them out
  size_t result_capacity = 0;  // scale + outputs
  char* host_in = nullptr;     // part i at i * in_stride: partial out, then LSE
  char* dev_in = nullptr;
  char* host_result = nullptr;  // static scale, out, out_scales, out_lse
  char* dev_result = nullptr;
  std::vector<cudaStream_t> part_streams;
  std::vector<cudaEvent_t> copy_start, copy_end;  // per part
  cudaStream_t merge_stream = nullptr;
  cudaEvent_t kernel_start = nullptr, kernel_end = nullptr, copy_out_end = nullptr;

  ~BufferSet() {
    cudaFreeHost(host_in);
    cudaFree(dev_in);
    cudaFreeHost(host_result);
    cudaFree(dev_result);
    for (cudaStream_t s : part_streams) cudaStreamDestroy(s);
    for (cudaEvent_t e : copy_start) cudaEventDestroy(e);
    for (cudaEvent_t e : copy_end) cudaEventDestroy(e);
    if (merge_stream != nullptr) cudaStreamDestroy(merge_stream);
    for (cudaEvent_t e : {kernel_start, kernel_end, copy_out_end}) {
      if (e != nullptr) cudaEventDestroy(e);
    }
  }

  absl::Status EnsureParts(int n) {
    if (merge_stream == nullptr) {
      if (cudaError_t e = cudaStreamCreateWithFlags(&merge_stream, cudaStreamNonBlocking); e != cudaSuccess) {
        return CudaError("cudaStreamCreate", e);
      }
      for (cudaEvent_t* ev : {&kernel_start, &kernel_end, &copy_out_end}) {
        if (cudaError_t e = cudaEventCreate(ev); e != cudaSuccess) return CudaError("cudaEventCreate", e);
      }
    }
    while (parts < n) {
      cudaStream_t s;
      cudaEvent_t a, b;
      if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess) {
        return CudaError("cudaStreamCreate", e);
      }
      part_streams.push_back(s);
      if (cudaError_t e = cudaEventCreate(&a); e != cudaSuccess) return CudaError("cudaEventCreate", e);
      copy_start.push_back(a);
      if (cudaError_t e = cudaEventCreate(&b); e != cudaSuccess) return CudaError("cudaEventCreate", e);
      copy_end.push_back(b);
      ++parts;
    }
    return absl::OkStatus();
  }

  // Grows a host + device pair to `bytes` (contents are not kept).
  static absl::Status Grow(size_t bytes, size_t* capacity, char** host, char** dev) {
    if (*capacity >= bytes) return absl::OkStatus();
    cudaFreeHost(*host);
    cudaFree(*dev);
    *host = *dev = nullptr;
    *capacity = 0;
    if (cudaError_t e = cudaMallocHost(reinterpret_cast<void**>(host), bytes); e != cudaSuccess) {
      return absl::ResourceExhaustedError(absl::StrCat("cudaMallocHost: ", cudaGetErrorString(e)));
    }
    if (cudaError_t e = cudaMalloc(reinterpret_cast<void**>(dev), bytes); e != cudaSuccess) {
      return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc: ", cudaGetErrorString(e)));
    }
    *capacity = bytes;
    return absl::OkStatus();
  }

  // Waits for every copy this set started (a step that ends unmerged may
  // leave some running; the next step must not overwrite their source).
  void Quiesce() {
    for (cudaStream_t s : part_streams) cudaStreamSynchronize(s);
    if (merge_stream != nullptr) cudaStreamSynchronize(merge_stream);
  }
};

class CudaBackend;

class CudaStaging : public ComputeBackend::Staging {
 public:
  CudaStaging(CudaBackend* backend, std::unique_ptr<BufferSet> set, size_t out_bytes, size_t lse_bytes)
      : backend_(backend), set_(std::move(set)), out_bytes_(out_bytes), lse_bytes_(lse_bytes) {}
  ~CudaStaging() override;

  BufferSet& set() { return *set_; }
  size_t out_bytes() const { return out_bytes_; }
  size_t lse_offset() const { return Align(out_bytes_); }
  size_t lse_bytes() const { return lse_bytes_; }
  std::atomic<int> last_rank{-1};  // the part staged last
  bool settled = false;            // every copy of the set has completed

 private:
  CudaBackend* const backend_;
  std::unique_ptr<BufferSet> set_;
  const size_t out_bytes_, lse_bytes_;
};

// Stages each part into pinned memory and starts its H2D copy on the
// part's own stream as it arrives; the merge waits for the copies on the
// device (events), runs the kernel and copies the outputs back into pinned
// memory, then waits once, for that last copy.
class CudaBackend : public ComputeBackend {
 public:
  absl::Status Init(int device) {
    if (cudaSetDevice(device) != cudaSuccess) return absl::UnavailableError("cudaSetDevice failed");
    cudaStream_t probe;  // a context that can make streams, or the device is unusable
    if (cudaStreamCreateWithFlags(&probe, cudaStreamNonBlocking) != cudaSuccess) {
      return absl::UnavailableError("cudaStreamCreate failed");
    }
    cudaStreamDestroy(probe);
    return absl::OkStatus();
  }
  std::string name() const override { return "cuda"; }
  bool MergesInline(const MergeShape&) const override { return true; }  // the host only waits

  absl::StatusOr<std::unique_ptr<Staging>> BeginStep(int num_parts, size_t out_bytes, size_t lse_bytes) override {
    if (num_parts < 1 || num_parts > kMaxParts) {
      return absl::InvalidArgumentError(absl::StrCat("num_parts: ", num_parts, " is not in 1..", kMaxParts));
    }
    std::unique_ptr<BufferSet> set;
    {
      absl::MutexLock lock(&mu_);
      if (!free_.empty()) {
        set = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (set == nullptr) set = std::make_unique<BufferSet>();
    if (absl::Status st = set->EnsureParts(num_parts); !st.ok()) return st;
    set->in_stride = Align(out_bytes) + Align(lse_bytes);
    if (absl::Status st = BufferSet::Grow(set->in_stride * num_parts, &set->in_capacity, &set->host_in, &set->dev_in);
        !st.ok()) {
      return st;
    }
    return std::unique_ptr<Staging>(new CudaStaging(this, std::move(set), out_bytes, lse_bytes));
  }

  absl::Status StagePart(Staging* staging, int rank, const void* out, const void* lse) override {
    auto* s = static_cast<CudaStaging*>(staging);
    BufferSet& b = s->set();
    cudaStream_t stream = b.part_streams[rank];
    cudaEventRecord(b.copy_start[rank], stream);
    const size_t bytes = s->lse_offset() + s->lse_bytes();
    if (bytes > 0) {  // an empty step (T = 0) has no buffers to copy into
      char* host = b.host_in + rank * b.in_stride;
      std::memcpy(host, out, s->out_bytes());
      std::memcpy(host + s->lse_offset(), lse, s->lse_bytes());
      if (cudaError_t e =
              cudaMemcpyAsync(b.dev_in + rank * b.in_stride, host, bytes, cudaMemcpyHostToDevice, stream);
          e != cudaSuccess) {
        return CudaError("cudaMemcpyAsync H2D", e);
      }
    }
    if (cudaError_t e = cudaEventRecord(b.copy_end[rank], stream); e != cudaSuccess) {
      return CudaError("cudaEventRecord", e);
    }
    s->last_rank.store(rank);
    return absl::OkStatus();
  }

  absl::Status MergeStaged(const MergeArgs& host, Staging* staging, DeviceTimes* times) override {
    // The kernel only sees the device copy of the scale; check it here,
    // where it is still on the host, so a bad one is an error, not NaNs.
    if (host.config.output_mode == OutputMode::kFp8PerTensor && host.static_scale != nullptr) {
      if (absl::Status st = ValidateStaticScale(*host.static_scale); !st.ok()) return st;
    }
    auto* s = static_cast<CudaStaging*>(staging);
    BufferSet& b = s->set();
    const int n = host.shape.num_parts;
    if (host.partial_out_bytes != s->out_bytes() || host.partial_lse_bytes != s->lse_bytes() || n > b.parts) {
      return absl::InvalidArgumentError("the merge's parts are not the ones staged");
    }
    MergeArgs dev = host;
    for (int i = 0; i < n; ++i) {
      dev.partial_out[i] = b.dev_in + i * b.in_stride;
      dev.partial_lse[i] = reinterpret_cast<const float*>(b.dev_in + i * b.in_stride + s->lse_offset());
    }
    // Results: scale, then each output, every one 256-byte aligned. Only
    // the bytes the merge writes travel back: a caller's buffer may be
    // larger, and what lies beyond must stay as the caller left it.
    const OutBuffer* outs[] = {&host.out, &host.out_scales, &host.out_lse};
    OutBuffer* dev_outs[] = {&dev.out, &dev.out_scales, &dev.out_lse};
    const size_t written[] = {
        static_cast<size_t>(OutputBytes(host.shape, host.config)),
        static_cast<size_t>(OutputScaleCount(host.shape, host.config)) * sizeof(float),
        static_cast<size_t>(host.shape.num_tokens * host.shape.num_heads) * sizeof(float)};
    size_t offsets[3];
    size_t need = Align(sizeof(float));
    for (int k = 0; k < 3; ++k) {
      offsets[k] = need;
      need += Align(written[k]);
    }
    if (absl::Status st = BufferSet::Grow(need, &b.result_capacity, &b.host_result, &b.dev_result); !st.ok()) {
      return st;
    }
    cudaStream_t ms = b.merge_stream;
    if (host.static_scale != nullptr) {
      std::memcpy(b.host_result, host.static_scale, sizeof(float));
      if (cudaError_t e = cudaMemcpyAsync(b.dev_result, b.host_result, sizeof(float), cudaMemcpyHostToDevice, ms);
          e != cudaSuccess) {
        return CudaError("cudaMemcpyAsync H2D (scale)", e);
      }
      dev.static_scale = reinterpret_cast<const float*>(b.dev_result);
    }
    for (int k = 0; k < 3; ++k) {
      if (outs[k]->data == nullptr) continue;
      dev_outs[k]->data = b.dev_result + offsets[k];
      dev_outs[k]->bytes = written[k];
    }
    for (int i = 0; i < n; ++i) cudaStreamWaitEvent(ms, b.copy_end[i], 0);
    cudaEventRecord(b.kernel_start, ms);
    if (absl::Status st = MergeOnGpu(dev, ms); !st.ok()) return st;
    cudaEventRecord(b.kernel_end, ms);
    for (int k = 0; k < 3; ++k) {
      if (outs[k]->data == nullptr || written[k] == 0) continue;
      if (cudaError_t e = cudaMemcpyAsync(b.host_result + offsets[k], dev_outs[k]->data, written[k],
                                          cudaMemcpyDeviceToHost, ms);
          e != cudaSuccess) {
        return CudaError("cudaMemcpyAsync D2H", e);
      }
    }
    cudaEventRecord(b.copy_out_end, ms);
    if (cudaError_t e = cudaEventSynchronize(b.copy_out_end); e != cudaSuccess) {
      return CudaError("CUDA merge failed", e);
    }
    s->settled = true;  // the merge waited for every part's copy
    for (int k = 0; k < 3; ++k) {
      if (outs[k]->data != nullptr && written[k] > 0) std::memcpy(outs[k]->data, b.host_result + offsets[k], written[k]);
    }
    const int last = s->last_rank.load();
    if (times != nullptr && last >= 0) {
      float copy_in = 0, kernel = 0, copy_out = 0;
      cudaEventElapsedTime(&copy_in, b.copy_start[last], b.copy_end[last]);
      cudaEventElapsedTime(&kernel, b.kernel_start, b.kernel_end);
      cudaEventElapsedTime(&copy_out, b.kernel_end, b.copy_out_end);
      times->measured = true;
      times->last_copy_in = absl::Microseconds(copy_in * 1e3);
      times->kernel = absl::Microseconds(kernel * 1e3);
      times->copy_out = absl::Microseconds(copy_out * 1e3);
    }
    return absl::OkStatus();
  }

  // A set back from a step, for the next one.
  void Release(std::unique_ptr<BufferSet> set, bool settled) {
    if (!settled) set->Quiesce();
    absl::MutexLock lock(&mu_);
    free_.push_back(std::move(set));
  }

 private:
  absl::Mutex mu_;
  std::vector<std::unique_ptr<BufferSet>> free_ ABSL_GUARDED_BY(mu_);
};

CudaStaging::~CudaStaging() { backend_->Release(std::move(set_), settled); }
#endif  // DCPMERGE_WITH_CUDA

}  // namespace

absl::StatusOr<std::unique_ptr<ComputeBackend>> MakeComputeBackend(
    const std::string& kind, int cpu_threads, std::string* why) {
  if (kind != "auto" && kind != "cpu" && kind != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend: '", kind, "' is not auto, cpu or cuda"));
  }
  if (kind == "cpu") {
    *why = "cpu: requested with --backend=cpu";
    return std::unique_ptr<ComputeBackend>(new CpuBackend(cpu_threads));
  }
#if defined(DCPMERGE_WITH_CUDA)
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess && count > 0) {
    auto cuda = std::make_unique<CudaBackend>();
    absl::Status st = cuda->Init(0);
    if (st.ok()) {
      *why = absl::StrCat("cuda: ", count, " GPU(s) visible, using device 0");
      return std::unique_ptr<ComputeBackend>(std::move(cuda));
    }
    if (kind == "cuda") return st;
    *why = absl::StrCat("cpu: CUDA device init failed (", st.message(), ")");
  } else {
    // Without a GPU the runtime reports a misleading "driver version is
    // insufficient"; name the call so the log reads as "no usable GPU".
    const std::string reason =
        err == cudaSuccess
            ? "no GPU visible"
            : absl::StrCat("no usable GPU (cudaGetDeviceCount: ", cudaGetErrorString(err), ")");
    if (kind == "cuda") {
      return absl::FailedPreconditionError(absl::StrCat("backend: cuda requested but ", reason));
    }
    *why = absl::StrCat("cpu: built with CUDA but ", reason);
  }
#else
  if (kind == "cuda") {
    return absl::FailedPreconditionError(
        "backend: cuda requested but this server was built without CUDA");
  }
  *why = "cpu: built without CUDA";
#endif
  return std::unique_ptr<ComputeBackend>(new CpuBackend(cpu_threads));
}

}  // namespace dcpmerge
