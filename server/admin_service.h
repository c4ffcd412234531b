// Admin: Configure, SetScales, GetConfig, GetStats, Drain. Every call checks
// the bearer token first (admin_auth.h).
//
// Callback API: a call holds no thread of a pool that a flood of calls with
// wrong tokens could exhaust. Every method completes on the spot (a state
// file write at most) except Drain, which waits on a thread of its own.
#ifndef DCPMERGE_SERVER_ADMIN_SERVICE_H_
#define DCPMERGE_SERVER_ADMIN_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "server/auth_guard.h"

namespace dcpmerge {

class MergeServer;

class AdminService final : public v1::Admin::CallbackService {
 public:
  AdminService(MergeServer* server, std::string token);
  // Wrong or missing tokens are answered at once, rate-limited and logged
  // by a guard with these options (server/auth_guard.h).
  AdminService(MergeServer* server, std::string token, AuthFailureGuard::Options penalty);

  ~AdminService() override;  // waits for Drain calls in progress

  grpc::ServerUnaryReactor* Configure(grpc::CallbackServerContext*, const v1::ConfigureRequest*,
                                      v1::ConfigureResponse*) override;
  grpc::ServerUnaryReactor* SetScales(grpc::CallbackServerContext*, const v1::SetScalesRequest*,
                                      v1::SetScalesResponse*) override;
  grpc::ServerUnaryReactor* GetConfig(grpc::CallbackServerContext*, const v1::GetConfigRequest*,
                                      v1::GetConfigResponse*) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext*, const v1::GetStatsRequest*,
                                     v1::GetStatsResponse*) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext*, const v1::DrainRequest*,
                                  v1::DrainResponse*) override;

  // Token rotation: calls after this check against `token`.
  void SetToken(std::string token);
  // Failed authentications since start (metrics).
  uint64_t auth_failures() const { return guard_.failures(); }

 private:
  std::string Token() const;
  // CheckAdminToken; a wrong or missing token goes through the guard.
  grpc::Status Authorize(const grpc::ServerContextBase& ctx);
  grpc::Status DoConfigure(const grpc::ServerContextBase& ctx, const v1::ConfigureRequest& req,
                           v1::ConfigureResponse* resp);
  grpc::Status DoSetScales(const grpc::ServerContextBase& ctx, const v1::SetScalesRequest& req,
                           v1::SetScalesResponse* resp);
  grpc::Status DoDrain(const grpc::ServerContextBase& ctx, const v1::DrainRequest& req, v1::DrainResponse* resp);

  MergeServer* const server_;
  mutable absl::Mutex mu_;
  std::string token_ ABSL_GUARDED_BY(mu_);
  AuthFailureGuard guard_;
  struct DrainThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<DrainThread> drains_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_ADMIN_SERVICE_H_
