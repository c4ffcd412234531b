// The one-part "merge" of merge_attn_states' tokens without prefix context:
// out[t] = part[t] as it is, as FP8 codes of part / scale (rounded exactly as
// kernels/merge_contract.h rounds: kernels/numeric.h's EncodeE4M3) or copied
// in the input dtype; out_lse[t] = part_lse[t]. One element per thread in a
// grid-stride loop: these tokens are few next to the merged ones.
#include <cstdint>

#include "capi/copy_part_launch.h"
#include "kernels/numeric.h"

namespace dcpmerge {
namespace capi {
namespace {

template <int kDType>
__device__ __forceinline__ float LoadAsFloat(const void* base, int64_t i) {
  if constexpr (kDType == 0) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (kDType == 1) {
    return HalfBitsToFloat(static_cast<const uint16_t*>(base)[i]);
  } else {
    return BFloat16BitsToFloat(static_cast<const uint16_t*>(base)[i]);
  }
}

template <int kDType, bool kFp8>
__global__ void CopyPartKernel(CopyPartParams p) {
  const int64_t H = p.num_heads, D = p.head_size;
  const int64_t rows = (p.num_tokens - p.first_token) * H;
  const int64_t n = rows * D;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float inv = 1.0f;
  if constexpr (kFp8) {
    const float s = *p.static_scale;
    // The contract's rule: a scale outside [2^-126, 2^126] (or NaN) makes
    // every code NaN.
    const bool valid = s >= 1.1754943508222875e-38f && s <= 8.5070591730234616e37f;
    inv = valid ? 1.0f / s : __int_as_float(0x7FC00000);
  }
  for (int64_t i = start; i < n; i += stride) {
    const int64_t d = i % D;
    const int64_t row = i / D;
    const int64_t h = row % H;
    const int64_t t = p.first_token + row / H;
    const int64_t src = t * p.token_stride + h * p.head_stride + d;
    const int64_t dst = (t * H + h) * D + d;
    if constexpr (kFp8) {
      static_cast<uint8_t*>(p.out)[dst] = EncodeE4M3(LoadAsFloat<kDType>(p.part, src) * inv);
    } else if constexpr (kDType == 0) {
      static_cast<float*>(p.out)[dst] = static_cast<const float*>(p.part)[src];
    } else {
      static_cast<uint16_t*>(p.out)[dst] = static_cast<const uint16_t*>(p.part)[src];
    }
  }
  if (p.out_lse != nullptr) {
    for (int64_t r = start; r < rows; r += stride) {
      const int64_t h = r % H;
      const int64_t t = p.first_token + r / H;
      const int64_t idx = p.lse_tokens_heads ? t * H + h : h * p.num_tokens + t;
      p.out_lse[idx] = p.part_lse[idx];
    }
  }
}

template <int kDType>
void Launch(const CopyPartParams& p, bool fp8, int blocks, cudaStream_t stream) {
  if (fp8) {
    CopyPartKernel<kDType, true><<<blocks, 256, 0, stream>>>(p);
  } else {
    CopyPartKernel<kDType, false><<<blocks, 256, 0, stream>>>(p);
  }
}

}  // namespace

cudaError_t LaunchCopyPart(const CopyPartParams& p, cudaStream_t stream) {
  if (p.first_token >= p.num_tokens) return cudaSuccess;
  if (p.num_heads <= 0 || p.head_size <= 0 || p.first_token < 0) return cudaErrorInvalidValue;
  const int64_t n = (p.num_tokens - p.first_token) * p.num_heads * p.head_size;
  int64_t blocks = (n + 255) / 256;
  if (blocks > 8192) blocks = 8192;  // grid-stride beyond
  if (blocks < 1) blocks = 1;
  switch (p.dtype) {
    case 0:
      Launch<0>(p, p.fp8 != 0, static_cast<int>(blocks), stream);
      break;
    case 1:
      Launch<1>(p, p.fp8 != 0, static_cast<int>(blocks), stream);
      break;
    case 2:
      Launch<2>(p, p.fp8 != 0, static_cast<int>(blocks), stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace capi
}  // namespace dcpmerge
