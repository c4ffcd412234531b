#include "server/nccl_data_plane.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/log.h"
#include "common/merge_adapter.h"
#include "transport/nccl/nccl_transport.h"

#if defined(DCPMERGE_WITH_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda/merge_launcher.h"
#endif

namespace dcpmerge {
namespace {

// Buffers in host memory (the fake transport): the backend as is.
class HostPlaneMerger : public PlaneMerger {
 public:
  explicit HostPlaneMerger(ComputeBackend* backend) : backend_(backend) {}
  std::string name() const override { return absl::StrCat(backend_->name(), " (host memory)"); }
  bool on_host() const override { return true; }
  absl::Status Merge(const MergeArgs& args, void*) override { return backend_->Merge(args); }

 private:
  ComputeBackend* const backend_;
};

#if defined(DCPMERGE_WITH_CUDA)
// Buffers in device memory (NCCL): the fused kernel enqueued on the
// communicator's stream, after the payload receives and before the
// response sends, with no host synchronisation. The per-tensor scale goes
// through a pinned host slot and a device float, copied on the same stream
// (the protocol waits for each step's stream work before the next step
// rewrites the slot).
class CudaPlaneMerger : public PlaneMerger {
 public:
  explicit CudaPlaneMerger(int device) : device_(device) {}
  ~CudaPlaneMerger() override {
    if (host_scale_ != nullptr) cudaFreeHost(host_scale_);
    if (device_scale_ != nullptr) cudaFree(device_scale_);
  }
  absl::Status Init() {
    if (cudaSetDevice(device_) != cudaSuccess ||
        cudaMallocHost(reinterpret_cast<void**>(&host_scale_), sizeof(float)) != cudaSuccess ||
        cudaMalloc(reinterpret_cast<void**>(&device_scale_), sizeof(float)) != cudaSuccess) {
      return absl::UnavailableError(absl::StrCat("CUDA merger on device ", device_, ": ",
                                                 cudaGetErrorString(cudaGetLastError())));
    }
    return absl::OkStatus();
  }
  std::string name() const override { return absl::StrCat("cuda (device ", device_, ", on the NCCL stream)"); }
  bool on_host() const override { return false; }
  absl::Status Merge(const MergeArgs& args, void* queue) override {
    cudaStream_t stream = static_cast<cudaStream_t>(queue);
    if (cudaSetDevice(device_) != cudaSuccess) return absl::InternalError("cudaSetDevice failed");
    MergeArgs dev = args;
    if (args.static_scale != nullptr) {
      *host_scale_ = *args.static_scale;
      if (cudaMemcpyAsync(device_scale_, host_scale_, sizeof(float), cudaMemcpyHostToDevice, stream) !=
          cudaSuccess) {
        return absl::InternalError("cudaMemcpyAsync of the static scale failed");
      }
      dev.static_scale = device_scale_;
    }
    return MergeOnGpu(dev, stream);
  }

