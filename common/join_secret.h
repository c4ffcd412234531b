// The rank plane's credential (docs/server.md, "Limits and security").
//
// The operator holds one secret per group (the join secret). A rank holds
// only its own *rank token*, derived from it:
//
//     dcpmerge-rank-<r>.<64 hex digits of HMAC-SHA256(secret, "dcpmerge rank token v1:<r>")>
//
// so the server stores one secret, yet a token for rank 1 cannot join,
// replace, heartbeat or stream as rank 2. `dcpmergectl rank-token` issues
// them. A rank client given the group secret itself derives its token (for
// development; in production mount each rank its token only). Secrets and
// tokens are read from a file, else from the environment, never from a
// flag value (flags show in `ps`).
//
// On the wire the token is the call metadata "authorization: Bearer
// <token>" on every RankControl call (Join, Leave, Heartbeat) and on every
// MergeData stream. The server checks it in constant time: a missing one is
// UNAUTHENTICATED; a wrong one, or one for another rank, PERMISSION_DENIED.
#ifndef DCPMERGE_COMMON_JOIN_SECRET_H_
#define DCPMERGE_COMMON_JOIN_SECRET_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dcpmerge {

// The environment variable read when no file is given.
inline constexpr char kJoinSecretEnv[] = "DCPMERGE_JOIN_SECRET";
// The metadata key carrying it (value "Bearer <secret>").
inline constexpr char kJoinSecretMetadataKey[] = "authorization";

// The file's content when `file` is set (trailing whitespace removed;
// NOT_FOUND naming `what` when unreadable), else $DCPMERGE_JOIN_SECRET, else
// "" (no secret).
absl::StatusOr<std::string> LoadJoinSecret(const std::string& file, const std::string& what = "join_secret_file");

// "Bearer <credential>".
std::string JoinSecretMetadataValue(const std::string& credential);

// Rank `rank`'s token for the group secret `secret`.
std::string RankToken(absl::string_view secret, int32_t rank);
// The rank a token names; INVALID_ARGUMENT when `text` is not a rank token.
absl::StatusOr<int32_t> RankOfToken(absl::string_view text);
// What rank `rank` sends: `secret_or_token` when it is a rank token (checked
// by the server), else the token derived from it as the group secret.
std::string RankCredential(const std::string& secret_or_token, int32_t rank);
// The server's check: the rank `token` was issued for under `secret`, or
// PERMISSION_DENIED (not a rank token, or not issued under this secret).
absl::StatusOr<int32_t> VerifyRankToken(absl::string_view secret, absl::string_view token);

}  // namespace dcpmerge

#endif  // DCPMERGE_COMMON_JOIN_SECRET_H_
