// The rank plane's credential: a per-group join secret (docs/server.md,
// "Limits and security"), shared by the server, the rank client library and
// the tools, and taken the same way as the admin token: from a file, else
// from the environment, never from a flag value (flags show in `ps`).
//
// On the wire it is the call metadata "authorization: Bearer <secret>" on
// every RankControl call (Join, Leave, Heartbeat) and on every MergeData
// stream. The server compares it in constant time; a missing one is
// UNAUTHENTICATED, a wrong one PERMISSION_DENIED.
#ifndef DCPMERGE_COMMON_JOIN_SECRET_H_
#define DCPMERGE_COMMON_JOIN_SECRET_H_

#include <string>

#include "absl/status/statusor.h"

namespace dcpmerge {

// The environment variable read when no file is given.
inline constexpr char kJoinSecretEnv[] = "DCPMERGE_JOIN_SECRET";
// The metadata key carrying it (value "Bearer <secret>").
inline constexpr char kJoinSecretMetadataKey[] = "authorization";

// The file's content when `file` is set (trailing whitespace removed;
// NOT_FOUND naming `what` when unreadable), else $DCPMERGE_JOIN_SECRET, else
// "" (no secret).
absl::StatusOr<std::string> LoadJoinSecret(const std::string& file, const std::string& what = "join_secret_file");

// "Bearer <secret>".
std::string JoinSecretMetadataValue(const std::string& secret);

}  // namespace dcpmerge

#endif  // DCPMERGE_COMMON_JOIN_SECRET_H_
