// MergeOnGpu with launch knobs, for tests and benchmarks only: the service
// calls MergeOnGpu (merge_launcher.h), which takes the default
// MergeLaunchOptions (every choice made from the shape and the device).
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_INTERNAL_H_
#define DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_INTERNAL_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/cuda/merge_kernel_launch.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {

// Same validation and semantics as MergeOnGpu.
absl::Status MergeOnGpuWithOptions(const MergeArgs& args, cudaStream_t stream,
                                   const cuda::MergeLaunchOptions& options);

}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_INTERNAL_H_
