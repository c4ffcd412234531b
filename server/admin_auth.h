// Bearer-token check for the admin service.
#ifndef DCPMERGE_SERVER_ADMIN_AUTH_H_
#define DCPMERGE_SERVER_ADMIN_AUTH_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"

namespace dcpmerge {

// The admin token: the file's content (trailing whitespace removed) when
// `token_file` is set, else the environment variable DCPMERGE_ADMIN_TOKEN,
// else "" (admin calls then all fail with FAILED_PRECONDITION). Never taken
// from a flag value (it would show in `ps`).
absl::StatusOr<std::string> LoadAdminToken(const std::string& token_file);

// Equal without an early exit (time does not depend on where they differ).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// Checks "authorization: Bearer <token>" metadata: missing or not a bearer
// token -> UNAUTHENTICATED, wrong token -> PERMISSION_DENIED.
grpc::Status CheckAdminToken(const grpc::ServerContextBase& context,
                             const std::string& token);

// A token's fingerprint for logs: the first 8 hex digits of its SHA-256
// ("none" for an empty token). Says which token a caller used (or which one
// a reload installed) without revealing it.
std::string TokenFingerprint(absl::string_view token);

// The bearer token a call presents ("" when there is none).
absl::string_view PresentedBearerToken(const grpc::ServerContextBase& context);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_ADMIN_AUTH_H_
