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

// c ? a : b without a branch; written with masks so that compilers keep it
// branch-free and vectorize loops around it (a plain ?: is often not
// if-converted by GCC's vectorizer).
DCPMERGE_HOST_DEVICE uint32_t SelectBits(bool c, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

// float -> e4m3fn code: round to nearest even; finite values beyond the
// range and +-inf saturate to +-448 (0x7E | sign); every NaN -> 0x7F.
// The sign is kept on underflow (-0 and tiny negatives -> 0x80).
// Bit-exact with __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3).
//
// Branch-free (mask selects only). Needs the default rounding mode (nearest
// even) for the subnormal path; the result does not depend on FTZ/DAZ,
// since float subnormals are far below half the smallest e4m3 subnormal.
DCPMERGE_HOST_DEVICE uint8_t EncodeE4M3(float x) {
  const uint32_t u = FloatBits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // |x| >= 2^-6 (e4m3 normal): rebias the exponent (127 -> 7) and round the
  // 23-bit mantissa to 3 bits, ties to even; a carry bumps the exponent.
  // Unsigned wrap-around when |x| is smaller is harmless: not selected.
  const uint32_t normal =
      (a + 0x7FFFFu + ((a >> 20) & 1u) - (120u << 23)) >> 20;
  // |x| < 2^-6: codes are k * 2^-9, k = 0..8 (8 is the smallest normal,
  // code 0x08). Adding 2^14, whose ulp is 2^-9, rounds |x| to the nearest
  // multiple of 2^-9 (ties to even) and leaves k in the low mantissa bits.
  const uint32_t sub = FloatBits(BitsToFloat(a) + 16384.0f) - 0x46800000u;
  uint32_t code = SelectBits(a < 0x3C800000u, sub, normal);
  // (448, 464] rounds to 448 (tie goes to the even 0x7E); anything larger,
  // inf included, would round to 480, which e4m3fn saturates to 448.
  code = SelectBits(a > 0x43E00000u, 0x7Eu, code);
  // Every NaN becomes the positive NaN code 0x7F: the hardware conversion
  // drops a NaN's sign (checked over all 2^32 inputs on an H100).
  return static_cast<uint8_t>(SelectBits(a > 0x7F800000u, 0x7Fu, code | sign));
}

// e4m3fn code -> float (exact); 0x7F/0xFF -> quiet NaN with the code's sign.
DCPMERGE_HOST_DEVICE float DecodeE4M3(uint8_t code) {
  const uint32_t c = code;
  const uint32_t m = c & 0x7Fu;
  const uint32_t sign = (c & 0x80u) << 24;
  // Exponent field 1..15: rebias 7 -> 127 and widen the mantissa.
  const uint32_t normal = (m << 20) + (120u << 23);
  // Exponent field 0: (m & 7) * 2^-9, exact.
  const uint32_t sub =
      FloatBits(static_cast<float>(static_cast<int32_t>(m)) * 0.001953125f);
  uint32_t bits = SelectBits(m < 8u, sub, normal);
  bits = SelectBits(m == 0x7Fu, 0x7FC00000u, bits);
  return BitsToFloat(bits | sign);
}

// IEEE binary16 and bfloat16 <-> float; float -> 16 bit rounds to nearest
// even, NaN stays NaN (made quiet, sign and top payload bits kept),
// overflow goes to inf as IEEE says. 16 bit -> float is exact (a signaling
// NaN comes back quiet).
DCPMERGE_HOST_DEVICE float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t em = static_cast<uint32_t>(h) & 0x7FFFu;
  // Normal: rebias 15 -> 127.
  const uint32_t normal = (em << 13) + (112u << 23);
  // inf / NaN: exponent 255, payload kept, quiet bit set for NaN.
  const uint32_t special = 0x7F800000u | ((em & 0x3FFu) << 13) |
                           SelectBits(em > 0x7C00u, 0x00400000u, 0u);
  // Subnormal (and zero): em * 2^-24, exact.
  const uint32_t sub = FloatBits(static_cast<float>(static_cast<int32_t>(em)) *
                                 5.9604644775390625e-8f);
  uint32_t bits = SelectBits(em < 0x0400u, sub, normal);
  bits = SelectBits(em >= 0x7C00u, special, bits);
  return BitsToFloat(bits | sign);
}

DCPMERGE_HOST_DEVICE uint16_t FloatToHalfBits(float x) {
  const uint32_t u = FloatBits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // |x| >= 2^-14 (half normal): rebias 127 -> 15, round 23 -> 10 bits,
  // ties to even (a carry may reach the exponent, even up to inf).
  const uint32_t normal =
      (a + 0x0FFFu + ((a >> 13) & 1u) - (112u << 23)) >> 13;
  // |x| < 2^-14: multiples of 2^-24; adding 0.5 (ulp 2^-24) rounds there.
  const uint32_t sub = FloatBits(BitsToFloat(a) + 0.5f) - 0x3F000000u;
  uint32_t h = SelectBits(a < 0x38800000u, sub, normal);
  // >= 65520 (midpoint of 65504 and 2^16, tie to the even inf) and inf.
  h = SelectBits(a >= 0x477FF000u, 0x7C00u, h);
  h = SelectBits(a > 0x7F800000u, 0x7E00u | ((a >> 13) & 0x3FFu), h);  // qNaN
  return static_cast<uint16_t>(h | sign);
}

DCPMERGE_HOST_DEVICE float BFloat16BitsToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  bits |= SelectBits((bits & 0x7FFFFFFFu) > 0x7F800000u, 0x00400000u, 0u);
  return BitsToFloat(bits);
}

DCPMERGE_HOST_DEVICE uint16_t FloatToBFloat16Bits(float x) {
  const uint32_t u = FloatBits(x);
  // Ties to even; the carry out of the mantissa rounds FLT_MAX-ish to inf.
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>(
      SelectBits((u & 0x7FFFFFFFu) > 0x7F800000u, nan, rounded));
}

// The scale of a dynamically quantized block whose largest finite |value| is
// amax: amax / 448, at least kMinDynamicFp8Scale; 1 for an all-zero (or
// all-non-finite) block, i.e. whenever amax is not a finite value > 0
// (0, negative, NaN, inf). With power_of_two, rounded up to the next power of
// two (exact rescaling, as DeepSeek-style block FP8 expects).
DCPMERGE_HOST_DEVICE float DynamicFp8Scale(float amax, bool power_of_two) {
  if (!(amax > 0.0f) || !(amax <= 3.4028234663852886e38f)) return 1.0f;
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
