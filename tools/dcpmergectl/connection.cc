#include "tools/dcpmergectl/connection.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tools/dcpmergectl/cli.h"
#include "tools/dcpmergectl/flags.h"

namespace dcpmerge::ctl {
namespace {

// Reads `path` into *out; on failure the message names `what`.
bool ReadInput(const std::string& path, const std::string& what, std::string* out, std::string* error) {
  absl::StatusOr<std::string> text = ReadFile(path, what);
  if (!text.ok()) {
    *error = std::string(text.status().message());
    return false;
  }
  *out = std::move(*text);
  return true;
}

}  // namespace

int Connection::LoadToken() {
  const std::string file = absl::GetFlag(FLAGS_token_file);
  if (!file.empty()) {
    std::string error;
    if (!ReadInput(file, "--token_file", &token_, &error)) return Usage(error);
    absl::StripTrailingAsciiWhitespace(&token_);
    if (token_.empty()) return Usage(absl::StrCat("--token_file: ", file, " is empty"));
  } else if (const char* env = std::getenv("DCPMERGE_ADMIN_TOKEN"); env != nullptr) {
    token_ = env;
    absl::StripTrailingAsciiWhitespace(&token_);
  }
  return kExitOk;
}

int Connection::Open() {
  std::string error;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  const std::string ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  const std::string cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  const std::string key_file = absl::GetFlag(FLAGS_tls_key_file);
  grpc::ChannelArguments args;
  if (!ca_file.empty() || !cert_file.empty() || !key_file.empty()) {
    if (cert_file.empty() != key_file.empty()) {
      return Usage("--tls_cert_file and --tls_key_file: give both or neither");
    }
    grpc::SslCredentialsOptions ssl;
    if (!ca_file.empty() && !ReadInput(ca_file, "--tls_ca_file", &ssl.pem_root_certs, &error)) return Usage(error);
    if (!cert_file.empty() && !ReadInput(cert_file, "--tls_cert_file", &ssl.pem_cert_chain, &error)) {
      return Usage(error);
    }
    if (!key_file.empty() && !ReadInput(key_file, "--tls_key_file", &ssl.pem_private_key, &error)) {
      return Usage(error);
    }
    creds = grpc::SslCredentials(ssl);
    if (const std::string name = absl::GetFlag(FLAGS_tls_server_name); !name.empty()) {
      args.SetSslTargetNameOverride(name);
    }
  } else {
    if (!absl::GetFlag(FLAGS_tls_server_name).empty()) {
      return Usage("--tls_server_name needs TLS (--tls_ca_file)");
    }
    creds = grpc::InsecureChannelCredentials();
  }
  const int64_t deadline_ms = absl::GetFlag(FLAGS_deadline_ms);
  if (deadline_ms <= 0) return Usage("--deadline_ms must be > 0");
  target_ = absl::GetFlag(FLAGS_server);
  if (target_.empty()) return Usage("--server must not be empty");
  // One attempt per call: an unreachable server is reported, not retried.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  channel_ = grpc::CreateCustomChannel(target_, creds, args);
  if (!channel_->WaitForConnected(Deadline())) {
    std::fprintf(stderr,
                 "dcpmergectl: cannot reach %s within %lld ms (server down, wrong address, or TLS "
                 "handshake failed: check --tls_ca_file / --tls_server_name)\n",
                 target_.c_str(), static_cast<long long>(deadline_ms));
    return kExitUnreachable;
  }
  return kExitOk;
}

std::chrono::system_clock::time_point Connection::Deadline(int64_t extra_ms) const {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(absl::GetFlag(FLAGS_deadline_ms) + extra_ms);
}

void Connection::Prepare(grpc::ClientContext* ctx, int64_t extra_ms) const {
  ctx->set_deadline(Deadline(extra_ms));
  if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
}

v1::Admin::Stub* Connection::admin() {
  if (!admin_) admin_ = v1::Admin::NewStub(channel_);
  return admin_.get();
}

grpc::health::v1::Health::Stub* Connection::health() {
  if (!health_) health_ = grpc::health::v1::Health::NewStub(channel_);
  return health_.get();
}

v1::RankControl::Stub* Connection::control() {
  if (!control_) control_ = v1::RankControl::NewStub(channel_);
  return control_.get();
}

}  // namespace dcpmerge::ctl
