// The fused N-way merge (+ FP8 quantization) kernels.
//
// Semantics: kernels/merge_contract.h. Layout, as the kernels see it:
//   part i payload  O_i[t,h,d] at part_out[i] + t*token_stride + h*head_stride
//                   + d (elements of T; d contiguous; 16-byte aligned base,
//                   strides and D multiples of the 16-byte vector width)
//   part i LSE      L_i[t,h] at part_lse[i] + (t*H + h)   [T,H] layout
//                                          or (h*T + t)   [H,T] layout
//   output          out[(t*H + h)*D + d], contiguous [T,H,D]: one byte per
//                   FP8 code, or T for passthrough
//   scales          per token: out_scales[t]; per group of G along d:
//                   out_scales[(t*H + h)*(D/G) + d/G]
// A "row" is one (t,h) pair, row = t*H + h. An "item" is one 16-byte vector
// of a row, W = 16/sizeof(T) elements (8 for fp16/bf16, 4 for fp32); items
// are numbered row * (D/W) + c and the output of item k is bytes
// [k*W, k*W + W) (FP8) or elements [k*W, k*W + W) (passthrough).
//
// Work split. A CTA has P x V threads (V a multiple of 32) and owns V
// consecutive items. Thread (g, v), g = threadIdx.x / V (the same for a
// whole warp), takes parts g*PPT .. g*PPT + PPT-1 of item v:
//   1. it issues all their LSE loads and 16-byte payload loads at once (one
//      DRAM round trip, PPT vectors in flight per thread);
//   2. it reduces them to a partial state: m_g = max finite L_i,
//      s_g = sum w_i, acc_g = sum w_i * O_i with w_i = exp(L_i - m_g) over
//      its non-empty parts, branch-free (an empty part's payload bits are
//      masked to +0, so its garbage never reaches the sums);
//   3. with P > 1 the groups 1..P-1 hand their states to group 0 through
//      shared memory, which combines them with weights exp(m_g - m),
//      m = max m_g (the split-softmax rescaling);
//   4. group 0 normalises (O = acc / s, L = m + log s) and emits.
// P = 1 (no shared memory, no barrier) is fastest up to N = 8; from N = 9
// on, P = ceil(N / 4) threads of four parts each beat one thread of N
// (more loads in flight per register, and a decode step of a few hundred
// items spreads over P times as many SMs). The launcher (merge_kernel.cu)
// picks PPT, P and V from the shape; docs/benchmarks.md has the numbers.
//
// Emit, per mode (group 0 only):
//   kModePassthrough   RNE to T, one 16-byte store per item;
//   kModeFp8PerTensor  codes of O * (1 / *static_scale), W bytes per item;
//                      a scale that IsValidFp8Scale rejects gives NaN codes;
//   kModeFp8PerGroup   amax over the G/W lanes of a group by xor shuffles (a
//                      group is G/W aligned lanes of one warp, as items
//                      start rows at multiples of D/W and CTAs at multiples
//                      of 32), scale = DynamicFp8Scale(amax), codes, one
//                      scale store per group;
//   kModeFp8PerToken   MergeTokenKernel: the C CTAs of a token form one
//                      thread-block cluster (C = 1 before sm_90) and split
//                      its H*D/W items; amax is a CTA reduction, then a
//                      reduction over the cluster through distributed shared
//                      memory, and the merged values wait in registers, up
//                      to MaxTokenItems per thread (K) where a thread takes
//                      all parts. With more items than that (many tokens:
//                      one CTA each), they wait in shared memory instead,
//                      or, when a token's values exceed it, are merged
//                      twice (amax pass, then codes).
// With programmatic dependent launch (sm_90 and later, sched.pdl) both
// kernels do their index arithmetic, then griddepcontrol.wait (nothing is
// read before the previous kernel's writes are visible), then let their own
// dependents launch.
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_CUH_
#define DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_CUH_

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/merge_kernel_launch.h"
#include "kernels/cuda/vec.cuh"
#include "kernels/numeric.h"

