#include "client/rank_client.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "base/grpc_status.h"
#include "common/channel_args.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

#if defined(DCPMERGE_WITH_NCCL)
#include "common/group_spec.h"
#include "common/merge_adapter.h"
#include "transport/nccl/nccl_transport.h"
#endif

namespace dcpmerge {
namespace {

void SetDeadline(grpc::ClientContext* ctx, absl::Duration d) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + d));
}

}  // namespace

struct RankClient::Stream {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MergeRequest, v1::MergeResponse>> rw;
  std::thread reader;
  bool broken = false;  // guarded by RankClient::mu_
};

#if defined(DCPMERGE_WITH_NCCL)
// One formed communicator of this rank and its protocol state.
struct RankClient::Device {
  ~Device() {
    protocol.reset();  // its buffers before the transport
    if (in != nullptr) cudaEventDestroy(in);
    if (out != nullptr) cudaEventDestroy(out);
  }
  std::string reason() const {
    absl::MutexLock lock(&mu);
    return abort_reason;
  }
  uint64_t serial = 0;
  uint64_t generation = 0;
  std::unique_ptr<transport::Transport> transport;
  std::unique_ptr<transport::RankProtocol> protocol;
  cudaEvent_t in = nullptr;   // caller's stream -> communicator's stream
  cudaEvent_t out = nullptr;  // and back
  mutable absl::Mutex mu;
  std::string abort_reason ABSL_GUARDED_BY(mu);
};
#endif  // DCPMERGE_WITH_NCCL

absl::StatusOr<std::unique_ptr<RankClient>> RankClient::Connect(RankClientOptions options) {
  if (options.target.empty()) return absl::InvalidArgumentError("target: empty");
  if (options.num_parts < 1) return absl::InvalidArgumentError("num_parts: must be >= 1");
  if (options.rank < 0 || options.rank >= options.num_parts) {
    return absl::InvalidArgumentError(absl::StrCat("rank: ", options.rank, " is not in 0..",
                                                   options.num_parts - 1));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args = RankChannelArguments();
  if (options.use_tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_root_ca_file.empty()) {
      auto ca = ReadFile(options.tls_root_ca_file, "tls_root_ca_file");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options.tls_client_cert_file.empty()) {
      auto cert = ReadFile(options.tls_client_cert_file, "tls_client_cert_file");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(options.tls_client_key_file, "tls_client_key_file");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name_override.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name_override);
    }
  }
  auto channel = grpc::CreateCustomChannel(options.target, creds, args);
  return std::unique_ptr<RankClient>(new RankClient(std::move(options), std::move(channel)));
}

RankClient::RankClient(RankClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      control_(v1::RankControl::NewStub(channel_)),
      data_(v1::MergeData::NewStub(channel_)) {}

RankClient::~RankClient() {
  StopHeartbeat();
  CloseStream();
#if defined(DCPMERGE_WITH_NCCL)
  {
    absl::MutexLock device_lock(&device_mu_);
    std::shared_ptr<Device> d;
    {
      absl::MutexLock lock(&mu_);
      d = std::move(device_);
    }
    if (d != nullptr) d->transport->Abort("rank client closing");
  }
#endif
  bool joined;
  {
    absl::MutexLock lock(&mu_);
    joined = joined_;
  }
  if (joined) Leave().IgnoreError();
}

absl::Status RankClient::Join() {
  StopHeartbeat();
  CloseStream();  // a stream is bound to a session
#if defined(DCPMERGE_WITH_NCCL)
  {
    // So is a communicator: a new session gets a new one (ConnectDevice).
    device_cancel_.store(true);  // a ConnectDevice in progress gives up
    absl::MutexLock device_lock(&device_mu_);
    std::shared_ptr<Device> d;
    {
      absl::MutexLock lock(&mu_);
      d = std::move(device_);
    }
    if (d != nullptr) d->transport->Abort("rank joins again");
  }
#endif
  v1::JoinRequest req;
  req.set_rank(options_.rank);
  req.set_world_size(options_.num_parts);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  req.set_host(host);
  req.set_device(options_.device);
  req.set_pid(getpid());
  req.set_expected_config_hash(options_.expected_config_hash);
  req.set_replace_existing(options_.replace_existing);
  v1::JoinResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.rpc_timeout);
  ctx.set_wait_for_ready(true);  // the server may still be starting
  absl::Status st = FromGrpcStatus(control_->Join(&ctx, req, &resp));
  if (!st.ok()) return st;
  {
    absl::MutexLock lock(&mu_);
    join_ = resp;
    joined_ = true;
    config_version_ = resp.config_version();
    stop_heartbeat_ = false;
#if defined(DCPMERGE_WITH_NCCL)
    session_ended_ = false;
    device_cancel_.store(false);
#endif
  }
  if (options_.heartbeat) heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  return absl::OkStatus();
}

