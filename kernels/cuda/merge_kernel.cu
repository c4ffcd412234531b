// Picks a schedule for the merge kernels (merge_kernel.cuh) from the shape
// and launches them (merge_kernel_dispatch.cuh).
//
// Kernels: [input dtype][output mode][parts per thread], from one template
// each (MergeRowsKernel, MergeTokenKernel for per-token). Parts per thread
// (PPT) is 2, 4, 8 or 16 with a 16-entry part table (N <= 16), or 4 or 16
// with the full 64-entry table; the rows kernels come with 32- and 64-bit
// indices, the per-token ones with 1, 2 or 4 items per thread (K <=
// MaxTokenItems, small table only): 3 x 46 = 138 kernels, compiled per
// dtype in merge_kernel_{f32,f16,bf16}.cu.
//
// Schedule (P = part groups, V = items per CTA; merge_kernel.cuh):
//   PPT is the smallest bucket >= N for N <= 8 (P = 1); above, 4 on small
//     grids (P = ceil(N / 4), partial sums combined in shared memory; fewer
//     than kSplitItemsPerSmSmall items per SM for N = 9..16,
//     kSplitItemsPerSm for N > 16) and 16 on large ones.
//   CTA: P x V threads, 128 or, when P > 4, P x 32 (V = 32); at most
//     MaxCtaThreads(PPT).
//   Per token: with fewer tokens than 2 per SM, the token's C CTAs (a
//     cluster, sm_90+) are as many as it takes to hold its items in
//     registers and to give every SM a CTA (C <= kMaxClusterCtas); P
//     shrinks until P x span fits a CTA. With more tokens, one CTA each.
//     With P = 1 a thread holds up to MaxTokenItems items in registers
//     (V = span / K); items beyond wait in shared memory (<=
//     kMaxStageBytes), or are merged twice.
//   Rows kernels index in 32 bits when every element offset fits (Fits32),
//     in 64 bits beyond.
//   PDL only when asked for (MergeLaunchOptions::pdl): it pays when the
//     kernel before the merge triggers its dependents early, and costs a
//     little when it does not (docs/benchmarks.md).
// MergeLaunchOptions overrides each choice (tests, bench).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "kernels/cuda/merge_kernel.cuh"
#include "kernels/cuda/merge_kernel_dispatch.cuh"
#include "kernels/cuda/merge_kernel_launch.h"

