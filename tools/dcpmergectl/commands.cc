#include "tools/dcpmergectl/commands.h"

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/limits.h"
#include "base/version.h"
#include "common/group_spec.h"
#include "common/join_secret.h"
#include "common/names.h"
#include "dcpmerge/v1/data.grpc.pb.h"
#include "tools/dcpmergectl/cli.h"
#include "tools/dcpmergectl/flags.h"
#include "tools/dcpmergectl/print.h"
#include "tools/dcpmergectl/scales_json.h"

namespace dcpmerge::ctl {
namespace {

bool ValidScale(float s) { return std::isfinite(s) && s > 0.0f; }

// Parses --<flag>=<text> into *out through the name table; usage error else.
template <typename E, size_t N>
int SetEnum(const NamedValue<E> (&table)[N], const char* flag, const std::optional<std::string>& text,
            void (v1::GroupConfig::*set)(E), v1::GroupConfig* g) {
  if (!text.has_value()) return kExitOk;
  E e;
  if (absl::Status st = ParseName(table, flag, *text, &e); !st.ok()) return Usage(std::string(st.message()));
  (g->*set)(e);
  return kExitOk;
}

// Calls an Admin method and prints its answer as a table or as JSON.
template <typename Req, typename Resp>
int Show(Connection& c, const char* call,
         grpc::Status (v1::Admin::Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Req& req,
         Output output, std::string (*table)(const Resp&)) {
  Resp r;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (grpc::Status st = (c.admin()->*method)(&ctx, req, &r); !st.ok()) return ServerError(call, st);
  std::fputs((output == Output::kJson ? ToJson(r) : table(r)).c_str(), stdout);
  return kExitOk;
}

// The join secret or rank token: --join_secret_file, else the environment
// ("" when neither). kExitUsage for an unreadable or empty file.
int LoadJoinCredential(std::string* out) {
  const std::string file = absl::GetFlag(FLAGS_join_secret_file);
  absl::StatusOr<std::string> loaded = LoadJoinSecret(file, "--join_secret_file");
  if (!loaded.ok()) return Usage(std::string(loaded.status().message()));
  if (!file.empty() && loaded->empty()) return Usage(absl::StrCat("--join_secret_file: ", file, " is empty"));
  *out = std::move(*loaded);
  return kExitOk;
}

// The server checks the credential first; past it, a Heartbeat for session
// 0 is answered FAILED_PRECONDITION (rank outside the group) or the group's
// UNAVAILABLE "session_id: 0 of rank R has ended" (unlike a transport's).
bool PassedAuthentication(const grpc::Status& st) {
  return st.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
         (st.error_code() == grpc::StatusCode::UNAVAILABLE && absl::StartsWith(st.error_message(), "session_id: "));
}

int CheckRank(int32_t rank) {
  if (rank >= 0 && rank < kMaxParts) return kExitOk;
  return Usage(absl::StrCat("--rank=", rank, ": must be 0..", kMaxParts - 1));
}

}  // namespace

int ParseOutput(Output* output) {
  const std::string o = absl::AsciiStrToLower(absl::GetFlag(FLAGS_output));
  if (o != "table" && o != "json") return Usage(absl::StrCat("--output=", o, ": not one of table | json"));
  *output = o == "json" || absl::GetFlag(FLAGS_json) ? Output::kJson : Output::kTable;
  return kExitOk;
}

int ParseSetScale(const std::vector<std::string>& args, ScalesInput* in) {
  if (args.size() != 2) return Usage("usage: dcpmergectl set-scale LAYER SCALE");
  int32_t layer;
  if (!absl::SimpleAtoi(args[0], &layer) || layer < 0) {
    return Usage(absl::StrCat("set-scale: LAYER '", args[0], "' is not a non-negative integer"));
  }
  float scale;
  if (!absl::SimpleAtof(args[1], &scale) || !ValidScale(scale)) {
    return Usage(absl::StrCat("set-scale: SCALE '", args[1], "' must be a finite number > 0"));
  }
  in->scales[layer] = scale;
  return kExitOk;
}

int ParseSetScales(const std::vector<std::string>& args, ScalesInput* in) {
  if (!args.empty()) return Usage("usage: dcpmergectl set-scales --file=FILE [--replace] [--default_scale=S]");
  const std::string file = absl::GetFlag(FLAGS_file);
  if (file.empty()) return Usage("set-scales: --file=FILE is required");
  absl::StatusOr<std::string> text = ReadFile(file, "set-scales: --file");
  if (!text.ok()) return Usage(std::string(text.status().message()));
  auto parsed = ParseScalesJson(*text);
  if (!parsed.ok()) {
    return Usage(absl::StrCat("set-scales: invalid scales file ", file, ": ", parsed.status().message()));
  }
  in->scales = std::move(*parsed);
  in->replace = absl::GetFlag(FLAGS_replace);
  if (auto v = absl::GetFlag(FLAGS_default_scale)) {
    if (!ValidScale(*v)) return Usage(absl::StrCat("--default_scale=", *v, ": must be finite and > 0"));
    in->default_scale = *v;
  }
  if (in->scales.empty() && !in->replace && in->default_scale == 0.0f) {
    return Usage(absl::StrCat("set-scales: ", file, " has no layers; nothing to do (use --replace to clear the table)"));
  }
  return kExitOk;
}

int GetConfig(Connection& c, Output output) {
  return Show(c, "GetConfig", &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), output, &ConfigTable);
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
  // Unconfigured: the server's own defaults.
  v1::GroupConfig g = cur.configured() ? cur.config() : DefaultGroupConfig();
  if (auto v = absl::GetFlag(FLAGS_world_size)) g.set_world_size(*v);
  if (auto v = absl::GetFlag(FLAGS_num_heads)) g.set_num_heads(*v);
  if (auto v = absl::GetFlag(FLAGS_head_size)) g.set_head_size(*v);
  if (auto v = absl::GetFlag(FLAGS_max_tokens)) g.set_max_tokens(*v);
  if (auto v = absl::GetFlag(FLAGS_group_size)) g.set_group_size(*v);
  if (auto v = absl::GetFlag(FLAGS_power_of_two_scales)) g.set_power_of_two_scales(*v);
  if (auto v = absl::GetFlag(FLAGS_return_lse)) g.set_return_lse(*v);
  for (int rc : {SetEnum(kDTypeNames, "input_dtype", absl::GetFlag(FLAGS_input_dtype),
                         &v1::GroupConfig::set_input_dtype, &g),
                 SetEnum(kLseBaseNames, "lse_base", absl::GetFlag(FLAGS_lse_base), &v1::GroupConfig::set_lse_base, &g),
                 SetEnum(kLseLayoutNames, "lse_layout", absl::GetFlag(FLAGS_lse_layout),
                         &v1::GroupConfig::set_lse_layout, &g),
                 SetEnum(kOutputModeNames, "output_mode", absl::GetFlag(FLAGS_output_mode),
                         &v1::GroupConfig::set_output_mode, &g),
                 SetEnum(kReturnModeNames, "return_mode", absl::GetFlag(FLAGS_return_mode),
                         &v1::GroupConfig::set_return_mode, &g)}) {
    if (rc != kExitOk) return rc;
  }
  v1::ConfigureRequest req;
  *req.mutable_config() = g;
  if (auto v = absl::GetFlag(FLAGS_default_scale)) {
    if (!ValidScale(*v)) return Usage(absl::StrCat("--default_scale=", *v, ": must be finite and > 0"));
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

int SendScales(Connection& c, const ScalesInput& in) {
  v1::SetScalesRequest req;
  for (const auto& [layer, s] : in.scales) (*req.mutable_layer_scales())[layer] = s;
  req.set_replace(in.replace);
  req.set_default_scale(in.default_scale);
  v1::SetScalesResponse resp;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (grpc::Status st = c.admin()->SetScales(&ctx, req, &resp); !st.ok()) return ServerError("SetScales", st);
  std::printf("scales updated: version %llu (%zu layer(s)%s%s)\n",
              static_cast<unsigned long long>(resp.config_version()), in.scales.size(),
              in.replace ? ", table replaced" : ", merged into the table",
              in.default_scale != 0.0f ? absl::StrCat(", default scale ", in.default_scale).c_str() : "");
  return kExitOk;
}

int Stats(Connection& c, Output output) {
  return Show(c, "GetStats", &v1::Admin::Stub::GetStats, v1::GetStatsRequest(), output, &StatsTable);
}

int Drain(Connection& c) {
  const int64_t wait_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  if (wait_ms < 0) return Usage("--drain_timeout_ms must be >= 0");
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
  // Readiness is the health of the merge service itself (the server's
  // kMergeHealthService).
  const std::string merge_service = v1::MergeData::service_full_name();
  const char* kStatus[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  int statuses[2] = {0, 0};
  const std::string services[2] = {"", merge_service};
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
  std::printf("readiness (\"%s\"): %s\n", merge_service.c_str(), name(statuses[1]));
  if (statuses[0] != grpc::health::v1::HealthCheckResponse::SERVING) return kExitNotMet;
  if (absl::GetFlag(FLAGS_ready) && statuses[1] != grpc::health::v1::HealthCheckResponse::SERVING) {
    return kExitNotMet;
  }
  return kExitOk;
}

int CheckJoin(Connection& c) {
  std::string credential;
  if (int rc = LoadJoinCredential(&credential); rc != kExitOk) return rc;
  // A token acts for its own rank only: ask as that rank unless told
  // otherwise (another rank is the server's to refuse).
  const absl::StatusOr<int32_t> token_rank = RankOfToken(credential);
  const int32_t rank = absl::GetFlag(FLAGS_rank).value_or(token_rank.ok() ? *token_rank : 0);
  if (int rc = CheckRank(rank); rc != kExitOk) return rc;
  // A Heartbeat for session 0, which no rank has: nothing changes.
  auto probe = [&c, rank](const std::string& s) {
    v1::HeartbeatRequest req;
    req.set_rank(rank);
    req.set_session_id(0);
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(c.Deadline());
    if (!s.empty()) ctx.AddMetadata(kJoinSecretMetadataKey, JoinSecretMetadataValue(s));
    return c.control()->Heartbeat(&ctx, req, &resp);
  };
  const grpc::Status st = probe(credential.empty() ? "" : RankCredential(credential, rank));
  if (!PassedAuthentication(st)) {
    return ServerError(absl::StrCat("RankControl.Heartbeat (check-join, rank ", rank, ")"), st);
  }
  if (credential.empty()) {
    std::printf("accepted without a join secret: the server requires none\n");
  } else if (PassedAuthentication(probe(""))) {
    std::printf("accepted, but the server requires no join secret (any caller may join)\n");
  } else {
    std::printf("%s accepted for rank %d\n", token_rank.ok() ? "rank token" : "join secret", rank);
  }
  return kExitOk;
}

int RankTokens(Output output) {
  const std::optional<int32_t> rank = absl::GetFlag(FLAGS_rank);
  const std::optional<int32_t> world_size = absl::GetFlag(FLAGS_world_size);
  if (rank.has_value() == world_size.has_value()) return Usage("rank-token: give --rank=R or --world_size=N (one)");
  if (rank.has_value()) {
    if (int rc = CheckRank(*rank); rc != kExitOk) return rc;
  } else if (*world_size < 1 || *world_size > kMaxParts) {
    return Usage(absl::StrCat("--world_size=", *world_size, ": must be 1..", kMaxParts));
  }
  std::string secret;
  if (int rc = LoadJoinCredential(&secret); rc != kExitOk) return rc;
  if (secret.empty()) {
    return Usage("rank-token: no join secret; give --join_secret_file=FILE or set DCPMERGE_JOIN_SECRET");
  }
  if (RankOfToken(secret).ok()) {
    return Usage("rank-token: --join_secret_file (or DCPMERGE_JOIN_SECRET) holds a rank token, not the group's secret");
  }
  const int32_t first = rank.value_or(0);
  const int32_t end = rank.has_value() ? *rank + 1 : *world_size;
  std::string out;
  for (int32_t r = first; r < end; ++r) {
    const std::string token = RankToken(secret, r);
    if (output == Output::kJson) {
      // A token is [a-z0-9.-] only: nothing to escape.
      absl::StrAppend(&out, r == first ? "{\n" : ",\n", "  \"", r, "\": \"", token, "\"");
    } else {
      absl::StrAppend(&out, rank.has_value() ? "" : absl::StrCat(r, "\t"), token, "\n");
    }
  }
  if (output == Output::kJson) out += "\n}\n";
  std::fputs(out.c_str(), stdout);
  return kExitOk;
}

int Version() {
  std::printf("%s\n", VersionLine("dcpmergectl").c_str());
  return kExitOk;
}

}  // namespace dcpmerge::ctl