void RankClient::StopHeartbeat() {
  {
    absl::MutexLock lock(&mu_);
    stop_heartbeat_ = true;
  }
  if (heartbeat_.joinable()) heartbeat_.join();
}

void RankClient::HeartbeatLoop() {
  absl::Duration period;
  v1::HeartbeatRequest req;
  {
    absl::MutexLock lock(&mu_);
    period = absl::Milliseconds(std::max<int64_t>(1, join_.heartbeat_interval_ms()));
    req.set_rank(options_.rank);
    req.set_session_id(join_.session_id());
  }
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_heartbeat_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), period)) return;
    }
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, options_.rpc_timeout);
    absl::Status st = FromGrpcStatus(control_->Heartbeat(&ctx, req, &resp));
    std::string abort_device;
    {
      absl::MutexLock lock(&mu_);
      heartbeat_status_ = st;
      if (st.ok()) config_version_ = resp.config_version();
#if defined(DCPMERGE_WITH_NCCL)
      // NCCL: the server ends every session when it gives a communicator
      // up (a fresh id awaits the next Join); a server gone for good
      // answers nothing. Either way this rank's communicator is dead: abort
      // it so stream work waiting on it ends. A slow answer is no verdict.
      if (join_.data_plane() == v1::DATA_PLANE_NCCL && !session_ended_) {
        if (absl::IsUnavailable(st) || absl::IsFailedPrecondition(st)) {
          abort_device = absl::StrCat("heartbeat: ", st.message());
        } else if (st.ok() && resp.nccl_generation() != join_.nccl_generation()) {
          abort_device = absl::StrCat("the server gave communicator generation ", join_.nccl_generation(),
                                      " up (", resp.data_plane_error(), ")");
        }
        if (!abort_device.empty()) {
          session_ended_ = true;
          device_cancel_.store(true);
        }
      }
#endif
    }
#if defined(DCPMERGE_WITH_NCCL)
    if (!abort_device.empty()) AbortDevice(abort_device);
#endif
  }
}

absl::Status RankClient::WaitForGroupReady(absl::Duration timeout) {
  v1::HeartbeatRequest req;
  {
    absl::MutexLock lock(&mu_);
    if (!joined_) return absl::FailedPreconditionError("not joined: call Join() first");
    req.set_rank(options_.rank);
    req.set_session_id(join_.session_id());
  }
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, std::min(options_.rpc_timeout, std::max(deadline - absl::Now(), absl::Milliseconds(1))));
    absl::Status st = FromGrpcStatus(control_->Heartbeat(&ctx, req, &resp));
    if (st.ok() && resp.group_ready()) return absl::OkStatus();
    if (!st.ok() && st.code() != absl::StatusCode::kDeadlineExceeded) return st;
    if (st.ok()) last = absl::StrCat("joined ranks: ", absl::StrJoin(resp.joined_ranks(), ","));
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("group not ready after ",
                                                  absl::FormatDuration(timeout), " (", last, ")"));
}

absl::Status RankClient::EnsureStream() {
  if (stream_ != nullptr && !stream_->broken) return absl::OkStatus();
  if (stream_ != nullptr) {
    // The reader thread marked it broken and touches nothing after that.
    if (stream_->reader.joinable()) stream_->reader.join();
    stream_.reset();
  }
  auto s = std::make_shared<Stream>();
  s->rw = data_->MergeStream(&s->ctx);
  if (s->rw == nullptr) return absl::UnavailableError("cannot open the merge stream");
  Stream* raw = s.get();
  s->reader = std::thread([this, raw] { ReadLoop(raw); });
  stream_ = std::move(s);
  return absl::OkStatus();
}

