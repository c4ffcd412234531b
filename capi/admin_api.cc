// The Admin service in the C ABI: a channel, the bearer token (re-read from
// its file before every call, so a rotated token is picked up) and per-call
// deadlines, as dcpmergectl does (tools/dcpmergectl/connection.cc).
#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/grpc_status.h"
#include "capi/dcpmerge_c.h"
#include "capi/json.h"
#include "capi/status.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

struct dcpmerge_admin {
  std::string target;
  std::string token;
  std::string token_file;
  int64_t deadline_ms = 10000;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<dcpmerge::v1::Admin::Stub> stub;
};

namespace dcpmerge::capi {
namespace {

absl::Status Open(const dcpmerge_admin_options* c, dcpmerge_admin** out) {
  if (absl::Status s = NotNull(out, "admin"); !s.ok()) return s;
  *out = nullptr;
  if (absl::Status s = NotNull(c, "options"); !s.ok()) return s;
  if (absl::Status s = CheckStructSize(c->struct_size, sizeof(*c), "dcpmerge_admin_options"); !s.ok()) return s;
  auto a = std::make_unique<dcpmerge_admin>();
  a->target = Str(c->target);
  if (a->target.empty()) return absl::InvalidArgumentError("target: empty");
  a->token = Str(c->token);
  a->token_file = Str(c->token_file);
  if (c->deadline_ms > 0) a->deadline_ms = c->deadline_ms;
  const std::string ca = Str(c->tls_ca_file), cert = Str(c->tls_cert_file), key = Str(c->tls_key_file),
                    name = Str(c->tls_server_name);
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!ca.empty() || !cert.empty() || !key.empty()) {
    if (cert.empty() != key.empty()) {
      return absl::InvalidArgumentError("tls_cert_file and tls_key_file: give both or neither");
    }
    grpc::SslCredentialsOptions ssl;
    if (!ca.empty()) {
      auto text = ReadFile(ca, "tls_ca_file");
      if (!text.ok()) return text.status();
      ssl.pem_root_certs = *text;
    }
    if (!cert.empty()) {
      auto cert_text = ReadFile(cert, "tls_cert_file");
      if (!cert_text.ok()) return cert_text.status();
      auto key_text = ReadFile(key, "tls_key_file");
      if (!key_text.ok()) return key_text.status();
      ssl.pem_cert_chain = *cert_text;
      ssl.pem_private_key = *key_text;
    }
    creds = grpc::SslCredentials(ssl);
    if (!name.empty()) args.SetSslTargetNameOverride(name);
  } else {
    if (!name.empty()) return absl::InvalidArgumentError("tls_server_name needs TLS (tls_ca_file)");
    creds = grpc::InsecureChannelCredentials();
  }
  // One attempt per call: an unreachable server is reported, not retried.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  a->channel = grpc::CreateCustomChannel(a->target, creds, args);
  a->stub = v1::Admin::NewStub(a->channel);
  *out = a.release();
  return absl::OkStatus();
}

// Deadline and bearer token for one call.
absl::Status Prepare(const dcpmerge_admin* a, grpc::ClientContext* ctx, int64_t extra_ms = 0) {
  if (a == nullptr || a->stub == nullptr) return absl::InvalidArgumentError("admin: null handle");
  std::string token = a->token;
  if (!a->token_file.empty()) {
    auto text = ReadFile(a->token_file, "token_file");
    if (!text.ok()) return text.status();
    token = *text;
    absl::StripTrailingAsciiWhitespace(&token);
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("token_file: ", a->token_file, " is empty"));
  }
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(a->deadline_ms + extra_ms));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  return absl::OkStatus();
}

