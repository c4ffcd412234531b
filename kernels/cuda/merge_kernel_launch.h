// Plain C++ interface between the nvcc-compiled kernel (merge_kernel.cu) and
// host code compiled by g++ (merge_launcher.cc, bench, tests). No absl, no
// contract types: the enums below mirror merge_contract.h value by value
// (merge_launcher.cc static_asserts that). Callers of this interface must
// have validated the arguments (MergeOnGpu does); the launch function only
// rejects what it cannot run.
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_LAUNCH_H_
#define DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_LAUNCH_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace dcpmerge {
namespace cuda {

inline constexpr int kMaxKernelParts = 64;

enum KernelDType : int32_t { kKernelF32 = 0, kKernelF16 = 1, kKernelBF16 = 2 };
enum KernelMode : int32_t {
  kModeFp8PerTensor = 0,
  kModeFp8PerToken = 1,
  kModeFp8PerGroup = 2,
  kModePassthrough = 3,
};

// Passed to the kernel by value (about 1.1 KB of the 4 KB parameter space).
struct MergeKernelParams {
  const void* part_out[kMaxKernelParts];   // device, 16-byte aligned
  const float* part_lse[kMaxKernelParts];  // device, 4-byte aligned
  void* out;                  // [T,H,D] codes or input dtype, 16-byte aligned
  float* out_scales;          // dynamic modes, else null
  float* out_lse;             // optional (null: not written)
  const float* static_scale;  // kModeFp8PerTensor: device pointer
  int64_t num_tokens;         // T
  int64_t token_stride;       // elements, multiple of the vector width
  int64_t head_stride;        // elements, multiple of the vector width
  int32_t num_heads;          // H
  int32_t head_size;          // D, multiple of the vector width
  int32_t num_parts;          // N, 1..64
  int32_t lse_tokens_heads;   // 1: LSE index t*H+h; 0: h*T+t
  float lse_to_log2;          // log2(e) for base e, 1 for base 2
  float log2_to_lse;          // ln(2) for base e, 1 for base 2
  int32_t group_size;         // kModeFp8PerGroup: 64 or 128
  int32_t power_of_two_scales;
  int32_t prefetch;           // filled in by the launch function
};

// Launch knobs for experiments (bench); the service uses the defaults.
struct MergeLaunchOptions {
  // Item width: 1 = one 16-byte vector per part per thread (8-byte FP8
  // stores for 16-bit inputs), 2 = two vectors (16-byte FP8 stores, twice
  // the bytes in flight per load batch); -1 = auto (merge_kernel.cu): 2
  // when D allows it and N <= 4 or the grid is large, else 1.
  int wide = -1;
  // 0: choose from the shape (see merge_kernel.cu).
  int threads_per_cta = 0;
  // L2-prefetch each thread's item in parts >= NB (the parts not loaded in
  // the first batch) before it starts: -1 auto (on when N > 8 and the grid
  // is a single wave, i.e. latency-bound decode shapes), 0 off, 1 on.
  int prefetch = -1;
};

// Enqueues the merge kernel on `stream`. Returns cudaSuccess or the launch
// error (cudaErrorInvalidValue for arguments the kernel cannot run: D not a
// multiple of the vector width, a bad group size, a grid over 2^31-1 CTAs).
// T == 0 launches
// nothing. No allocation, no synchronisation: safe inside stream capture.
cudaError_t LaunchMergeKernel(const MergeKernelParams& params, int32_t dtype,
                              int32_t mode, cudaStream_t stream,
                              const MergeLaunchOptions& options = {});

}  // namespace cuda
}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_LAUNCH_H_