 private:
  const int device_;
  float* host_scale_ = nullptr;
  float* device_scale_ = nullptr;
};
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<PlaneMerger>> MakePlaneMerger(ComputeBackend* backend,
                                                             bool device_memory, int device) {
  if (!device_memory) return std::unique_ptr<PlaneMerger>(new HostPlaneMerger(backend));
  if (backend->name() != "cuda") {
    return absl::FailedPreconditionError(absl::StrCat(
        "data_plane: nccl receives the partials in GPU memory and needs the cuda backend; "
        "this server runs the ", backend->name(), " backend (use --backend=cuda or auto)"));
  }
#if defined(DCPMERGE_WITH_CUDA)
  auto m = std::make_unique<CudaPlaneMerger>(device);
  absl::Status st = m->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<PlaneMerger>(std::move(m));
#else
  (void)device;
  return absl::UnimplementedError("data_plane: nccl with device memory needs a CUDA build");
#endif
}

NcclDataPlane::NcclDataPlane(ConfigStore* config, Group* group, ComputeBackend* backend,
                             Stats* stats, NcclDataPlaneOptions options,
                             std::function<void()> on_state_change)
    : config_(config),
      group_(group),
      backend_(backend),
      stats_(stats),
      options_(std::move(options)),
      on_state_change_(std::move(on_state_change)) {}

NcclDataPlane::~NcclDataPlane() { Stop(); }

absl::StatusOr<transport::ProtocolConfig> NcclDataPlane::ProtocolFor(
    const ConfigSnapshot& snap) const {
  auto c = ProtocolConfigFor(snap.spec, snap.version, options_.fixed_tokens);
  if (!c.ok()) {
    return absl::Status(c.status().code(), absl::StrCat("data_plane nccl: ", c.status().message()));
  }
  return c;
}

absl::Status NcclDataPlane::Start() {
  if (started_) return absl::FailedPreconditionError("NcclDataPlane: started twice");
  const bool real_nccl = !options_.factory;
  if (real_nccl) {
    transport::NcclTransportOptions t;
    t.device = options_.device;
    options_.factory = transport::MakeNcclCommunicatorFactory(t);
    if (backend_->name() != "cuda") {
      // Fail at start-up rather than at the first formation.
      auto m = MakePlaneMerger(backend_, /*device_memory=*/true, options_.device);
      if (!m.ok()) return m.status();
    }
  }
  if (options_.init_timeout <= absl::ZeroDuration() || options_.step_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("nccl_init_timeout / step_timeout: must be > 0");
  }
  std::shared_ptr<const ConfigSnapshot> snap = config_->Current();
  if (snap->configured) {
    auto c = ProtocolFor(*snap);
    if (!c.ok()) return c.status();
  }
  absl::StatusOr<std::string> id = options_.factory.new_unique_id();
  if (!id.ok()) {
    return absl::Status(id.status().code(),
                        absl::StrCat("data_plane nccl: cannot make a unique id: ", id.status().message()));
  }
  {
    absl::MutexLock lock(&mu_);
    unique_id_ = *id;
    generation_ = 1;
  }
  started_ = true;
  loop_ = std::thread([this] { Loop(); });
  LogInfo("data plane nccl: waiting for %d rank(s) to join (generation 1%s)",
          snap->configured ? snap->spec.num_parts : 0,
          options_.fixed_tokens >= 0 ? absl::StrCat(", fixed shape ", options_.fixed_tokens, " tokens")
                                     : std::string(", dynamic shapes"));
  return absl::OkStatus();
}

std::string NcclDataPlane::CommunicatorState() const {
  switch (state_.load()) {
    case kInitializing:
      return "initializing";
    case kReady:
      return "ready";
    case kAborted:
      return "aborted";
    default:
      return "uninitialized";
  }
}

void NcclDataPlane::AddToJoinResponse(const GroupSpec& spec, v1::JoinResponse* response) const {
  absl::MutexLock lock(&mu_);
  response->set_nccl_unique_id(unique_id_);
  response->set_nccl_generation(generation_);
  response->set_nccl_fixed_shape(options_.fixed_tokens >= 0);
  response->set_nccl_fixed_tokens(options_.fixed_tokens >= 0 ? options_.fixed_tokens : 0);
  response->set_server_nccl_rank(spec.num_parts);
}

void NcclDataPlane::AddToHeartbeatResponse(v1::HeartbeatResponse* response) const {
  absl::MutexLock lock(&mu_);
  response->set_nccl_generation(generation_);
  response->set_data_plane_error(last_error_);
}

void NcclDataPlane::OnMemberLost(int32_t rank, const absl::Status& reason) {
  absl::MutexLock lock(&mu_);
  if (dropping_ || stop_) return;  // our own Rotate, or shutting down
  if (!lost_) {
    lost_ = true;
    lost_reason_ = std::string(reason.message());
    if (lost_reason_.empty()) lost_reason_ = absl::StrCat("rank ", rank, " lost");
  }
  cancel_.store(true);
  if (transport_ != nullptr) transport_->Abort(lost_reason_);
}

void NcclDataPlane::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!stop_) {
      stop_ = true;
      cancel_.store(true);
      // A step past its headers is answered before the abort.
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !in_step_; };
      mu_.AwaitWithTimeout(absl::Condition(&idle), options_.step_timeout);
      if (transport_ != nullptr) transport_->Abort("server shutting down");
    }
  }
  if (loop_.joinable()) loop_.join();
}

void NcclDataPlane::SetUp(bool up) {
  if (up_.exchange(up) != up && on_state_change_) on_state_change_();
}

