// The whole merge server in one object: config store, group, collector,
// compute backend, data plane, and the two gRPC listeners (rank: RankControl
// + MergeData; admin: Admin), both with grpc.health.v1 and reflection.
// Used by server/main.cc, embed/ (the server inside another process) and
// the server's tests.
#ifndef DCPMERGE_SERVER_MERGE_SERVER_H_
#define DCPMERGE_SERVER_MERGE_SERVER_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/admin.pb.h"
#include "dcpmerge/v1/config.pb.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/auth_guard.h"
#include "server/compute_backend.h"
#include "server/config_store.h"
#include "server/data_plane.h"
#include "server/device_memory.h"
#include "server/group.h"
#include "server/listener_watch.h"
#include "server/nccl_data_plane.h"
#include "server/stats.h"
#include "server/step_collector.h"

namespace dcpmerge {

namespace metrics {
class LatencyHistograms;
class MetricsExporter;
struct ServerState;
}  // namespace metrics

// Health service name that is SERVING only while the group is complete and
// the data plane is up (the empty name "" is liveness: always SERVING).
inline constexpr char kMergeHealthService[] = "dcpmerge.v1.MergeData";

struct MergeServerOptions {
  std::string rank_address = "127.0.0.1:50051";  // port 0: pick one
  std::string admin_address = "127.0.0.1:50052";
  std::string admin_token;  // "" disables the admin service
  // TLS (PEM file paths). cert+key enable TLS on both listeners; client_ca
  // additionally requires and verifies client certificates (mTLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  std::optional<v1::GroupConfig> initial_config;
  float initial_default_scale = 0.0f;  // 0: 1.0
  std::string backend = "auto";        // auto | cpu | cuda
  int cpu_threads = 0;
  std::string data_plane = "grpc";     // grpc | nccl
  // data_plane == "nccl": device, init timeout, fixed shape, and the
  // transport factory (unset: NCCL; tests inject transport::FakeHub).
  // Its step_timeout is taken from step_timeout below.
  NcclDataPlaneOptions nccl;
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration step_timeout = absl::Seconds(5);
  absl::Duration drain_timeout = absl::Seconds(10);
  size_t max_pending_steps = 256;
  // Prometheus endpoint (GET /metrics), "host:port"; "" = off; port 0 picks one.
  std::string metrics_address;
  // Plaintext listener serving only grpc.health.v1 (same statuses as the
  // other listeners), for probes that cannot speak TLS (kubelet gRPC probes).
  // "" = off; port 0 picks one.
  std::string health_address;

  // ---- Limits and security (docs/server.md, "Limits and security").
  // The rank plane's credential: the group secret the rank tokens derive
  // from; every RankControl call and MergeData stream carries its rank's
  // token (common/join_secret.h). Rotated with SetJoinSecret, after which
  // the previous secret's tokens stay valid for join_secret_grace. "" =
  // none.
  std::string join_secret;
  absl::Duration join_secret_grace = absl::Minutes(10);
  // Without a join secret or mutual TLS (tls_client_ca_file), a rank_address
  // beyond loopback is refused at start unless this is set.
  bool allow_insecure_rank_address = false;
  // Largest MergeData message accepted (gRPC's receive limit on the rank
  // listener). 0: derived from the start-up configuration: one part
  // (partial_out + lse at max_tokens) + 64 KiB, at least 64 MiB. A later
  // Configure beyond it is refused.
  int64_t max_message_bytes = 0;
  // gRPC's memory quota of the rank listener: bytes of messages still
  // arriving. Beyond, gRPC resets the stream (the client sees
  // RESOURCE_EXHAUSTED). 0: max(256 MiB, 2 x N x (part + 64 KiB)). A later
  // Configure whose two messages per rank would not fit is refused.
  int64_t max_buffered_bytes = 0;
  // Threads for sync handlers (RankControl, health, reflection) per
  // listener; beyond, calls get RESOURCE_EXHAUSTED.
  int max_rpc_threads = 64;
  // MergeData streams open at once; results waiting per stream (beyond:
  // the rank is dropped); idle unbound streams closed after this.
  size_t max_streams = 256;
  size_t max_response_queue = 32;
  absl::Duration stream_bind_timeout = absl::Seconds(10);
  // A response not taken by its rank within this drops the rank (0: the
  // step timeout).
  absl::Duration response_write_timeout = absl::ZeroDuration();
  // Steps one rank may have waiting for the others (0: max_pending_steps /
  // N); payload bytes held (collecting, ready, merging).
  size_t max_pending_steps_per_rank = 0;
  int64_t max_pending_bytes = int64_t{1} << 30;
  // Layer ids 0..max_layers-1 on every API; at most that many scales.
  int32_t max_layers = kDefaultMaxLayers;
  // Freed heap memory kept for reuse; beyond, returned to the kernel.
  int64_t heap_retain_bytes = int64_t{256} << 20;
  // SIGTERM: steps in flight may finish within this; then UNAVAILABLE.
  absl::Duration shutdown_grace = absl::Seconds(1);
  // Every listener closes a connection that has not completed its HTTP/2
  // handshake (client preface and SETTINGS) within this.
  absl::Duration handshake_timeout = absl::Seconds(5);
  // A listener with connections waiting for accept() this long has stopped
  // accepting (server/listener_watch.h): liveness goes NOT_SERVING on every
  // listener, then on_listener_stalled runs (the binary exits non-zero so
  // the orchestrator restarts it). 0: not watched.
  absl::Duration listener_stall_timeout = absl::Seconds(5);
  std::function<void(const std::string& listener)> on_listener_stalled;
  // Wrong admin and rank tokens: rate limits and logging.
  AuthFailureGuard::Options auth_limits;
  // Durable state (server/state_file.h): "" = off. When the file exists it
  // is restored (a corrupt one is a start-up error); when it does not, the
  // start fails unless state_missing_fresh (then it is created).
  std::string state_file;
  bool state_missing_fresh = false;
  // fsync each change before answering (survives a power loss); false: the
  // change survives the process only (docs/benchmarks.md: SetScales ~10x
  // faster on this build machine's disk).
  bool state_fsync = true;
};

class MergeServer {
 public:
  static absl::StatusOr<std::unique_ptr<MergeServer>> Start(MergeServerOptions options);
  ~MergeServer();  // Shutdown()

