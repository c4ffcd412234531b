// Instantiates the merge kernel family (merge_kernel.cuh) and launches it.
//
// Dispatch table: [input dtype][output mode][item width][parts per batch],
// 3 x 4 x 2 x 3 = 72 kernels of one template (merge_kernel.cuh).
// Launch configuration, chosen from the shape (VEC = 16 / sizeof(T)):
//   item width W: 2*VEC (two 16-byte loads per part per thread) when 2*VEC
//     divides D and either N <= 4 (few parts: few loads per thread) or the
//     grid is large (N <= 8: >= 3.5 CTAs/SM, N <= 16: >= 7, measured); else
//     VEC (lower latency per thread for small grids and large N);
//   parts per batch NB: 2, 4 or 8, the smallest >= N (4 at most with wide
//     items), so registers match N;
//   per-tensor, per-group, passthrough: one item per thread, items =
//     T*H*D/W; threads = 256, or fewer (>= 64) when that gives each SM at
//     least one CTA; grid = ceil(items / threads);
//   per-token: one CTA per token, threads = round_up(min(512, H*D/W), 32),
//     items held in registers (4 per thread, 2 with wide items) when
//     H*D/W <= threads * slots, else the two-pass fallback;
//   prefetch: when the grid is at most 2 CTAs per SM (a single wave:
//     decode shapes, latency-bound), each thread L2-prefetches its item in
//     parts >= NB before it starts, overlapping their DRAM latency.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "kernels/cuda/merge_kernel.cuh"
#include "kernels/cuda/merge_kernel_launch.h"

namespace dcpmerge {
namespace cuda {
namespace {

using KernelFn = void (*)(MergeKernelParams);

template <typename T, int MODE, int CHUNKS, int NB>
constexpr KernelFn Pick() {
  return &MergeKernel<T, MODE, CHUNKS, (MODE == kModeFp8PerToken ? 4 / CHUNKS : 1), NB>;
}

// [mode][wide][batch: 2, 4, 8 parts] for one dtype.
template <typename T, int MODE>
struct ModeRow {
  KernelFn fn[2][3] = {
      {Pick<T, MODE, 1, 2>(), Pick<T, MODE, 1, 4>(), Pick<T, MODE, 1, 8>()},
      {Pick<T, MODE, 2, 2>(), Pick<T, MODE, 2, 4>(), Pick<T, MODE, 2, 4>()},
  };
};

template <typename T>
struct ModeTable {
  ModeRow<T, kModeFp8PerTensor> per_tensor;
  ModeRow<T, kModeFp8PerToken> per_token;
  ModeRow<T, kModeFp8PerGroup> per_group;
  ModeRow<T, kModePassthrough> passthrough;
  KernelFn Get(int mode, int wide, int nb) const {
    switch (mode) {
      case kModeFp8PerTensor: return per_tensor.fn[wide][nb];
      case kModeFp8PerToken: return per_token.fn[wide][nb];
      case kModeFp8PerGroup: return per_group.fn[wide][nb];
      default: return passthrough.fn[wide][nb];
    }
  }
};

KernelFn Lookup(int dtype, int mode, int wide, int num_parts) {
  static const ModeTable<float> f32;
  static const ModeTable<__half> f16;
  static const ModeTable<__nv_bfloat16> bf16;
  const int nb = num_parts <= 2 ? 0 : num_parts <= 4 ? 1 : 2;
  switch (dtype) {
    case kKernelF32: return f32.Get(mode, wide, nb);
    case kKernelF16: return f16.Get(mode, wide, nb);
    case kKernelBF16: return bf16.Get(mode, wide, nb);
  }
  return nullptr;
}

constexpr int kMaxDevices = 64;
std::atomic<int> g_sm_count[kMaxDevices];
std::atomic<int> g_smem_optin[kMaxDevices];

cudaError_t DeviceLimits(int* sms, int* smem_optin) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev >= 0 && dev < kMaxDevices) {
    *sms = g_sm_count[dev].load(std::memory_order_relaxed);
    *smem_optin = g_smem_optin[dev].load(std::memory_order_relaxed);
    if (*sms > 0 && *smem_optin > 0) return cudaSuccess;
  }
  err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  if (dev >= 0 && dev < kMaxDevices) {
    g_sm_count[dev].store(*sms, std::memory_order_relaxed);
    g_smem_optin[dev].store(*smem_optin, std::memory_order_relaxed);
  }
  return cudaSuccess;
}

int RoundUp32(int64_t x) { return static_cast<int>((x + 31) / 32 * 32); }

}  // namespace

