// The fused N-way merge (+ FP8 quantization) kernel family.
//
// Semantics: kernels/merge_contract.h. Layout, as the kernel sees it:
//   part i payload  O_i[t,h,d] at part_out[i] + t*token_stride + h*head_stride
//                   + d (elements of T; d contiguous; 16-byte aligned base,
//                   strides and D multiples of the 16-byte vector width)
//   part i LSE      L_i[t,h] at part_lse[i] + (t*H + h)   [T,H] layout
//                                          or (h*T + t)   [H,T] layout
//   output          out[(t*H + h)*D + d], contiguous [T,H,D]: one byte per
//                   FP8 code, or T for passthrough
//   scales          per token: out_scales[t]; per group of G along d:
//                   out_scales[(t*H + h)*(D/G) + d/G]
// A "row" is one (t,h) pair, row = t*H + h (int64). An "item" is the W =
// CHUNKS * 16/sizeof(T) consecutive elements of a row that one thread
// merges: CHUNKS 16-byte loads per part, one store of W codes (W bytes: 8
// for 16-bit inputs with CHUNKS = 1, 16 with CHUNKS = 2, 4 or 8 for fp32)
// or of W input values. Items are numbered row * (D / W) + c.
//
// Per item, one thread, no shared memory and no barrier (MergeItem):
//   a. issue, all at once, the LSE loads and the 16-byte payload loads of
//      parts 0..NB-1 (NB = 2, 4 or 8, the smallest >= N; the 16 threads of
//      a row load the same LSE word, one broadcast transaction): a single
//      DRAM round trip before the first FMA, NB*CHUNKS loads in flight;
//   b. m = max over finite LSEs, s = sum exp2((L_i - m) * k) (k = log2 e for
//      natural LSEs, 1 for base 2), parts >= NB re-read from L1;
//   c. acc = sum over non-empty parts of w_i * O_i in fp32 (empty parts are
//      skipped by a select: their payload may be NaN garbage), NB parts per
//      batch; then acc *= 1/s; the row's first thread writes out_lse.
// Emit, per mode:
//   kModePassthrough   RNE to T, 16-byte stores;
//   kModeFp8PerTensor  codes of O * (1 / *static_scale); a scale that
//                      IsValidFp8Scale rejects gives NaN codes;
//   kModeFp8PerGroup   amax over the G/W lanes of a group by xor shuffles (a
//                      group is always G/W aligned lanes of one warp: rows
//                      start at multiples of D/W items, CTAs at multiples of
//                      32), scale = DynamicFp8Scale(amax), codes, one scale
//                      store per group;
//   kModeFp8PerToken   one CTA per token: its items stay in registers
//                      (SLOTS per thread), a block reduction gives amax,
//                      then codes. If the token's H*D exceeds threads *
//                      SLOTS * W, the fallback streams the payload twice
//                      (amax pass, then recompute and store).
// Grid-wide loops are uniform per warp, so idle lanes still join shuffles.
// Single-wave grids (decode) also L2-prefetch parts >= NB up front.
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_CUH_
#define DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_CUH_

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/merge_kernel_launch.h"
#include "kernels/cuda/vec.cuh"
#include "kernels/numeric.h"

