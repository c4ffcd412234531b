#include "server/admin_service.h"

#include <map>
#include <utility>

#include "server/admin_auth.h"
#include "base/grpc_status.h"
#include "server/merge_server.h"

namespace dcpmerge {

AdminService::AdminService(MergeServer* server, std::string token)
    : AdminService(server, std::move(token), AuthFailureGuard::Options{}) {}

AdminService::AdminService(MergeServer* server, std::string token, AuthFailureGuard::Options penalty)
    : server_(server), token_(std::move(token)), guard_("admin token", penalty) {}

grpc::Status AdminService::Authorize(const grpc::ServerContext& ctx) {
  grpc::Status st = CheckAdminToken(ctx, Token());
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED || st.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
    guard_.FailAndWait(ctx, st);
  }
  return st;
}

void AdminService::SetToken(std::string token) {
  absl::MutexLock lock(&mu_);
  token_ = std::move(token);
}

std::string AdminService::Token() const {
  absl::MutexLock lock(&mu_);
  return token_;
}

grpc::Status AdminService::Configure(grpc::ServerContext* ctx, const v1::ConfigureRequest* req,
                                     v1::ConfigureResponse* resp) {
  if (grpc::Status a = Authorize(*ctx); !a.ok()) return a;
  auto snap = server_->Configure(req->config(), req->default_scale());
  if (!snap.ok()) return ToGrpcStatus(snap.status());
  resp->set_config_version((*snap)->version);
  resp->set_config_hash((*snap)->hash);
  return grpc::Status::OK;
}

grpc::Status AdminService::SetScales(grpc::ServerContext* ctx, const v1::SetScalesRequest* req,
                                     v1::SetScalesResponse* resp) {
  if (grpc::Status a = Authorize(*ctx); !a.ok()) return a;
  std::map<int32_t, float> scales(req->layer_scales().begin(), req->layer_scales().end());
  auto snap = server_->SetScales(scales, req->replace(), req->default_scale());
  if (!snap.ok()) return ToGrpcStatus(snap.status());
  resp->set_config_version((*snap)->version);
  return grpc::Status::OK;
}

grpc::Status AdminService::GetConfig(grpc::ServerContext* ctx, const v1::GetConfigRequest*,
                                     v1::GetConfigResponse* resp) {
  if (grpc::Status a = Authorize(*ctx); !a.ok()) return a;
  server_->GetConfig(resp);
  return grpc::Status::OK;
}

grpc::Status AdminService::GetStats(grpc::ServerContext* ctx, const v1::GetStatsRequest*,
                                    v1::GetStatsResponse* resp) {
  if (grpc::Status a = Authorize(*ctx); !a.ok()) return a;
  *resp = server_->GetStats();
  return grpc::Status::OK;
}

grpc::Status AdminService::Drain(grpc::ServerContext* ctx, const v1::DrainRequest* req,
                                 v1::DrainResponse* resp) {
  if (grpc::Status a = Authorize(*ctx); !a.ok()) return a;
  if (req->timeout_ms() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "timeout_ms: must be >= 0");
  }
  *resp = server_->Drain(absl::Milliseconds(req->timeout_ms()));
  return grpc::Status::OK;
}

}  // namespace dcpmerge
