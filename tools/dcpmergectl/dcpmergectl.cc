// dcpmergectl: operator CLI for a dcpmerge server (Admin service +
// grpc.health.v1). `dcpmergectl --help` lists commands, flags and exit codes.
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "common/group_spec.h"
#include "common/names.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tools/dcpmergectl/scales_json.h"

// Global flags.
ABSL_FLAG(std::string, server, "127.0.0.1:50052",
          "Admin listener of the server, host:port (health also works on the rank listener)");
ABSL_FLAG(std::string, token_file, "",
          "File holding the admin bearer token (else env DCPMERGE_ADMIN_TOKEN; never a flag value)");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA that signed the server certificate (enables TLS; any --tls_* flag does)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM client private key (mutual TLS)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Expected server name in its certificate when it differs from the --server host");
ABSL_FLAG(int64_t, deadline_ms, 5000,
          "Deadline for connecting and for each call (drain adds its wait to it)");
// Command flags.
ABSL_FLAG(bool, json, false, "get-config, stats: print JSON (protobuf JSON mapping) instead of a table");
ABSL_FLAG(std::optional<int32_t>, world_size, std::nullopt, "configure: DCP ranks N (1..64)");
ABSL_FLAG(std::optional<int32_t>, num_heads, std::nullopt, "configure: heads H");
ABSL_FLAG(std::optional<int32_t>, head_size, std::nullopt, "configure: head size D");
ABSL_FLAG(std::optional<int64_t>, max_tokens, std::nullopt, "configure: largest tokens per step T");
ABSL_FLAG(std::optional<std::string>, input_dtype, std::nullopt, "configure: bf16 | fp16 | fp32");
ABSL_FLAG(std::optional<std::string>, lse_base, std::nullopt, "configure: e | 2");
ABSL_FLAG(std::optional<std::string>, lse_layout, std::nullopt, "configure: heads_tokens | tokens_heads");
ABSL_FLAG(std::optional<std::string>, output_mode, std::nullopt,
          "configure: fp8_per_tensor | fp8_per_token | fp8_per_group | passthrough");
ABSL_FLAG(std::optional<int32_t>, group_size, std::nullopt, "configure: fp8_per_group group size, 64 | 128");
ABSL_FLAG(std::optional<bool>, power_of_two_scales, std::nullopt,
          "configure: round dynamic scales up to powers of two");
ABSL_FLAG(std::optional<std::string>, return_mode, std::nullopt, "configure: full | head_slice");
ABSL_FLAG(std::optional<bool>, return_lse, std::nullopt, "configure: also return the merged LSE");
ABSL_FLAG(std::optional<float>, default_scale, std::nullopt,
          "configure, set-scales: static FP8 scale for layers without their own (finite, > 0)");
ABSL_FLAG(std::string, file, "", "set-scales: JSON file {\"<layer>\": <scale>, ...}");
ABSL_FLAG(bool, replace, false, "set-scales: remove layers not in the file (they fall back to the default)");
ABSL_FLAG(int64_t, drain_timeout_ms, 0, "drain: how long the server waits for steps in flight (0: its --drain_timeout_ms)");
ABSL_FLAG(bool, ready, false, "health: also require merge readiness (exit 4 when not ready)");

