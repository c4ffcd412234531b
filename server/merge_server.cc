#include "server/merge_server.h"

#include <string_view>
#include <utility>

#include "absl/strings/match.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "base/version.h"
#include "common/channel_args.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/admin_service.h"
#include "server/control_service.h"
#include "server/grpc_data_plane.h"
#include "server/metrics/metrics_exporter.h"
#include "server/state_file.h"
#include "base/heap.h"
#include "base/log.h"

namespace dcpmerge {

namespace {

// Readiness is the health of the MergeData service (tools read the name
// from the generated service too).
static_assert(std::string_view(kMergeHealthService) == v1::MergeData::service_full_name(),
              "kMergeHealthService names the MergeData service");

// Stats -> the exporter's histograms (server/metrics does not depend on the
// server's internals; the phases are its label indices).
static_assert(static_cast<int>(Phase::kReceive) == 0 && static_cast<int>(Phase::kMerge) == 1 &&
                  static_cast<int>(Phase::kSend) == 2 && static_cast<int>(Phase::kTotal) == 3 &&
                  kNumPhases == static_cast<int>(metrics::kPhaseNames.size()),
              "metrics::kPhaseNames follows server/stats.h's Phase");

class HistogramFeed : public LatencyObserver {
 public:
  explicit HistogramFeed(metrics::LatencyHistograms* histograms) : histograms_(histograms) {}
  void ObserveLatency(Phase phase, double us) override { histograms_->Observe(static_cast<int>(phase), us); }

