// The data plane over NCCL (docs/design.md, "The NCCL step protocol"): one
// communicator of N+1 parties per group, DCP ranks 0..N-1 and the server as
// rank N, driven by transport/server_protocol.h.
//
// Life cycle, all on one loop thread:
//   1. Start() makes a unique id (generation 1); ControlService hands it out
//      in every JoinResponse (with the generation).
//   2. Once the server is configured and all N ranks have joined, the loop
//      forms the communicator (CommunicatorFactory::create as rank N, with
//      a deadline of init_timeout; the ranks do the same after their Join).
//   3. Up: ServeStep in a loop. Each step merges through the PlaneMerger
//      (the compute backend: MergeOnGpu on the communicator's stream for
//      CUDA over NCCL, ComputeBackend::Merge on host memory for the fake
//      transport) and records Stats as the gRPC plane does. Configuration
//      versions are pinned when a step's headers arrive
//      (ServerOptions::step_version): a SetScales lands on the next step.
//   4. Any failure (ServeStep UNAVAILABLE: a rank's step timed out or it
//      violated the protocol; a member lost: left, heartbeats missed,
//      replaced, group reset by Configure; a formation that did not
//      complete) aborts the communicator, makes a fresh unique id
//      (generation + 1, last_error set) and then ends every member's
//      session: their heartbeats fail UNAVAILABLE ("join again"), they abort
//      their communicators, Join again (getting the new id) and the loop
//      goes back to 2. Up() is false (group not ready) from the failure
//      until the new communicator is formed.
//   Stop() lets a step already past its headers deliver (bounded by
//   step_timeout), then aborts the communicator and joins the loop.
//
// Threads: the loop thread owns the communicator and the protocol;
// OnMemberLost (group callbacks) and Stop may come from any thread and only
// set flags, cancel a formation or Abort the transport (thread-safe).
#ifndef DCPMERGE_SERVER_NCCL_DATA_PLANE_H_
#define DCPMERGE_SERVER_NCCL_DATA_PLANE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/merge_contract.h"
#include "server/compute_backend.h"
#include "server/config_store.h"
#include "server/data_plane.h"
#include "server/group.h"
#include "server/stats.h"
#include "transport/factory.h"
#include "transport/layout.h"
#include "transport/server_protocol.h"

namespace dcpmerge {

// The seam between the NCCL plane and the compute: runs one step's merge on
// buffers in transport memory.
class PlaneMerger {
 public:
  virtual ~PlaneMerger() = default;
  virtual std::string name() const = 0;
  // True: Merge reads and writes the buffers on the host, so the protocol
  // must sync before calling it. False: Merge only enqueues on `queue`.
  virtual bool on_host() const = 0;
  // Every buffer in `args` is transport memory, except args.static_scale
  // (per-tensor mode): a host pointer to the layer's scale, valid for the
  // call only (a device merger stages it on the queue). `queue`:
  // Transport::native_queue() (a cudaStream_t for NCCL, null for the fake).
  virtual absl::Status Merge(const MergeArgs& args, void* queue) = 0;
};

// The merger for `backend` over transports whose memory is device memory
// (real NCCL) or host memory (the fake transport):
//   host memory:                 backend->Merge (CPU, or CUDA staging itself)
//   device memory, cuda backend: MergeOnGpu on the communicator's stream,
//                                on `device`, no host synchronisation
//   device memory, cpu backend:  FAILED_PRECONDITION
absl::StatusOr<std::unique_ptr<PlaneMerger>> MakePlaneMerger(
    ComputeBackend* backend, bool device_memory, int device);

struct NcclDataPlaneOptions {
  // How the server's party is made. Unset: NCCL on `device`
  // (MakeNcclCommunicatorFactory). Tests inject transport::FakeHub.
  transport::CommunicatorFactory factory;
  int device = 0;  // CUDA device of the server's party and merge
  // A formation not complete this long after the group became complete
  // fails (every party must have called create); the plane then re-forms.
  absl::Duration init_timeout = absl::Seconds(60);
  // From a step's headers to its last response (ServerProtocol).
  absl::Duration step_timeout = absl::Seconds(5);
  // >= 0: fixed-shape mode, every step has exactly this many tokens.
  int64_t fixed_tokens = -1;
};

class NcclDataPlane final : public DataPlane {
 public:
  // on_state_change: called, with no lock held, whenever Up() changes and
  // after a re-formation (the server updates its health status).
  NcclDataPlane(ConfigStore* config, Group* group, ComputeBackend* backend,
                Stats* stats, NcclDataPlaneOptions options,
                std::function<void()> on_state_change);
  ~NcclDataPlane() override;  // Stop()

