#include "server/auth_guard.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/grpc_status.h"
#include "base/log.h"
#include "common/join_secret.h"

namespace dcpmerge {
namespace {

// "ipv4:10.0.0.1:5000" / "ipv6:[::1]:5000" -> the host: one bucket per
// address, whatever port the peer dials from.
std::string PeerHost(absl::string_view peer) {
  if (absl::StartsWith(peer, "ipv4:") || absl::StartsWith(peer, "ipv6:")) {
    const size_t colon = peer.rfind(':');
    if (colon > 5) peer = peer.substr(0, colon);
  }
  return std::string(peer.substr(0, 128));
}

}  // namespace

AuthFailureGuard::AuthFailureGuard(std::string what, Options options)
    : what_(std::move(what)), options_(options) {
  global_.tokens = options_.global_burst;
  global_.updated = absl::Now();
}

AuthFailureGuard::~AuthFailureGuard() {
  absl::MutexLock lock(&mu_);
  if (unlogged_ > 0) LogLocked(absl::Now());
}

bool AuthFailureGuard::Take(Bucket* b, double burst, double per_second, absl::Time now) {
  b->tokens = std::min(burst, b->tokens + absl::ToDoubleSeconds(now - b->updated) * per_second);
  b->updated = now;
  if (b->tokens < 1) return false;
  b->tokens -= 1;
  return true;
}

void AuthFailureGuard::ForgetFullPeersLocked(absl::Time now) {
  // A peer whose bucket has refilled is indistinguishable from a new one.
  for (auto it = peers_.begin(); it != peers_.end();) {
    const double refilled = it->second.tokens + absl::ToDoubleSeconds(now - it->second.updated) * options_.peer_per_second;
    if (refilled >= options_.peer_burst) {
      peers_.erase(it++);
    } else {
      ++it;
    }
  }
  // Still full: many peers failing at once; forget them all rather than
  // grow (each then starts again from a full bucket; the global one holds).
  if (peers_.size() >= options_.max_peers) peers_.clear();
}

void AuthFailureGuard::LogLocked(absl::Time now) {
  LogWarning("%s: %u failed authentication(s)%s (%u over the rate limit since start); last: %s, from %s", what_,
             unlogged_,
             last_log_ == absl::InfinitePast()
                 ? ""
                 : absl::StrCat(" in the last ", absl::FormatDuration(absl::Trunc(now - last_log_, absl::Milliseconds(1))))
                       .c_str(),
             throttled_, last_status_, last_peer_);
  unlogged_ = 0;
  last_log_ = now;
}

grpc::Status AuthFailureGuard::Fail(absl::string_view peer, grpc::Status status) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  ++failures_;
  if (peers_.size() >= options_.max_peers) ForgetFullPeersLocked(now);
  std::string host = PeerHost(peer);
  auto [it, inserted] = peers_.try_emplace(host);
  if (inserted) it->second = Bucket{options_.peer_burst, now};
  const bool peer_ok = Take(&it->second, options_.peer_burst, options_.peer_per_second, now);
  const bool global_ok = peer_ok && Take(&global_, options_.global_burst, options_.global_per_second, now);
  if (!peer_ok || !global_ok) {
    ++throttled_;
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("authorization: too many failed authentications ",
                                     peer_ok ? "from all peers" : "from this address",
                                     "; a correct credential is still accepted"));
  }
  ++unlogged_;
  last_peer_ = EscapeForLog(host, 64);
  last_status_ = EscapeForLog(
      absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), " ",
                   status.error_message()),
      160);
  if (now - last_log_ >= options_.log_interval) LogLocked(now);
  return status;
}

uint64_t AuthFailureGuard::failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

uint64_t AuthFailureGuard::throttled() const {
  absl::MutexLock lock(&mu_);
  return throttled_;
}

absl::Status CheckTokenRank(int32_t token_rank, int32_t rank) {
  if (token_rank == JoinSecretCheck::kAnyRank || token_rank == rank) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("authorization: this rank token is for rank ", token_rank, ", not rank ", rank));
}

JoinSecretCheck::JoinSecretCheck(std::string secret, AuthFailureGuard* guard, absl::Duration grace)
    : guard_(guard), grace_(grace), secret_(std::move(secret)) {}

void JoinSecretCheck::Set(std::string secret) {
  absl::MutexLock lock(&mu_);
  if (secret == secret_) return;
  previous_ = std::move(secret_);
  previous_until_ = absl::Now() + grace_;
  secret_ = std::move(secret);
}

bool JoinSecretCheck::enabled() const {
  absl::MutexLock lock(&mu_);
  return !secret_.empty();
}

absl::StatusOr<int32_t> JoinSecretCheck::Check(const grpc::ServerContextBase& context) {
  std::string secret, previous;
  {
    absl::MutexLock lock(&mu_);
    secret = secret_;
    if (absl::Now() < previous_until_) previous = previous_;
  }
  if (secret.empty()) return kAnyRank;
  const auto& md = context.client_metadata();
  auto it = md.find(kJoinSecretMetadataKey);
  grpc::Status st;
  if (it == md.end()) {
    st = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "authorization: missing; this group needs a rank token (RankClientOptions::join_secret, "
                      "--join_secret_file or DCPMERGE_JOIN_SECRET; dcpmergectl rank-token issues them)");
  } else {
    absl::string_view value(it->second.data(), it->second.size());
    if (!absl::ConsumePrefix(&value, "Bearer ")) {
      st = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authorization: not a bearer rank token");
    } else {
      absl::StatusOr<int32_t> rank = VerifyRankToken(secret, value);
      if (!rank.ok() && !previous.empty()) {
        // Within the rotation's grace: the previous secret's tokens pass.
        if (absl::StatusOr<int32_t> old = VerifyRankToken(previous, value); old.ok()) rank = old;
      }
      if (rank.ok()) return *rank;
      st = ToGrpcStatus(rank.status());
    }
  }
  return FromGrpcStatus(guard_->Fail(context.peer(), std::move(st)));
}

grpc::Status JoinSecretCheck::CheckRank(const grpc::ServerContextBase& context, int32_t rank) {
  absl::StatusOr<int32_t> token_rank = Check(context);
  if (!token_rank.ok()) return ToGrpcStatus(token_rank.status());
  absl::Status st = CheckTokenRank(*token_rank, rank);
  if (st.ok()) return grpc::Status::OK;
  return guard_->Fail(context.peer(), ToGrpcStatus(st));
}

}  // namespace dcpmerge
