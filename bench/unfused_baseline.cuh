// The project's own unfused baseline, for the benchmark only: what a
// service without the fused kernel does.
//   Merge2Kernel   one 2-way merge in the input dtype (vLLM's
//                  merge_attn_states without FP8): (O_a, L_a) + (O_b, L_b)
//                  -> (O, L), 16-byte loads/stores, one 16-byte chunk per
//                  thread, LSE layout [H,T], natural log.
//   QuantKernel    static per-tensor FP8 quantization of [T,H,D] in the
//                  input dtype, 16-byte loads, 8- or 4-byte stores.
// A chain of N-1 Merge2Kernel launches then one QuantKernel = the unfused
// N-way merge + FP8.
#ifndef DCPMERGE_BENCH_UNFUSED_BASELINE_CUH_
#define DCPMERGE_BENCH_UNFUSED_BASELINE_CUH_

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/vec.cuh"

namespace dcpmerge {
namespace bench {

template <typename T>
__global__ void Merge2Kernel(const T* __restrict__ a, const float* __restrict__ la,
                             const T* __restrict__ b, const float* __restrict__ lb,
                             T* __restrict__ out, float* __restrict__ lout,
                             int64_t num_tokens, int num_heads, int head_size) {
  using cuda::Vec;
  constexpr int kVec = cuda::VecWidth<T>::kElems;
  const int ipr = head_size / kVec;
  const int64_t items = num_tokens * num_heads * ipr;
  const int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (it >= items) return;
  const int64_t row = it / ipr;
  const int64_t t = row / num_heads;
  const int h = static_cast<int>(row - t * num_heads);
  const int64_t li = h * num_tokens + t;
  float lsa = la[li], lsb = lb[li];
  lsa = fabsf(lsa) <= FLT_MAX ? lsa : -INFINITY;
  lsb = fabsf(lsb) <= FLT_MAX ? lsb : -INFINITY;
  const float m = fmaxf(lsa, lsb);
  const Vec<T> va = cuda::LoadVec(a + it * kVec);
  const Vec<T> vb = cuda::LoadVec(b + it * kVec);
  float fa[kVec], fb[kVec], o[kVec];
  cuda::ToFloats(va, fa);
  cuda::ToFloats(vb, fb);
  if (m == -INFINITY) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) o[e] = 0.0f;
    if (it % ipr == 0) lout[li] = -INFINITY;
  } else {
    const float wa = lsa == -INFINITY ? 0.0f : __expf(lsa - m);
    const float wb = lsb == -INFINITY ? 0.0f : __expf(lsb - m);
    const float inv = 1.0f / (wa + wb);
#pragma unroll
    for (int e = 0; e < kVec; ++e)
      o[e] = (wa == 0.0f ? 0.0f : wa * fa[e]) * inv + (wb == 0.0f ? 0.0f : wb * fb[e]) * inv;
    if (it % ipr == 0) lout[li] = m + __logf(wa + wb);
  }
  cuda::StoreVec(out + it * kVec, cuda::FromFloats(o, static_cast<T*>(nullptr)));
}

template <typename T>
__global__ void QuantKernel(const T* __restrict__ in, const float* __restrict__ scale,
                            uint8_t* __restrict__ out, int64_t items) {
  constexpr int kVec = cuda::VecWidth<T>::kElems;
  const int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (it >= items) return;
  const float inv = 1.0f / __ldg(scale);
  float f[kVec];
  cuda::ToFloats(cuda::LoadVec(in + it * kVec), f);
#pragma unroll
  for (int e = 0; e < kVec; ++e) f[e] *= inv;
  using Word = typename cuda::Fp8Word<kVec>::Type;
  reinterpret_cast<Word*>(out)[it] = cuda::Fp8Word<kVec>::Pack(f);
}

}  // namespace bench
}  // namespace dcpmerge

#endif  // DCPMERGE_BENCH_UNFUSED_BASELINE_CUH_