  // Checks the options against the backend and current config, makes the
  // first unique id and starts the loop thread. UNIMPLEMENTED on a build
  // without NCCL (and no injected factory).
  absl::Status Start();

  v1::DataPlane kind() const override { return v1::DATA_PLANE_NCCL; }
  bool Up() const override { return up_.load(); }
  // JoinResponse: the current unique id and generation, the fixed shape, and
  // the server's rank N. HeartbeatResponse: the generation and why the last
  // communicator was given up (a rank whose generation is older rejoins).
  void AddToJoinResponse(const GroupSpec& spec, v1::JoinResponse* response) const override;
  void AddToHeartbeatResponse(v1::HeartbeatResponse* response) const override;
  // uninitialized, initializing, ready or aborted.
  std::string CommunicatorState() const override;
  void OnMemberLost(int32_t rank, const absl::Status& reason) override;
  // Graceful: a step past its headers may finish (<= step_timeout), then
  // the communicator is aborted. Idempotent.
  void Stop() override;

  // Communicators formed and steps served (including rejected ones) so far.
  uint64_t formations() const { return formations_.load(); }
  uint64_t steps_served() const { return steps_served_.load(); }

 private:
  absl::StatusOr<transport::ProtocolConfig> ProtocolFor(const ConfigSnapshot& snap) const;
  void Loop();
  // Waits until a formation may start. False: stopping.
  bool WaitFormable();
  // Forms and serves one communicator; returns why it ended.
  std::string FormAndServe();
  void Serve(transport::Transport* t, const std::shared_ptr<const ConfigSnapshot>& formed,
             std::string* why);
  // Fresh id, generation + 1, every session ended.
  void Rotate(const std::string& why);
  uint64_t PinStep();
  absl::Status RunMerge(transport::MergeStep& step);
  void RecordOutcome(const transport::StepOutcome& outcome, absl::Time done);
  void SetUp(bool up);

  ConfigStore* const config_;
  Group* const group_;
  ComputeBackend* const backend_;
  Stats* const stats_;
  NcclDataPlaneOptions options_;
  const std::function<void()> on_state_change_;

  mutable absl::Mutex mu_;
  std::string unique_id_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool lost_ ABSL_GUARDED_BY(mu_) = false;       // a member was dropped
  std::string lost_reason_ ABSL_GUARDED_BY(mu_);
  bool dropping_ ABSL_GUARDED_BY(mu_) = false;   // Rotate ending sessions
  bool in_step_ ABSL_GUARDED_BY(mu_) = false;    // headers in, not answered
  transport::Transport* transport_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::atomic<bool> cancel_{false};  // cancels a formation in progress
  std::atomic<bool> up_{false};
  // For CommunicatorState(): uninitialized (no communicator yet), initializing,
  // ready, aborted (given up; waiting for the ranks to join again).
  enum State { kUninitialized, kInitializing, kReady, kAborted };
  std::atomic<int> state_{kUninitialized};
  std::atomic<uint64_t> formations_{0};
  std::atomic<uint64_t> steps_served_{0};
  bool started_ = false;
  std::thread loop_;

  // Loop thread only.
  std::unique_ptr<PlaneMerger> merger_;
  // Destroyed only after the transport was aborted (its buffers may be in
  // use by transfers still pending on the communicator).
  std::unique_ptr<transport::ServerProtocol> server_protocol_;
  transport::ProtocolConfig protocol_;
  uint64_t formed_hash_ = 0;
  std::shared_ptr<const ConfigSnapshot> step_snapshot_;
  absl::Time merge_start_, merge_end_;
  uint64_t failed_version_ = 0;  // config the plane cannot serve (logged once)
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_NCCL_DATA_PLANE_H_
