// Kernel tables and the launch of a planned merge, per input dtype
// (internal to kernels/cuda). merge_kernel.cu plans; each of
// merge_kernel_{f32,f16,bf16}.cu instantiates LaunchPlanned for its dtype,
// so the 72 kernels compile as three independent units.
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_DISPATCH_CUH_
#define DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_DISPATCH_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/merge_kernel.cuh"
#include "kernels/cuda/merge_kernel_launch.h"

namespace dcpmerge {
namespace cuda {

// Portable thread-block cluster size; larger clusters need the kernel's
// consent (cudaFuncAttributeNonPortableClusterSizeAllowed).
inline constexpr int kMaxPortableClusterCtas = 8;

// A launch's shape, made by MakePlan (merge_kernel.cu).
struct Plan {
  int ppt = 0;
  int part_groups = 1;
  int threads = 0;
  int ctas_per_token = 1;
  int64_t grid = 0;
  int stage_bytes = 0;
  int smem = 0;
  bool pdl = false;
  bool narrow = false;  // rows kernels: 32-bit index arithmetic
  int items_per_thread = 1;  // per token: K (1, 2 or 4)
};

// Enqueues the kernel of dtype T, mode and plan.ppt with `plan`.
template <typename T>
cudaError_t LaunchPlanned(const MergeKernelParams& params, int mode, const Schedule& sc,
                          const Plan& plan, cudaStream_t stream);

extern template cudaError_t LaunchPlanned<float>(const MergeKernelParams&, int,
                                                 const Schedule&, const Plan&, cudaStream_t);
extern template cudaError_t LaunchPlanned<__half>(const MergeKernelParams&, int,
                                                  const Schedule&, const Plan&, cudaStream_t);
extern template cudaError_t LaunchPlanned<__nv_bfloat16>(const MergeKernelParams&, int,
                                                         const Schedule&, const Plan&,
                                                         cudaStream_t);

namespace dispatch {

template <int kCap>
using KernelFn = void (*)(KernelArgs<kCap>);

// The per-token kernel has one index width (64-bit) for both tables; its
// K = 1 instance here, the others in TokenFor.
template <typename T, int MODE, int PPT, int kCap, typename Idx>
constexpr KernelFn<kCap> KernelFor() {
  if constexpr (MODE == kModeFp8PerToken) {
    return &MergeTokenKernel<T, PPT, kCap, 1>;
  } else {
    return &MergeRowsKernel<T, MODE, PPT, kCap, Idx>;
  }
}

template <typename T, int PPT, int kCap, int K>
constexpr KernelFn<kCap> TokenFor() {
  // Only one-group kernels hold K > 1 items (merge_kernel.cu), so the full
  // table (N > 16, always split) has none.
  if constexpr (K <= MaxTokenItems(PPT) && kCap <= kSmallPartTable) {
    return &MergeTokenKernel<T, PPT, kCap, K>;
  } else {
    return nullptr;
  }
}

// [mode][PPT bucket] for one dtype, part-table size and index type.
template <typename T, int kCap, typename Idx, int... kPpt>
struct KernelTable {
  static constexpr int kPpts[] = {kPpt...};
  KernelFn<kCap> fn[4][sizeof...(kPpt)] = {
      {KernelFor<T, kModeFp8PerTensor, kPpt, kCap, Idx>()...},
      {KernelFor<T, kModeFp8PerToken, kPpt, kCap, Idx>()...},
      {KernelFor<T, kModeFp8PerGroup, kPpt, kCap, Idx>()...},
      {KernelFor<T, kModePassthrough, kPpt, kCap, Idx>()...},
  };
  // Per token with 2 and 4 items per thread.
  KernelFn<kCap> token[2][sizeof...(kPpt)] = {{TokenFor<T, kPpt, kCap, 2>()...},
                                              {TokenFor<T, kPpt, kCap, 4>()...}};
  KernelFn<kCap> Get(int mode, int ppt, int items_per_thread) const {
    for (int i = 0; i < static_cast<int>(sizeof...(kPpt)); ++i) {
      if (kPpts[i] != ppt) continue;
      if (mode != kModeFp8PerToken || items_per_thread == 1) return fn[mode][i];
      return token[items_per_thread == 2 ? 0 : 1][i];
    }
    return nullptr;
  }
};

template <typename T>
struct DTypeKernels {
  KernelTable<T, kSmallPartTable, uint32_t, 2, 4, 8, 16> small32;
  KernelTable<T, kSmallPartTable, uint64_t, 2, 4, 8, 16> small;
  KernelTable<T, kMaxParts, uint32_t, 4, 16> full32;
  KernelTable<T, kMaxParts, uint64_t, 4, 16> full;
};

template <int kCap>
cudaError_t Launch(KernelFn<kCap> fn, const MergeKernelParams& params, const Schedule& sc,
                   const Plan& plan, cudaStream_t stream) {
  if (fn == nullptr) return cudaErrorInvalidValue;
  KernelArgs<kCap> args;
  args.problem = params.problem;
  args.sched = sc;
  for (int i = 0; i < kCap; ++i) {
    args.part_out[i] = i < params.problem.num_parts ? params.part_out[i] : nullptr;
    args.part_lse[i] = i < params.problem.num_parts ? params.part_lse[i] : nullptr;
  }
  cudaLaunchAttribute attrs[2];
  int num_attrs = 0;
  if (plan.pdl) {
    attrs[num_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[num_attrs].val.programmaticStreamSerializationAllowed = 1;
    ++num_attrs;
  }
  if (plan.ctas_per_token > 1) {
    attrs[num_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[num_attrs].val.clusterDim.x = static_cast<unsigned>(plan.ctas_per_token);
    attrs[num_attrs].val.clusterDim.y = 1;
    attrs[num_attrs].val.clusterDim.z = 1;
    ++num_attrs;
  }
  // Clusters above the portable size need the kernel's consent (sm_90: 16).
  if (plan.ctas_per_token > kMaxPortableClusterCtas) {
    const cudaError_t err =
        cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
  }
  // Above 48 KB a kernel takes shared memory only when allowed to.
  if (plan.smem > (48 << 10)) {
    const cudaError_t err =
        cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem);
    if (err != cudaSuccess) return err;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(plan.grid));
  cfg.blockDim = dim3(static_cast<unsigned>(plan.threads));
  cfg.dynamicSmemBytes = static_cast<size_t>(plan.smem);
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = static_cast<unsigned>(num_attrs);
  const cudaError_t err = cudaLaunchKernelEx(&cfg, fn, args);
  return err != cudaSuccess ? err : cudaGetLastError();
}


}  // namespace dispatch

template <typename T>
cudaError_t LaunchPlanned(const MergeKernelParams& params, int mode, const Schedule& sc,
                          const Plan& plan, cudaStream_t stream) {
  static const dispatch::DTypeKernels<T> kernels;
  if (params.problem.num_parts <= kSmallPartTable) {
    const int k = plan.items_per_thread;
    const auto fn = plan.narrow ? kernels.small32.Get(mode, plan.ppt, k)
                                : kernels.small.Get(mode, plan.ppt, k);
    return dispatch::Launch(fn, params, sc, plan, stream);
  }
  const int k = plan.items_per_thread;
  const auto fn = plan.narrow ? kernels.full32.Get(mode, plan.ppt, k)
                              : kernels.full.Get(mode, plan.ppt, k);
  return dispatch::Launch(fn, params, sc, plan, stream);
}

}  // namespace cuda
}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_DISPATCH_CUH_
