// The merge entry points of the C ABI: the fused kernel (MergeOnGpu), the
// one-part copy of merge_attn_states, and the CPU reference (MergeOnCpu).
#include <chrono>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "capi/dcpmerge_c.h"
#include "capi/status.h"
#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"

#ifdef DCPMERGE_WITH_CUDA
#include <cuda_runtime.h>
#include <dlfcn.h>

#include "capi/copy_part_launch.h"
#include "kernels/cuda/merge_launcher.h"
#endif

namespace dcpmerge::capi {
namespace {

absl::Status EnumInRange(int32_t v, int32_t max, absl::string_view field) {
  if (v < 0 || v > max) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", v, " is not in 0..", max));
  }
  return absl::OkStatus();
}

// The C struct -> MergeArgs, checking what the C layer adds (struct size,
// enum ranges, part count); the contract's own checks come after.
absl::Status ToMergeArgs(const dcpmerge_merge_args* c, MergeArgs* a) {
  if (absl::Status s = NotNull(c, "args"); !s.ok()) return s;
  if (absl::Status s = CheckStructSize(c->struct_size, sizeof(*c), "dcpmerge_merge_args"); !s.ok()) return s;
  if (c->num_parts < 1 || c->num_parts > kMaxParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_parts: ", c->num_parts, " is not in 1..", kMaxParts));
  }
  if (absl::Status s = EnumInRange(c->input_dtype, 2, "input_dtype"); !s.ok()) return s;
  if (absl::Status s = EnumInRange(c->lse_base, 1, "lse_base"); !s.ok()) return s;
  if (absl::Status s = EnumInRange(c->lse_layout, 1, "lse_layout"); !s.ok()) return s;
  if (absl::Status s = EnumInRange(c->output_mode, 3, "output_mode"); !s.ok()) return s;
  if (absl::Status s = EnumInRange(c->enable_pdl, 1, "enable_pdl"); !s.ok()) return s;
  if (absl::Status s = NotNull(c->partial_out, "partial_out"); !s.ok()) return s;
  if (absl::Status s = NotNull(c->partial_lse, "partial_lse"); !s.ok()) return s;
  a->shape.num_parts = c->num_parts;
  a->shape.num_tokens = c->num_tokens;
  a->shape.num_heads = c->num_heads;
  a->shape.head_size = c->head_size;
  a->config.input_dtype = static_cast<DType>(c->input_dtype);
  a->config.lse_base = static_cast<LseBase>(c->lse_base);
  a->config.lse_layout = static_cast<LseLayout>(c->lse_layout);
  a->config.output_mode = static_cast<OutputMode>(c->output_mode);
  a->config.group_size = c->group_size;
  a->config.power_of_two_scales = c->power_of_two_scales != 0;
  for (int i = 0; i < c->num_parts; ++i) {
    a->partial_out[i] = c->partial_out[i];
    a->partial_lse[i] = c->partial_lse[i];
  }
  a->partial_out_bytes = c->partial_out_bytes;
  a->partial_lse_bytes = c->partial_lse_bytes;
  a->token_stride = c->token_stride;
  a->head_stride = c->head_stride;
  a->static_scale = c->static_scale;
  a->out = {c->out, static_cast<size_t>(c->out_bytes)};
  a->out_scales = {c->out_scales, static_cast<size_t>(c->out_scales_bytes)};
  a->out_lse = {c->out_lse, static_cast<size_t>(c->out_lse_bytes)};
  return absl::OkStatus();
}

#ifdef DCPMERGE_WITH_CUDA
absl::Status CudaError(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code = (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
                                    ? absl::StatusCode::kUnavailable
                                    : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
}

// Makes `device` current for the scope and restores the caller's device
// (PyTorch keeps its own idea of the current device).
class DeviceScope {
 public:
  absl::Status Enter(int32_t device) {
    if (absl::Status s = CudaError(cudaGetDevice(&previous_), "cudaGetDevice"); !s.ok()) return s;
    if (previous_ != device) {
      if (absl::Status s = CudaError(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")"));
          !s.ok())
        return s;
      switched_ = true;
    }
    return absl::OkStatus();
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool switched_ = false;
};

absl::Status MergeGpu(const dcpmerge_merge_args* c, int32_t device, void* stream) {
  MergeArgs a;
  if (absl::Status s = ToMergeArgs(c, &a); !s.ok()) return s;
  DeviceScope scope;
  if (absl::Status s = scope.Enter(device); !s.ok()) return s;
  return MergeOnGpu(a, static_cast<cudaStream_t>(stream), c->enable_pdl != 0);
}

absl::Status MergeGpuRepeat(const dcpmerge_merge_args* c, int32_t device, void* stream, int32_t iterations,
                            double* host_seconds) {
  if (host_seconds == nullptr) return absl::InvalidArgumentError("host_seconds: null pointer");
  if (iterations < 1) return absl::InvalidArgumentError(absl::StrCat("iterations: ", iterations, " < 1"));
  MergeArgs a;
  if (absl::Status s = ToMergeArgs(c, &a); !s.ok()) return s;
  DeviceScope scope;
  if (absl::Status s = scope.Enter(device); !s.ok()) return s;
  const auto t0 = std::chrono::steady_clock::now();
  for (int32_t i = 0; i < iterations; ++i) {
    if (absl::Status s = MergeOnGpu(a, static_cast<cudaStream_t>(stream), c->enable_pdl != 0);
        !s.ok())
      return s;
  }
  *host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return absl::OkStatus();
}

absl::Status CopyPartGpu(const dcpmerge_merge_args* c, int64_t first_token, int32_t device, void* stream) {
  MergeArgs a;
  if (absl::Status s = ToMergeArgs(c, &a); !s.ok()) return s;
  if (a.shape.num_parts != 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_parts: ", a.shape.num_parts, ", the copy takes one part"));
  }
  if (a.config.output_mode != OutputMode::kFp8PerTensor && a.config.output_mode != OutputMode::kPassthrough) {
    return absl::InvalidArgumentError(absl::StrCat("output_mode: ", OutputModeName(a.config.output_mode),
                                                   "; the copy writes fp8_per_tensor or passthrough"));
  }
  if (first_token < 0) return absl::InvalidArgumentError(absl::StrCat("first_token: ", first_token, " < 0"));
  // The contract's checks (sizes, capacities, strides) hold for the copy too.
  if (absl::Status s = ValidateMergeArgs(a); !s.ok()) return s;
  DeviceScope scope;
  if (absl::Status s = scope.Enter(device); !s.ok()) return s;
  CopyPartParams p;
  p.part = a.partial_out[0];
  p.part_lse = a.partial_lse[0];
  p.out = a.out.data;
  p.out_lse = static_cast<float*>(a.out_lse.data);
  p.static_scale = a.static_scale;
  p.num_tokens = a.shape.num_tokens;
  p.first_token = first_token;
  p.token_stride = a.token_stride;
  p.head_stride = a.head_stride;
  p.num_heads = a.shape.num_heads;
  p.head_size = a.shape.head_size;
  p.dtype = static_cast<int32_t>(a.config.input_dtype);
  p.fp8 = a.config.output_mode == OutputMode::kFp8PerTensor ? 1 : 0;
  p.lse_tokens_heads = a.config.lse_layout == LseLayout::kTokensHeads ? 1 : 0;
  return CudaError(LaunchCopyPart(p, static_cast<cudaStream_t>(stream)), "copy kernel launch");
}
#else
absl::Status NoCuda() {
  return absl::UnimplementedError(
      "this libdcpmerge_c was built without CUDA (no nvcc at build time): the GPU merge is not available");
}
#endif

}  // namespace
}  // namespace dcpmerge::capi

