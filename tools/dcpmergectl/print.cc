#include "tools/dcpmergectl/print.h"

#include <cstdio>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/log.h"
#include "common/names.h"
#include "google/protobuf/util/json_util.h"
#include "tools/dcpmergectl/cli.h"

namespace dcpmerge::ctl {
namespace {

// The enum's name (common/names.h), or "unspecified(N)".
template <typename E, size_t N>
std::string Shown(const NamedValue<E> (&table)[N], E value) {
  const absl::string_view name = NameOf(table, value);
  return name.empty() ? absl::StrCat("unspecified(", static_cast<int>(value), ")") : std::string(name);
}

std::string Latency(const char* name, const v1::LatencySummary& s) {
  return absl::StrFormat("  %-8s %10d %10.1f %10.1f %10.1f %10.1f\n", name, s.count(), s.p50_us(), s.p90_us(),
                         s.p99_us(), s.max_us());
}

}  // namespace

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string ConfigTable(const v1::GetConfigResponse& r) {
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
    absl::StrAppendFormat(&out, "%-16s return_mode %s, return_lse %s\n", "return",
                          Shown(kReturnModeNames, g.return_mode()), g.return_lse() ? "true" : "false");
  }
  absl::StrAppendFormat(&out, "%-16s %g\n", "default scale", r.default_scale());
  std::map<int32_t, float> scales(r.layer_scales().begin(), r.layer_scales().end());
  std::vector<std::string> parts;
  for (const auto& [layer, s] : scales) parts.push_back(absl::StrFormat("%d=%g", layer, s));
  absl::StrAppendFormat(&out, "%-16s %s\n", "layer scales", parts.empty() ? "(none)" : absl::StrJoin(parts, " "));
  absl::StrAppendFormat(&out, "%-16s %s\n", "backend", EscapeForLog(r.backend()));
  absl::StrAppendFormat(&out, "%-16s %s\n", "data plane", Shown(kDataPlaneNames, r.data_plane()));
  absl::StrAppendFormat(&out, "%-16s %s (%d of %d ranks joined)\n", "group ready", r.group_ready() ? "yes" : "no",
                        r.members_size(), g.world_size());
  absl::StrAppendFormat(&out, "%-16s %s\n", "draining", r.draining() ? "yes" : "no");
  absl::StrAppendFormat(&out, "%-16s %s (commit %s)\n", "server version",
                        r.server_version().empty() ? "unknown" : EscapeForLog(r.server_version()),
                        r.server_commit().empty() ? "unknown" : EscapeForLog(r.server_commit()));
  if (r.members_size() > 0) {
    absl::StrAppendFormat(&out, "members:\n  %-5s %-24s %-10s %-8s %-20s %s\n", "RANK", "HOST", "DEVICE", "PID",
                          "SESSION", "HEARTBEAT_AGE_MS");
    for (const v1::Member& m : r.members()) {
      absl::StrAppendFormat(&out, "  %-5d %-24s %-10s %-8d %-20d %d\n", m.rank(), EscapeForLog(m.host()),
                            EscapeForLog(m.device()), m.pid(), m.session_id(), m.last_heartbeat_age_ms());
    }
  }
  return out;
}

std::string StatsTable(const v1::GetStatsResponse& r) {
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
    for (const auto& [code, n] : errors) absl::StrAppendFormat(&out, "  %-20s %d\n", EscapeForLog(code), n);
  }
  return out;
}

int ServerError(const std::string& call, const grpc::Status& st) {
  // grpc::StatusCode and absl::StatusCode share their numbers.
  std::string code = absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code()));
  if (code.empty()) code = absl::StrCat("CODE_", static_cast<int>(st.error_code()));
  // Whole: the message is the diagnosis (the table's fields are cut at 128).
  const std::string message = EscapeForLog(st.error_message(), st.error_message().size());
  std::fprintf(stderr, "dcpmergectl: %s failed: %s: %s\n", call.c_str(), code.c_str(), message.c_str());
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    std::fprintf(stderr, "dcpmergectl: hint: give the admin token with --token_file=FILE or "
                         "DCPMERGE_ADMIN_TOKEN\n");
  }
  return kExitServerError;
}

}  // namespace dcpmerge::ctl
