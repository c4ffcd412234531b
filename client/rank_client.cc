#include "client/rank_client.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "base/grpc_status.h"
#include "common/channel_args.h"
#include "common/join_secret.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace dcpmerge {
namespace {

void SetDeadline(grpc::ClientContext* ctx, absl::Duration d) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + d));
}

// The rank's token on every call of the rank plane (common/join_secret.h):
// as given, or derived when the client was given the group secret.
void AddCredential(grpc::ClientContext* ctx, const RankClientOptions& o) {
  if (!o.join_secret.empty()) {
    ctx->AddMetadata(kJoinSecretMetadataKey, JoinSecretMetadataValue(RankCredential(o.join_secret, o.rank)));
  }
}

}  // namespace

struct RankClient::Stream {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MergeRequest, v1::MergeResponse>> rw;
  std::thread reader;
  bool broken = false;  // guarded by RankClient::mu_
  std::string end;      // how it ended, once broken (guarded by RankClient::mu_)
  // How the stream before this one ended: a reconnect that fails (the
  // server has gone after answering "shutting down") still says why.
  std::string previous_end;
};

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
  NotifyEnding(SessionObserver::End::kClose);
  {
    absl::MutexLock lock(&observer_mu_);
    observer_ = nullptr;  // it was told to forget this client
  }
  bool joined;
  {
    absl::MutexLock lock(&mu_);
    joined = joined_;
  }
  if (joined) Leave().IgnoreError();
}

absl::Status RankClient::SetSessionObserver(SessionObserver* observer) {
  absl::MutexLock lock(&observer_mu_);
  if (observer != nullptr && observer_ != nullptr && observer_ != observer) {
    return absl::FailedPreconditionError("this RankClient already has a session observer (one RankDevice per client)");
  }
  observer_ = observer;
  return absl::OkStatus();
}

void RankClient::NotifyEnding(SessionObserver::End end) {
  absl::MutexLock lock(&observer_mu_);
  if (observer_ != nullptr) observer_->SessionEnding(end);
}

absl::Status RankClient::Join() {
  StopHeartbeat();
  CloseStream();  // a stream is bound to a session
  NotifyEnding(SessionObserver::End::kRejoin);  // so is a RankDevice's communicator
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
  AddCredential(&ctx, options_);
  ctx.set_wait_for_ready(true);  // the server may still be starting
  absl::Status st = FromGrpcStatus(control_->Join(&ctx, req, &resp));
  if (!st.ok()) return st;
  {
    absl::MutexLock lock(&mu_);
    join_ = resp;
    joined_ = true;
    config_version_ = resp.config_version();
    stop_heartbeat_ = false;
  }
  {
    absl::MutexLock lock(&observer_mu_);
    if (observer_ != nullptr) observer_->SessionStarted(resp);
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
    AddCredential(&ctx, options_);
    absl::Status st = FromGrpcStatus(control_->Heartbeat(&ctx, req, &resp));
    {
      absl::MutexLock lock(&mu_);
      heartbeat_status_ = st;
      if (st.ok()) config_version_ = resp.config_version();
    }
    absl::MutexLock lock(&observer_mu_);
    if (observer_ != nullptr) observer_->HeartbeatDone(st, resp);
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
    AddCredential(&ctx, options_);
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
  std::string previous_end;
  if (stream_ != nullptr) {
    // The reader thread marked it broken and touches nothing after that.
    if (stream_->reader.joinable()) stream_->reader.join();
    previous_end = std::move(stream_->end);
    stream_.reset();
  }
  auto s = std::make_shared<Stream>();
  s->previous_end = std::move(previous_end);
  AddCredential(&s->ctx, options_);
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
  const std::string why = absl::StrCat(
      "merge stream ended: ", end.message(),
      s->previous_end.empty() ? "" : absl::StrCat(" (the stream before it ", s->previous_end, ")"));
  absl::MutexLock lock(&mu_);
  for (auto& [step, w] : waiters_) {
    w->result = absl::Status(end.code(), why);
    w->done = true;
  }
  waiters_.clear();
  s->end = absl::StrCat("ended ", absl::StatusCodeToString(end.code()), ": ", end.message());
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
  NotifyEnding(SessionObserver::End::kLeave);  // an NCCL server re-forms without this rank
  v1::LeaveResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.rpc_timeout);
  AddCredential(&ctx, options_);
  return FromGrpcStatus(control_->Leave(&ctx, req, &resp));
}

v1::JoinResponse RankClient::join_info() const {
  absl::MutexLock lock(&mu_);
  return join_;
}

std::optional<v1::JoinResponse> RankClient::current_session() const {
  absl::MutexLock lock(&mu_);
  if (!joined_) return std::nullopt;
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
