// Plain C++ interface to the nvcc-compiled copy kernel (copy_part.cu), as
// kernels/cuda/merge_kernel_launch.h is to the merge kernel: no absl, no
// contract types. Callers validate (merge_api.cc does).
#ifndef DCPMERGE_CAPI_COPY_PART_LAUNCH_H_
#define DCPMERGE_CAPI_COPY_PART_LAUNCH_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace dcpmerge {
namespace capi {

struct CopyPartParams {
  const void* part = nullptr;      // [T,H,D] with the strides below
  const float* part_lse = nullptr;  // T*H floats (layout below)
  void* out = nullptr;              // contiguous [T,H,D]: FP8 codes or the input dtype
  float* out_lse = nullptr;         // optional
  const float* static_scale = nullptr;  // fp8: device pointer, read at run time
  int64_t num_tokens = 0;
  int64_t first_token = 0;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
  int32_t num_heads = 0;
  int32_t head_size = 0;
  int32_t dtype = 0;             // 0 fp32, 1 fp16, 2 bf16
  int32_t fp8 = 0;               // 1: FP8 codes of x / scale; 0: copy
  int32_t lse_tokens_heads = 0;  // 1: t*H+h; 0: h*T+t
};

// Enqueues the copy of tokens [first_token, num_tokens) on `stream`. No
// allocation, no synchronisation.
cudaError_t LaunchCopyPart(const CopyPartParams& params, cudaStream_t stream);

}  // namespace capi
}  // namespace dcpmerge

#endif  // DCPMERGE_CAPI_COPY_PART_LAUNCH_H_