namespace dcpmerge::ctl {
namespace {

enum ExitCode {
  kExitOk = 0,
  kExitServerError = 1,
  kExitUsage = 2,
  kExitUnreachable = 3,
  kExitNotMet = 4,
};

constexpr char kMergeHealthService[] = "dcpmerge.v1.MergeData";

constexpr char kUsage[] = R"(dcpmergectl: operate a dcpmerge server (Admin service + gRPC health).

usage: dcpmergectl [FLAGS] COMMAND [ARGS]

commands:
  get-config [--json]          configuration, scales, members, readiness
  configure [--FIELD=VALUE...] replace the group configuration; fields not
                               given keep the server's current values (or the
                               server's defaults when it is unconfigured)
  set-scale LAYER SCALE        set one layer's static FP8 scale (merged in)
  set-scales --file=FILE [--replace] [--default_scale=S]
                               set scales from a JSON object {"<layer>": <scale>}
  stats [--json]               step counts, bytes, latency per phase, errors
  drain [--drain_timeout_ms=MS]
                               stop new steps, wait for steps in flight
  health [--ready]             liveness ("") and merge readiness
                               ("dcpmerge.v1.MergeData"); no token needed

The admin token is read from --token_file, else from the environment variable
DCPMERGE_ADMIN_TOKEN; it is never taken from a flag value. Scale and config
changes apply at the next step boundary (steps in flight keep their version).

exit codes:
  0  ok
  1  the server answered with an error (the gRPC code and message are printed,
     e.g. UNAUTHENTICATED without a token, PERMISSION_DENIED with a wrong one)
  2  usage error or invalid input (unknown flag or command, bad value,
     unreadable or invalid scales file, unreadable token or TLS file)
  3  server unreachable within --deadline_ms (connection or TLS handshake)
  4  answered, but the condition was not met: health --ready while not
     ready (or liveness not SERVING); drain timed out with steps in flight

flags:
)";

// Flags that every command accepts.
const std::set<std::string>& GlobalFlags() {
  static const auto* s = new std::set<std::string>{
      "server", "token_file", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name",
      "deadline_ms"};
  return *s;
}

// Command -> its own flags.
const std::map<std::string, std::set<std::string>>& Commands() {
  static const auto* m = new std::map<std::string, std::set<std::string>>{
      {"get-config", {"json"}},
      {"configure",
       {"world_size", "num_heads", "head_size", "max_tokens", "input_dtype", "lse_base", "lse_layout",
        "output_mode", "group_size", "power_of_two_scales", "return_mode", "return_lse",
        "default_scale"}},
      {"set-scale", {}},
      {"set-scales", {"file", "replace", "default_scale"}},
      {"stats", {"json"}},
      {"drain", {"drain_timeout_ms"}},
      {"health", {"ready"}},
  };
  return *m;
}

bool IsOurFlag(const absl::CommandLineFlag& f) {
  return absl::StrContains(f.Filename(), "dcpmergectl");
}

void PrintHelp() {
  std::string out = kUsage;
  std::map<std::string, const absl::CommandLineFlag*> sorted;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsOurFlag(*flag)) sorted[std::string(name)] = flag;
  }
  for (const auto& [name, flag] : sorted) {
    std::string def = flag->DefaultValue();
    absl::StrAppend(&out, "  --", name, "  ", flag->Help());
    if (!def.empty()) absl::StrAppend(&out, " (default: ", def, ")");
    absl::StrAppend(&out, "\n");
  }
  std::fputs(out.c_str(), stdout);
}

// Parses argv: flags (--name=value, --name value, --bool, --nobool) anywhere,
// the rest positional. Never exits; errors are UsageError. Returns the
// positional arguments and the names of the flags given.
bool ParseArgs(int argc, char** argv, std::vector<std::string>* positional, std::set<std::string>* given,
               bool* help, std::string* error) {
  const auto all = absl::GetAllFlags();
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (only_positional || arg.size() < 2 || arg[0] != '-') {
      positional->push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    absl::string_view body = arg;
    if (!absl::ConsumePrefix(&body, "--")) absl::ConsumePrefix(&body, "-");
    std::string name(body), value;
    bool has_value = false;
    if (const size_t eq = body.find('='); eq != absl::string_view::npos) {
      name = std::string(body.substr(0, eq));
      value = std::string(body.substr(eq + 1));
      has_value = true;
    }
    if (name == "help" || name == "h" || name == "helpfull") {
      *help = true;
      continue;
    }
    auto it = all.find(name);
    bool negated = false;
    if ((it == all.end() || !IsOurFlag(*it->second)) && absl::StartsWith(name, "no") && !has_value) {
      auto neg = all.find(name.substr(2));
      if (neg != all.end() && IsOurFlag(*neg->second) &&
          (neg->second->IsOfType<bool>() || neg->second->IsOfType<std::optional<bool>>())) {
        it = neg;
        negated = true;
        name = name.substr(2);
      }
    }
    if (it == all.end() || !IsOurFlag(*it->second)) {
      *error = absl::StrCat("unknown flag --", name, " (see --help)");
      return false;
    }
    absl::CommandLineFlag* flag = it->second;
    const bool is_bool = flag->IsOfType<bool>() || flag->IsOfType<std::optional<bool>>();
    if (!has_value) {
      if (is_bool) {
        value = negated ? "false" : "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        *error = absl::StrCat("flag --", name, " needs a value");
        return false;
      }
    }
    std::string err;
    if (!flag->ParseFrom(value, &err)) {
      *error = absl::StrCat("--", name, "=", value, ": ", err);
      return false;
    }
    given->insert(name);
  }
  return true;
}

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",          "CANCELLED",         "UNKNOWN",          "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND",   "ALREADY_EXISTS",    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",     "OUT_OF_RANGE",      "UNIMPLEMENTED",    "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS",   "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  if (c >= 0 && c < static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) return kNames[c];
  return absl::StrCat("CODE_", c);
}

