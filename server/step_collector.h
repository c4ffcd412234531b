// Collects the N parts of each merge step, checks that they agree, runs the
// merge once and fans the result out to every rank of the step.
//
// Matching: parts are matched by header.step alone. The first part of a step
// pins the config snapshot (the step boundary) and the reference header;
// every later part must agree on layer and num_tokens and carry a payload
// of exactly the size the snapshot implies.
//
// Guarantees:
//  - every Submit()ted part gets exactly one `done` call: the merged result
//    or an error, at the latest step_timeout after the step's first part;
//  - a step that fails (bad part, mismatch, duplicate rank, timeout, rank
//    lost) fails for every rank of it, with one status naming the field or
//    rank at fault; late parts of a failed or finished step get that status
//    too (a bounded table of finished steps remembers it);
//  - a failure never touches another step.
//
// Threads: Submit is called from data-plane threads; one merge thread runs
// the backend (steps merge in completion order); one sweeper thread fails
// steps past their deadline. `done` runs on one of those threads, without
// the collector's lock held, and must not block for long.
#ifndef DCPMERGE_SERVER_STEP_COLLECTOR_H_
#define DCPMERGE_SERVER_STEP_COLLECTOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/data.pb.h"
#include "server/compute_backend.h"
#include "server/config_store.h"
#include "server/group.h"
#include "server/stats.h"

namespace dcpmerge {

// One rank's contribution to a step (payloads moved out of the request).
struct StepPart {
  v1::MergeHeader header;
  std::string partial_out;  // [T,H,D] input dtype
  std::string lse;          // T*H fp32, configured layout
};

// The outcome of a step, shared by all its ranks (or the error of one part).
struct StepResult {
  absl::Status status;
  uint64_t step = 0;
  int32_t layer = 0;
  int64_t num_tokens = 0;
  uint64_t config_version = 0;
  std::shared_ptr<const ConfigSnapshot> config;  // null when never pinned
  std::vector<uint8_t> output;  // full [T,H,D] per the output mode
  std::vector<float> scales;    // per the output mode (per tensor: 1)
  std::vector<float> lse;       // when config->spec.return_lse
};

using StepDone = std::function<void(std::shared_ptr<const StepResult>)>;

class StepCollector {
 public:
  struct Options {
    absl::Duration step_timeout = absl::Seconds(5);
    size_t max_pending_steps = 256;   // beyond: RESOURCE_EXHAUSTED
    size_t finished_memory = 4096;    // finished steps remembered
  };

  StepCollector(ConfigStore* config, Group* group, ComputeBackend* backend,
                Stats* stats, Options options);
  ~StepCollector();  // Stop()

  void Start();
  // Fails everything pending with UNAVAILABLE "server shutting down",
  // refuses new parts, joins the threads. Idempotent.
  void Stop();

  void Submit(StepPart part, StepDone done);

  // Fails every step still collecting parts (a member was lost).
  void FailPending(const absl::Status& reason);
  // New parts get `reason` (draining) until Resume().
  void StopAccepting(const absl::Status& reason);
  void Resume();
  // Forgets finished steps (membership changed: step ids may restart).
  void ForgetFinished();

  size_t InFlight() const;
  // True when nothing is in flight within `timeout`.
  bool WaitIdle(absl::Duration timeout);

 private:
  struct Waiter {
    int32_t rank;
    StepDone done;
  };
  struct Pending {
    uint64_t step = 0;
    std::shared_ptr<const ConfigSnapshot> config;
    v1::MergeHeader first;  // reference header
    std::vector<StepPart> parts;
    std::vector<bool> have;
    std::vector<Waiter> waiters;
    int received = 0;
    absl::Time first_arrival;
    absl::Time last_arrival;
    absl::Time deadline;
  };
  using Notification = std::pair<StepDone, std::shared_ptr<const StepResult>>;

  static std::shared_ptr<StepResult> ErrorResult(const absl::Status& status,
                                                 const v1::MergeHeader& header,
                                                 const ConfigSnapshot* config);
  // Fails a pending step (lock held): erases it, remembers the status and
  // queues the notifications.
  void FailLocked(uint64_t step, const absl::Status& status,
                  std::vector<Notification>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberLocked(uint64_t step, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckPart(const StepPart& part, const Pending& pending) const;
  void MergeLoop();
  void SweepLoop();
  void RunMerge(Pending& p);
  void Deliver(std::vector<Notification>& notes);

  ConfigStore* const config_;
  Group* const group_;
  ComputeBackend* const backend_;
  Stats* const stats_;
  const Options options_;

  mutable absl::Mutex mu_;
  std::map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> ready_ ABSL_GUARDED_BY(mu_);
  size_t merging_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, absl::Status> finished_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> finished_order_ ABSL_GUARDED_BY(mu_);
  absl::Status refuse_ ABSL_GUARDED_BY(mu_);  // non-OK: not accepting
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ = false;
  std::thread merge_thread_;
  std::thread sweep_thread_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_STEP_COLLECTOR_H_
