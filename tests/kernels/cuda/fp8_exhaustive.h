// Device side of the exhaustive FP8 test: hardware E4M3 conversion against
// the inline EncodeE4M3 (numeric.h) compiled for the device. Plain C++ so
// the g++-compiled test can call it.
#ifndef DCPMERGE_TESTS_KERNELS_CUDA_FP8_EXHAUSTIVE_H_
#define DCPMERGE_TESTS_KERNELS_CUDA_FP8_EXHAUSTIVE_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace dcpmerge {
namespace testing {

// Device counters: [0] hardware scalar cvt != device EncodeE4M3,
// [1] packed x2 cvt (low and high byte) != device EncodeE4M3;
// examples[0..15]: float bits of the first mismatches (any kind).
struct Fp8DeviceCounters {
  unsigned long long mismatch_scalar;
  unsigned long long mismatch_x2;
  unsigned int num_examples;
  uint32_t examples[16];       // float bits
  uint32_t example_codes[16];  // hw | sw << 8 | x2_lo << 16 | x2_hi << 24
};

// For every bit pattern u in [first, first + count): writes the hardware
// code of BitsToFloat(u) to codes[u - first] and counts mismatches into
// *counters (device memory, zeroed by the caller).
cudaError_t Fp8ConvertRange(uint64_t first, uint64_t count, uint8_t* codes,
                            Fp8DeviceCounters* counters, cudaStream_t stream);

}  // namespace testing
}  // namespace dcpmerge

#endif  // DCPMERGE_TESTS_KERNELS_CUDA_FP8_EXHAUSTIVE_H_
