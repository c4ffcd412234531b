// absl::Status <-> grpc::Status (same numeric codes), and the answer of a
// callback-API unary call that completes on the spot.
#ifndef DCPMERGE_BASE_GRPC_STATUS_H_
#define DCPMERGE_BASE_GRPC_STATUS_H_

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace dcpmerge {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Finishes a unary callback call with `status` now (handlers that do not
// block return this).
inline grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, grpc::Status status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_GRPC_STATUS_H_