bool NcclDataPlane::WaitFormable() {
  while (true) {
    std::string lost;
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || lost_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(20));
      if (stop_) return false;
      if (lost_) lost = lost_reason_;
    }
    if (!lost.empty()) {
      // Someone who may hold the current id is gone: it (or its
      // replacement) must not join this id's formation again.
      Rotate(lost);
      continue;
    }
    std::shared_ptr<const ConfigSnapshot> snap = config_->Current();
    if (!snap->configured || snap->version == failed_version_) continue;
    if (group_->Complete()) return true;
  }
}

void NcclDataPlane::Loop() {
  while (WaitFormable()) {
    const std::string why = FormAndServe();
    {
      absl::MutexLock lock(&mu_);
      if (stop_) break;
    }
    if (!why.empty()) Rotate(why);
  }
  SetUp(false);
}

std::string NcclDataPlane::FormAndServe() {
  std::shared_ptr<const ConfigSnapshot> snap = config_->Current();
  absl::StatusOr<transport::ProtocolConfig> pc = ProtocolFor(*snap);
  if (!pc.ok()) {
    LogError("%s (config version %u); not forming a communicator until the configuration changes",
             pc.status().message(), snap->version);
    failed_version_ = snap->version;
    absl::MutexLock lock(&mu_);
    last_error_ = std::string(pc.status().message());
    return {};
  }
  const int n = snap->spec.num_parts;
  std::string id;
  uint64_t generation;
  {
    absl::MutexLock lock(&mu_);
    if (lost_) return lost_reason_;
    id = unique_id_;
    generation = generation_;
    cancel_.store(false);
  }
  LogInfo("data plane nccl: all %d rank(s) joined; forming communicator generation %u (%d parties)", n,
          generation, n + 1);
  state_.store(kInitializing);
  const absl::Time t0 = absl::Now();
  absl::StatusOr<std::unique_ptr<transport::Transport>> made =
      options_.factory.create(id, n + 1, n, t0 + options_.init_timeout, &cancel_);
  if (!made.ok()) {
    return absl::StrCat("forming communicator generation ", generation, " failed: ",
                        made.status().ToString());
  }
  std::unique_ptr<transport::Transport> t = std::move(*made);
  {
    absl::MutexLock lock(&mu_);
    if (stop_ || lost_) {
      t->Abort(stop_ ? "server shutting down" : lost_reason_);
      return stop_ ? std::string() : lost_reason_;
    }
    transport_ = t.get();
  }
  std::string why;
  Serve(t.get(), snap, &why);
  {
    absl::MutexLock lock(&mu_);
    transport_ = nullptr;
  }
  SetUp(false);
  t->Abort(why.empty() ? "data plane stopping" : why);
  server_protocol_.reset();
  merger_.reset();
  return why;
}

void NcclDataPlane::Serve(transport::Transport* t, const std::shared_ptr<const ConfigSnapshot>& formed,
                          std::string* why) {
  absl::StatusOr<std::unique_ptr<PlaneMerger>> merger =
      MakePlaneMerger(backend_, t->native_queue() != nullptr, options_.device);
  if (!merger.ok()) {
    *why = std::string(merger.status().message());
    return;
  }
  merger_ = std::move(*merger);
  protocol_ = *ProtocolFor(*formed);
  formed_hash_ = formed->hash;
  step_snapshot_ = formed;
  transport::ServerOptions so;
  so.step_timeout = options_.step_timeout;
  so.sync_before_merge = merger_->on_host();
  so.step_version = [this] { return PinStep(); };
  absl::StatusOr<std::unique_ptr<transport::ServerProtocol>> proto = transport::ServerProtocol::Create(
      t, protocol_, [this](transport::MergeStep& s) { return RunMerge(s); }, so);
  if (!proto.ok()) {
    *why = absl::StrCat("data plane nccl: protocol set-up failed: ", proto.status().ToString());
    return;
  }
  server_protocol_ = std::move(*proto);
  formations_.fetch_add(1);
  state_.store(kReady);
  LogInfo("data plane nccl: communicator up (%s; merge: %s)", transport::DescribeConfig(protocol_),
          merger_->name());
  SetUp(true);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      if (lost_) {
        *why = lost_reason_;
        return;
      }
    }
    absl::StatusOr<transport::StepOutcome> r = server_protocol_->ServeStep(absl::InfiniteFuture());
    const absl::Time done = absl::Now();
    {
      absl::MutexLock lock(&mu_);
      in_step_ = false;
    }
    if (!r.ok()) {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      *why = lost_ ? lost_reason_ : std::string(r.status().message());
      LogWarning("data plane nccl: communicator aborted: %s", *why);
      return;
    }
    steps_served_.fetch_add(1);
    RecordOutcome(*r, done);
  }
}

