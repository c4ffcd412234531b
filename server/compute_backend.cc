#include "server/compute_backend.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/merge_reference.h"

#if defined(DCPMERGE_WITH_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda/merge_launcher.h"
#endif

namespace dcpmerge {
namespace {

class CpuBackend : public ComputeBackend {
 public:
  explicit CpuBackend(int threads) : threads_(threads) {}
  std::string name() const override { return "cpu"; }
  absl::Status Merge(const MergeArgs& args) override {
    return MergeOnCpu(args, threads_);
  }

 private:
  const int threads_;
};

#if defined(DCPMERGE_WITH_CUDA)
// Stages host buffers through device memory, one step at a time. Buffers
// grow to the largest step seen and are reused.
class CudaBackend : public ComputeBackend {
 public:
  ~CudaBackend() override {
    for (auto& b : buffers_) cudaFree(b.ptr);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  absl::Status Init(int device) {
    if (cudaSetDevice(device) != cudaSuccess) return absl::UnavailableError("cudaSetDevice failed");
    if (cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess) {
      return absl::UnavailableError("cudaStreamCreate failed");
    }
    return absl::OkStatus();
  }
  std::string name() const override { return "cuda"; }

  absl::Status Merge(const MergeArgs& host) override {
    // The kernel only sees the device copy of the scale; check it here,
    // where it is still on the host, so a bad one is an error, not NaNs.
    if (host.config.output_mode == OutputMode::kFp8PerTensor && host.static_scale != nullptr) {
      if (absl::Status st = ValidateStaticScale(*host.static_scale); !st.ok()) return st;
    }
    const int n = host.shape.num_parts;
    MergeArgs dev = host;
    size_t slot = 0;
    auto stage_in = [&](const void* src, size_t bytes, void** dst) -> absl::Status {
      void* p = Buffer(slot++, bytes);
      if (p == nullptr && bytes > 0) return absl::ResourceExhaustedError("cudaMalloc failed");
      if (bytes > 0 && cudaMemcpyAsync(p, src, bytes, cudaMemcpyHostToDevice, stream_) != cudaSuccess) {
        return absl::InternalError("cudaMemcpyAsync H2D failed");
      }
      *dst = p;
      return absl::OkStatus();
    };
    for (int i = 0; i < n; ++i) {
      void* p = nullptr;
      absl::Status st = stage_in(host.partial_out[i], host.partial_out_bytes, &p);
      if (!st.ok()) return st;
      dev.partial_out[i] = p;
      st = stage_in(host.partial_lse[i], host.partial_lse_bytes, &p);
      if (!st.ok()) return st;
      dev.partial_lse[i] = static_cast<const float*>(p);
    }
    if (host.static_scale != nullptr) {
      void* p = nullptr;
      absl::Status st = stage_in(host.static_scale, sizeof(float), &p);
      if (!st.ok()) return st;
      dev.static_scale = static_cast<const float*>(p);
    }
    auto out_buf = [&](const OutBuffer& h, OutBuffer* d) -> absl::Status {
      if (h.data == nullptr) return absl::OkStatus();
      d->data = Buffer(slot++, h.bytes);
      if (d->data == nullptr && h.bytes > 0) return absl::ResourceExhaustedError("cudaMalloc failed");
      return absl::OkStatus();
    };
    for (auto [h, d] : {std::pair{&host.out, &dev.out}, std::pair{&host.out_scales, &dev.out_scales},
                        std::pair{&host.out_lse, &dev.out_lse}}) {
      absl::Status st = out_buf(*h, d);
      if (!st.ok()) return st;
    }
    absl::Status st = MergeOnGpu(dev, stream_);
    if (!st.ok()) return st;
    for (auto [h, d] : {std::pair{&host.out, &dev.out}, std::pair{&host.out_scales, &dev.out_scales},
                        std::pair{&host.out_lse, &dev.out_lse}}) {
      if (h->data != nullptr && h->bytes > 0 &&
          cudaMemcpyAsync(h->data, d->data, h->bytes, cudaMemcpyDeviceToHost, stream_) != cudaSuccess) {
        return absl::InternalError("cudaMemcpyAsync D2H failed");
      }
    }
    if (cudaStreamSynchronize(stream_) != cudaSuccess) {
      return absl::InternalError(absl::StrCat("CUDA merge failed: ",
                                              cudaGetErrorString(cudaGetLastError())));
    }
    return absl::OkStatus();
  }

 private:
  struct DevBuf {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  void* Buffer(size_t slot, size_t bytes) {
    if (buffers_.size() <= slot) buffers_.resize(slot + 1);
    DevBuf& b = buffers_[slot];
    if (b.bytes < bytes) {
      cudaFree(b.ptr);
      b.ptr = nullptr;
      b.bytes = 0;
      if (cudaMalloc(&b.ptr, bytes) != cudaSuccess) return nullptr;
      b.bytes = bytes;
    }
    return b.ptr;
  }
  cudaStream_t stream_ = nullptr;
  std::vector<DevBuf> buffers_;
};
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