int ServerError(const std::string& call, const grpc::Status& st) {
  std::fprintf(stderr, "dcpmergectl: %s failed: %s: %s\n", call.c_str(), CodeName(st.error_code()).c_str(),
               st.error_message().c_str());
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    std::fprintf(stderr, "dcpmergectl: hint: give the admin token with --token_file=FILE or "
                         "DCPMERGE_ADMIN_TOKEN\n");
  }
  return kExitServerError;
}

// Reads `path` into *out; on failure prints "dcpmergectl: <what>: cannot
// read ..." and returns false.
bool ReadInput(const std::string& path, const std::string& what, std::string* out, std::string* error) {
  absl::StatusOr<std::string> text = ReadFile(path, what);
  if (!text.ok()) {
    *error = std::string(text.status().message());
    return false;
  }
  *out = std::move(*text);
  return true;
}

// ------------------------------------------------------------ enum names ---
// The enum's name (common/names.h), or "unspecified(N)".
template <typename E, size_t N>
std::string Shown(const NamedValue<E> (&table)[N], E value) {
  const absl::string_view name = NameOf(table, value);
  return name.empty() ? absl::StrCat("unspecified(", static_cast<int>(value), ")") : std::string(name);
}

bool ValidScale(float s) { return std::isfinite(s) && s > 0.0f; }

