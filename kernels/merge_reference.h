// CPU implementation of the merge contract (merge_contract.h): the oracle for
// every test, and the compute backend where no GPU is present.
#ifndef DCPMERGE_KERNELS_MERGE_REFERENCE_H_
#define DCPMERGE_KERNELS_MERGE_REFERENCE_H_

#include "absl/status/status.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {

// Merges on the CPU; every pointer in `args` is a host pointer. Validates
// `args` first (ValidateMergeArgs) and, for kFp8PerTensor, the scale value.
// num_threads: worker threads over tokens; 0 picks the hardware count.
// Thread-safe: concurrent calls on distinct outputs are fine.
absl::Status MergeOnCpu(const MergeArgs& args, int num_threads = 0);

}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_MERGE_REFERENCE_H_
