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
// enable_pdl: programmatic dependent launch (sm_90 and later; ignored
// before): the merge may start while the kernel before it in the stream
// finishes, and waits for that kernel's writes before its first read. It
// saves time only when that kernel triggers its dependents early
// (griddepcontrol.launch_dependents) and costs about 0.2 us per launch when
// it does not (docs/benchmarks.md), so it is off unless asked for.
absl::Status MergeOnGpu(const MergeArgs& args, cudaStream_t stream, bool enable_pdl = false);

}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_CUDA_MERGE_LAUNCHER_H_