 private:
  metrics::LatencyHistograms* const histograms_;
};

// Every reason of each kind, zeros included (the series exist from the
// first scrape).
metrics::RankEvents ToRankEvents(const MembershipCounts& c) {
  metrics::RankEvents ev;
  ev.joins = c.joins;
  for (int i = 0; i < kNumMemberEnds; ++i) {
    const MemberEnd end = static_cast<MemberEnd>(i);
    (IsOrderlyEnd(end) ? ev.leaves : ev.drops)[MemberEndName(end)] = c.ends[i];
  }
  return ev;
}

void ToProto(const LatencySummary& s, v1::LatencySummary* out) {
  out->set_count(s.count);
  out->set_p50_us(s.p50_us);
  out->set_p90_us(s.p90_us);
  out->set_p99_us(s.p99_us);
  out->set_max_us(s.max_us);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const MergeServerOptions& o) {
  if (o.tls_cert_file.empty() && o.tls_key_file.empty()) {
    if (!o.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("tls_client_ca_file: needs --tls_cert_file and --tls_key_file");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert_file.empty() || o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file/tls_key_file: set both or neither");
  }
  auto cert = ReadFile(o.tls_cert_file, "tls_cert_file");
  if (!cert.ok()) return cert.status();
  auto key = ReadFile(o.tls_key_file, "tls_key_file");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!o.tls_client_ca_file.empty()) {
    auto ca = ReadFile(o.tls_client_ca_file, "tls_client_ca_file");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// Headroom of a MergeData message beyond its payloads (header, framing).
constexpr int64_t kMessageHeadroom = 64 << 10;
// Idle connections (no call in flight) are closed after this.
constexpr int64_t kMaxConnectionIdleMs = 60000;
// Floors of the derived limits: a later Configure may grow the shape up to
// them without a restart.
constexpr int64_t kMinDerivedMessageBytes = int64_t{64} << 20;
constexpr int64_t kMinDerivedBufferedBytes = int64_t{256} << 20;

// "host:port", "[v6]:port", "unix:..." -> is the listener loopback-only?
bool IsLoopbackAddress(const std::string& address) {
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:")) return true;
  std::string host = address;
  if (absl::StartsWith(host, "ipv4:")) host = host.substr(5);
  if (absl::StartsWith(host, "ipv6:")) host = host.substr(5);
  if (!host.empty() && host[0] == '[') {
    const size_t close = host.find(']');
    host = close == std::string::npos ? host : host.substr(1, close - 1);
  } else if (const size_t colon = host.rfind(':'); colon != std::string::npos) {
    host = host.substr(0, colon);
  }
  return absl::StartsWith(host, "127.") || host == "::1" || host == "localhost" ||
         absl::StartsWith(host, "::ffff:127.");
}

}  // namespace

namespace {

metrics::LimitsState ToMetrics(const MergeServer::LimitsSnapshot& l) {
  metrics::LimitsState m;
  m.present = true;
  m.limits = l.limits;
  m.usage = l.usage;
  m.refusals = l.refusals;
  m.stalled = l.stalled;
  m.admin_auth_failures = l.admin_auth_failures;
  m.join_auth_failures = l.join_auth_failures;
  m.heap_free_bytes = l.heap_free_bytes;
  m.heap_trims = l.heap_trims;
  m.state_restored = l.state_restored;
  return m;
}

}  // namespace

MergeServer::MergeServer(MergeServerOptions options) : options_(std::move(options)) {}

MergeServer::~MergeServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<MergeServer>> MergeServer::Start(MergeServerOptions options) {
  std::unique_ptr<MergeServer> s(new MergeServer(std::move(options)));
  absl::Status st = s->Init();
  if (!st.ok()) return st;
  return s;
}

absl::Status MergeServer::CheckRankAddress() const {
  if (!options_.join_secret.empty() || !options_.tls_client_ca_file.empty()) return absl::OkStatus();
  if (IsLoopbackAddress(options_.rank_address)) return absl::OkStatus();
  if (options_.allow_insecure_rank_address) {
    LogWarning("rank_address %s is reachable beyond loopback and ranks need no credential "
               "(--allow_insecure_rank_address): anyone who reaches it can join or replace a rank",
               EscapeForLog(options_.rank_address));
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "rank_address: ", options_.rank_address,
      " is reachable beyond loopback but ranks need no credential; set a join secret (--join_secret_file or "
      "DCPMERGE_JOIN_SECRET), or mutual TLS (--tls_client_ca_file), or accept the risk with "
      "--allow_insecure_rank_address"));
}

absl::Status MergeServer::InitStateAndLimits() {
  // 1. The durable state, if any: restored first, so the limits can be
  //    derived from the configuration it holds.
  std::optional<ConfigSnapshot> restored;
  if (!options_.state_file.empty()) {
    absl::StatusOr<std::optional<ConfigSnapshot>> read = ReadStateFile(options_.state_file);
    if (!read.ok()) return read.status();
    if (read->has_value()) {
      restored = std::move(**read);
    } else if (!options_.state_missing_fresh) {
      return absl::FailedPreconditionError(absl::StrCat(
          "state_file ", options_.state_file,
          ": does not exist; start with --state_missing=fresh to create it (a first start), or restore the file "
          "(a restart must not fall back to default scales silently)"));
    } else {
      LogWarning("state_file %s does not exist: fresh start (--state_missing=fresh); scales start at the default",
                 EscapeForLog(options_.state_file));
    }
  }
  // 2. Limits derived from the configuration in force at start.
  std::optional<GroupSpec> shape;
  if (options_.initial_config.has_value()) {
    absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(*options_.initial_config);
    if (!spec.ok()) return spec.status();
    shape = *spec;
  } else if (restored.has_value() && restored->configured) {
    shape = restored->spec;
  }
  // Derived: what the start-up shape needs, at least the floors (a later
  // Configure may grow up to them; beyond, it is refused naming the flag).
  const int64_t message = shape.has_value() ? shape->PartialOutBytes(shape->max_tokens) +
                                                  shape->LseBytes(shape->max_tokens) + kMessageHeadroom
                                            : 0;
  max_message_bytes_ = options_.max_message_bytes;
  if (max_message_bytes_ <= 0) max_message_bytes_ = std::max(message, kMinDerivedMessageBytes);
  max_message_bytes_ = std::min<int64_t>(max_message_bytes_, kMaxRankListenerMessageBytes);
  max_buffered_bytes_ = options_.max_buffered_bytes;
  if (max_buffered_bytes_ <= 0) {
    const int64_t n = shape.has_value() ? shape->num_parts : 1;
    max_buffered_bytes_ = std::max(kMinDerivedBufferedBytes, 2 * n * message);
  }
  ConfigStore::Options co;
  co.max_layers = options_.max_layers;
  co.max_part_bytes = max_message_bytes_ - kMessageHeadroom;
  co.max_step_bytes = options_.max_pending_bytes;
  co.max_buffered_bytes = max_buffered_bytes_;
  co.message_headroom = kMessageHeadroom;
  config_.SetOptions(co);

  // 3. Restore, then apply the start-up configuration when it differs.
  if (restored.has_value()) {
    if (absl::Status st = config_.Restore(*restored); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("state_file ", options_.state_file, ": ", st.message()));
    }
    state_restored_ = true;
    LogInfo("restored state version %u (%d layer scales, default scale %g) from %s", restored->version,
            restored->layer_scales.size(), restored->default_scale, EscapeForLog(options_.state_file));
  }
  if (!options_.state_file.empty()) {
    const std::string path = options_.state_file;
    const bool sync = options_.state_fsync;
    config_.SetPersist([path, sync](const ConfigSnapshot& next) { return WriteStateFile(path, next, sync); });
  }
  if (options_.initial_config.has_value()) {
    const std::shared_ptr<const ConfigSnapshot> cur = config_.Current();
    const bool same = cur->configured && cur->hash == GroupSpecHash(*shape);
    if (!same) {
      // With a restored state the start-up default scale does not override
      // the restored one; without, it is the initial default.
      auto snap = config_.Configure(*options_.initial_config, restored.has_value() ? 0.0f
                                                                                   : options_.initial_default_scale);
      if (!snap.ok()) return snap.status();
      if (restored.has_value()) {
        LogInfo("start-up configuration differs from the restored one: applied as version %u", (*snap)->version);
      }
    }
  }
  if (!options_.state_file.empty() && !state_restored_ && config_.Current()->version == 0) {
    // Fresh and unconfigured: the file exists from now on.
    if (absl::Status st = WriteStateFile(options_.state_file, *config_.Current(), options_.state_fsync); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status MergeServer::Init() {
  if (options_.data_plane != "grpc" && options_.data_plane != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("data_plane: '", options_.data_plane, "' is not grpc or nccl"));
  }
  if (absl::Status st = CheckRankAddress(); !st.ok()) return st;
  auto backend = MakeComputeBackend(options_.backend, options_.cpu_threads, &backend_reason_);
  if (!backend.ok()) return backend.status();
  backend_ = std::move(*backend);
  backend_name_ = backend_->name();
  LogInfo("compute backend: %s", backend_reason_);

  if (absl::Status st = InitStateAndLimits(); !st.ok()) return st;

  if (!options_.metrics_address.empty()) {
    latency_histograms_ = std::make_unique<metrics::LatencyHistograms>();
    histogram_feed_ = std::make_unique<HistogramFeed>(latency_histograms_.get());
    stats_.SetLatencyObserver(histogram_feed_.get());
  }
  group_ = std::make_unique<Group>(options_.heartbeat_timeout);
  StepCollector::Options co;
  co.step_timeout = options_.step_timeout;
  co.max_pending_steps = options_.max_pending_steps;
  co.max_pending_steps_per_rank = options_.max_pending_steps_per_rank;
  co.max_pending_bytes = options_.max_pending_bytes;
  collector_ = std::make_unique<StepCollector>(&config_, group_.get(), backend_.get(), &stats_, co);
  group_->SetCallbacks(
      [this](int32_t rank, const absl::Status& reason) {
        collector_->FailPending(reason);
        if (plane_ != nullptr) plane_->OnMemberLost(rank, reason);
      },
      [this] {
        collector_->ForgetFinished();
        UpdateHealth();
      });
  collector_->SetStallCallback([this] { UpdateHealth(); });
  collector_->Start();
  group_->StartWatchdog();

  join_guard_ = std::make_unique<AuthFailureGuard>("rank token", options_.auth_limits);
  join_check_ = std::make_unique<JoinSecretCheck>(options_.join_secret, join_guard_.get(), options_.join_secret_grace);
  GrpcDataPlane* plane_service = nullptr;  // MergeData: served by the gRPC plane only
  if (options_.data_plane == "nccl") {
    NcclDataPlaneOptions no = options_.nccl;
    no.step_timeout = options_.step_timeout;
    auto nccl_plane = std::make_unique<NcclDataPlane>(&config_, group_.get(), backend_.get(), &stats_,
                                                      std::move(no), [this] { UpdateHealth(); });
    absl::Status st = nccl_plane->Start();
    if (!st.ok()) return st;
    plane_ = std::move(nccl_plane);
  } else {
    GrpcDataPlane::Options po;
    po.max_streams = options_.max_streams;
    po.max_response_queue = options_.max_response_queue;
    po.bind_timeout = options_.stream_bind_timeout;
    po.write_timeout = options_.response_write_timeout > absl::ZeroDuration() ? options_.response_write_timeout
                                                                              : options_.step_timeout;
    JoinSecretCheck* check = join_check_.get();
    auto grpc_plane = std::make_unique<GrpcDataPlane>(
        collector_.get(), group_.get(), &stats_, po,
        [check](const grpc::CallbackServerContext& ctx) { return check->Check(ctx); });
    plane_service = grpc_plane.get();
    plane_ = std::move(grpc_plane);
  }
  control_service_ = std::make_unique<ControlService>(
      &config_, group_.get(), plane_.get(), backend_name_, options_.step_timeout,
      [this] { return Ready(); }, join_check_.get());
  admin_service_ = std::make_unique<AdminService>(this, options_.admin_token, options_.auth_limits);
  if (options_.admin_token.empty()) {
    LogWarning("no admin token (--admin_token_file or DCPMERGE_ADMIN_TOKEN): admin calls are refused");
  }

  auto creds = MakeCredentials(options_);
  if (!creds.ok()) return creds.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder rank_builder;
  rank_builder.AddListeningPort(options_.rank_address, *creds, &rank_port_);
  rank_builder.RegisterService(control_service_.get());
  if (plane_service != nullptr) rank_builder.RegisterService(plane_service);
  ConfigureRankListener(&rank_builder);
  // Limits of the rank listener (after the shared settings, which they
  // override): the message size the configuration implies, gRPC's memory
  // quota for messages still arriving, threads for sync handlers, streams
  // per connection, idle and handshake timeouts.
  rank_builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes_));
  grpc::ResourceQuota rank_quota("dcpmerge-rank-listener");
  rank_quota.Resize(static_cast<size_t>(max_buffered_bytes_));
  rank_quota.SetMaxThreads(options_.max_rpc_threads);
  rank_builder.SetResourceQuota(rank_quota);
  rank_builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                                  static_cast<int>(std::min<size_t>(options_.max_streams + 64, 1 << 20)));
  LimitConnections(&rank_builder);
  rank_server_ = rank_builder.BuildAndStart();
  if (rank_server_ == nullptr || rank_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("rank_address: cannot listen on ", options_.rank_address));
  }
  grpc::ServerBuilder admin_builder;
  admin_builder.AddListeningPort(options_.admin_address, *creds, &admin_port_);
  admin_builder.RegisterService(admin_service_.get());
  grpc::ResourceQuota admin_quota("dcpmerge-admin-listener");
  admin_quota.SetMaxThreads(options_.max_rpc_threads);
  admin_builder.SetResourceQuota(admin_quota);
  LimitConnections(&admin_builder);
  admin_server_ = admin_builder.BuildAndStart();
  if (admin_server_ == nullptr || admin_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("admin_address: cannot listen on ", options_.admin_address));
  }
  if (!options_.health_address.empty()) {
    // Only the default health service (added by the builder), no TLS.
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(options_.health_address, grpc::InsecureServerCredentials(), &health_port_);
    LimitConnections(&health_builder);
    health_server_ = health_builder.BuildAndStart();
    if (health_server_ == nullptr || health_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("health_address: cannot listen on ", options_.health_address));
    }
  }
  if (!options_.metrics_address.empty()) {
    // The device the server merges on: the NCCL plane's, else the CUDA
    // backend's (device 0, compute_backend.cc).
    if (backend_name_ == "cuda") {
      metrics_device_ = options_.data_plane == "nccl" ? options_.nccl.device : 0;
      auto id = ReadDeviceIdentity(metrics_device_);
      if (id.ok()) {
        metrics_device_identity_ = *id;
      } else {
        LogWarning("metrics: %s (device series without name and UUID)", id.status().message());
      }
    }
    // Scrapes read the state the server keeps (no second bookkeeping).
    auto exporter = metrics::MetricsExporter::Start(
        options_.metrics_address,
        [this] {
          metrics::ServerState st;
          FillMembershipAndDevice(&st);
          st.stats = GetStats();
          GetConfig(&st.config);
          st.nccl_state = plane_->CommunicatorState();
          st.limits = ToMetrics(Limits());
          return st;
        },
        latency_histograms_.get());
    if (!exporter.ok()) return exporter.status();
    metrics_ = std::move(*exporter);
    metrics_port_ = metrics_->port();
  }
  if (options_.listener_stall_timeout > absl::ZeroDuration()) {
    std::map<std::string, int> ports = {{"rank", rank_port_}, {"admin", admin_port_}};
    if (health_port_ != 0) ports["health"] = health_port_;
    ListenerWatch::Options wo;
    wo.stall_after = options_.listener_stall_timeout;
    listener_watch_ = std::make_unique<ListenerWatch>(
        std::move(ports), wo, [this](const std::string& name, absl::Duration waited) { OnListenerStalled(name, waited); });
  }
  maintenance_ = std::thread([this] { MaintenanceLoop(); });
  UpdateHealth();
  LogInfo("rank listener on port %d (RankControl%s%s), admin listener on port %d, data plane %s", rank_port_,
          plane_service != nullptr ? ", MergeData" : "", join_check_->enabled() ? "; join secret required" : "",
          admin_port_, options_.data_plane);
  LogInfo("limits: max_message_bytes %d, max_buffered_bytes %d, max_streams %u, max_response_queue %u, "
          "max_pending_steps %u (per rank %u), max_pending_bytes %d, max_layers %d",
          max_message_bytes_, max_buffered_bytes_, options_.max_streams, options_.max_response_queue,
          options_.max_pending_steps,
          collector_->PerRankQuota(config_.Current()->configured ? config_.Current()->spec.num_parts : 1),
          options_.max_pending_bytes, options_.max_layers);
  if (metrics_port_ != 0) LogInfo("metrics on port %d (GET /metrics)", metrics_port_);
  return absl::OkStatus();
}

