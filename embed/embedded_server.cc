#include "embed/embedded_server.h"

#include <utility>

#include "server/merge_server.h"

namespace dcpmerge {

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(EmbeddedServerOptions options) {
  MergeServerOptions o;
  o.rank_address = std::move(options.rank_address);
  o.admin_address = std::move(options.admin_address);
  o.admin_token = std::move(options.admin_token);
  o.initial_config = std::move(options.initial_config);
  o.initial_default_scale = options.initial_default_scale;
  o.backend = std::move(options.backend);
  o.heartbeat_timeout = options.heartbeat_timeout;
  o.step_timeout = options.step_timeout;
  o.join_secret = std::move(options.join_secret);
  o.state_file = std::move(options.state_file);
  o.state_missing_fresh = true;
  o.state_fsync = options.state_fsync;
  absl::StatusOr<std::unique_ptr<MergeServer>> server = MergeServer::Start(std::move(o));
  if (!server.ok()) return server.status();
  return std::unique_ptr<EmbeddedServer>(new EmbeddedServer(std::move(*server)));
}

EmbeddedServer::EmbeddedServer(std::unique_ptr<MergeServer> server) : server_(std::move(server)) {}

EmbeddedServer::~EmbeddedServer() = default;  // ~MergeServer shuts down

int EmbeddedServer::rank_port() const { return server_->rank_port(); }
int EmbeddedServer::admin_port() const { return server_->admin_port(); }
const std::string& EmbeddedServer::backend_name() const { return server_->backend_name(); }
const std::string& EmbeddedServer::backend_reason() const { return server_->backend_reason(); }
v1::GetStatsResponse EmbeddedServer::GetStats() const { return server_->GetStats(); }
void EmbeddedServer::Shutdown() { server_->Shutdown(); }

}  // namespace dcpmerge