void RankClient::ReadLoop(Stream* s) {
  v1::MergeResponse resp;
  while (s->rw->Read(&resp)) {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(resp.step());
    if (it == waiters_.end()) continue;  // timed out already
    Waiter* w = it->second;
    waiters_.erase(it);
    if (resp.status_code() != 0) {
      w->result = absl::Status(static_cast<absl::StatusCode>(resp.status_code()), resp.status_message());
    } else {
      MergeResult r;
      r.step = resp.step();
      r.layer = resp.layer();
      r.num_tokens = resp.num_tokens();
      r.config_version = resp.config_version();
      r.head_begin = resp.head_begin();
      r.head_count = resp.head_count();
      r.scales.assign(resp.scales().begin(), resp.scales().end());
      r.output = std::move(*resp.mutable_output());
      r.lse = std::move(*resp.mutable_lse());
      w->result = std::move(r);
    }
    w->done = true;
  }
  absl::Status end = FromGrpcStatus(s->rw->Finish());
  if (end.ok()) end = absl::UnavailableError("merge stream closed by the server");
  absl::MutexLock lock(&mu_);
  for (auto& [step, w] : waiters_) {
    w->result = absl::Status(end.code(), absl::StrCat("merge stream ended: ", end.message()));
    w->done = true;
  }
  waiters_.clear();
  s->broken = true;
}

absl::StatusOr<MergeResult> RankClient::Merge(uint64_t step, int32_t layer, int64_t num_tokens,
                                              const void* partial_out, size_t partial_out_bytes,
                                              const float* lse, size_t lse_count) {
  Waiter w;
  std::shared_ptr<Stream> stream;
  v1::MergeRequest req;
  absl::Duration timeout = options_.merge_timeout;
  {
    absl::MutexLock lock(&mu_);
    if (!joined_) return absl::FailedPreconditionError("not joined: call Join() first");
    if (waiters_.count(step) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("step: ", step, " is already in flight"));
    }
    absl::Status st = EnsureStream();
    if (!st.ok()) return st;
    stream = stream_;
    waiters_[step] = &w;
    v1::MergeHeader* h = req.mutable_header();
    h->set_step(step);
    h->set_layer(layer);
    h->set_num_tokens(num_tokens);
    h->set_rank(options_.rank);
    h->set_session_id(join_.session_id());
    if (timeout == absl::ZeroDuration()) {
      timeout = absl::Milliseconds(join_.step_timeout_ms()) + options_.rpc_timeout;
    }
  }
  req.set_partial_out(partial_out, partial_out_bytes);
  req.set_lse(lse, lse_count * sizeof(float));
  bool written;
  {
    absl::MutexLock lock(&write_mu_);
    written = stream->rw->Write(req);
  }
  absl::MutexLock lock(&mu_);
  // A failed write means the stream broke: the reader fails every waiter.
  if (!mu_.AwaitWithTimeout(absl::Condition(&w.done), timeout)) {
    waiters_.erase(step);
    return absl::DeadlineExceededError(absl::StrCat(
        "step ", step, ": no result within ", absl::FormatDuration(timeout),
        written ? "" : " (write failed)"));
  }
  return std::move(w.result);
}

void RankClient::CloseStream() {
  std::shared_ptr<Stream> s;
  {
    absl::MutexLock lock(&mu_);
    s = std::move(stream_);
  }
  if (s == nullptr) return;
  {
    absl::MutexLock lock(&write_mu_);
    s->rw->WritesDone();
  }
  {
    absl::MutexLock lock(&mu_);
    auto ended = [&s]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return s->broken; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ended), absl::Seconds(2))) s->ctx.TryCancel();
  }
  if (s->reader.joinable()) s->reader.join();
}

absl::Status RankClient::Leave() {
  v1::LeaveRequest req;
  {
    absl::MutexLock lock(&mu_);
    if (!joined_) return absl::FailedPreconditionError("not joined");
    req.set_rank(options_.rank);
    req.set_session_id(join_.session_id());
    joined_ = false;
  }
  StopHeartbeat();
#if defined(DCPMERGE_WITH_NCCL)
  AbortDevice("rank left the group");  // the server re-forms without it
#endif
  v1::LeaveResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.rpc_timeout);
  return FromGrpcStatus(control_->Leave(&ctx, req, &resp));
}

#if defined(DCPMERGE_WITH_NCCL)

void RankClient::AbortDevice(const std::string& why) {
  std::shared_ptr<Device> d;
  {
    absl::MutexLock lock(&mu_);
    d = device_;
  }
  if (d == nullptr || d->transport->aborted()) return;
  {
    absl::MutexLock lock(&d->mu);
    if (d->abort_reason.empty()) d->abort_reason = why;
  }
  d->transport->Abort(why);
}

