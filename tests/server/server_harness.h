// In-process server + clients for the server and e2e tests.
#ifndef DCPMERGE_TESTS_SERVER_SERVER_HARNESS_H_
#define DCPMERGE_TESTS_SERVER_SERVER_HARNESS_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/rank_client.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"

namespace dcpmerge::testing {

// Calls an admin method with "authorization: <auth>" (none when empty).
template <typename Req, typename Resp>
grpc::Status AdminCall(v1::Admin::Stub* stub,
                       grpc::Status (v1::Admin::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                       const Req& req, Resp* resp, const std::string& auth) {
  grpc::ClientContext ctx;
  if (!auth.empty()) ctx.AddMetadata("authorization", auth);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return (stub->*method)(&ctx, req, resp);
}

// grpc.health.v1 status of `service` at `target`: 1 SERVING, 2 NOT_SERVING,
// -1 on RPC failure.
inline int HealthStatus(const std::string& target, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!stub->Check(&ctx, req, &resp).ok()) return -1;
  return resp.status();
}

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_SERVER_SERVER_HARNESS_H_
