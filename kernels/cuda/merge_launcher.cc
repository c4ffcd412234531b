// MergeOnGpu: host-side validation, then the nvcc-compiled launch function.
//
// Alignment policy (chosen: reject, no scalar fallback). The kernel moves
// every payload with 16-byte vectors, so on top of ValidateMergeArgs it
// needs, else INVALID_ARGUMENT naming the field:
//   partial_out[i], out.data           16-byte aligned
//   head_size, token_stride, head_stride  multiples of 16 / sizeof(dtype)
//                                        (8 for fp16/bf16, 4 for fp32)
// Attention kernels and allocators produce exactly this (D = 64..576,
// cudaMalloc'd buffers are 256-byte aligned), so a scalar path would only
// serve malformed callers; the CPU backend handles any layout.
#include "kernels/cuda/merge_launcher.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/merge_kernel_launch.h"
#include "kernels/cuda/merge_launcher_internal.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {
namespace {

static_assert(static_cast<int>(DType::kFloat32) == cuda::kKernelF32 &&
                  static_cast<int>(DType::kFloat16) == cuda::kKernelF16 &&
                  static_cast<int>(DType::kBFloat16) == cuda::kKernelBF16,
              "dtype codes mismatch");
static_assert(
    static_cast<int>(OutputMode::kFp8PerTensor) == cuda::kModeFp8PerTensor &&
        static_cast<int>(OutputMode::kFp8PerToken) == cuda::kModeFp8PerToken &&
        static_cast<int>(OutputMode::kFp8PerGroup) == cuda::kModeFp8PerGroup &&
        static_cast<int>(OutputMode::kPassthrough) == cuda::kModePassthrough,
    "mode codes mismatch");

absl::Status Aligned16(const void* p, absl::string_view field) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " must be 16-byte aligned for the GPU kernel's vector loads"));
  }
  return absl::OkStatus();
}

absl::Status MultipleOf(int64_t v, int64_t m, absl::string_view field,
                        absl::string_view dtype) {
  if (v % m != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " (", v, ") must be a multiple of ", m, " elements (16 bytes of ",
        dtype, ") for the GPU kernel"));
  }
  return absl::OkStatus();
}

absl::Status ValidateGpuMergeArgs(const MergeArgs& args) {
  if (absl::Status s = ValidateMergeArgs(args); !s.ok()) return s;
  const int64_t vec = 16 / static_cast<int64_t>(DTypeSize(args.config.input_dtype));
  const absl::string_view dt = DTypeName(args.config.input_dtype);
  if (absl::Status s = MultipleOf(args.shape.head_size, vec, "shape.head_size", dt);
      !s.ok())
    return s;
  if (absl::Status s = MultipleOf(args.token_stride, vec, "token_stride", dt); !s.ok())
    return s;
  if (absl::Status s = MultipleOf(args.head_stride, vec, "head_stride", dt); !s.ok())
    return s;
  if (args.shape.num_tokens == 0) return absl::OkStatus();
  for (int i = 0; i < args.shape.num_parts; ++i) {
    if (absl::Status s =
            Aligned16(args.partial_out[i], absl::StrCat("partial_out[", i, "]"));
        !s.ok())
      return s;
  }
  if (absl::Status s = Aligned16(args.out.data, "out.data"); !s.ok()) return s;
  return absl::OkStatus();
}

cuda::MergeKernelParams ToKernelParams(const MergeArgs& args) {
  cuda::MergeKernelParams k;
  for (int i = 0; i < args.shape.num_parts; ++i) {
    k.part_out[i] = args.partial_out[i];
    k.part_lse[i] = args.partial_lse[i];
  }
  cuda::MergeProblem& p = k.problem;
  p.out = args.out.data;
  p.out_scales = static_cast<float*>(args.out_scales.data);
  p.out_lse = static_cast<float*>(args.out_lse.data);
  p.static_scale = args.static_scale;
  p.num_tokens = args.shape.num_tokens;
  p.token_stride = args.token_stride;
  p.head_stride = args.head_stride;
  p.num_heads = args.shape.num_heads;
  p.head_size = args.shape.head_size;
  p.num_parts = args.shape.num_parts;
  p.lse_tokens_heads = args.config.lse_layout == LseLayout::kTokensHeads ? 1 : 0;
  const bool natural = args.config.lse_base == LseBase::kNatural;
  p.lse_to_log2 = natural ? 1.4426950408889634f : 1.0f;
  p.log2_to_lse = natural ? 0.6931471805599453f : 1.0f;
  p.group_size = args.config.group_size;
  p.power_of_two_scales = args.config.power_of_two_scales ? 1 : 0;
  return k;
}

}  // namespace

absl::Status MergeOnGpuWithOptions(const MergeArgs& args, cudaStream_t stream,
                                   const cuda::MergeLaunchOptions& options) {
  if (absl::Status s = ValidateGpuMergeArgs(args); !s.ok()) return s;
  if (args.shape.num_tokens == 0) return absl::OkStatus();
  const cudaError_t err = cuda::LaunchMergeKernel(
      ToKernelParams(args), static_cast<int32_t>(args.config.input_dtype),
      static_cast<int32_t>(args.config.output_mode), stream, options);
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat("merge kernel launch failed: ",
                                            cudaGetErrorName(err), ": ",
                                            cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

absl::Status MergeOnGpu(const MergeArgs& args, cudaStream_t stream, bool enable_pdl) {
  cuda::MergeLaunchOptions options;
  options.pdl = enable_pdl ? 1 : 0;
  return MergeOnGpuWithOptions(args, stream, options);
}

}  // namespace dcpmerge