absl::Status RankClient::DeviceGone(const Device& d) const {
  const std::string why = d.reason();
  return absl::UnavailableError(absl::StrCat("NCCL communicator generation ", d.generation, " aborted",
                                             why.empty() ? "" : ": ", why,
                                             "; Join() and ConnectDevice() again"));
}

absl::Status RankClient::ConnectDevice() {
  absl::MutexLock device_lock(&device_mu_);
  v1::JoinResponse j;
  std::shared_ptr<Device> old;
  {
    absl::MutexLock lock(&mu_);
    if (!joined_) return absl::FailedPreconditionError("not joined: call Join() first");
    if (session_ended_) {
      return absl::UnavailableError("this session has ended (the server gave the communicator up); Join() again");
    }
    j = join_;
    old = std::move(device_);
  }
  if (old != nullptr) old->transport->Abort("ConnectDevice called again");
  old.reset();
  if (j.data_plane() != v1::DATA_PLANE_NCCL) {
    return absl::FailedPreconditionError(
        "the group runs the gRPC data plane (server --data_plane=grpc): use Merge() on host buffers");
  }
  absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(j.config());
  if (!spec.ok()) return spec.status();
  absl::StatusOr<transport::ProtocolConfig> pc = ProtocolConfigFor(
      *spec, std::max<uint64_t>(1, j.config_version()), j.nccl_fixed_shape() ? j.nccl_fixed_tokens() : -1);
  if (!pc.ok()) return pc.status();

  transport::CommunicatorFactory factory = options_.nccl_factory;
  if (!factory) {
    transport::NcclTransportOptions o;
    o.device = options_.cuda_device;
    o.stream = options_.nccl_stream;
    factory = transport::MakeNcclCommunicatorFactory(o);
  }
  const int n = spec->num_parts;
  absl::StatusOr<std::unique_ptr<transport::Transport>> t = factory.create(
      j.nccl_unique_id(), n + 1, options_.rank, absl::Now() + options_.nccl_init_timeout, &device_cancel_);
  if (!t.ok()) {
    return absl::Status(t.status().code(),
                        absl::StrCat("forming NCCL communicator generation ", j.nccl_generation(), " (rank ",
                                     options_.rank, " of ", n + 1, "): ", t.status().message()));
  }
  auto d = std::make_shared<Device>();
  d->generation = j.nccl_generation();
  d->transport = std::move(*t);
  absl::StatusOr<std::unique_ptr<transport::RankProtocol>> p =
      transport::RankProtocol::Create(d->transport.get(), *pc, options_.nccl_slots);
  if (!p.ok()) {
    d->transport->Abort("rank protocol set-up failed");
    return p.status();
  }
  d->protocol = std::move(*p);
  if (d->transport->native_queue() != nullptr &&
      (cudaSetDevice(options_.cuda_device) != cudaSuccess ||
       cudaEventCreateWithFlags(&d->in, cudaEventDisableTiming) != cudaSuccess ||
       cudaEventCreateWithFlags(&d->out, cudaEventDisableTiming) != cudaSuccess)) {
    d->transport->Abort("cudaEventCreate failed");
    return absl::InternalError("cudaEventCreateWithFlags failed");
  }
  absl::MutexLock lock(&mu_);
  if (!joined_ || session_ended_ || join_.session_id() != j.session_id()) {
    d->transport->Abort("session ended while forming the communicator");
    return absl::UnavailableError("the session ended while the communicator formed; Join() again");
  }
  d->serial = ++device_serial_;
  device_ = std::move(d);
  return absl::OkStatus();
}

absl::StatusOr<transport::PayloadSizes> RankClient::DeviceSizes(int64_t num_tokens) const {
  absl::MutexLock lock(&mu_);
  if (device_ == nullptr) return absl::FailedPreconditionError("no communicator: ConnectDevice() first");
  const transport::ProtocolConfig& c = device_->protocol->config();
  if (num_tokens < 0 || num_tokens > c.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens: ", num_tokens, " is outside 0..max_tokens (", c.max_tokens, ")"));
  }
  return device_->protocol->Sizes(num_tokens);
}