void MergeServer::MaintenanceLoop() {
  while (true) {
    {
      absl::MutexLock lock(&maintenance_mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(maintenance_mu_) { return stop_maintenance_; };
      if (maintenance_mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Seconds(1))) return;
    }
    bool trimmed = false;
    heap_free_bytes_.store(BoundHeapRetention(static_cast<size_t>(options_.heap_retain_bytes), &trimmed));
    if (trimmed) heap_trims_.fetch_add(1);
  }
}

bool MergeServer::Ready() const {
  // Whether the group can merge. One rank's refused parts (a limit it hit)
  // do not make it unready: the others' steps still complete, and taking
  // the pod out of its Service would stop them too. Those show in
  // dcpmerge_group_stalled and in that rank's errors; a rank dropped for
  // them makes the group incomplete, which does.
  return config_.Current()->configured && group_->Complete() && plane_->Up() && !draining_.load() &&
         !shut_down_.load();
}

void MergeServer::UpdateHealth() {
  absl::MutexLock lock(&health_mu_);
  const bool live = !listener_stalled_.load();
  const bool ready = live && Ready();
  for (grpc::Server* s : {rank_server_.get(), admin_server_.get(), health_server_.get()}) {
    if (s == nullptr || s->GetHealthCheckService() == nullptr) continue;
    s->GetHealthCheckService()->SetServingStatus("", live);
    s->GetHealthCheckService()->SetServingStatus(kMergeHealthService, ready);
  }
}

