// What dcpmergectl prints: the server's answers as tables or JSON, and the
// server's errors. Strings from the server (a member's host and device, error
// messages, ...) reach the operator's terminal escaped as in the log
// (EscapeForLog, base/log.h), so no control sequence gets through; JSON
// escapes them by its own rules.
#ifndef DCPMERGE_TOOLS_DCPMERGECTL_PRINT_H_
#define DCPMERGE_TOOLS_DCPMERGECTL_PRINT_H_

#include <string>

#include "dcpmerge/v1/admin.pb.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/status.h"

namespace dcpmerge::ctl {

// The protobuf JSON mapping (field names as in the .proto, defaults shown).
std::string ToJson(const google::protobuf::Message& message);

std::string ConfigTable(const v1::GetConfigResponse& config);
std::string StatsTable(const v1::GetStatsResponse& stats);

// Prints "dcpmergectl: <call> failed: <CODE>: <message>" (and a hint for
// UNAUTHENTICATED) to stderr; returns kExitServerError.
int ServerError(const std::string& call, const grpc::Status& status);

}  // namespace dcpmerge::ctl

#endif  // DCPMERGE_TOOLS_DCPMERGECTL_PRINT_H_