uint64_t NcclDataPlane::PinStep() {
  {
    absl::MutexLock lock(&mu_);
    in_step_ = true;
  }
  // A new snapshot of the same shape (scales, default scale) applies from
  // this step on; a shape change resets the group, which aborts us.
  std::shared_ptr<const ConfigSnapshot> cur = config_->Current();
  if (cur->configured && cur->hash == formed_hash_) step_snapshot_ = std::move(cur);
  return step_snapshot_->version;
}

absl::Status NcclDataPlane::RunMerge(transport::MergeStep& step) {
  const ConfigSnapshot& snap = *step_snapshot_;
  const MergeConfig& merge = snap.spec.merge;
  if (absl::Status st = snap.CheckLayer(step.layer_id, "layer_id"); !st.ok()) return st;
  float scale = snap.ScaleForLayer(step.layer_id);
  const bool per_tensor = merge.output_mode == OutputMode::kFp8PerTensor;
  MergeArgs args = ToMergeArgs(step, merge, per_tensor ? &scale : nullptr);
  if (per_tensor) step.static_scale_used = scale;
  merge_start_ = absl::Now();
  absl::Status st = merger_->Merge(args, step.queue);
  merge_end_ = absl::Now();
  if (!st.ok()) {
    LogWarning("step %u: merge failed: %s", step.step_id, st.ToString());
    return absl::Status(st.code(), absl::StrCat("merge: ", st.message()));
  }
  if (merger_->on_host() && merge.output_mode != OutputMode::kPassthrough) {
    const uint64_t sat = CountSaturatedFp8Codes(static_cast<const uint8_t*>(step.out), step.out_bytes);
    if (sat > 0) stats_->AddSaturated(sat);
  }
  return absl::OkStatus();
}

void NcclDataPlane::RecordOutcome(const transport::StepOutcome& o, absl::Time done) {
  stats_->RecordStep(o.step_status);
  const int n = protocol_.num_parts;
  if (!o.step_status.ok()) {
    for (int r = 0; r < n; ++r) stats_->RecordErrorResponse(o.step_status.code());
    return;
  }
  uint64_t in = 0, out = 0;
  for (int r = 0; r < n; ++r) {
    const transport::PayloadSizes s = transport::RankPayloadSizes(protocol_, r, o.num_tokens);
    in += s.partial_out + s.partial_lse;
    out += s.out + s.out_scales + s.out_lse;
  }
  stats_->AddBytesIn(in);
  stats_->AddBytesOut(out);
  const absl::Time headers_in = done - o.step_time;
  stats_->RecordLatency(Phase::kReceive, merge_start_ - headers_in);
  stats_->RecordLatency(Phase::kMerge, merge_end_ - merge_start_);
  stats_->RecordLatency(Phase::kSend, done - merge_end_);
  stats_->RecordLatency(Phase::kTotal, o.step_time);
}

void NcclDataPlane::Rotate(const std::string& why) {
  absl::StatusOr<std::string> id = options_.factory.new_unique_id();
  while (!id.ok()) {
    LogError("data plane nccl: cannot make a unique id: %s; retrying", id.status().ToString());
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Seconds(1))) return;
    }
    id = options_.factory.new_unique_id();
  }
  uint64_t old_generation;
  {
    absl::MutexLock lock(&mu_);
    old_generation = generation_;
    unique_id_ = *id;
    ++generation_;
    last_error_ = why;
    dropping_ = true;
  }
  state_.store(kAborted);
  LogWarning("data plane nccl: communicator generation %u given up (%s); generation %u: every rank must "
             "join again",
             old_generation, why, old_generation + 1);
  // After the new id: a Join from now on gets it; every session that may
  // hold the old one ends.
  for (const MemberInfo& m : group_->Members()) {
    group_->MarkLost(m.rank, m.session_id,
                     absl::StrCat("NCCL communicator generation ", old_generation,
                                  " aborted (", why, "); join again"),
                     MemberEnd::kCommunicatorAborted);
  }
  {
    absl::MutexLock lock(&mu_);
    dropping_ = false;
    lost_ = false;
    lost_reason_.clear();
  }
  if (on_state_change_) on_state_change_();
}

}  // namespace dcpmerge
