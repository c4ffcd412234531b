#include "server/admin_service.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/admin_auth.h"
#include "base/grpc_status.h"
#include "base/log.h"
#include "server/merge_server.h"

namespace dcpmerge {
namespace {

// ------------------------------------------------------- audit log lines ---
// Every admin change (Configure, SetScales, Drain), made or refused, is
// logged by the "admin" component with its caller: the peer address, the
// client certificate's identity under mTLS, and the fingerprint of the
// bearer token presented (admin_auth.h; never the token itself). Refused
// authentications are audited within the guard's rate limit
// (server/auth_guard.h), so a flood of wrong tokens cannot flood the log.
std::vector<LogField> Caller(const grpc::ServerContextBase& ctx, const char* method) {
  std::vector<LogField> f;
  f.push_back({"method", method});
  f.push_back({"peer", ctx.peer()});
  if (const auto auth = ctx.auth_context(); auth != nullptr && auth->IsPeerAuthenticated()) {
    std::string identity;
    for (const grpc::string_ref& id : auth->GetPeerIdentity()) {
      absl::StrAppend(&identity, identity.empty() ? "" : ",", absl::string_view(id.data(), id.size()));
    }
    if (!identity.empty()) f.push_back({"tls_identity", identity});
  }
  f.push_back({"token_sha256", TokenFingerprint(PresentedBearerToken(ctx))});
  return f;
}

void Audit(LogLevel level, const grpc::ServerContextBase& ctx, const char* method, const std::string& message) {
  LogLine(level, "admin", absl::StrCat(method, ": ", message), Caller(ctx, method));
}

// A refused or failed change: logged, then returned.
grpc::Status AuditFailure(const grpc::ServerContextBase& ctx, const char* method, grpc::Status st) {
  Audit(LogLevel::kWarning, ctx, method,
        absl::StrCat(st.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
                             st.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                             st.error_code() == grpc::StatusCode::FAILED_PRECONDITION
                         ? "refused: "
                         : "failed: ",
                     absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())), ": ",
                     st.error_message()));
  return st;
}

// A refused authentication of a change: audited unless the guard
// throttled it (its rate limit bounds these lines; it logs the rest).
grpc::Status AuditRefusal(const grpc::ServerContextBase& ctx, const char* method, grpc::Status st) {
  if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) return st;
  return AuditFailure(ctx, method, std::move(st));
}

}  // namespace

AdminService::AdminService(MergeServer* server, std::string token)
    : AdminService(server, std::move(token), AuthFailureGuard::Options{}) {}

AdminService::AdminService(MergeServer* server, std::string token, AuthFailureGuard::Options penalty)
    : server_(server), token_(std::move(token)), guard_("admin token", penalty) {}

grpc::Status AdminService::Authorize(const grpc::ServerContextBase& ctx) {
  grpc::Status st = CheckAdminToken(ctx, Token());
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED || st.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
    return guard_.Fail(ctx.peer(), std::move(st));
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

AdminService::~AdminService() {
  std::vector<DrainThread> drains;
  {
    absl::MutexLock lock(&mu_);
    drains.swap(drains_);
  }
  for (DrainThread& d : drains) d.thread.join();
}

grpc::ServerUnaryReactor* AdminService::Configure(grpc::CallbackServerContext* ctx, const v1::ConfigureRequest* req,
                                                  v1::ConfigureResponse* resp) {
  return FinishNow(ctx, DoConfigure(*ctx, *req, resp));
}

grpc::ServerUnaryReactor* AdminService::SetScales(grpc::CallbackServerContext* ctx, const v1::SetScalesRequest* req,
                                                  v1::SetScalesResponse* resp) {
  return FinishNow(ctx, DoSetScales(*ctx, *req, resp));
}

grpc::ServerUnaryReactor* AdminService::GetConfig(grpc::CallbackServerContext* ctx, const v1::GetConfigRequest*,
                                                  v1::GetConfigResponse* resp) {
  grpc::Status a = Authorize(*ctx);
  if (a.ok()) server_->GetConfig(resp);
  return FinishNow(ctx, std::move(a));
}

grpc::ServerUnaryReactor* AdminService::GetStats(grpc::CallbackServerContext* ctx, const v1::GetStatsRequest*,
                                                 v1::GetStatsResponse* resp) {
  grpc::Status a = Authorize(*ctx);
  if (a.ok()) *resp = server_->GetStats();
  return FinishNow(ctx, std::move(a));
}

grpc::ServerUnaryReactor* AdminService::Drain(grpc::CallbackServerContext* ctx, const v1::DrainRequest* req,
                                              v1::DrainResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status a = Authorize(*ctx); !a.ok()) {
    reactor->Finish(AuditRefusal(*ctx, "Drain", std::move(a)));
    return reactor;
  }
  // Drain waits up to its timeout: on a thread of its own, not gRPC's.
  // Threads of drains that have finished are joined here, so only those
  // still waiting are kept.
  absl::MutexLock lock(&mu_);
  auto finished = std::partition(drains_.begin(), drains_.end(), [](const DrainThread& d) { return !d.done->load(); });
  for (auto it = finished; it != drains_.end(); ++it) it->thread.join();
  drains_.erase(finished, drains_.end());
  auto done = std::make_shared<std::atomic<bool>>(false);
  drains_.push_back({std::thread([this, ctx, req, resp, reactor, done] {
                       reactor->Finish(DoDrain(*ctx, *req, resp));
                       done->store(true);
                     }),
                     done});
  return reactor;
}

