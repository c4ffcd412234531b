// Scalar number formats shared by host and device code: FP8 E4M3 (the "fn"
// variant: no infinities, max 448), IEEE half, bfloat16, and the dynamic FP8
// scale rule. Everything here is the same function on the CPU and the GPU;
// the CUDA kernel may use hardware conversions only where tests prove them
// bit-exact with these.
#ifndef DCPMERGE_KERNELS_NUMERIC_H_
#define DCPMERGE_KERNELS_NUMERIC_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DCPMERGE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DCPMERGE_HOST_DEVICE inline
#endif

namespace dcpmerge {

inline constexpr float kFp8E4M3Max = 448.0f;
// Smallest dynamic scale: 2^-120 keeps 1/scale finite and is a power of two,
// so the power-of-two rounding leaves it unchanged.
inline constexpr float kMinDynamicFp8Scale = 7.52316384526264e-37f;  // 2^-120

DCPMERGE_HOST_DEVICE uint32_t FloatBits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}

DCPMERGE_HOST_DEVICE float BitsToFloat(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof(x));
  return x;
}

// float -> e4m3fn code: round to nearest even; finite values beyond the
// range and +-inf saturate to +-448 (0x7E | sign); NaN -> 0x7F | sign.
// Bit-exact with __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3).
DCPMERGE_HOST_DEVICE uint8_t EncodeE4M3(float x);
// e4m3fn code -> float (exact); 0x7F/0xFF -> NaN.
DCPMERGE_HOST_DEVICE float DecodeE4M3(uint8_t code);

// IEEE binary16 and bfloat16 <-> float; float -> 16 bit rounds to nearest
// even, NaN stays NaN (quiet), overflow goes to inf as IEEE says.
DCPMERGE_HOST_DEVICE float HalfBitsToFloat(uint16_t h);
DCPMERGE_HOST_DEVICE uint16_t FloatToHalfBits(float x);
DCPMERGE_HOST_DEVICE float BFloat16BitsToFloat(uint16_t b);
DCPMERGE_HOST_DEVICE uint16_t FloatToBFloat16Bits(float x);

// The scale of a dynamically quantized block whose largest finite |value| is
// amax: amax / 448, at least kMinDynamicFp8Scale; 1 for an all-zero (or
// all-non-finite) block. With power_of_two, rounded up to the next power of
// two (exact rescaling, as DeepSeek-style block FP8 expects).
DCPMERGE_HOST_DEVICE float DynamicFp8Scale(float amax, bool power_of_two) {
  if (!(amax > 0.0f)) return 1.0f;
  float scale = amax / kFp8E4M3Max;
  if (scale < kMinDynamicFp8Scale) scale = kMinDynamicFp8Scale;
  if (power_of_two) {
    const uint32_t bits = FloatBits(scale);
    if ((bits & 0x007FFFFFu) != 0) {
      scale = BitsToFloat((bits & 0x7F800000u) + 0x00800000u);
    }
  }
  return scale;
}

}  // namespace dcpmerge


#endif  // DCPMERGE_KERNELS_NUMERIC_H_
