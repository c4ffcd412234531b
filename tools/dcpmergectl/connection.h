// dcpmergectl's connection to a server: channel (plaintext or TLS, from the
// --tls_* flags), the admin token (--token_file or DCPMERGE_ADMIN_TOKEN),
// per-call deadlines (--deadline_ms) and the two stubs.
#ifndef DCPMERGE_TOOLS_DCPMERGECTL_CONNECTION_H_
#define DCPMERGE_TOOLS_DCPMERGECTL_CONNECTION_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "dcpmerge/v1/admin.grpc.pb.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace dcpmerge::ctl {

class Connection {
 public:
  // Loads the token (file, else environment). An exit code: kExitOk, or
  // kExitUsage with the reason printed.
  int LoadToken();
  // Opens the channel and waits until it is connected: kExitOk,
  // kExitUsage (bad TLS flags or files) or kExitUnreachable.
  int Open();

  std::chrono::system_clock::time_point Deadline(int64_t extra_ms = 0) const;
  // Deadline + the bearer token.
  void Prepare(grpc::ClientContext* ctx, int64_t extra_ms = 0) const;

  v1::Admin::Stub* admin();
  grpc::health::v1::Health::Stub* health();
  // The rank listener's RankControl (check-join; --server points at it).
  v1::RankControl::Stub* control();

 private:
  std::string target_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::unique_ptr<v1::RankControl::Stub> control_;
};

}  // namespace dcpmerge::ctl

#endif  // DCPMERGE_TOOLS_DCPMERGECTL_CONNECTION_H_
