// RankControl: Join / Leave / Heartbeat for the DCP ranks.
//
// Callback API: each call runs to completion on gRPC's callback threads
// without blocking (no sync thread pool a flood of calls could exhaust).
// Every call carries the caller's rank token (server/auth_guard.h); a token
// acts only for the rank it was issued for.
#ifndef DCPMERGE_SERVER_CONTROL_SERVICE_H_
#define DCPMERGE_SERVER_CONTROL_SERVICE_H_

#include <functional>
#include <string>

#include "dcpmerge/v1/control.grpc.pb.h"
#include "server/auth_guard.h"
#include "server/config_store.h"
#include "server/data_plane.h"
#include "server/group.h"

namespace dcpmerge {

class ControlService final : public v1::RankControl::CallbackService {
 public:
  // ready(): the readiness the server reports (group complete, plane up).
  // auth: the rank tokens every call must carry (null: none).
  ControlService(ConfigStore* config, Group* group, DataPlane* plane,
                 std::string backend, absl::Duration step_timeout,
                 std::function<bool()> ready, JoinSecretCheck* auth = nullptr);

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext*, const v1::JoinRequest*,
                                 v1::JoinResponse*) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext*, const v1::LeaveRequest*,
                                  v1::LeaveResponse*) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext*, const v1::HeartbeatRequest*,
                                      v1::HeartbeatResponse*) override;

 private:
  grpc::Status DoJoin(const grpc::ServerContextBase& ctx, const v1::JoinRequest& req, v1::JoinResponse* resp);
  grpc::Status DoLeave(const grpc::ServerContextBase& ctx, const v1::LeaveRequest& req);
  grpc::Status DoHeartbeat(const grpc::ServerContextBase& ctx, const v1::HeartbeatRequest& req,
                           v1::HeartbeatResponse* resp);
  grpc::Status Authorize(const grpc::ServerContextBase& ctx, int32_t rank);

  ConfigStore* const config_;
  Group* const group_;
  DataPlane* const plane_;
  const std::string backend_;
  const absl::Duration step_timeout_;
  const std::function<bool()> ready_;
  JoinSecretCheck* const auth_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_CONTROL_SERVICE_H_
