// Vectorised global-memory access for the merge kernel: one 16-byte load or
// store per call, plus the conversions between storage types and fp32.
//
//   Vec<T>            16 bytes of T (8 x bf16/fp16, 4 x fp32), 16-aligned.
//   LoadVec / StoreVec  ld.global.v4.u32 / st.global.v4.u32 (LDG.E.128).
//   ToFloats / FromFloats  16 bytes <-> fp32 values, round to nearest even.
//   Fp8Word<n>::Pack   n floats -> n E4M3 codes (satfinite, RNE) in one
//                      register word of n bytes (n = 4, 8 or 16): the
//                      hardware conversion on sm_89 and later, the
//                      bit-exact software encoder (numeric.h) before.
//
// Nothing here allocates or synchronises; every function is inlined.
#ifndef DCPMERGE_KERNELS_CUDA_VEC_CUH_
#define DCPMERGE_KERNELS_CUDA_VEC_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/numeric.h"

namespace dcpmerge {
namespace cuda {

// Element count of one 16-byte vector of T.
template <typename T>
struct VecWidth {
  static constexpr int kElems = 16 / static_cast<int>(sizeof(T));
};

// 16 bytes of raw storage holding kElems values of T.
template <typename T>
struct alignas(16) Vec {
  static constexpr int kElems = VecWidth<T>::kElems;
  uint4 raw;
};

// Read-only 16-byte load through the non-coherent path: the kernel never
// writes its inputs.
template <typename T>
__device__ __forceinline__ Vec<T> LoadVec(const T* p) {
  Vec<T> v;
  v.raw = __ldg(reinterpret_cast<const uint4*>(p));
  return v;
}

template <typename T>
__device__ __forceinline__ void StoreVec(T* p, const Vec<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

__device__ __forceinline__ uint32_t Word(const uint4& r, int i) {
  return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}

// Vec -> kElems floats (exact widening).
__device__ __forceinline__ void ToFloats(const Vec<float>& v, float* f) {
  f[0] = __uint_as_float(v.raw.x);
  f[1] = __uint_as_float(v.raw.y);
  f[2] = __uint_as_float(v.raw.z);
  f[3] = __uint_as_float(v.raw.w);
}
__device__ __forceinline__ void ToFloats(const Vec<__nv_bfloat16>& v, float* f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t w = Word(v.raw, i);
    f[2 * i] = __uint_as_float(w << 16);
    f[2 * i + 1] = __uint_as_float(w & 0xFFFF0000u);
  }
}
__device__ __forceinline__ void ToFloats(const Vec<__half>& v, float* f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t w = Word(v.raw, i);
    f[2 * i] = __half2float(__ushort_as_half(static_cast<uint16_t>(w & 0xFFFFu)));
    f[2 * i + 1] = __half2float(__ushort_as_half(static_cast<uint16_t>(w >> 16)));
  }
}

// kElems floats -> Vec, round to nearest even (passthrough output).
__device__ __forceinline__ Vec<float> FromFloats(const float* f, float*) {
  Vec<float> v;
  v.raw = make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]),
                     __float_as_uint(f[2]), __float_as_uint(f[3]));
  return v;
}
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi)))
          << 16);
}
__device__ __forceinline__ uint32_t PackHalfx2(float lo, float hi) {
  return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
         (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16);
}
__device__ __forceinline__ Vec<__nv_bfloat16> FromFloats(const float* f,
                                                         __nv_bfloat16*) {
  Vec<__nv_bfloat16> v;
  v.raw = make_uint4(PackBf16x2(f[0], f[1]), PackBf16x2(f[2], f[3]),
                     PackBf16x2(f[4], f[5]), PackBf16x2(f[6], f[7]));
  return v;
}
__device__ __forceinline__ Vec<__half> FromFloats(const float* f, __half*) {
  Vec<__half> v;
  v.raw = make_uint4(PackHalfx2(f[0], f[1]), PackHalfx2(f[2], f[3]),
                     PackHalfx2(f[4], f[5]), PackHalfx2(f[6], f[7]));
  return v;
}

// Two floats -> two E4M3 codes, lo in the low byte. From sm_89 on this is
// one cvt.rn.satfinite.e4m3x2.f32, bit-exact with EncodeE4M3
// (tests/kernels/cuda checks all 2^32 inputs); earlier GPUs have no FP8
// conversion and run EncodeE4M3 itself.
__device__ __forceinline__ uint32_t Fp8x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  return static_cast<uint32_t>(
      __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3));
#else
  return static_cast<uint32_t>(EncodeE4M3(lo)) |
         (static_cast<uint32_t>(EncodeE4M3(hi)) << 8);
#endif
}

// Codes for n consecutive floats, packed little-endian into a word of n
// bytes: n == 4 -> uint32_t, n == 8 -> uint2, n == 16 -> uint4.
template <int N>
struct Fp8Word;
template <>
struct Fp8Word<4> {
  using Type = uint32_t;
  static __device__ __forceinline__ Type Pack(const float* x) {
    return Fp8x2(x[0], x[1]) | (Fp8x2(x[2], x[3]) << 16);
  }
};
template <>
struct Fp8Word<8> {
  using Type = uint2;
  static __device__ __forceinline__ Type Pack(const float* x) {
    return make_uint2(Fp8Word<4>::Pack(x), Fp8Word<4>::Pack(x + 4));
  }
};
template <>
struct Fp8Word<16> {
  using Type = uint4;
  static __device__ __forceinline__ Type Pack(const float* x) {
    return make_uint4(Fp8Word<4>::Pack(x), Fp8Word<4>::Pack(x + 4),
                      Fp8Word<4>::Pack(x + 8), Fp8Word<4>::Pack(x + 12));
  }
};

}  // namespace cuda
}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_VEC_CUH_