absl::StatusOr<DeviceTicket> RankClient::MergeOnDevice(const DeviceMergeStep& step, cudaStream_t stream) {
  absl::MutexLock device_lock(&device_mu_);
  std::shared_ptr<Device> d;
  {
    absl::MutexLock lock(&mu_);
    d = device_;
  }
  if (d == nullptr) return absl::FailedPreconditionError("no communicator: ConnectDevice() after Join()");
  if (d->transport->aborted()) return DeviceGone(*d);
  void* queue = d->transport->native_queue();
  if (queue == nullptr && stream != nullptr) {
    return absl::InvalidArgumentError(
        "stream: this communicator (in-process transport) has no CUDA stream; pass a null stream");
  }
  cudaStream_t own = static_cast<cudaStream_t>(queue);
  const bool fork = queue != nullptr && stream != own;
  transport::RankStep rs;
  rs.step_id = step.step;
  rs.layer_id = step.layer;
  rs.num_tokens = step.num_tokens;
  rs.partial_out = step.partial_out;
  rs.partial_lse = step.lse;
  rs.out = step.out;
  rs.out_scales = step.out_scales;
  rs.out_lse = step.out_lse;
  if (fork && (cudaEventRecord(d->in, stream) != cudaSuccess || cudaStreamWaitEvent(own, d->in, 0) != cudaSuccess)) {
    return absl::InternalError("joining the caller's stream to the communicator's failed");
  }
  absl::StatusOr<transport::StepTicket> t = d->protocol->EnqueueStep(rs);
  if (!t.ok()) {
    if (d->transport->aborted()) return DeviceGone(*d);
    return t.status();
  }
  if (fork && (cudaEventRecord(d->out, own) != cudaSuccess || cudaStreamWaitEvent(stream, d->out, 0) != cudaSuccess)) {
    return absl::InternalError("joining the communicator's stream back to the caller's failed");
  }
  DeviceTicket ticket;
  ticket.communicator = d->serial;
  ticket.ticket = *t;
  return ticket;
}

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

absl::StatusOr<std::shared_ptr<RankClient::Device>> RankClient::DeviceOf(
    const DeviceTicket& ticket) {
  std::shared_ptr<Device> d;
  {
    absl::MutexLock lock(&mu_);
    d = device_;
  }
  if (d == nullptr || d->serial != ticket.communicator) {
    return absl::UnavailableError(
        "the step was enqueued on a communicator that is gone (the rank joined again); its output is void");
  }
  return d;
}

absl::Status RankClient::CheckResponse(const DeviceTicket& ticket, DeviceStepInfo* info) {
  absl::MutexLock device_lock(&device_mu_);
  absl::StatusOr<std::shared_ptr<Device>> device = DeviceOf(ticket);
  if (!device.ok()) return device.status();
  const std::shared_ptr<Device>& d = *device;
  transport::ResponseHeader h{};
  absl::Status st = d->protocol->CheckResponse(ticket.ticket, &h);
  // No valid response in the slot and the communicator aborted: the step
  // was cut off, not answered.
  if (absl::IsInternal(st) && d->transport->aborted()) return DeviceGone(*d);
  FillInfo(h, info);
  return st;
}

absl::Status RankClient::WaitDevice(const DeviceTicket& ticket, absl::Duration timeout, DeviceStepInfo* info) {
  absl::MutexLock device_lock(&device_mu_);
  absl::StatusOr<std::shared_ptr<Device>> device = DeviceOf(ticket);
  if (!device.ok()) return device.status();
  const std::shared_ptr<Device>& d = *device;
  transport::ResponseHeader h{};
  absl::Status st = d->protocol->Complete(ticket.ticket, absl::Now() + timeout, &h);
  if (!st.ok() && d->transport->aborted() && (absl::IsInternal(st) || absl::IsUnavailable(st))) {
    return DeviceGone(*d);
  }
  FillInfo(h, info);
  return st;
}

absl::Status RankClient::RewriteDeviceStep(DeviceTicket* ticket, uint64_t step, int32_t layer) {
  absl::MutexLock device_lock(&device_mu_);
  std::shared_ptr<Device> d;
  {
    absl::MutexLock lock(&mu_);
    d = device_;
  }
  if (ticket == nullptr || d == nullptr || d->serial != ticket->communicator) {
    return absl::FailedPreconditionError("the ticket is not of this client's current communicator");
  }
  return d->protocol->RewriteHeader(&ticket->ticket, step, layer);
}

#endif  // DCPMERGE_WITH_NCCL

v1::JoinResponse RankClient::join_info() const {
  absl::MutexLock lock(&mu_);
  return join_;
}

uint64_t RankClient::last_config_version() const {
  absl::MutexLock lock(&mu_);
  return config_version_;
}

absl::Status RankClient::last_heartbeat_status() const {
  absl::MutexLock lock(&mu_);
  return heartbeat_status_;
}

}  // namespace dcpmerge
