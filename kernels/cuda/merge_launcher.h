// GPU implementation of the merge contract (kernels/merge_contract.h).
#ifndef DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_H_
#define DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {

// Enqueues the fused merge (+ FP8 quantization) on `stream`. Every pointer in
// `args` is a device pointer, static_scale included (read by the kernel, so
// a captured CUDA graph sees scale updates). Validates `args` on the host
// (no device synchronisation, safe during stream capture) and returns
// INVALID_ARGUMENT naming the field; launch failures come back as INTERNAL.
absl::Status MergeOnGpu(const MergeArgs& args, cudaStream_t stream);

}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_H_