namespace dcpmerge {
namespace cuda {

inline constexpr int kMaxCtaThreads = 512;
// CTA size limit of a kernel with PPT parts per thread: 256 for PPT >= 8
// leaves them up to 255 registers (16 payload vectors stay in registers).
__host__ __device__ constexpr int MaxCtaThreads(int ppt) {
  return ppt >= 8 ? 256 : kMaxCtaThreads;
}
// The second __launch_bounds__ argument (0: none). ptxas's own register
// target spills the 8-parts kernel (40 registers); asking for one CTA per
// SM lets it take 56 and run about 1.4x faster (measured on an H200). The
// 4-parts rows kernels get up to 64 (two 512-thread CTAs per SM): at
// ptxas's own 32 (the 32-bit index path) only two of the four payload loads
// were in flight, 1.3x slower at decode (H200). The others are fastest at
// ptxas's own, lower, counts.
__host__ __device__ constexpr int MinCtas(int ppt, int mode) {
  return ppt == 8 ? 1 : (ppt == 4 && mode != kModeFp8PerToken) ? 2 : 0;
}
// Per token: the most items (K: 1, 2 or 4) a thread of PPT parts holds in
// registers, every load issued at once: K x PPT <= 16 vectors in flight.
__host__ __device__ constexpr int MaxTokenItems(int ppt) {
  return ppt >= 16 ? 1 : ppt >= 4 ? 2 : 4;
}
// Part-table capacities: small for the common N <= 16, so a launch carries
// 256 bytes of pointers instead of 1 KB.
inline constexpr int kSmallPartTable = 16;

// Whether a kernel combines part groups (P > 1): with the 16-entry table
// only at 4 parts per thread (splitting finer measured slower), always with
// the full one (N > 16). Leaving the combine out saves registers.
template <int PPT, int kCap>
__host__ __device__ constexpr bool CanSplit() {
  return PPT == 4 || kCap > kSmallPartTable;
}

// Division of an n of 32 or 64 bits by a run-time d (1 <= d < 2^32) with a
// multiply (Granlund-Montgomery): q = (t + ((n - t) >> s1)) >> s2,
// t = umulhi(n, m); the shifts are the same for both widths, the magic
// numbers are not. The launcher makes them (MakeFastDiv in merge_kernel.cu).
struct FastDiv {
  uint64_t magic = 0;
  uint32_t magic32 = 0;
  uint32_t d = 1;
  uint32_t shift1 = 0, shift2 = 0;
  __device__ __forceinline__ uint64_t Div(uint64_t n) const {
    const uint64_t t = __umul64hi(n, magic);
    return (t + ((n - t) >> shift1)) >> shift2;
  }
  __device__ __forceinline__ uint32_t Div(uint32_t n) const {
    const uint32_t t = __umulhi(n, magic32);
    return (t + ((n - t) >> shift1)) >> shift2;
  }
};

// Derived by the launcher from the shape; read by every thread.
struct Schedule {
  int64_t items = 0;           // T * H * items_per_row
  int32_t items_per_row = 0;   // D / W
  int32_t part_groups = 1;     // P
  int32_t items_per_cta = 0;   // V, a multiple of 32
  int32_t ctas_per_token = 1;  // C: per-token kernel only
  int32_t token_span = 0;      // per-token: items each CTA of a token owns
  int32_t pdl = 0;             // launched with programmatic dependent launch
  int32_t stage = 0;           // per-token: merged values wait in shared memory
  int32_t group_lanes_log2 = 0;  // per group: log2(G / W)
  FastDiv by_items_per_row;    // item -> row
  FastDiv by_heads;            // row -> token
};

template <int kCap>
struct KernelArgs {
  MergeProblem problem;
  Schedule sched;
  const void* part_out[kCap];
  const float* part_lse[kCap];
};

// Shared memory the combine step needs: groups 1..P-1 each hand over W
// partial sums, m and s for V items.
__host__ __device__ constexpr int CombineSmemBytes(int part_groups, int items_per_cta,
                                                   int vec_elems) {
  return part_groups > 1 ? (part_groups - 1) * (vec_elems + 2) * items_per_cta * 4 : 0;
}

// Both only when launched with PDL (sched.pdl): even without the launch
// attribute, griddepcontrol.wait costs about 4% at large shapes (measured).
__device__ __forceinline__ void WaitForProducer(bool pdl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void LetConsumerLaunch(bool pdl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pdl) asm volatile("griddepcontrol.launch_dependents;");
#endif
}

__device__ __forceinline__ bool IsFiniteF(float x) { return fabsf(x) <= FLT_MAX; }

// Max over aligned groups of `width` lanes (a power of two, 1..32); unrolled,
// a run-time width only predicates the steps.
__device__ __forceinline__ float WarpMax(float v, int width) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < width) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

// Max over all threads of the CTA of v >= 0; every thread gets it. red: 32
// floats of shared memory.
__device__ __forceinline__ float BlockMax(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpMax(v, 32);
  __syncthreads();  // red may still be read by an earlier call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>((blockDim.x + 31) >> 5) ? red[lane] : 0.0f;
  return WarpMax(v, 32);
}

// Where item k of the problem lives, in index arithmetic of Idx: uint32_t
// when every element offset of the problem (items, payload spans, LSEs,
// outputs) is below 2^32 (the launcher checks, Fits32 in merge_kernel.cu),
// else uint64_t. The 32-bit path is the common one: a 32-bit multiply-high
// and single multiplies instead of 64-bit sequences before the first load.
template <typename Idx>
struct ItemPlace {
  Idx row = 0;      // t*H + h
  Idx payload = 0;  // element offset in every part
  Idx lse = 0;      // index in every part's LSE
  uint32_t c = 0;   // item within the row
};

template <int W, typename Idx>
__device__ __forceinline__ ItemPlace<Idx> Locate(const MergeProblem& p, const Schedule& sc,
                                                 Idx item) {
  ItemPlace<Idx> at;
  at.row = sc.by_items_per_row.Div(item);
  at.c = static_cast<uint32_t>(item - at.row * sc.by_items_per_row.d);
  const Idx t = sc.by_heads.Div(at.row);
  const Idx h = at.row - t * sc.by_heads.d;
  at.payload = t * static_cast<Idx>(p.token_stride) + h * static_cast<Idx>(p.head_stride) +
               static_cast<Idx>(at.c) * W;
  at.lse = p.lse_tokens_heads ? at.row : h * static_cast<Idx>(p.num_tokens) + t;
  return at;
}

// One thread's share of an item: the partial state of its parts.
template <int W>
struct PartialState {
  float m = -INFINITY;  // max finite LSE; -inf: no non-empty part
  float s = 0.0f;       // sum of exp(L_i - m)
  float acc[W] = {};    // sum of exp(L_i - m) * O_i
};

// exp2 on the MUFU unit, flushing results below 2^-126 to zero: such a
// weight is 2^126 times smaller than the largest one (which is 1) and
// changes no representable output.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Steps 1 and 2: loads parts kFirst..kFirst+PPT-1 (those < N) of the item
// at `at`, every load issued before the first use. kFirst is a compile-time
// constant so that the part pointers are read straight from the parameter
// bank; a run-time index would load all 2*PPT pointers into registers first.
// Branch-free: an empty part's LSE becomes -inf (weight 0) and its payload
// bits are masked to +0 before use, so garbage (NaN included) never enters
// the sums; branches here would make every part wait for its own LSE.
template <typename T, int PPT, int kCap, int kFirst, typename Idx>
__device__ __forceinline__ void MergeParts(const KernelArgs<kCap>& a, const ItemPlace<Idx>& at,
                                           PartialState<VecWidth<T>::kElems>& st) {
  constexpr int W = VecWidth<T>::kElems;
  const int n = a.problem.num_parts;
  float l[PPT];
  Vec<T> v[PPT];
#pragma unroll
  for (int u = 0; u < PPT; ++u) {
    l[u] = -INFINITY;
    v[u].raw = make_uint4(0, 0, 0, 0);
    if (kFirst + u < n) {
      l[u] = __ldg(a.part_lse[kFirst + u] + at.lse);
      v[u] = LoadVec(static_cast<const T*>(a.part_out[kFirst + u]) + at.payload);
    }
  }
  float m = -INFINITY;
#pragma unroll
  for (int u = 0; u < PPT; ++u) {
    l[u] = IsFiniteF(l[u]) ? l[u] : -INFINITY;
    m = fmaxf(m, l[u]);
  }
  st.m = m;
  const float k = a.problem.lse_to_log2;
  const float m_safe = m == -INFINITY ? 0.0f : m;  // all empty: every weight 0
#pragma unroll
  for (int u = 0; u < PPT; ++u) {
    const float w = Exp2((l[u] - m_safe) * k);
    const uint32_t keep = l[u] == -INFINITY ? 0u : 0xFFFFFFFFu;
    v[u].raw.x &= keep;
    v[u].raw.y &= keep;
    v[u].raw.z &= keep;
    v[u].raw.w &= keep;
    st.s += w;
    float f[W];
    ToFloats(v[u], f);
#pragma unroll
    for (int e = 0; e < W; ++e) st.acc[e] = fmaf(w, f[e], st.acc[e]);
  }
}

// MergeParts for thread group g (warp-uniform): one branch per group, each
// with its first part as a constant.
template <typename T, int PPT, int kCap, int G = 0, typename Idx>
__device__ __forceinline__ void MergeGroupParts(const KernelArgs<kCap>& a, int g,
                                                const ItemPlace<Idx>& at,
                                                PartialState<VecWidth<T>::kElems>& st) {
  if constexpr (G * PPT < kCap && (G == 0 || CanSplit<PPT, kCap>())) {
    if (g == G) {
      MergeParts<T, PPT, kCap, G * PPT>(a, at, st);
    } else {
      MergeGroupParts<T, PPT, kCap, G + 1, Idx>(a, g, at, st);
    }
  }
}

// Step 3: group 0 (g == 0) combines the P groups' states of its item v.
// Every thread of the CTA must call it (it holds a barrier).
template <int W>
__device__ __forceinline__ void CombineGroups(PartialState<W>& st, float* smem, int P,
                                              int V, int g, int v, float lse_to_log2) {
  const auto slot = [&](int q, int e) -> float& {
    return smem[((q - 1) * (W + 2) + e) * V + v];  // [q][field][v]: no bank conflicts
  };
  if (g != 0) {
#pragma unroll
    for (int e = 0; e < W; ++e) slot(g, e) = st.acc[e];
    slot(g, W) = st.m;
    slot(g, W + 1) = st.s;
  }
  __syncthreads();
  if (g != 0) return;
  float m = st.m;
  for (int q = 1; q < P; ++q) m = fmaxf(m, slot(q, W));
  if (m == -INFINITY) return;  // every part empty: st is still the empty state
  // An empty group has m_q = -inf: weight exp2(-inf) = 0 on its zero sums.
  const float f0 = Exp2((st.m - m) * lse_to_log2);
  st.s *= f0;
#pragma unroll
  for (int e = 0; e < W; ++e) st.acc[e] *= f0;
  for (int q = 1; q < P; ++q) {
    const float f = Exp2((slot(q, W) - m) * lse_to_log2);
    st.s = fmaf(f, slot(q, W + 1), st.s);
#pragma unroll
    for (int e = 0; e < W; ++e) st.acc[e] = fmaf(f, slot(q, e), st.acc[e]);
  }
  st.m = m;
}

// Step 4: the merged values of the item (0 when every part is empty); the
// row's first item also writes out_lse.
template <int W, typename Idx>
__device__ __forceinline__ void Normalize(const MergeProblem& p, const PartialState<W>& st,
                                          const ItemPlace<Idx>& at, bool valid, float* o) {
  const bool empty = st.m == -INFINITY;
  const float inv = empty ? 0.0f : __frcp_rn(st.s);
#pragma unroll
  for (int e = 0; e < W; ++e) o[e] = st.acc[e] * inv;
  if (valid && at.c == 0 && p.out_lse != nullptr)
    // s is in [1, N]: lg2.approx is within 2^-22 there, far below the
    // LSE's own rounding, and much lighter than log2f.
    p.out_lse[at.lse] = empty ? -INFINITY : st.m + __log2f(st.s) * p.log2_to_lse;
}

template <int W>
__device__ __forceinline__ float FiniteAbsMax(const float* o) {
  float mx = 0.0f;
#pragma unroll
  for (int e = 0; e < W; ++e) {
    const float a = fabsf(o[e]);
    if (a <= FLT_MAX) mx = fmaxf(mx, a);
  }
  return mx;
}

template <int W, typename Idx>
__device__ __forceinline__ void StoreCodes(const MergeProblem& p, Idx item, const float* o,
                                           float inv) {
  float q[W];
#pragma unroll
  for (int e = 0; e < W; ++e) q[e] = o[e] * inv;
  using Word = typename Fp8Word<W>::Type;
  reinterpret_cast<Word*>(p.out)[item] = Fp8Word<W>::Pack(q);
}

// This thread's group g (warp-uniform) and item slot v within the CTA; a
// kernel that cannot split (kSplit false) or a launch of one group (P = 1)
// has no division on the way to the first load.
template <bool kSplit>
struct GroupOf {
  int g, v;
  __device__ __forceinline__ GroupOf(int V, int P) {
    g = kSplit && P > 1 ? static_cast<int>(threadIdx.x / static_cast<unsigned>(V)) : 0;
    v = static_cast<int>(threadIdx.x) - g * V;
  }
};

// Steps 1-4 for the item at `at` (valid: it exists). Returns the merged
// values in o (group 0 only; other groups' o is unspecified).
template <typename T, int PPT, int kCap, typename Idx>
__device__ __forceinline__ void MergeItem(const KernelArgs<kCap>& a, float* smem,
                                          const GroupOf<CanSplit<PPT, kCap>()>& gv,
                                          const ItemPlace<Idx>& at, bool valid, float* o) {
  constexpr int W = VecWidth<T>::kElems;
  const Schedule& sc = a.sched;
  PartialState<W> st;
  if (valid) MergeGroupParts<T, PPT>(a, gv.g, at, st);
  if constexpr (CanSplit<PPT, kCap>()) {
    if (sc.part_groups > 1)
      CombineGroups(st, smem, sc.part_groups, sc.items_per_cta, gv.g, gv.v,
                    a.problem.lse_to_log2);
  }
  if (gv.g == 0) Normalize(a.problem, st, at, valid, o);
}

// Per-tensor, per-group and passthrough: one item per thread group, index
// arithmetic in Idx (see ItemPlace).
template <typename T, int MODE, int PPT, int kCap, typename Idx>
__global__ void __launch_bounds__(MaxCtaThreads(PPT), MinCtas(PPT, MODE))
    MergeRowsKernel(const __grid_constant__ KernelArgs<kCap> a) {
  constexpr int W = VecWidth<T>::kElems;
  extern __shared__ float smem[];
  const MergeProblem& p = a.problem;
  const GroupOf<CanSplit<PPT, kCap>()> gv(a.sched.items_per_cta, a.sched.part_groups);
  const Idx item = static_cast<Idx>(blockIdx.x) * static_cast<Idx>(a.sched.items_per_cta) +
                   static_cast<Idx>(gv.v);
  const bool valid = item < static_cast<Idx>(a.sched.items);
  // Index arithmetic only reads kernel parameters: done before the wait.
  const ItemPlace<Idx> at = valid ? Locate<W>(p, a.sched, item) : ItemPlace<Idx>{};
  WaitForProducer(a.sched.pdl);
  LetConsumerLaunch(a.sched.pdl);
  // Issued first, used last: in flight together with the payload loads.
  const float static_scale = MODE == kModeFp8PerTensor ? __ldg(p.static_scale) : 0.0f;
  float o[W];
  MergeItem<T, PPT>(a, smem, gv, at, valid, o);
  if (gv.g != 0) return;
  if constexpr (MODE == kModePassthrough) {
    if (valid)
      StoreVec(static_cast<T*>(p.out) + item * W, FromFloats(o, static_cast<T*>(nullptr)));
  } else if constexpr (MODE == kModeFp8PerTensor) {
    // Valid iff 2^-126 <= s <= 2^126, as IsValidFp8Scale (merge_contract.h);
    // otherwise inv = NaN makes every code NaN.
    const float s = static_scale;
    const float inv = (s >= 1.1754943508222875e-38f && s <= 8.5070591730234616e37f)
                          ? __frcp_rn(s)
                          : __int_as_float(0x7FFFFFFF);
    if (valid) StoreCodes<W>(p, item, o, inv);
  } else {
    static_assert(MODE == kModeFp8PerGroup, "per-token runs MergeTokenKernel");
    const int lanes = 1 << a.sched.group_lanes_log2;  // G / W: 2..32
    const float amax = WarpMax(FiniteAbsMax<W>(o), lanes);
    const float scale = DynamicFp8Scale(amax, p.power_of_two_scales != 0);
    if (valid) {
      StoreCodes<W>(p, item, o, __frcp_rn(scale));
      if ((at.c & (lanes - 1)) == 0)
        p.out_scales[(item >> a.sched.group_lanes_log2)] = scale;
    }
  }
}

// Max of v >= 0 over the token's CTAs (a cluster of C); every thread gets it.
__device__ __forceinline__ float TokenMax(float v, float* red, int C) {
  v = BlockMax(v, red);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (C > 1) {
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) red[32] = v;
    cluster.sync();  // every CTA's red[32] is written
    if (threadIdx.x < 32) {
      float x = static_cast<int>(threadIdx.x) < C
                    ? *cluster.map_shared_rank(&red[32], static_cast<int>(threadIdx.x))
                    : 0.0f;
      x = WarpMax(x, 32);
      if (threadIdx.x == 0) red[33] = x;
    }
    cluster.sync();  // no CTA leaves (or reuses red) while others read it
    v = red[33];
  }
#endif
  return v;
}