// Calls `method` and returns its answer as JSON.
template <typename Req, typename Resp>
absl::Status CallJson(dcpmerge_admin* a,
                      grpc::Status (v1::Admin::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                      char** json) {
  if (absl::Status s = NotNull(json, "json"); !s.ok()) return s;
  *json = nullptr;
  grpc::ClientContext ctx;
  if (absl::Status s = Prepare(a, &ctx); !s.ok()) return s;
  Resp r;
  if (absl::Status s = FromGrpcStatus((a->stub.get()->*method)(&ctx, Req(), &r)); !s.ok()) return s;
  return ToJson(r, json);
}

absl::Status SetScales(dcpmerge_admin* a, const int32_t* layers, const float* scales, uint64_t n, int32_t replace,
                       float default_scale, uint64_t* version) {
  if (n > 0 && (layers == nullptr || scales == nullptr)) {
    return absl::InvalidArgumentError("layers / scales: null pointer with n > 0");
  }
  v1::SetScalesRequest req;
  for (uint64_t i = 0; i < n; ++i) (*req.mutable_layer_scales())[layers[i]] = scales[i];
  req.set_replace(replace != 0);
  req.set_default_scale(default_scale);
  grpc::ClientContext ctx;
  if (absl::Status s = Prepare(a, &ctx); !s.ok()) return s;
  v1::SetScalesResponse resp;
  if (absl::Status s = FromGrpcStatus(a->stub->SetScales(&ctx, req, &resp)); !s.ok()) return s;
  if (version != nullptr) *version = resp.config_version();
  return absl::OkStatus();
}

absl::Status Configure(dcpmerge_admin* a, const char* json, float default_scale, uint64_t* version,
                       uint64_t* hash) {
  if (absl::Status s = NotNull(json, "group_config_json"); !s.ok()) return s;
  v1::ConfigureRequest req;
  if (absl::Status parsed = FromJson(json, req.mutable_config()); !parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", parsed.message()));
  }
  req.set_default_scale(default_scale);
  grpc::ClientContext ctx;
  if (absl::Status s = Prepare(a, &ctx); !s.ok()) return s;
  v1::ConfigureResponse resp;
  if (absl::Status s = FromGrpcStatus(a->stub->Configure(&ctx, req, &resp)); !s.ok()) return s;
  if (version != nullptr) *version = resp.config_version();
  if (hash != nullptr) *hash = resp.config_hash();
  return absl::OkStatus();
}

absl::Status Drain(dcpmerge_admin* a, int64_t timeout_ms, int32_t* drained, uint64_t* in_flight) {
  if (timeout_ms < 0) return absl::InvalidArgumentError("timeout_ms: must be >= 0");
  v1::DrainRequest req;
  req.set_timeout_ms(timeout_ms);
  grpc::ClientContext ctx;
  // The server's own default wait is unknown here: allow up to 10 minutes.
  if (absl::Status s = Prepare(a, &ctx, timeout_ms > 0 ? timeout_ms : 600000); !s.ok()) return s;
  v1::DrainResponse resp;
  if (absl::Status s = FromGrpcStatus(a->stub->Drain(&ctx, req, &resp)); !s.ok()) return s;
  if (drained != nullptr) *drained = resp.drained() ? 1 : 0;
  if (in_flight != nullptr) *in_flight = resp.steps_in_flight();
  return absl::OkStatus();
}

}  // namespace
}  // namespace dcpmerge::capi

using dcpmerge::capi::Report;

extern "C" {

int32_t dcpmerge_admin_open(const dcpmerge_admin_options* options, dcpmerge_admin** admin) {
  return Report(dcpmerge::capi::Open(options, admin));
}

void dcpmerge_admin_close(dcpmerge_admin* admin) { delete admin; }

int32_t dcpmerge_admin_get_config_json(dcpmerge_admin* admin, char** json) {
  return Report(dcpmerge::capi::CallJson(admin, &dcpmerge::v1::Admin::Stub::GetConfig, json));
}

int32_t dcpmerge_admin_get_stats_json(dcpmerge_admin* admin, char** json) {
  return Report(dcpmerge::capi::CallJson(admin, &dcpmerge::v1::Admin::Stub::GetStats, json));
}

int32_t dcpmerge_admin_set_scales(dcpmerge_admin* admin, const int32_t* layers, const float* scales, uint64_t n,
                                  int32_t replace, float default_scale, uint64_t* config_version) {
  return Report(dcpmerge::capi::SetScales(admin, layers, scales, n, replace, default_scale, config_version));
}

int32_t dcpmerge_admin_configure_json(dcpmerge_admin* admin, const char* group_config_json, float default_scale,
                                      uint64_t* config_version, uint64_t* config_hash) {
  return Report(dcpmerge::capi::Configure(admin, group_config_json, default_scale, config_version, config_hash));
}

int32_t dcpmerge_admin_drain(dcpmerge_admin* admin, int64_t timeout_ms, int32_t* drained,
                             uint64_t* steps_in_flight) {
  return Report(dcpmerge::capi::Drain(admin, timeout_ms, drained, steps_in_flight));
}

}  // extern "C"
