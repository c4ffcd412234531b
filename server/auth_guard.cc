#include "server/auth_guard.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/strings/match.h"
#include "base/log.h"
#include "common/join_secret.h"
#include "server/admin_auth.h"

namespace dcpmerge {

AuthFailureGuard::AuthFailureGuard(std::string what, Options options)
    : what_(std::move(what)), options_(options) {}

AuthFailureGuard::~AuthFailureGuard() {
  absl::MutexLock lock(&mu_);
  if (unlogged_ > 0) LogLocked(absl::Now());
}

void AuthFailureGuard::LogLocked(absl::Time now) {
  LogWarning("%s: %u failed authentication(s)%s; last: %s, from %s", what_, unlogged_,
             last_log_ == absl::InfinitePast()
                 ? ""
                 : absl::StrCat(" in the last ", absl::FormatDuration(absl::Trunc(now - last_log_, absl::Milliseconds(1))))
                       .c_str(),
             last_status_, last_peer_);
  unlogged_ = 0;
  last_log_ = now;
}

absl::Time AuthFailureGuard::Penalize(absl::string_view peer, const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  ++failures_;
  ++unlogged_;
  last_peer_ = EscapeForLog(peer, 64);
  last_status_ = EscapeForLog(
      absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), " ",
                   status.error_message()),
      160);
  if (now - last_log_ >= options_.log_interval) LogLocked(now);
  next_slot_ = std::max(next_slot_, now) + options_.penalty;
  if (next_slot_ - now > options_.max_wait) next_slot_ = now + options_.max_wait;
  return next_slot_;
}

void AuthFailureGuard::FailAndWait(const grpc::ServerContextBase& context, const grpc::Status& status) {
  const absl::Time until = Penalize(context.peer(), status);
  const absl::Duration wait = until - absl::Now();
  if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
}

uint64_t AuthFailureGuard::failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

JoinSecretCheck::JoinSecretCheck(std::string secret, AuthFailureGuard* guard)
    : guard_(guard), secret_(std::move(secret)) {}

void JoinSecretCheck::Set(std::string secret) {
  absl::MutexLock lock(&mu_);
  secret_ = std::move(secret);
}

bool JoinSecretCheck::enabled() const {
  absl::MutexLock lock(&mu_);
  return !secret_.empty();
}

grpc::Status JoinSecretCheck::Check(const grpc::ServerContextBase& context, absl::Time* not_before) {
  std::string secret;
  {
    absl::MutexLock lock(&mu_);
    secret = secret_;
  }
  if (secret.empty()) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find(kJoinSecretMetadataKey);
  grpc::Status st;
  if (it == md.end()) {
    st = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "authorization: missing; this group needs its join secret (RankClientOptions::join_secret, "
                      "--join_secret_file or DCPMERGE_JOIN_SECRET)");
  } else {
    const absl::string_view value(it->second.data(), it->second.size());
    constexpr absl::string_view kPrefix = "Bearer ";
    if (!absl::StartsWith(value, kPrefix)) {
      st = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authorization: not a bearer join secret");
    } else if (!ConstantTimeEquals(value.substr(kPrefix.size()), secret)) {
      st = grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "authorization: wrong join secret");
    }
  }
  if (!st.ok()) *not_before = guard_->Penalize(context.peer(), st);
  return st;
}

grpc::Status JoinSecretCheck::CheckAndWait(const grpc::ServerContextBase& context) {
  absl::Time not_before;
  grpc::Status st = Check(context, &not_before);
  if (!st.ok()) {
    const absl::Duration wait = not_before - absl::Now();
    if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
  }
  return st;
}

}  // namespace dcpmerge