// ------------------------------------------------------------ connection ---
class Connection {
 public:
  // Returns an exit code != 0 on failure (message printed).
  int Open() {
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

  // Loads the token (file, else env). Exit code != 0 on failure.
  int LoadToken() {
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

  std::chrono::system_clock::time_point Deadline(int64_t extra_ms = 0) const {
    return std::chrono::system_clock::now() +
           std::chrono::milliseconds(absl::GetFlag(FLAGS_deadline_ms) + extra_ms);
  }

  void Prepare(grpc::ClientContext* ctx, int64_t extra_ms = 0) const {
    ctx->set_deadline(Deadline(extra_ms));
    if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
  }

  v1::Admin::Stub* admin() {
    if (!admin_) admin_ = v1::Admin::NewStub(channel_);
    return admin_.get();
  }
  grpc::health::v1::Health::Stub* health() {
    if (!health_) health_ = grpc::health::v1::Health::NewStub(channel_);
    return health_.get();
  }

  static int Usage(const std::string& message) {
    std::fprintf(stderr, "dcpmergectl: %s\n", message.c_str());
    return kExitUsage;
  }

 private:
  std::string target_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// --------------------------------------------------------------- commands ---
int GetConfig(Connection& c) {
  v1::GetConfigResponse r;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (grpc::Status st = c.admin()->GetConfig(&ctx, v1::GetConfigRequest(), &r); !st.ok()) {
    return ServerError("GetConfig", st);
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::fputs(ToJson(r).c_str(), stdout);
    return kExitOk;
  }
  const v1::GroupConfig& g = r.config();
  std::string out;
  absl::StrAppendFormat(&out, "%-16s %s\n", "configured", r.configured() ? "yes" : "no");
  absl::StrAppendFormat(&out, "%-16s %d (hash 0x%016x)\n", "config version", r.config_version(), r.config_hash());
  if (r.configured()) {
    absl::StrAppendFormat(&out, "%-16s world_size %d, num_heads %d, head_size %d, max_tokens %d\n", "shape",
                          g.world_size(), g.num_heads(), g.head_size(), g.max_tokens());
    absl::StrAppendFormat(&out, "%-16s input_dtype %s, lse_base %s, lse_layout %s\n", "input",
                          Shown(kDTypeNames, g.input_dtype()), Shown(kLseBaseNames, g.lse_base()),
                          Shown(kLseLayoutNames, g.lse_layout()));
    absl::StrAppendFormat(&out, "%-16s output_mode %s, group_size %d, power_of_two_scales %s\n", "output",
                          Shown(kOutputModeNames, g.output_mode()), g.group_size(),
                          g.power_of_two_scales() ? "true" : "false");
    absl::StrAppendFormat(&out, "%-16s return_mode %s, return_lse %s\n", "return", Shown(kReturnModeNames, g.return_mode()),
                          g.return_lse() ? "true" : "false");
  }
  absl::StrAppendFormat(&out, "%-16s %g\n", "default scale", r.default_scale());
  std::map<int32_t, float> scales(r.layer_scales().begin(), r.layer_scales().end());
  std::vector<std::string> parts;
  for (const auto& [layer, s] : scales) parts.push_back(absl::StrFormat("%d=%g", layer, s));
  absl::StrAppendFormat(&out, "%-16s %s\n", "layer scales", parts.empty() ? "(none)" : absl::StrJoin(parts, " "));
  absl::StrAppendFormat(&out, "%-16s %s\n", "backend", r.backend());
  absl::StrAppendFormat(&out, "%-16s %s\n", "data plane", Shown(kDataPlaneNames, r.data_plane()));
  absl::StrAppendFormat(&out, "%-16s %s (%d of %d ranks joined)\n", "group ready", r.group_ready() ? "yes" : "no",
                        r.members_size(), g.world_size());
  absl::StrAppendFormat(&out, "%-16s %s\n", "draining", r.draining() ? "yes" : "no");
  if (r.members_size() > 0) {
    absl::StrAppendFormat(&out, "members:\n  %-5s %-24s %-10s %-8s %-20s %s\n", "RANK", "HOST", "DEVICE", "PID",
                          "SESSION", "HEARTBEAT_AGE_MS");
    for (const v1::Member& m : r.members()) {
      absl::StrAppendFormat(&out, "  %-5d %-24s %-10s %-8d %-20d %d\n", m.rank(), m.host(), m.device(), m.pid(),
                            m.session_id(), m.last_heartbeat_age_ms());
    }
  }
  std::fputs(out.c_str(), stdout);
  return kExitOk;
}

int Configure(Connection& c) {
  // Start from the server's current configuration so that only the flags
  // given change.
  v1::GetConfigResponse cur;
  {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    if (grpc::Status st = c.admin()->GetConfig(&ctx, v1::GetConfigRequest(), &cur); !st.ok()) {
      return ServerError("GetConfig", st);
    }
  }
  v1::GroupConfig g;
  if (cur.configured()) {
    g = cur.config();
  } else {  // the server's own defaults for unconfigured starts
    g = DefaultGroupConfig();
  }
  if (auto v = absl::GetFlag(FLAGS_world_size)) g.set_world_size(*v);
  if (auto v = absl::GetFlag(FLAGS_num_heads)) g.set_num_heads(*v);
  if (auto v = absl::GetFlag(FLAGS_head_size)) g.set_head_size(*v);
  if (auto v = absl::GetFlag(FLAGS_max_tokens)) g.set_max_tokens(*v);
  if (auto v = absl::GetFlag(FLAGS_group_size)) g.set_group_size(*v);
  if (auto v = absl::GetFlag(FLAGS_power_of_two_scales)) g.set_power_of_two_scales(*v);
  if (auto v = absl::GetFlag(FLAGS_return_lse)) g.set_return_lse(*v);
  if (auto v = absl::GetFlag(FLAGS_input_dtype)) {
    v1::DType e;
    if (absl::Status st = ParseName(kDTypeNames, "input_dtype", *v, &e); !st.ok()) {
      return Connection::Usage(std::string(st.message()));
    }
    g.set_input_dtype(e);
  }
  if (auto v = absl::GetFlag(FLAGS_lse_base)) {
    v1::LseBase e;
    if (absl::Status st = ParseName(kLseBaseNames, "lse_base", *v, &e); !st.ok()) {
      return Connection::Usage(std::string(st.message()));
    }
    g.set_lse_base(e);
  }
  if (auto v = absl::GetFlag(FLAGS_lse_layout)) {
    v1::LseLayout e;
    if (absl::Status st = ParseName(kLseLayoutNames, "lse_layout", *v, &e); !st.ok()) {
      return Connection::Usage(std::string(st.message()));
    }
    g.set_lse_layout(e);
  }
  if (auto v = absl::GetFlag(FLAGS_output_mode)) {
    v1::OutputMode e;
    if (absl::Status st = ParseName(kOutputModeNames, "output_mode", *v, &e); !st.ok()) {
      return Connection::Usage(std::string(st.message()));
    }
    g.set_output_mode(e);
  }
  if (auto v = absl::GetFlag(FLAGS_return_mode)) {
    v1::ReturnMode e;
    if (absl::Status st = ParseName(kReturnModeNames, "return_mode", *v, &e); !st.ok()) {
      return Connection::Usage(std::string(st.message()));
    }
    g.set_return_mode(e);
  }
  v1::ConfigureRequest req;
  *req.mutable_config() = g;
  if (auto v = absl::GetFlag(FLAGS_default_scale)) {
    if (!ValidScale(*v)) return Connection::Usage(absl::StrCat("--default_scale=", *v, ": must be finite and > 0"));
    req.set_default_scale(*v);
  }
  v1::ConfigureResponse resp;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (grpc::Status st = c.admin()->Configure(&ctx, req, &resp); !st.ok()) return ServerError("Configure", st);
  std::printf("configured: version %llu, hash 0x%016llx (world_size %d, num_heads %d, head_size %d, "
              "max_tokens %lld)\n",
              static_cast<unsigned long long>(resp.config_version()),
              static_cast<unsigned long long>(resp.config_hash()), g.world_size(), g.num_heads(), g.head_size(),
              static_cast<long long>(g.max_tokens()));
  return kExitOk;
}

int SendScales(Connection& c, const std::map<int32_t, float>& scales, bool replace, float default_scale) {
  v1::SetScalesRequest req;
  for (const auto& [layer, s] : scales) (*req.mutable_layer_scales())[layer] = s;
  req.set_replace(replace);
  req.set_default_scale(default_scale);
  v1::SetScalesResponse resp;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (grpc::Status st = c.admin()->SetScales(&ctx, req, &resp); !st.ok()) return ServerError("SetScales", st);
  std::printf("scales updated: version %llu (%zu layer(s)%s%s)\n",
              static_cast<unsigned long long>(resp.config_version()), scales.size(),
              replace ? ", table replaced" : ", merged into the table",
              default_scale != 0.0f ? absl::StrCat(", default scale ", default_scale).c_str() : "");
  return kExitOk;
}

// Validated before connecting: invalid input is exit 2 even when the server
// is down.
struct ScalesInput {
  std::map<int32_t, float> scales;
  bool replace = false;
  float default_scale = 0.0f;
};

int ParseSetScale(const std::vector<std::string>& args, ScalesInput* in) {
  if (args.size() != 2) return Connection::Usage("usage: dcpmergectl set-scale LAYER SCALE");
  int32_t layer;
  if (!absl::SimpleAtoi(args[0], &layer) || layer < 0) {
    return Connection::Usage(absl::StrCat("set-scale: LAYER '", args[0], "' is not a non-negative integer"));
  }
  float scale;
  if (!absl::SimpleAtof(args[1], &scale) || !ValidScale(scale)) {
    return Connection::Usage(absl::StrCat("set-scale: SCALE '", args[1], "' must be a finite number > 0"));
  }
  in->scales[layer] = scale;
  return kExitOk;
}

int ParseSetScales(const std::vector<std::string>& args, ScalesInput* in) {
  if (!args.empty()) return Connection::Usage("usage: dcpmergectl set-scales --file=FILE [--replace] [--default_scale=S]");
  const std::string file = absl::GetFlag(FLAGS_file);
  if (file.empty()) return Connection::Usage("set-scales: --file=FILE is required");
  std::string text, error;
  if (!ReadInput(file, "set-scales: --file", &text, &error)) return Connection::Usage(error);
  auto parsed = ParseScalesJson(text);
  if (!parsed.ok()) {
    return Connection::Usage(absl::StrCat("set-scales: invalid scales file ", file, ": ", parsed.status().message()));
  }
  in->scales = std::move(*parsed);
  in->replace = absl::GetFlag(FLAGS_replace);
  if (auto v = absl::GetFlag(FLAGS_default_scale)) {
    if (!ValidScale(*v)) return Connection::Usage(absl::StrCat("--default_scale=", *v, ": must be finite and > 0"));
    in->default_scale = *v;
  }
  if (in->scales.empty() && !in->replace && in->default_scale == 0.0f) {
    return Connection::Usage(absl::StrCat("set-scales: ", file,
                                          " has no layers; nothing to do (use --replace to clear the table)"));
  }
  return kExitOk;
}

std::string Latency(const char* name, const v1::LatencySummary& s) {
  return absl::StrFormat("  %-8s %10d %10.1f %10.1f %10.1f %10.1f\n", name, s.count(), s.p50_us(), s.p90_us(),
                         s.p99_us(), s.max_us());
}

int Stats(Connection& c) {
  v1::GetStatsResponse r;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (grpc::Status st = c.admin()->GetStats(&ctx, v1::GetStatsRequest(), &r); !st.ok()) {
    return ServerError("GetStats", st);
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::fputs(ToJson(r).c_str(), stdout);
    return kExitOk;
  }
  std::string out;
  absl::StrAppendFormat(&out, "%-16s %d\n", "steps ok", r.steps_ok());
  absl::StrAppendFormat(&out, "%-16s %d\n", "steps failed", r.steps_failed());
  absl::StrAppendFormat(&out, "%-16s %d\n", "steps in flight", r.steps_in_flight());
  absl::StrAppendFormat(&out, "%-16s %d\n", "bytes in", r.bytes_in());
  absl::StrAppendFormat(&out, "%-16s %d\n", "bytes out", r.bytes_out());
  absl::StrAppendFormat(&out, "%-16s %d\n", "fp8 saturated", r.fp8_saturated());
  absl::StrAppendFormat(&out, "latency (us, recent window):\n  %-8s %10s %10s %10s %10s %10s\n", "phase", "count",
                        "p50", "p90", "p99", "max");
  out += Latency("receive", r.receive());
  out += Latency("merge", r.merge());
  out += Latency("send", r.send());
  out += Latency("total", r.total());
  std::map<std::string, uint64_t> errors(r.errors_by_code().begin(), r.errors_by_code().end());
  if (errors.empty()) {
    out += "errors by code:   (none)\n";
  } else {
    out += "errors by code:\n";
    for (const auto& [code, n] : errors) absl::StrAppendFormat(&out, "  %-20s %d\n", code, n);
  }
  std::fputs(out.c_str(), stdout);
  return kExitOk;
}

int Drain(Connection& c) {
  const int64_t wait_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  if (wait_ms < 0) return Connection::Usage("--drain_timeout_ms must be >= 0");
  v1::DrainRequest req;
  req.set_timeout_ms(wait_ms);
  v1::DrainResponse r;
  grpc::ClientContext ctx;
  // The server's own default wait is unknown here: allow up to 10 minutes.
  c.Prepare(&ctx, wait_ms > 0 ? wait_ms : 600000);
  if (grpc::Status st = c.admin()->Drain(&ctx, req, &r); !st.ok()) return ServerError("Drain", st);
  std::printf("drained: %s, steps in flight: %llu\n", r.drained() ? "yes" : "no (timed out)",
              static_cast<unsigned long long>(r.steps_in_flight()));
  std::printf("new steps now fail with UNAVAILABLE \"server draining\" until the next Configure\n");
  return r.drained() ? kExitOk : kExitNotMet;
}

int Health(Connection& c) {
  const char* kStatus[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  int statuses[2] = {0, 0};
  const std::string services[2] = {"", kMergeHealthService};
  for (int i = 0; i < 2; ++i) {
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(services[i]);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(c.Deadline());
    if (grpc::Status st = c.health()->Check(&ctx, req, &resp); !st.ok()) {
      return ServerError(absl::StrCat("Health.Check(\"", services[i], "\")"), st);
    }
    statuses[i] = resp.status();
  }
  auto name = [&](int s) { return s >= 0 && s < 4 ? kStatus[s] : "?"; };
  std::printf("liveness  (\"\"): %s\n", name(statuses[0]));
  std::printf("readiness (\"%s\"): %s\n", kMergeHealthService, name(statuses[1]));
  if (statuses[0] != grpc::health::v1::HealthCheckResponse::SERVING) return kExitNotMet;
  if (absl::GetFlag(FLAGS_ready) && statuses[1] != grpc::health::v1::HealthCheckResponse::SERVING) {
    return kExitNotMet;
  }
  return kExitOk;
}

int Main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::set<std::string> given;
  bool help = false;
  std::string error;
  if (!ParseArgs(argc, argv, &positional, &given, &help, &error)) {
    return Connection::Usage(error);
  }
  if (help) {
    PrintHelp();
    return kExitOk;
  }
  if (positional.empty()) {
    std::fputs("dcpmergectl: missing COMMAND (see --help)\n", stderr);
    return kExitUsage;
  }
  const std::string command = positional[0];
  positional.erase(positional.begin());
  auto cmd = Commands().find(command);
  if (cmd == Commands().end()) return Connection::Usage(absl::StrCat("unknown command '", command, "' (see --help)"));
  for (const std::string& f : given) {
    if (!GlobalFlags().count(f) && !cmd->second.count(f)) {
      return Connection::Usage(absl::StrCat("--", f, " does not apply to '", command, "' (see --help)"));
    }
  }
  // Validate local input before touching the network.
  ScalesInput scales;
  if (command == "set-scale") {
    if (int rc = ParseSetScale(positional, &scales); rc != kExitOk) return rc;
  } else if (command == "set-scales") {
    if (int rc = ParseSetScales(positional, &scales); rc != kExitOk) return rc;
  } else if (!positional.empty()) {
    return Connection::Usage(absl::StrCat("'", command, "' takes no arguments, got '", positional[0], "'"));
  }
  Connection c;
  if (command != "health") {
    if (int rc = c.LoadToken(); rc != kExitOk) return rc;
  }
  if (int rc = c.Open(); rc != kExitOk) return rc;
  if (command == "get-config") return GetConfig(c);
  if (command == "configure") return Configure(c);
  if (command == "set-scale" || command == "set-scales") {
    return SendScales(c, scales.scales, scales.replace, scales.default_scale);
  }
  if (command == "stats") return Stats(c);
  if (command == "drain") return Drain(c);
  return Health(c);
}

}  // namespace
}  // namespace dcpmerge::ctl

int main(int argc, char** argv) { return dcpmerge::ctl::Main(argc, argv); }
