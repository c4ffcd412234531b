// Admin: Configure, SetScales, GetConfig, GetStats, Drain. Every call checks
// the bearer token first (admin_auth.h).
#ifndef DCPMERGE_SERVER_ADMIN_SERVICE_H_
#define DCPMERGE_SERVER_ADMIN_SERVICE_H_

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "server/auth_guard.h"

namespace dcpmerge {

class MergeServer;

class AdminService final : public v1::Admin::Service {
 public:
  AdminService(MergeServer* server, std::string token);
  // Wrong or missing tokens are answered at once, rate-limited and logged
  // by a guard with these options (server/auth_guard.h).
  AdminService(MergeServer* server, std::string token, AuthFailureGuard::Options penalty);

  grpc::Status Configure(grpc::ServerContext*, const v1::ConfigureRequest*,
                         v1::ConfigureResponse*) override;
  grpc::Status SetScales(grpc::ServerContext*, const v1::SetScalesRequest*,
                         v1::SetScalesResponse*) override;
  grpc::Status GetConfig(grpc::ServerContext*, const v1::GetConfigRequest*,
                         v1::GetConfigResponse*) override;
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                        v1::GetStatsResponse*) override;
  grpc::Status Drain(grpc::ServerContext*, const v1::DrainRequest*, v1::DrainResponse*) override;

  // Token rotation: calls after this check against `token`.
  void SetToken(std::string token);
  // Failed authentications since start (metrics).
  uint64_t auth_failures() const { return guard_.failures(); }

 private:
  std::string Token() const;
  // CheckAdminToken; a wrong or missing token goes through the guard.
  grpc::Status Authorize(const grpc::ServerContext& ctx);

  MergeServer* const server_;
  mutable absl::Mutex mu_;
  std::string token_ ABSL_GUARDED_BY(mu_);
  AuthFailureGuard guard_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_ADMIN_SERVICE_H_
