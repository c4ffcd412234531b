#include "server/control_service.h"

#include <utility>

#include "base/grpc_status.h"

namespace dcpmerge {

ControlService::ControlService(ConfigStore* config, Group* group, DataPlane* plane,
                               std::string backend, absl::Duration step_timeout,
                               std::function<bool()> ready, JoinSecretCheck* auth)
    : config_(config),
      group_(group),
      plane_(plane),
      backend_(std::move(backend)),
      step_timeout_(step_timeout),
      ready_(std::move(ready)),
      auth_(auth) {}

grpc::ServerUnaryReactor* ControlService::Join(grpc::CallbackServerContext* ctx, const v1::JoinRequest* req,
                                               v1::JoinResponse* resp) {
  return FinishNow(ctx, DoJoin(*ctx, *req, resp));
}

grpc::ServerUnaryReactor* ControlService::Leave(grpc::CallbackServerContext* ctx, const v1::LeaveRequest* req,
                                                v1::LeaveResponse*) {
  return FinishNow(ctx, DoLeave(*ctx, *req));
}

grpc::ServerUnaryReactor* ControlService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                    const v1::HeartbeatRequest* req, v1::HeartbeatResponse* resp) {
  return FinishNow(ctx, DoHeartbeat(*ctx, *req, resp));
}

grpc::Status ControlService::Authorize(const grpc::ServerContextBase& ctx, int32_t rank) {
  return auth_ == nullptr ? grpc::Status::OK : auth_->CheckRank(ctx, rank);
}

grpc::Status ControlService::DoJoin(const grpc::ServerContextBase& ctx, const v1::JoinRequest& req,
                                    v1::JoinResponse* resp) {
  if (grpc::Status a = Authorize(ctx, req.rank()); !a.ok()) return a;
  std::shared_ptr<const ConfigSnapshot> cfg = config_->Current();
  JoinInfo info;
  info.rank = req.rank();
  info.num_parts = req.world_size();
  info.host = req.host();
  info.device = req.device();
  info.pid = req.pid();
  info.expected_config_hash = req.expected_config_hash();
  info.replace_existing = req.replace_existing();
  absl::StatusOr<uint64_t> session = group_->Join(info, *cfg);
  if (!session.ok()) return ToGrpcStatus(session.status());
  *resp->mutable_config() = GroupSpecToProto(cfg->spec);
  resp->set_config_version(cfg->version);
  resp->set_config_hash(cfg->hash);
  resp->set_session_id(*session);
  resp->set_data_plane(plane_->kind());
  // After group_->Join: an NCCL plane that gives a communicator up makes the
  // new id first and then ends every session, so a session that survives
  // always carries the current id.
  plane_->AddToJoinResponse(cfg->spec, resp);
  const int64_t hb = absl::ToInt64Milliseconds(group_->heartbeat_timeout());
  resp->set_heartbeat_timeout_ms(hb);
  resp->set_heartbeat_interval_ms(hb / 4 > 0 ? hb / 4 : 1);
  resp->set_step_timeout_ms(absl::ToInt64Milliseconds(step_timeout_));
  resp->set_backend(backend_);
  return grpc::Status::OK;
}

grpc::Status ControlService::DoLeave(const grpc::ServerContextBase& ctx, const v1::LeaveRequest& req) {
  if (grpc::Status a = Authorize(ctx, req.rank()); !a.ok()) return a;
  return ToGrpcStatus(group_->Leave(req.rank(), req.session_id()));
}

grpc::Status ControlService::DoHeartbeat(const grpc::ServerContextBase& ctx, const v1::HeartbeatRequest& req,
                                         v1::HeartbeatResponse* resp) {
  if (grpc::Status a = Authorize(ctx, req.rank()); !a.ok()) return a;
  absl::Status st = group_->Heartbeat(req.rank(), req.session_id());
  if (!st.ok()) return ToGrpcStatus(st);
  resp->set_config_version(config_->Current()->version);
  resp->set_group_ready(ready_());
  resp->set_heartbeat_timeout_ms(absl::ToInt64Milliseconds(group_->heartbeat_timeout()));
  for (const MemberInfo& m : group_->Members()) resp->add_joined_ranks(m.rank);
  plane_->AddToHeartbeatResponse(resp);
  return grpc::Status::OK;
}

}  // namespace dcpmerge
