// Plain C++ interface between the nvcc-compiled kernels (merge_kernel.cu)
// and host code compiled by g++ (merge_launcher.cc, bench, tests). No absl,
// no contract types: the enums below mirror merge_contract.h value by value
// (merge_launcher.cc static_asserts that); N's limit is base/limits.h's. Callers must have validated the
// arguments (MergeOnGpu does); the launch function only rejects what it
// cannot run.
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_LAUNCH_H_
#define DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_LAUNCH_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "base/limits.h"

namespace dcpmerge {
namespace cuda {

enum KernelDType : int32_t { kKernelF32 = 0, kKernelF16 = 1, kKernelBF16 = 2 };
enum KernelMode : int32_t {
  kModeFp8PerTensor = 0,
  kModeFp8PerToken = 1,
  kModeFp8PerGroup = 2,
  kModePassthrough = 3,
};

// Everything about one merge except the part table.
struct MergeProblem {
  void* out = nullptr;                  // [T,H,D] codes or input dtype, 16-byte aligned
  float* out_scales = nullptr;          // dynamic modes, else null
  float* out_lse = nullptr;             // optional (null: not written)
  const float* static_scale = nullptr;  // kModeFp8PerTensor: device pointer
  int64_t num_tokens = 0;               // T
  int64_t token_stride = 0;             // elements, multiple of the vector width
  int64_t head_stride = 0;              // elements, multiple of the vector width
  int32_t num_heads = 0;                // H
  int32_t head_size = 0;                // D, multiple of the vector width
  int32_t num_parts = 0;                // N, 1..kMaxParts
  int32_t lse_tokens_heads = 0;         // 1: LSE index t*H+h; 0: h*T+t
  float lse_to_log2 = 0;                // log2(e) for base e, 1 for base 2
  float log2_to_lse = 0;                // ln(2) for base e, 1 for base 2
  int32_t group_size = 128;             // kModeFp8PerGroup: 64 or 128
  int32_t power_of_two_scales = 0;
};

struct MergeKernelParams {
  MergeProblem problem;
  const void* part_out[kMaxParts] = {};   // device, 16-byte aligned
  const float* part_lse[kMaxParts] = {};  // device, 4-byte aligned
};

// Launch knobs for tests and benchmarks; the service uses the defaults
// (0 or -1: chosen from the shape and the device, merge_kernel.cu).
struct MergeLaunchOptions {
  // Threads that split one item's N parts among them (1..16; rounded to a
  // parts-per-thread bucket of the kernels); their partial sums are
  // combined through shared memory.
  int part_groups = 0;
  // CTA size, a multiple of 32, at most 512 (256 when a thread takes 8 or
  // more parts); raised to 32 x part groups where smaller.
  int threads_per_cta = 0;
  // kModeFp8PerToken: CTAs (one thread-block cluster) that share a token,
  // 1..16 (more than 1 only on sm_90 and later).
  int ctas_per_token = 0;
  // Programmatic dependent launch (sm_90 and later): the merge may be
  // scheduled while the previous kernel in the stream finishes, and waits
  // for that kernel's results before its first read. It saves time when
  // that kernel triggers its dependents early (griddepcontrol
  // .launch_dependents, as the merge itself does) and costs a little when it
  // does not, so it is off unless asked for: 1 on, 0 or -1 off.
  int pdl = -1;
  // Per tensor, per group, passthrough: 1 keeps 64-bit index arithmetic
  // where the launcher would pick 32-bit (every element offset < 2^32);
  // 0 or -1: the launcher's choice.
  int wide_index = -1;
  // kModeFp8PerToken: 1 holds one item per thread in registers (items
  // beyond wait in shared memory or are merged twice) where the launcher
  // would hold up to MaxTokenItems; 0 or -1: the launcher's choice.
  int token_items_per_thread = -1;
};

// Enqueues the merge on `stream`. Returns cudaSuccess or the launch error
// (cudaErrorInvalidValue for arguments the kernels cannot run: D not a
// multiple of the vector width, a bad group size, a grid over 2^31-1
// CTAs, an option out of range). T == 0 launches nothing. No allocation,
// no synchronisation: safe inside stream capture.
cudaError_t LaunchMergeKernel(const MergeKernelParams& params, int32_t dtype,
                              int32_t mode, cudaStream_t stream,
                              const MergeLaunchOptions& options = {});

}  // namespace cuda
}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_KERNEL_LAUNCH_H_
