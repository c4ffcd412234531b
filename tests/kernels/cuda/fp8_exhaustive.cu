#include "tests/kernels/cuda/fp8_exhaustive.h"

#include <cuda_fp8.h>

#include "kernels/cuda/vec.cuh"
#include "kernels/numeric.h"

namespace dcpmerge {
namespace testing {
namespace {

__device__ void Record(Fp8DeviceCounters* c, uint32_t bits, uint32_t codes) {
  const unsigned slot = atomicAdd(&c->num_examples, 1u);
  if (slot < 16) {
    c->examples[slot] = bits;
    c->example_codes[slot] = codes;
  }
}

__global__ void ConvertKernel(uint64_t first, uint64_t count, uint8_t* codes,
                              Fp8DeviceCounters* counters) {
  unsigned long long bad_scalar = 0, bad_x2 = 0;
  for (uint64_t k = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
       k < count; k += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint32_t u = static_cast<uint32_t>(first + k);
    const float x = BitsToFloat(u);
    const uint8_t hw = static_cast<uint8_t>(
        __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
    const uint8_t sw = EncodeE4M3(x);
    // The packed path used by the merge kernel, with a second, unrelated
    // pattern in the high half.
    const float y = BitsToFloat(u * 2654435761u + 0x9E3779B9u);
    const uint32_t pair = cuda::Fp8x2(x, y);
    codes[k] = hw;
    const uint32_t codes = hw | (uint32_t{sw} << 8) | ((pair & 0xFFFFu) << 16);
    if (hw != sw) {
      ++bad_scalar;
      Record(counters, u, codes);
    }
    if ((pair & 0xFFu) != sw || ((pair >> 8) & 0xFFu) != EncodeE4M3(y)) {
      ++bad_x2;
      if (hw == sw) Record(counters, u, codes);
    }
  }
  // Warp-aggregated counters.
  for (int o = 16; o > 0; o >>= 1) {
    bad_scalar += __shfl_xor_sync(0xFFFFFFFFu, bad_scalar, o);
    bad_x2 += __shfl_xor_sync(0xFFFFFFFFu, bad_x2, o);
  }
  if ((threadIdx.x & 31) == 0 && (bad_scalar | bad_x2) != 0) {
    atomicAdd(&counters->mismatch_scalar, bad_scalar);
    atomicAdd(&counters->mismatch_x2, bad_x2);
  }
}

}  // namespace

cudaError_t Fp8ConvertRange(uint64_t first, uint64_t count, uint8_t* codes,
                            Fp8DeviceCounters* counters, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int threads = 256;
  uint64_t blocks = (count + threads - 1) / threads;
  if (blocks > 132 * 32) blocks = 132 * 32;
  ConvertKernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      first, count, codes, counters);
  return cudaGetLastError();
}

}  // namespace testing
}  // namespace dcpmerge