grpc::Status AdminService::DoConfigure(const grpc::ServerContextBase& ctx, const v1::ConfigureRequest& req,
                                       v1::ConfigureResponse* resp) {
  if (grpc::Status a = Authorize(ctx); !a.ok()) return AuditRefusal(ctx, "Configure", a);
  auto snap = server_->Configure(req.config(), req.default_scale());
  if (!snap.ok()) return AuditFailure(ctx, "Configure", ToGrpcStatus(snap.status()));
  resp->set_config_version((*snap)->version);
  resp->set_config_hash((*snap)->hash);
  Audit(LogLevel::kInfo, ctx, "Configure",
        absl::StrFormat("config version %d (hash 0x%016x), world_size %d, heads %d, head_size %d, max_tokens %d",
                        (*snap)->version, (*snap)->hash, (*snap)->spec.num_parts, (*snap)->spec.num_heads,
                        (*snap)->spec.head_size, (*snap)->spec.max_tokens));
  return grpc::Status::OK;
}

grpc::Status AdminService::DoSetScales(const grpc::ServerContextBase& ctx, const v1::SetScalesRequest& req,
                                       v1::SetScalesResponse* resp) {
  if (grpc::Status a = Authorize(ctx); !a.ok()) return AuditRefusal(ctx, "SetScales", a);
  std::map<int32_t, float> scales(req.layer_scales().begin(), req.layer_scales().end());
  auto snap = server_->SetScales(scales, req.replace(), req.default_scale());
  if (!snap.ok()) return AuditFailure(ctx, "SetScales", ToGrpcStatus(snap.status()));
  resp->set_config_version((*snap)->version);
  Audit(LogLevel::kInfo, ctx, "SetScales",
        absl::StrFormat("config version %d: %d layer(s) %s, default scale %s", (*snap)->version, scales.size(),
                        req.replace() ? "replace the table" : "merged into the table",
                        req.default_scale() == 0.0f ? "unchanged" : absl::StrCat(req.default_scale())));
  return grpc::Status::OK;
}

grpc::Status AdminService::DoDrain(const grpc::ServerContextBase& ctx, const v1::DrainRequest& req,
                                   v1::DrainResponse* resp) {
  if (req.timeout_ms() < 0) {
    return AuditFailure(ctx, "Drain",
                        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "timeout_ms: must be >= 0"));
  }
  Audit(LogLevel::kInfo, ctx, "Drain", absl::StrCat("draining (timeout_ms ", req.timeout_ms(), ")"));
  *resp = server_->Drain(absl::Milliseconds(req.timeout_ms()));
  Audit(LogLevel::kInfo, ctx, "Drain",
        absl::StrCat(resp->drained() ? "drained" : "timed out", ", ", resp->steps_in_flight(), " step(s) in flight"));
  return grpc::Status::OK;
}

}  // namespace dcpmerge