void MergeServer::OnListenerStalled(const std::string& name, absl::Duration waited) {
  LogError("the %s listener has stopped accepting connections (some waited %s; the process ran out of file "
           "descriptors?): liveness NOT_SERVING; this process must be restarted (its state file restores the scales)",
           name, absl::FormatDuration(absl::Trunc(waited, absl::Milliseconds(1))));
  listener_stalled_.store(true);
  UpdateHealth();
  if (options_.on_listener_stalled) options_.on_listener_stalled(name);
}

void MergeServer::LimitConnections(grpc::ServerBuilder* builder) const {
  // A connection that never completes its HTTP/2 handshake, or goes idle,
  // holds a descriptor: both are closed (docs/server.md, "Descriptors").
  builder->AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(options_.handshake_timeout)));
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, static_cast<int>(kMaxConnectionIdleMs));
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> MergeServer::Configure(
    const v1::GroupConfig& config, float default_scale) {
  const std::shared_ptr<const ConfigSnapshot> before = config_.Current();
  auto snap = config_.Configure(config, default_scale);
  if (!snap.ok()) return snap;
  LogInfo("configured: version %u, world_size %d, heads %d, head_size %d, max_tokens %d",
          (*snap)->version, (*snap)->spec.num_parts, (*snap)->spec.num_heads,
          (*snap)->spec.head_size, (*snap)->spec.max_tokens);
  if (!before->configured || before->hash != (*snap)->hash) {
    group_->Reset((*snap)->spec.num_parts, "group configuration changed; join again");
  }
  draining_.store(false);
  if (!shut_down_.load()) collector_->Resume();
  UpdateHealth();
  return snap;
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> MergeServer::SetScales(
    const std::map<int32_t, float>& scales, bool replace, float default_scale) {
  auto snap = config_.SetScales(scales, replace, default_scale);
  if (snap.ok()) LogInfo("scales updated: version %u (%d layers)", (*snap)->version, (*snap)->layer_scales.size());
  return snap;
}

void MergeServer::FillMembershipAndDevice(metrics::ServerState* st) const {
  st->rank_events = ToRankEvents(group_->Counts());
  if (metrics_device_ < 0) return;
  metrics::DeviceState d;
  d.device = metrics_device_;
  d.name = metrics_device_identity_.name;
  d.uuid = metrics_device_identity_.uuid;
  if (auto use = ReadDeviceMemoryUse(metrics_device_); use.ok()) {
    d.used_bytes = use->used_bytes;
    d.total_bytes = use->total_bytes;
  }
  st->device = d;
}

void MergeServer::GetConfig(v1::GetConfigResponse* out) const {
  const std::shared_ptr<const ConfigSnapshot> c = config_.Current();
  out->set_configured(c->configured);
  if (c->configured) *out->mutable_config() = GroupSpecToProto(c->spec);
  out->set_config_version(c->version);
  out->set_config_hash(c->hash);
  for (const auto& [layer, scale] : c->layer_scales) (*out->mutable_layer_scales())[layer] = scale;
  out->set_default_scale(c->default_scale);
  const absl::Time now = absl::Now();
  for (const MemberInfo& m : group_->Members()) {
    v1::Member* pm = out->add_members();
    pm->set_rank(m.rank);
    pm->set_host(m.host);
    pm->set_device(m.device);
    pm->set_pid(m.pid);
    pm->set_session_id(m.session_id);
    pm->set_last_heartbeat_age_ms(absl::ToInt64Milliseconds(now - m.last_heartbeat));
  }
  out->set_group_ready(Ready());
  out->set_backend(backend_name_);
  out->set_data_plane(plane_->kind());
  out->set_draining(draining_.load());
  out->set_server_version(kVersion);
  out->set_server_commit(std::string(BuildCommit()));
}

v1::GetStatsResponse MergeServer::GetStats() const {
  const StatsSnapshot s = stats_.Snapshot();
  v1::GetStatsResponse r;
  r.set_steps_ok(s.steps_ok);
  r.set_steps_failed(s.steps_failed);
  r.set_bytes_in(s.bytes_in);
  r.set_bytes_out(s.bytes_out);
  r.set_fp8_saturated(s.fp8_saturated);
  ToProto(s.phases[static_cast<int>(Phase::kReceive)], r.mutable_receive());
  ToProto(s.phases[static_cast<int>(Phase::kMerge)], r.mutable_merge());
  ToProto(s.phases[static_cast<int>(Phase::kSend)], r.mutable_send());
  ToProto(s.phases[static_cast<int>(Phase::kTotal)], r.mutable_total());
  ToProto(s.device_copy_in, r.mutable_device_copy_in());
  ToProto(s.device_kernel, r.mutable_device_kernel());
  ToProto(s.device_copy_out, r.mutable_device_copy_out());
  for (const auto& [code, n] : s.errors_by_code) (*r.mutable_errors_by_code())[code] = n;
  r.set_steps_in_flight(collector_->InFlight());
  return r;
}

v1::DrainResponse MergeServer::Drain(absl::Duration timeout) {
  if (timeout == absl::ZeroDuration()) timeout = options_.drain_timeout;
  draining_.store(true);
  collector_->StopAccepting(absl::UnavailableError("server draining"));
  UpdateHealth();
  const bool idle = collector_->WaitIdle(timeout);
  v1::DrainResponse r;
  r.set_drained(idle);
  r.set_steps_in_flight(collector_->InFlight());
  LogInfo("drain: %s, %d step(s) in flight", idle ? "idle" : "timed out", r.steps_in_flight());
  return r;
}

void MergeServer::SetAdminToken(const std::string& token) {
  static_cast<AdminService*>(admin_service_.get())->SetToken(token);
}

void MergeServer::SetJoinSecret(const std::string& secret) {
  if (secret.empty() && join_check_->enabled()) return;
  join_check_->Set(secret);
}

MergeServer::LimitsSnapshot MergeServer::Limits() const {
  LimitsSnapshot l;
  const std::shared_ptr<const ConfigSnapshot> cfg = config_.Current();
  const int32_t n = cfg->configured ? cfg->spec.num_parts : 1;
  l.limits = {
      {"max_message_bytes", static_cast<double>(max_message_bytes_)},
      {"max_buffered_bytes", static_cast<double>(max_buffered_bytes_)},
      {"max_rpc_threads", static_cast<double>(options_.max_rpc_threads)},
      {"max_streams", static_cast<double>(options_.max_streams)},
      {"max_response_queue", static_cast<double>(options_.max_response_queue)},
      {"max_pending_steps", static_cast<double>(options_.max_pending_steps)},
      {"max_pending_steps_per_rank", static_cast<double>(collector_->PerRankQuota(n))},
      {"max_pending_bytes", static_cast<double>(options_.max_pending_bytes)},
      {"max_layers", static_cast<double>(options_.max_layers)},
      {"heap_retain_bytes", static_cast<double>(options_.heap_retain_bytes)},
  };
  l.usage = {
      {"pending_steps", static_cast<double>(collector_->InFlight())},
      {"pending_bytes", static_cast<double>(collector_->PendingBytes())},
      {"scale_layers", static_cast<double>(cfg->layer_scales.size())},
  };
  const std::array<uint64_t, StepCollector::kNumLimits> refusals = collector_->LimitRefusals();
  for (int i = 0; i < StepCollector::kNumLimits; ++i) {
    l.refusals.emplace_back(StepCollector::LimitName(static_cast<StepCollector::Limit>(i)), refusals[i]);
  }
  if (const auto* grpc_plane = dynamic_cast<const GrpcDataPlane*>(plane_.get()); grpc_plane != nullptr) {
    const GrpcDataPlane::Counters c = grpc_plane->counters();
    l.usage.emplace_back("streams", static_cast<double>(c.streams));
    l.usage.emplace_back("response_queue_deepest", static_cast<double>(c.deepest_queue));
    l.refusals.emplace_back("max_streams", c.refused_max_streams);
    l.refusals.emplace_back("max_response_queue", c.dropped_unread);
    l.refusals.emplace_back("stream_bind_timeout", c.closed_idle);
  }
  l.stalled = collector_->Stalled();
  l.admin_auth_failures = static_cast<const AdminService*>(admin_service_.get())->auth_failures();
  l.join_auth_failures = join_guard_ != nullptr ? join_guard_->failures() : 0;
  l.heap_free_bytes = heap_free_bytes_.load();
  l.heap_trims = heap_trims_.load();
  l.state_restored = state_restored_;
  return l;
}

void MergeServer::Shutdown() {
  if (shut_down_.exchange(true)) return;
  auto stop_maintenance = [this] {
    {
      absl::MutexLock lock(&maintenance_mu_);
      stop_maintenance_ = true;
    }
    if (maintenance_.joinable()) maintenance_.join();
  };
  if (rank_server_ == nullptr) {  // Init failed part way
    metrics_.reset();
    if (collector_) collector_->Stop();
    if (plane_) plane_->Stop();
    if (group_) group_->StopWatchdog();
    stop_maintenance();
    return;
  }
  // The order is the contract (docs/server.md): readiness NOT_SERVING
  // first; then new steps are refused (UNAVAILABLE, answered); steps in
  // flight may finish within shutdown_grace, the rest fail UNAVAILABLE;
  // every part read is answered; streams end UNAVAILABLE; listeners stop;
  // the metrics endpoint goes last (a scrape during shutdown still works).
  UpdateHealth();
  LogInfo("shutting down: readiness NOT_SERVING, refusing new steps, up to %s for steps in flight",
          absl::FormatDuration(options_.shutdown_grace));
  collector_->StopAccepting(absl::UnavailableError("server shutting down"));
  const bool idle = collector_->WaitIdle(options_.shutdown_grace);
  collector_->Stop();
  plane_->Stop();
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  rank_server_->Shutdown(absl::ToChronoTime(deadline));
  if (admin_server_ != nullptr) admin_server_->Shutdown(absl::ToChronoTime(deadline));
  if (health_server_ != nullptr) health_server_->Shutdown(absl::ToChronoTime(deadline));
  group_->StopWatchdog();
  stop_maintenance();
  listener_watch_.reset();
  metrics_.reset();
  LogInfo("shutdown complete (%s)", idle ? "steps in flight finished" : "steps still in flight failed UNAVAILABLE");
}

}  // namespace dcpmerge
