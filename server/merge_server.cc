#include "server/merge_server.h"

#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "base/version.h"
#include "common/channel_args.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/admin_service.h"
#include "server/control_service.h"
#include "server/grpc_data_plane.h"
#include "server/metrics/metrics_exporter.h"
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

}  // namespace

MergeServer::MergeServer(MergeServerOptions options) : options_(std::move(options)) {}

MergeServer::~MergeServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<MergeServer>> MergeServer::Start(MergeServerOptions options) {
  std::unique_ptr<MergeServer> s(new MergeServer(std::move(options)));
  absl::Status st = s->Init();
  if (!st.ok()) return st;
  return s;
}

absl::Status MergeServer::Init() {
  if (options_.data_plane != "grpc" && options_.data_plane != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("data_plane: '", options_.data_plane, "' is not grpc or nccl"));
  }
  auto backend = MakeComputeBackend(options_.backend, options_.cpu_threads, &backend_reason_);
  if (!backend.ok()) return backend.status();
  backend_ = std::move(*backend);
  backend_name_ = backend_->name();
  LogInfo("compute backend: %s", backend_reason_);

  if (options_.initial_config.has_value()) {
    auto snap = config_.Configure(*options_.initial_config, options_.initial_default_scale);
    if (!snap.ok()) return snap.status();
  }

  if (!options_.metrics_address.empty()) {
    latency_histograms_ = std::make_unique<metrics::LatencyHistograms>();
    histogram_feed_ = std::make_unique<HistogramFeed>(latency_histograms_.get());
    stats_.SetLatencyObserver(histogram_feed_.get());
  }
  group_ = std::make_unique<Group>(options_.heartbeat_timeout);
  StepCollector::Options co;
  co.step_timeout = options_.step_timeout;
  co.max_pending_steps = options_.max_pending_steps;
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
  collector_->Start();
  group_->StartWatchdog();

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
    auto grpc_plane = std::make_unique<GrpcDataPlane>(collector_.get(), group_.get(), &stats_);
    plane_service = grpc_plane.get();
    plane_ = std::move(grpc_plane);
  }
  control_service_ = std::make_unique<ControlService>(
      &config_, group_.get(), plane_.get(), backend_name_, options_.step_timeout,
      [this] { return Ready(); });
  admin_service_ = std::make_unique<AdminService>(this, options_.admin_token);
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
  rank_server_ = rank_builder.BuildAndStart();
  if (rank_server_ == nullptr || rank_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("rank_address: cannot listen on ", options_.rank_address));
  }
  grpc::ServerBuilder admin_builder;
  admin_builder.AddListeningPort(options_.admin_address, *creds, &admin_port_);
  admin_builder.RegisterService(admin_service_.get());
  admin_server_ = admin_builder.BuildAndStart();
  if (admin_server_ == nullptr || admin_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("admin_address: cannot listen on ", options_.admin_address));
  }
  if (!options_.health_address.empty()) {
    // Only the default health service (added by the builder), no TLS.
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(options_.health_address, grpc::InsecureServerCredentials(), &health_port_);
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
          return st;
        },
        latency_histograms_.get());
    if (!exporter.ok()) return exporter.status();
    metrics_ = std::move(*exporter);
    metrics_port_ = metrics_->port();
  }
  UpdateHealth();
  LogInfo("rank listener on port %d (RankControl%s), admin listener on port %d, data plane %s", rank_port_,
          plane_service != nullptr ? ", MergeData" : "", admin_port_, options_.data_plane);
  if (metrics_port_ != 0) LogInfo("metrics on port %d (GET /metrics)", metrics_port_);
  return absl::OkStatus();
}

bool MergeServer::Ready() const {
  return config_.Current()->configured && group_->Complete() && plane_->Up() &&
         !draining_.load() && !shut_down_.load();
}

void MergeServer::UpdateHealth() {
  absl::MutexLock lock(&health_mu_);
  const bool ready = Ready();
  for (grpc::Server* s : {rank_server_.get(), admin_server_.get(), health_server_.get()}) {
    if (s == nullptr || s->GetHealthCheckService() == nullptr) continue;
    s->GetHealthCheckService()->SetServingStatus("", true);
    s->GetHealthCheckService()->SetServingStatus(kMergeHealthService, ready);
  }
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

void MergeServer::Shutdown() {
  if (shut_down_.exchange(true)) return;
  metrics_.reset();  // no scrape runs past this point
  if (rank_server_ == nullptr) {  // Init failed part way
    if (collector_) collector_->Stop();
    if (plane_) plane_->Stop();
    if (group_) group_->StopWatchdog();
    return;
  }
  LogInfo("shutting down: failing in-flight steps, closing streams");
  UpdateHealth();
  collector_->Stop();
  plane_->Stop();
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  rank_server_->Shutdown(absl::ToChronoTime(deadline));
  if (admin_server_ != nullptr) admin_server_->Shutdown(absl::ToChronoTime(deadline));
  if (health_server_ != nullptr) health_server_->Shutdown(absl::ToChronoTime(deadline));
  group_->StopWatchdog();
  LogInfo("shutdown complete");
}

}  // namespace dcpmerge
