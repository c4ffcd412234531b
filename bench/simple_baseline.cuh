// The strongest simple alternative, for the benchmark only: the fused merge
// + FP8 a user would write in an afternoon, without the service's kernel.
//
//   SimpleMergeKernel<T, N, kPerGroup, Index>
//     One thread per 16-byte vector of a row (W = 16/sizeof(T) elements),
//     its indices in Index: uint32_t whenever T*H*D < 2^32, as vLLM's
//     merge_attn_states kernel does (the honest baseline: three 32-bit
//     divisions by run-time values), int64_t beyond (and as an extra
//     column of the benchmark, the previous rounds' baseline);
//     128-thread CTAs; N (2, 4, 8, 16) is a template parameter, so the N LSE loads
//     and the N payload loads are all issued before any arithmetic; the
//     part pointers travel in a 16+16-pointer parameter block.
//     Inputs packed [T,H,D], LSE [H,T], natural log; a part whose LSE is
//     -inf has weight 0, a row with every part empty gives 0.
//     kPerGroup = false: FP8 codes of O / *scale (per-tensor static scale).
//     kPerGroup = true:  one dynamic scale per group of 128 elements along
//                        D: amax over the group's 128/W lanes by xor
//                        shuffles, scale = amax / 448 (1 for an all-zero
//                        group), one scale store per group.
// It has none of the service's generality (N > 16, strides, LSE base and
// layout, NaN/+inf LSEs, other modes): it is what the fused kernel must beat
// on the shapes it does cover.
#ifndef DCPMERGE_BENCH_SIMPLE_BASELINE_CUH_
#define DCPMERGE_BENCH_SIMPLE_BASELINE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/vec.cuh"

namespace dcpmerge {
namespace bench {

struct SimpleParams {
  const void* out[16];
  const float* lse[16];
  uint8_t* codes;
  float* scales;       // per group
  const float* scale;  // per tensor
  int64_t num_tokens;
  int num_heads;
  int head_size;
};

template <typename T, int N, bool kPerGroup, typename Index>
__global__ void __launch_bounds__(128) SimpleMergeKernel(const SimpleParams p) {
  constexpr int W = cuda::VecWidth<T>::kElems;
  const Index items = static_cast<Index>(p.num_tokens) * p.num_heads * (p.head_size / W);
  const Index i = static_cast<Index>(blockIdx.x) * 128 + threadIdx.x;
  const bool valid = i < items;
  const Index k = valid ? i : items - 1;  // idle lanes still join the shuffles
  const Index row = k / static_cast<Index>(p.head_size / W);
  const Index t = row / static_cast<Index>(p.num_heads);
  const Index h = row % static_cast<Index>(p.num_heads);
  const Index li = h * static_cast<Index>(p.num_tokens) + t;
  float l[N];
  cuda::Vec<T> v[N];
#pragma unroll
  for (int j = 0; j < N; ++j) {
    l[j] = p.lse[j][li];
    v[j] = cuda::LoadVec(static_cast<const T*>(p.out[j]) + k * W);
  }
  float m = l[0];
#pragma unroll
  for (int j = 1; j < N; ++j) m = fmaxf(m, l[j]);
  float acc[W] = {};
  if (m != -INFINITY) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float w = __expf(l[j] - m);
      s += w;
      float f[W];
      cuda::ToFloats(v[j], f);
#pragma unroll
      for (int e = 0; e < W; ++e) acc[e] += w * f[e];
    }
    const float inv = 1.0f / s;
#pragma unroll
    for (int e = 0; e < W; ++e) acc[e] *= inv;
  }
  float inv_scale;
  if constexpr (kPerGroup) {
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < W; ++e) amax = fmaxf(amax, fabsf(acc[e]));
    for (int o = 128 / W / 2; o > 0; o >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
    const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    inv_scale = 1.0f / scale;
    if (valid && (k % (128 / W)) == 0) p.scales[k / (128 / W)] = scale;
  } else {
    inv_scale = 1.0f / *p.scale;
  }
  if (!valid) return;
#pragma unroll
  for (int e = 0; e < W; ++e) acc[e] *= inv_scale;
  using Word = typename cuda::Fp8Word<W>::Type;
  reinterpret_cast<Word*>(p.codes)[k] = cuda::Fp8Word<W>::Pack(acc);
}

// Whether T*H*D fits the 32-bit index path.
inline bool SimpleFits32(const SimpleParams& p) {
  return p.num_tokens * p.num_heads * p.head_size <= int64_t{0xFFFFFFFF};
}

// Launches the instance for n parts: n = 2, 4, 8 or 16, the benchmark's
// grid (cudaErrorInvalidValue for any other n, or for 32-bit indices on a
// problem that does not fit them).
template <typename T, bool kPerGroup, typename Index>
cudaError_t LaunchSimpleMerge(const SimpleParams& p, int n, cudaStream_t st) {
  if (sizeof(Index) < 8 && !SimpleFits32(p)) return cudaErrorInvalidValue;
  const int64_t items = p.num_tokens * p.num_heads * (p.head_size / cuda::VecWidth<T>::kElems);
  const unsigned blocks = static_cast<unsigned>((items + 127) / 128);
  switch (n) {
    case 2: SimpleMergeKernel<T, 2, kPerGroup, Index><<<blocks, 128, 0, st>>>(p); break;
    case 4: SimpleMergeKernel<T, 4, kPerGroup, Index><<<blocks, 128, 0, st>>>(p); break;
    case 8: SimpleMergeKernel<T, 8, kPerGroup, Index><<<blocks, 128, 0, st>>>(p); break;
    case 16: SimpleMergeKernel<T, 16, kPerGroup, Index><<<blocks, 128, 0, st>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace bench
}  // namespace dcpmerge

#endif  // DCPMERGE_BENCH_SIMPLE_BASELINE_CUH_
