// Where the merge runs: CPU (MergeOnCpu) or CUDA (MergeOnGpu, when the
// server is built with CUDA and a GPU is usable). Chosen once at start-up
// and reported (JoinResponse.backend, GetConfig, the start-up log).
#ifndef DCPMERGE_SERVER_COMPUTE_BACKEND_H_
#define DCPMERGE_SERVER_COMPUTE_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {

class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;
  // "cpu" or "cuda".
  virtual std::string name() const = 0;
  // Merges; every pointer in `args` is a host pointer (a device backend
  // stages through device memory). Called from one merge thread at a time
  // per backend instance. Returns the contract's status codes.
  virtual absl::Status Merge(const MergeArgs& args) = 0;
};

// kind: "auto" (CUDA when built with it and a GPU is usable, else CPU),
// "cpu" or "cuda" (fails when no usable GPU). `why` receives a one-line
// explanation of the choice. cpu_threads: MergeOnCpu worker threads (0 = all).
absl::StatusOr<std::unique_ptr<ComputeBackend>> MakeComputeBackend(
    const std::string& kind, int cpu_threads, std::string* why);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_COMPUTE_BACKEND_H_
