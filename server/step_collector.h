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
// Limits (Options), each refusal RESOURCE_EXHAUSTED naming the flag:
//  - max_pending_steps: steps collecting parts at once;
//  - max_pending_steps_per_rank: steps one rank has sent and is waiting on
//    the others for. A rank over its quota that starts another step gives
//    up its own oldest step that no other rank has joined yet; when it has
//    none, its new part is refused. Either way only steps of that rank
//    fail, and every other rank can still start steps (a rank sending 256
//    future step ids no longer blocks the group);
//  - max_pending_bytes: payload bytes held (collecting, ready, merging).
// A refused part fails its step for every rank of it, like any bad part
// (the finished table remembers it). A refusal marks the group stalled for
// `stall_window` (health and metrics show it).
//
// Threads: Submit is called from data-plane threads and stages its part
// into the backend there (ComputeBackend::StagePart), outside the lock. The
// thread whose part completes a step merges it when the backend says the
// merge is short (MergesInline: no hand-off); longer merges go to the one
// merge thread (in completion order). One sweeper thread fails steps past
// their deadline. `done` runs on one of those threads, without the
// collector's lock held, and must not block for long.
#ifndef DCPMERGE_SERVER_STEP_COLLECTOR_H_
#define DCPMERGE_SERVER_STEP_COLLECTOR_H_

#include <array>
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
#include "base/limits.h"
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
    // 0: max(1, max_pending_steps / N).
    size_t max_pending_steps_per_rank = 0;
    int64_t max_pending_bytes = int64_t{1} << 30;  // 0: no cap
    absl::Duration stall_window = absl::ZeroDuration();  // 0: step_timeout
  };

  // The limits a refusal can come from (LimitRefusals' index).
  enum Limit { kMaxPendingSteps = 0, kMaxPendingStepsPerRank = 1, kMaxPendingBytes = 2, kNumLimits = 3 };
  static const char* LimitName(Limit l);

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

  // Payload bytes held now (collecting, ready, merging).
  int64_t PendingBytes() const;
  // The per-rank quota in force for a group of `num_parts`.
  size_t PerRankQuota(int32_t num_parts) const;
  // Parts refused (or steps given up) per limit since start.
  std::array<uint64_t, kNumLimits> LimitRefusals() const;
  // True within stall_window of the last refusal (or NoteStall).
  bool Stalled() const;
  // Something outside the collector saturated (a rank's response queue).
  void NoteStall();
  // Called (not under the collector's lock) when Stalled() changes.
  void SetStallCallback(std::function<void()> on_change);

 private:
  struct Waiter {
    int32_t rank;
    StepDone done;
  };
  // A step's staging on the backend. Opened by the first of its parts to
  // get there and used by the others, all outside the collector's lock.
  struct StagingSlot {
    int num_parts = 0;
    size_t out_bytes = 0, lse_bytes = 0;  // per part
    absl::Mutex mu;
    bool begun ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);  // BeginStep's failure
    std::unique_ptr<ComputeBackend::Staging> staging ABSL_GUARDED_BY(mu);  // null: nothing staged (CPU)
  };
  struct Pending {
    uint64_t step = 0;
    uint64_t serial = 0;  // tells it from a later step of the same id (ForgetFinished)
    std::shared_ptr<StagingSlot> staging;
    std::shared_ptr<const ConfigSnapshot> config;
    v1::MergeHeader first;  // reference header
    std::vector<StepPart> parts;
    std::vector<bool> have;
    std::vector<Waiter> waiters;
    int received = 0;   // parts accepted
    int staged = 0;     // parts accepted and staged: the step is complete at N
    int64_t bytes = 0;  // payload bytes of the parts held
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
  // An accepted part to its step's staging (BeginStep first if it is the
  // first there); not under the lock.
  absl::Status Stage(StagingSlot& slot, int32_t rank, const StepPart& part);
  // Takes a staged part in; the step's last part merges it here (when the
  // backend says the merge is short) or hands it to the merge thread.
  void Staged(uint64_t step, uint64_t serial, int32_t rank, StepPart part, const absl::Status& staged);
  void MergeLoop();
  void SweepLoop();
  void RunMerge(Pending& p);
  void Deliver(std::vector<Notification>& notes);
  // Accounting of a step leaving pending_ (failed or complete).
  void ReleaseWaitingLocked(const Pending& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A refusal: counts it, marks the stall; true when the stall just began.
  bool RefusedLocked(Limit limit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rank `rank`'s oldest pending step that only it has sent; 0 and false
  // when there is none.
  bool OldestOnlyFromLocked(int32_t rank, uint64_t* step) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration StallWindow() const;

  ConfigStore* const config_;
  Group* const group_;
  ComputeBackend* const backend_;
  Stats* const stats_;
  const Options options_;

  mutable absl::Mutex mu_;
  std::map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> ready_ ABSL_GUARDED_BY(mu_);
  size_t merging_ ABSL_GUARDED_BY(mu_) = 0;  // on the merge thread or inline
  uint64_t serials_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, absl::Status> finished_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> finished_order_ ABSL_GUARDED_BY(mu_);
  absl::Status refuse_ ABSL_GUARDED_BY(mu_);  // non-OK: not accepting
  std::array<int, kMaxParts> waiting_by_rank_ ABSL_GUARDED_BY(mu_) = {};
  int64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::array<uint64_t, kNumLimits> refusals_ ABSL_GUARDED_BY(mu_) = {};
  absl::Time last_stall_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;  // as last reported to on_stall_change_
  std::function<void()> on_stall_change_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ = false;
  std::thread merge_thread_;
  std::thread sweep_thread_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_STEP_COLLECTOR_H_