// kModeFp8PerToken. CTA blockIdx.x serves token blockIdx.x / C and owns its
// items [rank * span, rank * span + span) (rank = blockIdx.x % C); 64-bit
// index arithmetic. A CTA whose span fits K x V items keeps them in
// registers, K per thread, every item's loads issued before the first
// reduction; a larger span loops (see below).
template <typename T, int PPT, int kCap, int K>
__global__ void __launch_bounds__(MaxCtaThreads(PPT), MinCtas(PPT, kModeFp8PerToken))
    MergeTokenKernel(const __grid_constant__ KernelArgs<kCap> a) {
  constexpr int W = VecWidth<T>::kElems;
  extern __shared__ float smem[];
  __shared__ float red[34];
  const MergeProblem& p = a.problem;
  const Schedule& sc = a.sched;
  const int C = sc.ctas_per_token, V = sc.items_per_cta;
  const int64_t token = blockIdx.x / C;
  const int rank = static_cast<int>(blockIdx.x - token * C);
  const int64_t token_items = static_cast<int64_t>(p.num_heads) * sc.items_per_row;
  const int64_t first = token * token_items + static_cast<int64_t>(rank) * sc.token_span;
  const int64_t end = min(first + sc.token_span, (token + 1) * token_items);
  const GroupOf<CanSplit<PPT, kCap>()> gv(V, sc.part_groups);
  const auto place = [&](int64_t item) {
    return item < end ? Locate<W>(p, sc, static_cast<uint64_t>(item)) : ItemPlace<uint64_t>{};
  };
  float scale;
  if (sc.token_span <= K * V) {  // the CTA's items wait in registers
    WaitForProducer(a.sched.pdl);
    LetConsumerLaunch(a.sched.pdl);
    float o[K][W];
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t item = first + gv.v + k * V;
      if constexpr (CanSplit<PPT, kCap>()) {
        if (k > 0 && sc.part_groups > 1) __syncthreads();  // the combine reuses smem
      }
      MergeItem<T, PPT>(a, smem, gv, place(item), item < end, o[k]);
      if (gv.g == 0 && item < end) amax = fmaxf(amax, FiniteAbsMax<W>(o[k]));
    }
    scale = DynamicFp8Scale(TokenMax(amax, red, C), p.power_of_two_scales != 0);
    const float inv = __frcp_rn(scale);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t item = first + gv.v + k * V;
      if (gv.g == 0 && item < end) StoreCodes<W>(p, item, o[k], inv);
    }
  } else {
    float o[W];
    // More items than threads: loop over them in steps of V, and either
    // keep each thread's merged values in shared memory (sc.stage; slots
    // [pass][e][v], no bank conflicts, each thread reads back only its own)
    // or merge twice (amax pass, then codes).
    WaitForProducer(a.sched.pdl);
    LetConsumerLaunch(a.sched.pdl);
    float* stage = smem + CombineSmemBytes(sc.part_groups, V, W) / 4;
    float amax = 0.0f;
    int pass = 0;
    for (int64_t base = first; base < end; base += V, ++pass) {
      const int64_t item = base + gv.v;
      MergeItem<T, PPT>(a, smem, gv, place(item), item < end, o);
      if (gv.g == 0 && item < end) {
        amax = fmaxf(amax, FiniteAbsMax<W>(o));
        if (sc.stage) {
#pragma unroll
          for (int e = 0; e < W; ++e) stage[(pass * W + e) * V + gv.v] = o[e];
        }
      }
      if (sc.part_groups > 1) __syncthreads();  // the next combine reuses smem
    }
    scale = DynamicFp8Scale(TokenMax(amax, red, C), p.power_of_two_scales != 0);
    const float inv = __frcp_rn(scale);
    pass = 0;
    for (int64_t base = first; base < end; base += V, ++pass) {
      const int64_t item = base + gv.v;
      if (sc.stage) {
        if (gv.g == 0 && item < end) {
#pragma unroll
          for (int e = 0; e < W; ++e) o[e] = stage[(pass * W + e) * V + gv.v];
          StoreCodes<W>(p, item, o, inv);
        }
      } else {
        MergeItem<T, PPT>(a, smem, gv, place(item), item < end, o);
        if (gv.g == 0 && item < end) StoreCodes<W>(p, item, o, inv);
        if (sc.part_groups > 1) __syncthreads();
      }
    }
  }
  if (rank == 0 && threadIdx.x == 0) p.out_scales[token] = scale;
}

}  // namespace cuda
}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_CUH_
