// What a failed authentication costs the caller, and how it is logged: the
// admin token on the admin listener, the join secret on the rank listener.
//
//  - Slowed: failure answers are spaced `penalty` apart server-wide (a
//    slot schedule), each caller waiting for its slot, at most `max_wait`.
//    2,000 wrong tokens therefore take minutes, not 0.4 s, while calls with
//    the right credential are never delayed.
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
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace dcpmerge {

class AuthFailureGuard {
 public:
  struct Options {
    absl::Duration penalty = absl::Milliseconds(100);
    absl::Duration max_wait = absl::Seconds(2);
    absl::Duration log_interval = absl::Seconds(1);
  };

  // `what` names the credential in log lines ("admin token", "join secret").
  AuthFailureGuard(std::string what, Options options);
  ~AuthFailureGuard();  // logs what was not logged yet

  // Records one failure (`status`, from `peer`) and returns when its answer
  // may be sent. For callers that must not block (callback reactors).
  absl::Time Penalize(absl::string_view peer, const grpc::Status& status);
  // Penalize, then sleep until then (sync handlers).
  void FailAndWait(const grpc::ServerContextBase& context, const grpc::Status& status);

  uint64_t failures() const;

 private:
  void LogLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string what_;
  const Options options_;
  mutable absl::Mutex mu_;
  uint64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_slot_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t unlogged_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_peer_ ABSL_GUARDED_BY(mu_);
  std::string last_status_ ABSL_GUARDED_BY(mu_);
};

// The rank listener's credential check: the per-group join secret
// (common/join_secret.h) carried as "authorization: Bearer <secret>" on
// every RankControl call and MergeData stream. No secret configured: every
// call passes (the server then refuses to listen beyond loopback unless
// told it may, see MergeServerOptions). Rotated with Set().
class JoinSecretCheck {
 public:
  JoinSecretCheck(std::string secret, AuthFailureGuard* guard);
  void Set(std::string secret);
  bool enabled() const;
  // OK, or UNAUTHENTICATED (missing) / PERMISSION_DENIED (wrong), recorded
  // by the guard, whose answer time goes to *not_before.
  grpc::Status Check(const grpc::ServerContextBase& context, absl::Time* not_before);
  // Check, sleeping until *not_before on failure (sync handlers).
  grpc::Status CheckAndWait(const grpc::ServerContextBase& context);

 private:
  AuthFailureGuard* const guard_;
  mutable absl::Mutex mu_;
  std::string secret_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_AUTH_GUARD_H_
