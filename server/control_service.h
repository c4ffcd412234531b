// RankControl: Join / Leave / Heartbeat for the DCP ranks.
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

class ControlService final : public v1::RankControl::Service {
 public:
  // ready(): the readiness the server reports (group complete, plane up).
  // auth: the join secret every call must carry (null: none).
  ControlService(ConfigStore* config, Group* group, DataPlane* plane,
                 std::string backend, absl::Duration step_timeout,
                 std::function<bool()> ready, JoinSecretCheck* auth = nullptr);

  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest*, v1::JoinResponse*) override;
  grpc::Status Leave(grpc::ServerContext*, const v1::LeaveRequest*, v1::LeaveResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatResponse*) override;

 private:
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