  int rank_port() const { return rank_port_; }
  int admin_port() const { return admin_port_; }
  int metrics_port() const { return metrics_port_; }  // 0: metrics off
  int health_port() const { return health_port_; }    // 0: no health-only listener
  // The rank listener's message limit in force (derived or set).
  int64_t max_message_bytes() const { return max_message_bytes_; }
  const std::string& backend_name() const { return backend_name_; }
  const std::string& backend_reason() const { return backend_reason_; }

  // Graceful, in this order: readiness NOT_SERVING; new steps refused
  // (UNAVAILABLE "server shutting down", answered); steps in flight may
  // finish within shutdown_grace, then fail UNAVAILABLE; every part read is
  // answered; streams end UNAVAILABLE; listeners stop; metrics last.
  // Idempotent.
  void Shutdown();

  // Admin operations (AdminService checks the token, then calls these).
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> Configure(
      const v1::GroupConfig& config, float default_scale);
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> SetScales(
      const std::map<int32_t, float>& scales, bool replace, float default_scale);
  void GetConfig(v1::GetConfigResponse* out) const;
  v1::GetStatsResponse GetStats() const;
  v1::DrainResponse Drain(absl::Duration timeout);
  // Replaces the admin bearer token (rotation without a restart).
  void SetAdminToken(const std::string& token);
  // Replaces the join secret (rotation without a restart). Tokens of the
  // previous secret stay valid for join_secret_grace (give the ranks their
  // new tokens meanwhile); after it, calls with them are refused. An empty
  // secret is ignored when one is set (a rotation in progress never opens
  // the rank plane).
  void SetJoinSecret(const std::string& secret);

  // The limits in force, their use and their refusals (metrics, tests).
  struct LimitsSnapshot {
    std::vector<std::pair<std::string, double>> limits;    // flag name -> value
    std::vector<std::pair<std::string, double>> usage;     // what is used now
    std::vector<std::pair<std::string, uint64_t>> refusals;  // refusals since start
    bool stalled = false;                                  // a limit refused within the step timeout
    uint64_t admin_auth_failures = 0;
    uint64_t join_auth_failures = 0;
    uint64_t heap_free_bytes = 0;
    uint64_t heap_trims = 0;
    bool state_restored = false;
  };
  LimitsSnapshot Limits() const;
  // Readiness: configured, group complete, data plane up, not draining
  // (a limit refusing one rank's parts does not change it).
  bool Ready() const;

 private:
  explicit MergeServer(MergeServerOptions options);
  // The rank event counters and the device series of a scrape.
  void FillMembershipAndDevice(metrics::ServerState* st) const;
  absl::Status Init();
  // State file + limits derived from the configuration (before the
  // listeners exist).
  absl::Status InitStateAndLimits();
  absl::Status CheckRankAddress() const;
  void UpdateHealth();
  void OnListenerStalled(const std::string& name, absl::Duration waited);
  void LimitConnections(grpc::ServerBuilder* builder) const;
  void MaintenanceLoop();

  MergeServerOptions options_;
  ConfigStore config_;
  // --metrics_address: the exporter's histograms, fed by stats_ through
  // histogram_feed_; both outlive stats_.
  std::unique_ptr<metrics::LatencyHistograms> latency_histograms_;
  std::unique_ptr<LatencyObserver> histogram_feed_;
  Stats stats_;
  std::unique_ptr<Group> group_;
  std::unique_ptr<ComputeBackend> backend_;
  std::string backend_name_;
  std::string backend_reason_;
  std::unique_ptr<StepCollector> collector_;
  std::unique_ptr<DataPlane> plane_;
  std::unique_ptr<grpc::Service> data_service_;  // not owned separately when plane is the service
  std::unique_ptr<grpc::Service> control_service_;
  std::unique_ptr<grpc::Service> admin_service_;
  std::unique_ptr<grpc::Server> rank_server_;
  std::unique_ptr<grpc::Server> admin_server_;
  std::unique_ptr<grpc::Server> health_server_;  // --health_address
  int health_port_ = 0;
  int rank_port_ = 0;
  int admin_port_ = 0;
  std::unique_ptr<metrics::MetricsExporter> metrics_;
  int metrics_port_ = 0;
  // The CUDA device the metrics report (-1: none, CPU backend) and its
  // name and UUID, read once at start.
  int metrics_device_ = -1;
  DeviceIdentity metrics_device_identity_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> listener_stalled_{false};  // liveness NOT_SERVING from then on
  std::unique_ptr<ListenerWatch> listener_watch_;
  absl::Mutex health_mu_;

  // Limits and security.
  int64_t max_message_bytes_ = 0;
  int64_t max_buffered_bytes_ = 0;
  bool state_restored_ = false;
  std::unique_ptr<AuthFailureGuard> join_guard_;
  std::unique_ptr<JoinSecretCheck> join_check_;
  std::atomic<uint64_t> heap_free_bytes_{0};
  std::atomic<uint64_t> heap_trims_{0};
  absl::Mutex maintenance_mu_;
  bool stop_maintenance_ ABSL_GUARDED_BY(maintenance_mu_) = false;
  std::thread maintenance_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_MERGE_SERVER_H_
