// EmbeddedServer: a whole dcpmerge merge server inside this process, the same
// code as //server:dcpmerge_server, for programs that run one next to their
// own code: the demo (tools/dcpmerge_demo.cc), the gRPC data-plane benchmark
// (bench/grpc_plane_bench.cc) and the client's tests. This header is the
// server's only API outside server/ (whose internals are visible to the
// server and its tests only); it exposes nothing but the v1 API's types.
//
//   EmbeddedServerOptions o;
//   o.initial_config = DefaultGroupConfig(4, 16, 512, 64);  // common/group_spec.h
//   auto server = EmbeddedServer::Start(o);                // loopback, ports picked
//   ... RankClient(s) on 127.0.0.1:(*server)->rank_port() ...
//   (*server)->Shutdown();                                 // or let it go
#ifndef DCPMERGE_EMBED_EMBEDDED_SERVER_H_
#define DCPMERGE_EMBED_EMBEDDED_SERVER_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/admin.pb.h"
#include "dcpmerge/v1/config.pb.h"

namespace dcpmerge {

class MergeServer;  // server/merge_server.h

struct EmbeddedServerOptions {
  std::string rank_address = "127.0.0.1:0";  // RankControl + MergeData; port 0 picks one
  std::string admin_address = "127.0.0.1:0";
  std::string admin_token;  // bearer token of the Admin service; "" refuses admin calls
  std::optional<v1::GroupConfig> initial_config;  // unset: start unconfigured
  float initial_default_scale = 0.0f;             // 0: 1.0
  std::string backend = "auto";                   // auto | cpu | cuda
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration step_timeout = absl::Seconds(5);
  // The group's join secret (RankClientOptions::join_secret must match);
  // "" = none (the listeners are on loopback by default).
  std::string join_secret;
  // The durable state file (configuration and scales, written on every
  // change; server/state_file.h); "" = off. Created when missing.
  std::string state_file;
  bool state_fsync = true;  // see MergeServerOptions::state_fsync
};

class EmbeddedServer {
 public:
  // Starts the gRPC data plane server; errors as dcpmerge_server's start.
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(EmbeddedServerOptions options);
  ~EmbeddedServer();  // Shutdown()

  int rank_port() const;
  int admin_port() const;
  // The compute backend in use ("cpu" or "cuda") and why it was chosen.
  const std::string& backend_name() const;
  const std::string& backend_reason() const;
  // What Admin.GetStats answers, without a call.
  v1::GetStatsResponse GetStats() const;
  // Graceful: readiness NOT_SERVING first, new steps refused, steps in
  // flight finish within a second or fail with UNAVAILABLE "server shutting
  // down", every part read is answered, streams end UNAVAILABLE.
  // Idempotent.
  void Shutdown();

 private:
  explicit EmbeddedServer(std::unique_ptr<MergeServer> server);
  std::unique_ptr<MergeServer> server_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_EMBED_EMBEDDED_SERVER_H_