cudaError_t LaunchMergeKernel(const MergeKernelParams& params, int32_t dtype,
                              int32_t mode, cudaStream_t stream,
                              const MergeLaunchOptions& options) {
  if (dtype < 0 || dtype > 2 || mode < 0 || mode > 3 || params.num_parts < 1 ||
      params.num_parts > kMaxKernelParts || params.num_heads < 1 ||
      params.head_size < 1 || params.num_tokens < 0) {
    return cudaErrorInvalidValue;
  }
  if (params.num_tokens == 0) return cudaSuccess;
  int sms = 0, smem_optin = 0;
  const cudaError_t err = DeviceLimits(&sms, &smem_optin);
  if (err != cudaSuccess) return err;

  const int vec = dtype == kKernelF32 ? 4 : 8;
  int wide = 0;
  if (options.wide >= 0) {
    wide = options.wide > 0 ? 1 : 0;
  } else if (params.num_parts <= 4) {
    wide = 1;
  } else if (params.num_parts <= 16 && mode != kModeFp8PerToken) {
    // Measured crossover on an H100 (docs/benchmarks.md): two vectors per
    // thread win once the one-vector grid has >= 3.5 (N <= 8) or >= 7
    // (N <= 16) CTAs of 256 threads per SM; below that the extra latency
    // per thread costs more than the bytes in flight gain.
    const int64_t narrow_ctas =
        params.num_tokens * params.num_heads * (params.head_size / vec) / 256;
    wide = narrow_ctas * 2 >= static_cast<int64_t>(params.num_parts <= 8 ? 7 : 14) * sms ? 1 : 0;
  }
  if (wide && params.head_size % (2 * vec) != 0) wide = 0;
  const int item = vec * (wide ? 2 : 1);
  if (params.head_size % vec != 0) return cudaErrorInvalidValue;
  if (mode == kModeFp8PerGroup &&
      (params.group_size % item != 0 || params.group_size / item > 32 ||
       params.head_size % params.group_size != 0)) {
    return cudaErrorInvalidValue;
  }
  const int64_t ipr = params.head_size / item;
  const int64_t items = params.num_tokens * params.num_heads * ipr;

  MergeKernelParams p = params;
  int threads = 0;
  int64_t grid = 0;
  if (mode == kModeFp8PerToken) {
    const int cap = options.threads_per_cta > 0
                        ? std::min(options.threads_per_cta, kMaxThreadsPerCta)
                        : kMaxThreadsPerCta;
    threads = RoundUp32(std::min<int64_t>(cap, ipr * params.num_heads));
    grid = params.num_tokens;
  } else {
    const int cap = options.threads_per_cta > 0
                        ? std::min(options.threads_per_cta, kMaxThreadsPerCta)
                        : 256;
    const int64_t per_sm = (items + sms - 1) / sms;
    threads = std::min<int>(cap, std::max<int>(std::min(64, cap), RoundUp32(per_sm)));
    grid = (items + threads - 1) / threads;
  }
  if (grid > 0x7FFFFFFF) return cudaErrorInvalidValue;
  p.prefetch = options.prefetch >= 0 ? options.prefetch
                                     : (grid <= 2 * sms && params.num_parts > 8 ? 1 : 0);
  KernelFn fn = Lookup(dtype, mode, wide, params.num_parts);
  if (fn == nullptr) return cudaErrorInvalidValue;
  fn<<<static_cast<unsigned>(grid), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace dcpmerge
