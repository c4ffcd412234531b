// The whole merge server in one object: config store, group, collector,
// compute backend, data plane, and the two gRPC listeners (rank: RankControl
// + MergeData; admin: Admin), both with grpc.health.v1 and reflection.
// Used by server/main.cc, embed/ (the server inside another process) and
// the server's tests.
#ifndef DCPMERGE_SERVER_MERGE_SERVER_H_
#define DCPMERGE_SERVER_MERGE_SERVER_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/admin.pb.h"
#include "dcpmerge/v1/config.pb.h"
#include "grpcpp/server.h"
#include "server/compute_backend.h"
#include "server/config_store.h"
#include "server/data_plane.h"
#include "server/device_memory.h"
#include "server/group.h"
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
  std::string rank_address = "0.0.0.0:50051";   // port 0: pick one
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
};

class MergeServer {
 public:
  static absl::StatusOr<std::unique_ptr<MergeServer>> Start(MergeServerOptions options);
  ~MergeServer();  // Shutdown()

  int rank_port() const { return rank_port_; }
  int admin_port() const { return admin_port_; }
  int metrics_port() const { return metrics_port_; }  // 0: metrics off
  int health_port() const { return health_port_; }    // 0: no health-only listener
  const std::string& backend_name() const { return backend_name_; }
  const std::string& backend_reason() const { return backend_reason_; }

  // Graceful: refuse new steps, fail in-flight ones with UNAVAILABLE
  // "server shutting down", flush responses, close streams, stop listeners.
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

  // Readiness: configured, group complete, data plane up, not draining.
  bool Ready() const;

 private:
  explicit MergeServer(MergeServerOptions options);
  // The rank event counters and the device series of a scrape.
  void FillMembershipAndDevice(metrics::ServerState* st) const;
  absl::Status Init();
  void UpdateHealth();

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
  absl::Mutex health_mu_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_MERGE_SERVER_H_
