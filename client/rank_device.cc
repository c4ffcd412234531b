#include "client/rank_device.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/group_spec.h"
#include "common/merge_adapter.h"
#include "transport/nccl/nccl_transport.h"
#include "transport/wire.h"

namespace dcpmerge {

// One formed communicator of this rank and its protocol state.
struct RankDevice::Communicator {
  ~Communicator() { protocol.reset(); }  // its buffers before the transport
  std::string reason() const {
    absl::MutexLock lock(&mu);
    return abort_reason;
  }
  uint64_t serial = 0;
  uint64_t generation = 0;
  std::unique_ptr<transport::Transport> transport;  // declared first: destroyed last
  std::unique_ptr<transport::RankProtocol> protocol;
  std::unique_ptr<StreamJoin> join;  // real NCCL only: caller's stream <-> the communicator's
  mutable absl::Mutex mu;
  std::string abort_reason ABSL_GUARDED_BY(mu);
};

namespace {

void FillInfo(const transport::ResponseHeader& h, DeviceStepInfo* info) {
  if (info == nullptr) return;
  info->step = h.step_id;
  info->layer = h.layer_id;
  info->num_tokens = h.num_tokens;
  info->config_version = h.config_version;
  info->head_begin = h.head_begin;
  info->head_count = h.head_count;
  info->scale_count = h.scale_count;
  info->static_scale = h.static_scale;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RankDevice>> RankDevice::Create(RankClient* client, RankDeviceOptions options) {
  if (client == nullptr) return absl::InvalidArgumentError("RankDevice: null client");
  std::unique_ptr<RankDevice> d(new RankDevice(client, std::move(options)));
  if (std::optional<v1::JoinResponse> j = client->current_session()) {
    absl::MutexLock lock(&d->mu_);
    d->join_ = *j;
  }
  absl::Status st = client->SetSessionObserver(d.get());
  if (!st.ok()) {
    absl::MutexLock lock(&d->mu_);
    d->client_ = nullptr;  // never registered: nothing to undo
    return st;
  }
  return d;
}

RankDevice::RankDevice(RankClient* client, RankDeviceOptions options)
    : options_(std::move(options)), client_(client) {}

RankDevice::~RankDevice() {
  RankClient* client;
  {
    absl::MutexLock lock(&mu_);
    client = client_;
  }
  // Waits for an observer call in progress; none comes after it.
  if (client != nullptr) client->SetSessionObserver(nullptr).IgnoreError();
  cancel_.store(true);
  absl::MutexLock device_lock(&device_mu_);
  Drop("rank device closing");
}

void RankDevice::SessionEnding(End end) {
  switch (end) {
    case End::kRejoin: {
      // A new session gets a new communicator (Connect).
      cancel_.store(true);  // a Connect in progress gives up
      absl::MutexLock device_lock(&device_mu_);
      Drop("rank joins again");
      return;
    }
    case End::kLeave:
      Abort("rank left the group");  // the server re-forms without it
      return;
    case End::kClose: {
      cancel_.store(true);
      absl::MutexLock device_lock(&device_mu_);
      Drop("rank client closing");
      absl::MutexLock lock(&mu_);
      client_ = nullptr;
      return;
    }
  }
}

void RankDevice::SessionStarted(const v1::JoinResponse& join) {
  absl::MutexLock lock(&mu_);
  join_ = join;
  session_ended_ = false;
  cancel_.store(false);
}

void RankDevice::HeartbeatDone(const absl::Status& st, const v1::HeartbeatResponse& resp) {
  std::string why;
  {
    absl::MutexLock lock(&mu_);
    // NCCL: the server ends every session when it gives a communicator up
    // (a fresh id awaits the next Join); a server gone for good answers
    // nothing. Either way this rank's communicator is dead: abort it so
    // stream work waiting on it ends. A slow answer is no verdict.
    if (join_.data_plane() != v1::DATA_PLANE_NCCL || session_ended_) return;
    if (absl::IsUnavailable(st) || absl::IsFailedPrecondition(st)) {
      why = absl::StrCat("heartbeat: ", st.message());
    } else if (st.ok() && resp.nccl_generation() != join_.nccl_generation()) {
      why = absl::StrCat("the server gave communicator generation ", join_.nccl_generation(), " up (",
                         resp.data_plane_error(), ")");
    }
    if (why.empty()) return;
    session_ended_ = true;
    cancel_.store(true);
  }
  Abort(why);
}

std::shared_ptr<RankDevice::Communicator> RankDevice::current() const {
  absl::MutexLock lock(&mu_);
  return comm_;
}

void RankDevice::Abort(const std::string& why) {
  std::shared_ptr<Communicator> c = current();
  if (c == nullptr || c->transport->aborted()) return;
  {
    absl::MutexLock lock(&c->mu);
    if (c->abort_reason.empty()) c->abort_reason = why;
  }
  c->transport->Abort(why);
}

void RankDevice::Drop(const std::string& why) {
  std::shared_ptr<Communicator> c;
  {
    absl::MutexLock lock(&mu_);
    c = std::move(comm_);
  }
  if (c != nullptr) c->transport->Abort(why);
}

absl::Status RankDevice::Gone(const Communicator& c) const {
  const std::string why = c.reason();
  return absl::UnavailableError(absl::StrCat("NCCL communicator generation ", c.generation, " aborted",
                                             why.empty() ? "" : ": ", why,
                                             "; Join() and RankDevice::Connect() again"));
}

absl::Status RankDevice::Connect() {
  absl::MutexLock device_lock(&device_mu_);
  std::optional<v1::JoinResponse> j;
  std::shared_ptr<Communicator> old;
  int rank = 0;
  {
    absl::MutexLock lock(&mu_);
    if (client_ == nullptr) return absl::FailedPreconditionError("the rank client is closed");
    rank = client_->options().rank;
    j = client_->current_session();
    if (!j.has_value()) return absl::FailedPreconditionError("not joined: call Join() first");
    if (session_ended_) {
      return absl::UnavailableError("this session has ended (the server gave the communicator up); Join() again");
    }
    old = std::move(comm_);
  }
  if (old != nullptr) old->transport->Abort("RankDevice::Connect called again");
  old.reset();
  if (j->data_plane() != v1::DATA_PLANE_NCCL) {
    return absl::FailedPreconditionError(
        "the group runs the gRPC data plane (server --data_plane=grpc): use RankClient::Merge() on host "
        "buffers");
  }
  absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(j->config());
  if (!spec.ok()) return spec.status();
  absl::StatusOr<transport::ProtocolConfig> pc = ProtocolConfigFor(
      *spec, std::max<uint64_t>(1, j->config_version()), j->nccl_fixed_shape() ? j->nccl_fixed_tokens() : -1);
  if (!pc.ok()) return pc.status();

  transport::CommunicatorFactory factory = options_.factory;
  if (!factory) {
    transport::NcclTransportOptions o;
    o.device = options_.cuda_device;
    o.stream = options_.nccl_stream;
    factory = transport::MakeNcclCommunicatorFactory(o);
  }
  const int n = spec->num_parts;
  absl::StatusOr<std::unique_ptr<transport::Transport>> t = factory.create(
      j->nccl_unique_id(), n + 1, rank, absl::Now() + options_.init_timeout, &cancel_);
  if (!t.ok()) {
    return absl::Status(t.status().code(),
                        absl::StrCat("forming NCCL communicator generation ", j->nccl_generation(), " (rank ",
                                     rank, " of ", n + 1, "): ", t.status().message()));
  }
  auto c = std::make_shared<Communicator>();
  c->generation = j->nccl_generation();
  c->transport = std::move(*t);
  absl::StatusOr<std::unique_ptr<transport::RankProtocol>> p =
      transport::RankProtocol::Create(c->transport.get(), *pc, options_.slots);
  if (!p.ok()) {
    c->transport->Abort("rank protocol set-up failed");
    return p.status();
  }
  c->protocol = std::move(*p);
  if (c->transport->native_queue() != nullptr) {
    absl::StatusOr<std::unique_ptr<StreamJoin>> join = StreamJoin::Create(options_.cuda_device);
    if (!join.ok()) {
      c->transport->Abort("cudaEventCreate failed");
      return join.status();
    }
    c->join = std::move(*join);
  }
  absl::MutexLock lock(&mu_);
  const std::optional<v1::JoinResponse> now =
      client_ != nullptr ? client_->current_session() : std::optional<v1::JoinResponse>();
  if (!now.has_value() || session_ended_ || now->session_id() != j->session_id()) {
    c->transport->Abort("session ended while forming the communicator");
    return absl::UnavailableError("the session ended while the communicator formed; Join() again");
  }
  c->serial = ++serial_;
  comm_ = std::move(c);
  return absl::OkStatus();
}

absl::StatusOr<transport::PayloadSizes> RankDevice::Sizes(int64_t num_tokens) const {
  std::shared_ptr<Communicator> c = current();
  if (c == nullptr) return absl::FailedPreconditionError("no communicator: Connect() first");
  const transport::ProtocolConfig& pc = c->protocol->config();
  if (num_tokens < 0 || num_tokens > pc.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens: ", num_tokens, " is outside 0..max_tokens (", pc.max_tokens, ")"));
  }
  return c->protocol->Sizes(num_tokens);
}

absl::StatusOr<DeviceTicket> RankDevice::Merge(const transport::RankStep& step, CudaStream stream) {
  absl::MutexLock device_lock(&device_mu_);
  std::shared_ptr<Communicator> c = current();
  if (c == nullptr) return absl::FailedPreconditionError("no communicator: Connect() after Join()");
  if (c->transport->aborted()) return Gone(*c);
  CudaStream own = static_cast<CudaStream>(c->transport->native_queue());
  if (own == nullptr && stream != nullptr) {
    return absl::InvalidArgumentError(
        "stream: this communicator (in-process transport) has no CUDA stream; pass a null stream");
  }
  const bool fork = own != nullptr && stream != own;
  if (fork) {
    absl::Status st = c->join->Fork(stream, own);
    if (!st.ok()) return st;
  }
  absl::StatusOr<transport::StepTicket> t = c->protocol->EnqueueStep(step);
  if (!t.ok()) {
    if (c->transport->aborted()) return Gone(*c);
    return t.status();
  }
  if (fork) {
    absl::Status st = c->join->Rejoin(own, stream);
    if (!st.ok()) return st;
  }
  DeviceTicket ticket;
  ticket.communicator = c->serial;
  ticket.ticket = *t;
  return ticket;
}

absl::StatusOr<std::shared_ptr<RankDevice::Communicator>> RankDevice::CommunicatorOf(
    const DeviceTicket& ticket) const {
  std::shared_ptr<Communicator> c = current();
  if (c == nullptr || c->serial != ticket.communicator) {
    return absl::UnavailableError(
        "the step was enqueued on a communicator that is gone (the rank joined again); its output is void");
  }
  return c;
}

absl::Status RankDevice::CheckResponse(const DeviceTicket& ticket, DeviceStepInfo* info) {
  absl::MutexLock device_lock(&device_mu_);
  absl::StatusOr<std::shared_ptr<Communicator>> comm = CommunicatorOf(ticket);
  if (!comm.ok()) return comm.status();
  const std::shared_ptr<Communicator>& c = *comm;
  transport::ResponseHeader h{};
  absl::Status st = c->protocol->CheckResponse(ticket.ticket, &h);
  // No valid response in the slot and the communicator aborted: the step
  // was cut off, not answered.
  if (absl::IsInternal(st) && c->transport->aborted()) return Gone(*c);
  FillInfo(h, info);
  return st;
}

absl::Status RankDevice::Wait(const DeviceTicket& ticket, absl::Duration timeout, DeviceStepInfo* info) {
  absl::MutexLock device_lock(&device_mu_);
  absl::StatusOr<std::shared_ptr<Communicator>> comm = CommunicatorOf(ticket);
  if (!comm.ok()) return comm.status();
  const std::shared_ptr<Communicator>& c = *comm;
  transport::ResponseHeader h{};
  absl::Status st = c->protocol->Complete(ticket.ticket, absl::Now() + timeout, &h);
  if (!st.ok() && c->transport->aborted() && (absl::IsInternal(st) || absl::IsUnavailable(st))) {
    return Gone(*c);
  }
  FillInfo(h, info);
  return st;
}

absl::Status RankDevice::RewriteStep(DeviceTicket* ticket, uint64_t step, int32_t layer) {
  absl::MutexLock device_lock(&device_mu_);
  std::shared_ptr<Communicator> c = current();
  if (ticket == nullptr || c == nullptr || c->serial != ticket->communicator) {
    return absl::FailedPreconditionError("the ticket is not of this device's current communicator");
  }
  return c->protocol->RewriteHeader(&ticket->ticket, step, layer);
}

}  // namespace dcpmerge