namespace dcpmerge {
namespace cuda {
namespace {

// Grids of fewer items than this per SM take 4 parts per thread, larger
// ones 16: N > 16 (full table), and N = 9..16 (at N = 16 the split took
// 1.03-1.09x the simple kernel, which has one thread of 16 parts, from 32K
// items up on an H200; docs/benchmarks.md, round three).
constexpr int64_t kSplitItemsPerSm = 64;
constexpr int64_t kSplitItemsPerSmSmall = 256;
// Thread-block cluster size for per-token decode: 16, the non-portable
// maximum of sm_90 (a token spread over more SMs; measured faster than 8).
constexpr int kMaxClusterCtas = 16;
// Per-token staging of merged values in shared memory, per CTA.
constexpr int64_t kMaxStageBytes = 96 << 10;

struct DeviceInfo {
  int sms = 0;
  int cc_major = 0;
};

constexpr int kMaxDevices = 64;
std::atomic<int> g_sms[kMaxDevices];
std::atomic<int> g_cc_major[kMaxDevices];

cudaError_t GetDeviceInfo(DeviceInfo* info) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached) {
    info->sms = g_sms[dev].load(std::memory_order_relaxed);
    info->cc_major = g_cc_major[dev].load(std::memory_order_relaxed);
    if (info->sms > 0) return cudaSuccess;
  }
  err = cudaDeviceGetAttribute(&info->sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&info->cc_major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err != cudaSuccess) return err;
  if (cached) {
    g_cc_major[dev].store(info->cc_major, std::memory_order_relaxed);
    g_sms[dev].store(info->sms, std::memory_order_relaxed);
  }
  return cudaSuccess;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int RoundUp32(int64_t x) { return static_cast<int>(CeilDiv(x, 32) * 32); }

FastDiv MakeFastDiv(uint32_t d) {
  FastDiv f;
  f.d = d;
  int l = 0;
  while ((uint64_t{1} << l) < d) ++l;  // ceil(log2(d))
  const unsigned __int128 num = static_cast<unsigned __int128>((uint64_t{1} << l) - d) << 64;
  f.magic = static_cast<uint64_t>(num / d) + 1;
  f.magic32 = static_cast<uint32_t>((((uint64_t{1} << l) - d) << 32) / d + 1);
  f.shift1 = l > 0 ? 1 : 0;
  f.shift2 = l > 0 ? static_cast<uint32_t>(l - 1) : 0;
  return f;
}

// Whether every element offset the rows kernels compute stays below 2^32:
// the outputs (T*H*D) and each part's payload span.
bool Fits32(const MergeProblem& p) {
  constexpr int64_t kLimit = int64_t{1} << 32;
  const int64_t span = (p.num_tokens - 1) * p.token_stride +
                       (p.num_heads - 1) * p.head_stride + p.head_size;
  return p.num_tokens * p.num_heads * p.head_size < kLimit && span < kLimit;
}

// Parts-per-thread buckets a kernel exists for (merge_kernel.cuh): 2, 4, 8,
// 16 with the small table (only 4 splits), 4 and 16 with the full one.
int PptBucket(int x, bool full_table) {
  if (full_table) return x <= 4 ? 4 : 16;
  return x <= 2 ? 2 : x <= 4 ? 4 : x <= 8 ? 8 : 16;
}

bool Splittable(int ppt, bool full_table) { return full_table || ppt == 4; }

void SetPpt(int n, int ppt, bool full, Plan* plan) {
  if (CeilDiv(n, ppt) > 1 && !Splittable(ppt, full)) ppt = 4;
  plan->ppt = ppt;
  plan->part_groups = static_cast<int>(CeilDiv(n, ppt));
}

// Parts per thread and part groups for a grid of `items` items: split down
// to 4 parts per thread while the grid is small.
void PlanPartGroups(int n, int64_t items, const DeviceInfo& dev, const MergeLaunchOptions& o,
                    Plan* plan) {
  const bool full = n > kSmallPartTable;
  if (o.part_groups > 0) {
    SetPpt(n, PptBucket(static_cast<int>(CeilDiv(n, o.part_groups)), full), full, plan);
    return;
  }
  // Measured on an H200 (docs/benchmarks.md): up to 8 parts, one thread
  // takes them all; above, four parts per thread (P = ceil(N / 4)) at
  // decode sizes, 16 on large grids.
  int ppt = 4;
  if (full) {
    ppt = items < kSplitItemsPerSm * dev.sms ? 4 : 16;
  } else if (n <= 8) {
    ppt = PptBucket(n, false);
  } else {
    ppt = items < kSplitItemsPerSmSmall * dev.sms ? 4 : 16;
  }
  SetPpt(n, ppt, full, plan);
}

cudaError_t MakePlan(const MergeProblem& p, int mode, int vec, const DeviceInfo& dev,
                     const MergeLaunchOptions& o, Schedule* sc, Plan* plan) {
  sc->items_per_row = p.head_size / vec;
  sc->items = p.num_tokens * p.num_heads * sc->items_per_row;
  sc->by_items_per_row = MakeFastDiv(static_cast<uint32_t>(sc->items_per_row));
  sc->by_heads = MakeFastDiv(static_cast<uint32_t>(p.num_heads));
  const int n = p.num_parts;
  const bool full = n > kSmallPartTable;
  if (o.threads_per_cta != 0 &&
      (o.threads_per_cta < 32 || o.threads_per_cta > kMaxCtaThreads ||
       o.threads_per_cta % 32 != 0))
    return cudaErrorInvalidValue;
  if (o.part_groups < 0 || o.part_groups > 16 || o.ctas_per_token < 0 ||
      o.ctas_per_token > 16)
    return cudaErrorInvalidValue;
  plan->pdl = o.pdl > 0 && dev.cc_major >= 9;

  if (mode != kModeFp8PerToken) {
    PlanPartGroups(n, sc->items, dev, o, plan);
    const int P = plan->part_groups;
    const int threads = o.threads_per_cta > 0
                            ? std::min(o.threads_per_cta, MaxCtaThreads(plan->ppt))
                            : std::max(128, P * 32);
    const int V = std::max(32, threads / P / 32 * 32);
    if (P * V > MaxCtaThreads(plan->ppt)) return cudaErrorInvalidValue;
    sc->items_per_cta = V;
    plan->threads = P * V;
    plan->grid = CeilDiv(sc->items, V);
    plan->narrow = o.wide_index <= 0 && Fits32(p);
  } else {
    const int64_t token_items = static_cast<int64_t>(p.num_heads) * sc->items_per_row;
    const bool clusters = dev.cc_major >= 9;
    int64_t c = o.ctas_per_token;
    if (c == 0 && clusters && p.num_tokens < 2 * dev.sms) {
      // Few tokens: a token's CTAs (a cluster) are as many as hold its items
      // in registers in one pass and, at small T, give every SM a CTA.
      const int ppt = PptBucket(std::min(n, 16), full);
      const int64_t fit =
          CeilDiv(token_items, MaxCtaThreads(ppt) * (n <= 8 ? MaxTokenItems(ppt) : 1));
      const int64_t spread = std::min(CeilDiv(dev.sms, p.num_tokens), CeilDiv(token_items, 32));
      c = std::max(fit, spread);
    }
    c = std::max<int64_t>(1, std::min<int64_t>(c, clusters ? kMaxClusterCtas : 1));
    sc->ctas_per_token = static_cast<int>(c);
    sc->token_span = static_cast<int32_t>(CeilDiv(token_items, c));
    const int span = RoundUp32(sc->token_span);
    // Parts per thread: as the rows would have it, then the most splitting
    // that still holds the CTA's items in one pass.
    PlanPartGroups(n, sc->items, dev, o, plan);
    while (o.part_groups == 0 && plan->part_groups > 1 &&
           plan->part_groups * span > MaxCtaThreads(plan->ppt)) {
      const int next = full ? 16 : PptBucket(std::min(n, 16), false);
      if (next == plan->ppt) break;
      SetPpt(n, next, full, plan);
    }
    const int P = plan->part_groups;
    const int cap = o.threads_per_cta > 0
                        ? std::min(o.threads_per_cta, MaxCtaThreads(plan->ppt))
                        : MaxCtaThreads(plan->ppt);
    const int vmax = std::max(32, cap / P / 32 * 32);
    // Items per thread (K): as many as the span needs, in registers up to
    // MaxTokenItems when a thread takes all parts (P = 1); V then spreads
    // the span evenly over the threads.
    const int kmax = P == 1 && o.token_items_per_thread != 1 ? MaxTokenItems(plan->ppt) : 1;
    const int64_t passes = CeilDiv(sc->token_span, vmax);
    int k = 1;
    while (k < passes && k < kmax) k *= 2;
    const int V = passes <= kmax ? RoundUp32(CeilDiv(sc->token_span, k)) : std::min(vmax, span);
    if (P * V > MaxCtaThreads(plan->ppt)) return cudaErrorInvalidValue;
    sc->items_per_cta = V;
    plan->items_per_thread = passes <= kmax ? k : 1;
    // Items beyond what registers hold wait in shared memory where they fit.
    const int64_t stage_bytes = CeilDiv(sc->token_span, V) * V * vec * 4;
    sc->stage = passes > kmax && stage_bytes <= kMaxStageBytes ? 1 : 0;
    plan->stage_bytes = sc->stage ? static_cast<int>(stage_bytes) : 0;
    plan->threads = P * V;
    plan->grid = p.num_tokens * c;
    plan->ctas_per_token = sc->ctas_per_token;
  }
  sc->part_groups = plan->part_groups;
  sc->pdl = plan->pdl ? 1 : 0;
  if (mode == kModeFp8PerGroup) {
    int lanes_log2 = 0;
    while ((vec << lanes_log2) < p.group_size) ++lanes_log2;
    sc->group_lanes_log2 = lanes_log2;
  }
  plan->smem = CombineSmemBytes(plan->part_groups, sc->items_per_cta, vec) + plan->stage_bytes;
  if (plan->grid > 0x7FFFFFFF) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchMergeKernel(const MergeKernelParams& params, int32_t dtype, int32_t mode,
                              cudaStream_t stream, const MergeLaunchOptions& options) {
  const MergeProblem& p = params.problem;
  if (dtype < kKernelF32 || dtype > kKernelBF16 || mode < kModeFp8PerTensor ||
      mode > kModePassthrough || p.num_parts < 1 || p.num_parts > kMaxParts ||
      p.num_heads < 1 || p.head_size < 1 || p.num_tokens < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_tokens == 0) return cudaSuccess;
  const int vec = dtype == kKernelF32 ? 4 : 8;
  if (p.head_size % vec != 0) return cudaErrorInvalidValue;
  if (mode == kModeFp8PerGroup &&
      (p.group_size % vec != 0 || p.group_size / vec > 32 || p.head_size % p.group_size != 0))
    return cudaErrorInvalidValue;
  DeviceInfo dev;
  cudaError_t err = GetDeviceInfo(&dev);
  if (err != cudaSuccess) return err;
  Schedule sc;
  Plan plan;
  err = MakePlan(p, mode, vec, dev, options, &sc, &plan);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case kKernelF32: return LaunchPlanned<float>(params, mode, sc, plan, stream);
    case kKernelF16: return LaunchPlanned<__half>(params, mode, sc, plan, stream);
    default: return LaunchPlanned<__nv_bfloat16>(params, mode, sc, plan, stream);
  }
}

}  // namespace cuda
}  // namespace dcpmerge