using dcpmerge::capi::Report;

extern "C" {

int32_t dcpmerge_built_with_cuda(void) {
#ifdef DCPMERGE_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

int32_t dcpmerge_cuda_device_count(int32_t* device_count) {
  if (device_count == nullptr) return Report(absl::InvalidArgumentError("device_count: null pointer"));
  *device_count = 0;
#ifdef DCPMERGE_WITH_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    // Without a driver at all the runtime says "driver version is
    // insufficient"; say what is actually missing.
    void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (driver != nullptr) dlclose(driver);
    return Report(absl::UnavailableError(
        absl::StrCat("no usable CUDA device: ",
                     driver == nullptr ? "no NVIDIA driver here (libcuda.so.1 not found); " : "",
                     "cudaGetDeviceCount: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e))));
  }
  *device_count = n;
  if (n == 0) return Report(absl::UnavailableError("no CUDA device (cudaGetDeviceCount is 0)"));
  return Report(absl::OkStatus());
#else
  return Report(dcpmerge::capi::NoCuda());
#endif
}

int32_t dcpmerge_merge_gpu(const dcpmerge_merge_args* args, int32_t device, void* stream) {
#ifdef DCPMERGE_WITH_CUDA
  return Report(dcpmerge::capi::MergeGpu(args, device, stream));
#else
  (void)args, (void)device, (void)stream;
  return Report(dcpmerge::capi::NoCuda());
#endif
}

int32_t dcpmerge_merge_gpu_repeat(const dcpmerge_merge_args* args, int32_t device, void* stream,
                                  int32_t iterations, double* host_seconds) {
#ifdef DCPMERGE_WITH_CUDA
  return Report(dcpmerge::capi::MergeGpuRepeat(args, device, stream, iterations, host_seconds));
#else
  (void)args, (void)device, (void)stream, (void)iterations, (void)host_seconds;
  return Report(dcpmerge::capi::NoCuda());
#endif
}

int32_t dcpmerge_copy_part_gpu(const dcpmerge_merge_args* args, int64_t first_token, int32_t device,
                               void* stream) {
#ifdef DCPMERGE_WITH_CUDA
  return Report(dcpmerge::capi::CopyPartGpu(args, first_token, device, stream));
#else
  (void)args, (void)first_token, (void)device, (void)stream;
  return Report(dcpmerge::capi::NoCuda());
#endif
}

int32_t dcpmerge_merge_cpu(const dcpmerge_merge_args* args, int32_t num_threads) {
  dcpmerge::MergeArgs a;
  if (absl::Status s = dcpmerge::capi::ToMergeArgs(args, &a); !s.ok()) return Report(s);
  if (num_threads < 0) return Report(absl::InvalidArgumentError("num_threads: must be >= 0"));
  return Report(dcpmerge::MergeOnCpu(a, num_threads));
}

}  // extern "C"