namespace dcpmerge {
namespace cuda {

inline constexpr int kMaxThreadsPerCta = 512;

__device__ __forceinline__ float WarpMax(float v, int width) {
  for (int o = width / 2; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

__device__ __forceinline__ bool IsFiniteF(float x) {
  return fabsf(x) <= FLT_MAX;
}

// Max over all threads of the CTA of v >= 0; every thread gets the result.
__device__ __forceinline__ float BlockMax(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpMax(v, 32);
  __syncthreads();  // red may still be read by an earlier call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? red[lane] : 0.0f;
  return WarpMax(v, 32);
}

template <typename T, int MODE, int CHUNKS, int SLOTS, int NB>
struct MergeItem {
  static constexpr int kVec = VecWidth<T>::kElems;
  static constexpr int kW = CHUNKS * kVec;  // elements per item
  using Batch = Vec<T>[NB][CHUNKS];

  const MergeKernelParams& p;
  int items_per_row;

  // Loads parts j..j+NB-1 (those < N): LSEs and payload vectors.
  __device__ __forceinline__ void LoadBatch(int j, int64_t off, int64_t li,
                                            float* l, Batch& v) const {
#pragma unroll
    for (int u = 0; u < NB; ++u) {
      if (j + u < p.num_parts) {
        l[u] = __ldg(p.part_lse[j + u] + li);
        const T* src = static_cast<const T*>(p.part_out[j + u]) + off;
#pragma unroll
        for (int ch = 0; ch < CHUNKS; ++ch) v[u][ch] = LoadVec(src + ch * kVec);
      }
    }
  }

  // acc += w_u * v_u for the batch's non-empty parts.
  __device__ __forceinline__ void ConsumeBatch(int j, const float* l, float m,
                                               const Batch& v, float* acc) const {
#pragma unroll
    for (int u = 0; u < NB; ++u) {
      if (j + u < p.num_parts && IsFiniteF(l[u])) {
        const float wt = exp2f((l[u] - m) * p.lse_to_log2);
#pragma unroll
        for (int ch = 0; ch < CHUNKS; ++ch) {
          float f[kVec];
          ToFloats(v[u][ch], f);
#pragma unroll
          for (int e = 0; e < kVec; ++e)
            acc[ch * kVec + e] = fmaf(wt, f[e], acc[ch * kVec + e]);
        }
      }
    }
  }

  // The merged fp32 values of item c of `row`; the row's first item also
  // writes out_lse.
  __device__ __forceinline__ void Merge(int64_t row, int c, float* acc) const {
#pragma unroll
    for (int e = 0; e < kW; ++e) acc[e] = 0.0f;
    const int n = p.num_parts;
    const int H = p.num_heads;
    int64_t t;
    int h;
    if (row <= 0x7FFFFFFF) {  // 32-bit division where it suffices
      const uint32_t r32 = static_cast<uint32_t>(row);
      t = r32 / static_cast<uint32_t>(H);
      h = static_cast<int>(r32 - static_cast<uint32_t>(t) * H);
    } else {
      t = row / H;
      h = static_cast<int>(row - t * H);
    }
    const int64_t off = t * p.token_stride +
                        static_cast<int64_t>(h) * p.head_stride +
                        static_cast<int64_t>(c) * kW;
    const int64_t li = p.lse_tokens_heads ? row : h * p.num_tokens + t;

    float l[NB];
    Batch v;
    LoadBatch(0, off, li, l, v);  // everything of batch 0 in flight at once
    if (p.prefetch) {
      for (int i = NB; i < n; ++i) {
        const T* src = static_cast<const T*>(p.part_out[i]) + off;
#pragma unroll
        for (int ch = 0; ch < CHUNKS; ++ch)
          asm volatile("prefetch.global.L2 [%0];" ::"l"(src + ch * kVec));
      }
    }
    // m over the finite LSEs.
    float m = -INFINITY;
#pragma unroll
    for (int u = 0; u < NB; ++u)
      if (u < n && IsFiniteF(l[u])) m = fmaxf(m, l[u]);
#pragma unroll 4
    for (int i = NB; i < n; ++i) {
      const float x = __ldg(p.part_lse[i] + li);
      if (IsFiniteF(x)) m = fmaxf(m, x);
    }
    if (m == -INFINITY) {  // every part empty: O = 0, L = -inf
      if (c == 0 && p.out_lse != nullptr) p.out_lse[li] = -INFINITY;
      return;
    }
    // s in part order.
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < NB; ++u)
      if (u < n && IsFiniteF(l[u])) s += exp2f((l[u] - m) * p.lse_to_log2);
#pragma unroll 4
    for (int i = NB; i < n; ++i) {
      const float x = __ldg(p.part_lse[i] + li);
      if (IsFiniteF(x)) s += exp2f((x - m) * p.lse_to_log2);
    }
    ConsumeBatch(0, l, m, v, acc);
    for (int j = NB; j < n; j += NB) {
      LoadBatch(j, off, li, l, v);
      ConsumeBatch(j, l, m, v, acc);
    }
    const float inv = 1.0f / s;
#pragma unroll
    for (int e = 0; e < kW; ++e) acc[e] *= inv;
    if (c == 0 && p.out_lse != nullptr) p.out_lse[li] = m + log2f(s) * p.log2_to_lse;
  }

  __device__ __forceinline__ void StoreCodes(int64_t item, const float* acc,
                                             float inv) const {
    float q[kW];
#pragma unroll
    for (int e = 0; e < kW; ++e) q[e] = acc[e] * inv;
    using Word = typename Fp8Word<kW>::Type;
    reinterpret_cast<Word*>(p.out)[item] = Fp8Word<kW>::Pack(q);
  }

  __device__ __forceinline__ void StoreValues(int64_t item, const float* acc) const {
    T* dst = static_cast<T*>(p.out) + item * kW;
#pragma unroll
    for (int ch = 0; ch < CHUNKS; ++ch)
      StoreVec(dst + ch * kVec, FromFloats(acc + ch * kVec, static_cast<T*>(nullptr)));
  }

  static __device__ __forceinline__ float FiniteAbsMax(const float* acc) {
    float mx = 0.0f;
#pragma unroll
    for (int e = 0; e < kW; ++e) {
      const float a = fabsf(acc[e]);
      if (a <= FLT_MAX) mx = fmaxf(mx, a);
    }
    return mx;
  }

  // Row modes: one item per thread, items = T * H * (D / W). static_scale:
  // the per-tensor scale as loaded; its reciprocal is taken only after the
  // payload loads are issued, so the (slow-path) division does not hold them
  // back by a round trip.
  __device__ __forceinline__ void RunRows(float static_scale) const {
    const int64_t items = p.num_tokens * p.num_heads * items_per_row;
    const int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool valid = it < items;
    int64_t row = 0;
    int c = 0;
    float acc[kW];
    if (valid) {
      row = it / items_per_row;
      c = static_cast<int>(it - row * items_per_row);
      Merge(row, c, acc);
    } else {
#pragma unroll
      for (int e = 0; e < kW; ++e) acc[e] = 0.0f;
    }
    if constexpr (MODE == kModePassthrough) {
      if (valid) StoreValues(it, acc);
    } else if constexpr (MODE == kModeFp8PerTensor) {
      // Valid iff 2^-126 <= s <= 2^126, as IsValidFp8Scale
      // (merge_contract.h); otherwise inv = NaN makes every code NaN.
      const float s = static_scale;
      const float inv = (s >= 1.1754943508222875e-38f && s <= 8.5070591730234616e37f)
                            ? 1.0f / s
                            : __int_as_float(0x7FFFFFFF);
      if (valid) StoreCodes(it, acc, inv);
    } else if constexpr (MODE == kModeFp8PerGroup) {
      const int lanes = p.group_size / kW;  // 2..32, power of two
      const float amax = WarpMax(FiniteAbsMax(acc), lanes);
      const float scale = DynamicFp8Scale(amax, p.power_of_two_scales != 0);
      if (valid) {
        StoreCodes(it, acc, 1.0f / scale);
        if ((c & (lanes - 1)) == 0) {
          const int groups = p.head_size / p.group_size;
          p.out_scales[row * groups + c / lanes] = scale;
        }
      }
    }
  }

  // kModeFp8PerToken: CTA blockIdx.x owns token blockIdx.x.
  __device__ __forceinline__ void RunToken(float* red) const {
    const int items = p.num_heads * items_per_row;
    const int64_t token = blockIdx.x;
    const int64_t first = token * items;  // global item index of the token
    const int64_t row0 = token * p.num_heads;
    if (items <= static_cast<int>(blockDim.x) * SLOTS) {
      float acc[SLOTS][kW];
      float amax = 0.0f;
#pragma unroll
      for (int s = 0; s < SLOTS; ++s) {
        const int it = threadIdx.x + s * blockDim.x;
        if (it < items) {
          const int r = it / items_per_row;
          Merge(row0 + r, it - r * items_per_row, acc[s]);
          amax = fmaxf(amax, FiniteAbsMax(acc[s]));
        }
      }
      const float scale =
          DynamicFp8Scale(BlockMax(amax, red), p.power_of_two_scales != 0);
      const float inv = 1.0f / scale;
#pragma unroll
      for (int s = 0; s < SLOTS; ++s) {
        const int it = threadIdx.x + s * blockDim.x;
        if (it < items) StoreCodes(first + it, acc[s], inv);
      }
      if (threadIdx.x == 0) p.out_scales[token] = scale;
      return;
    }
    // Fallback for a large H*D: amax pass, then recompute and store.
    float amax = 0.0f;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      float acc[kW];
      const int r = it / items_per_row;
      Merge(row0 + r, it - r * items_per_row, acc);
      amax = fmaxf(amax, FiniteAbsMax(acc));
    }
    const float scale =
        DynamicFp8Scale(BlockMax(amax, red), p.power_of_two_scales != 0);
    const float inv = 1.0f / scale;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      float acc[kW];
      const int r = it / items_per_row;
      Merge(row0 + r, it - r * items_per_row, acc);
      StoreCodes(first + it, acc, inv);
    }
    if (threadIdx.x == 0) p.out_scales[token] = scale;
  }
};

template <typename T, int MODE, int CHUNKS, int SLOTS, int NB>
__global__ void __launch_bounds__(kMaxThreadsPerCta)
    MergeKernel(const __grid_constant__ MergeKernelParams p) {
  const MergeItem<T, MODE, CHUNKS, SLOTS, NB> m{p, p.head_size / (CHUNKS * VecWidth<T>::kElems)};
  if constexpr (MODE == kModeFp8PerToken) {
    __shared__ float red[32];
    m.RunToken(red);
  } else {
    // Issued first, used last: in flight together with the payload loads.
    const float static_scale =
        MODE == kModeFp8PerTensor ? __ldg(p.static_scale) : 0.0f;
    m.RunRows(static_scale);
  }
}

}  // namespace cuda
}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_CUH_
