// Where the merge runs: CPU (MergeOnCpu) or CUDA (MergeOnGpu, when the
// server is built with CUDA and a GPU is usable). Chosen once at start-up
// and reported (JoinResponse.backend, GetConfig, the start-up log).
//
// A step goes through a backend in three calls, so that a device backend
// can copy each part while the others are still on the wire: BeginStep at
// the step's first part, StagePart as each part arrives, MergeStaged once
// all are in. Merge does the three at once (host buffers in hand).
#ifndef DCPMERGE_SERVER_COMPUTE_BACKEND_H_
#define DCPMERGE_SERVER_COMPUTE_BACKEND_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {

class ComputeBackend {
 public:
  // A step's inputs as the backend holds them from its first part to its
  // merge (CUDA: pinned and device buffers, each part's copy started as it
  // arrived). Destroying it, merged or not, gives the buffers back.
  class Staging {
   public:
    virtual ~Staging() = default;
  };

  // The device's own clock (CUDA events) for one merged step.
  struct DeviceTimes {
    bool measured = false;        // false: no device (CPU)
    absl::Duration last_copy_in;  // H2D of the part staged last
    absl::Duration kernel;
    absl::Duration copy_out;      // D2H of the outputs
  };

  virtual ~ComputeBackend() = default;
  // "cpu" or "cuda".
  virtual std::string name() const = 0;

  // Opens a step of `num_parts` parts, each `out_bytes` of partial output
  // and `lse_bytes` of LSE. nullptr: this backend reads the parts where
  // they lie and stages nothing (CPU).
  virtual absl::StatusOr<std::unique_ptr<Staging>> BeginStep(int num_parts, size_t out_bytes,
                                                             size_t lse_bytes) = 0;
  // Starts staging part `rank` (the sizes BeginStep was given) and returns
  // without waiting for the copy. Any thread; the parts of one step may be
  // staged at once from different threads, each rank once.
  virtual absl::Status StagePart(Staging* staging, int rank, const void* out, const void* lse) = 0;
  // Merges the step; every pointer in `args` is a host pointer (its inputs
  // are the parts staged in `staging`). Returns with the outputs in place
  // and the contract's status codes. `times` may be null. Steps with
  // different stagings may merge at once from different threads.
  virtual absl::Status MergeStaged(const MergeArgs& args, Staging* staging, DeviceTimes* times) = 0;
  // True when a merge of `shape` is short enough to run on the thread that
  // delivered the step's last part (a gRPC callback thread) rather than be
  // handed to a merge thread.
  virtual bool MergesInline(const MergeShape& shape) const = 0;

  // BeginStep, StagePart for every part of `args`, MergeStaged.
  absl::Status Merge(const MergeArgs& args);
};

inline absl::Status ComputeBackend::Merge(const MergeArgs& args) {
  if (absl::Status st = ValidateMergeArgs(args); !st.ok()) return st;
  absl::StatusOr<std::unique_ptr<Staging>> staging =
      BeginStep(args.shape.num_parts, args.partial_out_bytes, args.partial_lse_bytes);
  if (!staging.ok()) return staging.status();
  for (int i = 0; i < args.shape.num_parts; ++i) {
    if (absl::Status st = StagePart(staging->get(), i, args.partial_out[i], args.partial_lse[i]); !st.ok()) {
      return st;
    }
  }
  return MergeStaged(args, staging->get(), nullptr);
}

// kind: "auto" (CUDA when built with it and a GPU is usable, else CPU),
// "cpu" or "cuda" (fails when no usable GPU). `why` receives a one-line
// explanation of the choice. cpu_threads: MergeOnCpu worker threads (0 = all).
absl::StatusOr<std::unique_ptr<ComputeBackend>> MakeComputeBackend(
    const std::string& kind, int cpu_threads, std::string* why);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_COMPUTE_BACKEND_H_
