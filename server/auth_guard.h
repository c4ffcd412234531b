// What a failed authentication costs, and how it is logged: the admin token
// on the admin listener, the rank token on the rank listener.
//
//  - Answered at once. No handler thread waits on a failure, so no number
//    of failing peers can take the threads, streams or time of callers
//    that authenticate (a correct credential is always checked and always
//    passes; the limits below apply to failures only).
//  - Rate-limited: failures are counted in token buckets, one per peer
//    address (its host, without the port) and one for all peers. Beyond
//    either bucket a failure is answered RESOURCE_EXHAUSTED instead of
//    UNAUTHENTICATED / PERMISSION_DENIED, which also stops its logging.
//  - Logged, rate-limited: the first failure of a burst is logged at once,
//    then at most one line per `log_interval` with the count since the last
//    line, the last status and the last peer (escaped, base/log.h).
//
// Thread-safe.
#ifndef DCPMERGE_SERVER_AUTH_GUARD_H_
#define DCPMERGE_SERVER_AUTH_GUARD_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace dcpmerge {

class AuthFailureGuard {
 public:
  struct Options {
    // Failures one peer address may make at once, and regains per second.
    double peer_burst = 20;
    double peer_per_second = 5;
    // The same for all peers together.
    double global_burst = 200;
    double global_per_second = 50;
    absl::Duration log_interval = absl::Seconds(1);
    // Peer buckets kept; beyond, the fullest are forgotten (a full bucket
    // is the state of a peer never seen).
    size_t max_peers = 4096;
  };

  // `what` names the credential in log lines ("admin token", "rank token").
  AuthFailureGuard(std::string what, Options options);
  ~AuthFailureGuard();  // logs what was not logged yet

  // Records one failure (`status`, from gRPC peer string `peer`) and returns
  // the status to answer with, at once.
  grpc::Status Fail(absl::string_view peer, grpc::Status status);

  uint64_t failures() const;
  uint64_t throttled() const;  // failures answered RESOURCE_EXHAUSTED

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
  };
  // Refills `b` to `now` and takes one token; false when it has none.
  static bool Take(Bucket* b, double burst, double per_second, absl::Time now);
  void ForgetFullPeersLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string what_;
  const Options options_;
  mutable absl::Mutex mu_;
  uint64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t throttled_ ABSL_GUARDED_BY(mu_) = 0;
  Bucket global_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Bucket> peers_ ABSL_GUARDED_BY(mu_);
  absl::Time last_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t unlogged_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_peer_ ABSL_GUARDED_BY(mu_);
  std::string last_status_ ABSL_GUARDED_BY(mu_);
};

// The rank listener's credential check: the rank token
// (common/join_secret.h) carried as "authorization: Bearer <token>" on
// every RankControl call and MergeData stream, verified against the group's
// join secret. No secret configured: every call passes for any rank (the
// server then refuses to listen beyond loopback unless told it may, see
// MergeServerOptions). Rotated with Set(): tokens of the previous secret
// stay valid for the grace period, so ranks can be given their new tokens
// one by one without the group dropping.
class JoinSecretCheck {
 public:
  // The rank any caller may act as when no secret is configured.
  static constexpr int32_t kAnyRank = -1;

  JoinSecretCheck(std::string secret, AuthFailureGuard* guard, absl::Duration grace = absl::ZeroDuration());
  void Set(std::string secret);
  bool enabled() const;
  // The rank the caller's token was issued for (kAnyRank without a
  // secret), or the status to answer at once: UNAUTHENTICATED (missing),
  // PERMISSION_DENIED (wrong), RESOURCE_EXHAUSTED (failures over the rate
  // limit), recorded by the guard.
  absl::StatusOr<int32_t> Check(const grpc::ServerContextBase& context);
  // Check, then: may the caller act as `rank`? PERMISSION_DENIED naming
  // both ranks when its token is another rank's.
  grpc::Status CheckRank(const grpc::ServerContextBase& context, int32_t rank);

 private:
  AuthFailureGuard* const guard_;
  const absl::Duration grace_;
  mutable absl::Mutex mu_;
  std::string secret_ ABSL_GUARDED_BY(mu_);
  std::string previous_ ABSL_GUARDED_BY(mu_);  // valid until previous_until_
  absl::Time previous_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// "rank token is for rank A, not rank B" (PERMISSION_DENIED) unless
// `token_rank` is kAnyRank or `rank`.
absl::Status CheckTokenRank(int32_t token_rank, int32_t rank);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_AUTH_GUARD_H_
