#include "tools/dcpmergectl/cli.h"

#include <cstdio>
#include <map>
#include <optional>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "tools/dcpmergectl/flags.h"

namespace dcpmerge::ctl {
namespace {

constexpr char kIntro[] = R"(dcpmergectl: operate a dcpmerge server (Admin service + gRPC health).

usage: dcpmergectl [FLAGS] COMMAND [ARGS]
       dcpmergectl help [COMMAND]      dcpmergectl COMMAND --help

commands:
)";

constexpr char kNotes[] = R"(
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
)";

bool IsOurFlag(const absl::CommandLineFlag& f) { return absl::StrContains(f.Filename(), "dcpmergectl"); }

bool IsBool(const absl::CommandLineFlag& f) { return f.IsOfType<bool>() || f.IsOfType<std::optional<bool>>(); }

std::string FlagLine(const absl::CommandLineFlag& flag) {
  std::string line = absl::StrCat("  --", flag.Name(), "  ", flag.Help());
  const std::string def = flag.DefaultValue();
  if (!def.empty()) absl::StrAppend(&line, " (default: ", def, ")");
  return line + "\n";
}

// name -> flag, ours only, sorted.
std::map<std::string, const absl::CommandLineFlag*> OurFlags() {
  std::map<std::string, const absl::CommandLineFlag*> sorted;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsOurFlag(*flag)) sorted[std::string(name)] = flag;
  }
  return sorted;
}

}  // namespace

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"get-config", "", "configuration, scales, members, readiness",
       "Prints the server's configuration, its scale table, the joined members and\n"
       "whether the group is ready; with --output=json (or -o json, --json) the\n"
       "protobuf JSON mapping of Admin.GetConfig's answer.",
       {"output", "json"}, true, true},
      {"configure", "[--FIELD=VALUE...]", "replace the group configuration",
       "Replaces the group configuration. Fields not given keep the server's\n"
       "current values (or the server's defaults when it is unconfigured). A\n"
       "change of shape drops every member: the ranks join again. With no\n"
       "flags it applies the current configuration again (undoes a drain).",
       {"world_size", "num_heads", "head_size", "max_tokens", "input_dtype", "lse_base", "lse_layout",
        "output_mode", "group_size", "power_of_two_scales", "return_mode", "return_lse", "default_scale"},
       true, true},
      {"set-scale", "LAYER SCALE", "set one layer's static FP8 scale (merged in)",
       "Sets the static FP8 scale of one layer, merged into the table.", {}, true, true},
      {"set-scales", "--file=FILE [--replace] [--default_scale=S]",
       "set scales from a JSON object {\"<layer>\": <scale>}",
       "Sets scales from a JSON file: one object of decimal layer ids mapped to\n"
       "finite scales > 0, checked before anything is sent. Merged into the table,\n"
       "or replacing it with --replace (unlisted layers fall back to the default).",
       {"file", "replace", "default_scale"}, true, true},
      {"stats", "", "step counts, bytes, latency per phase, errors",
       "Prints step counts, bytes, latency percentiles per phase over a recent\n"
       "window and errors by code; with --output=json the protobuf JSON mapping\n"
       "of Admin.GetStats' answer.",
       {"output", "json"}, true, true},
      {"drain", "[--drain_timeout_ms=MS]", "stop new steps, wait for steps in flight",
       "Stops new steps (they fail UNAVAILABLE \"server draining\" until the next\n"
       "Configure) and waits for the steps in flight. Exit 4 when it timed out.",
       {"drain_timeout_ms"}, true, true},
      {"health", "[--ready]", "liveness (\"\") and merge readiness; no token needed",
       "Checks grpc.health.v1: liveness (\"\") and merge readiness\n"
       "(\"dcpmerge.v1.MergeData\"). Exit 4 when liveness is not SERVING, or with\n"
       "--ready when the group is not ready. Needs no token.",
       {"ready"}, true, false},
      {"check-join", "[--rank=R] [--join_secret_file=FILE]", "does the rank listener accept this credential?",
       "Asks the rank listener (point --server at it, e.g. 127.0.0.1:50051) whether\n"
       "it accepts a rank's credential without joining: a Heartbeat for a session\n"
       "no rank has. The credential is read from --join_secret_file (else the\n"
       "environment variable DCPMERGE_JOIN_SECRET): a rank token is sent as it is,\n"
       "a group secret as the token it derives for --rank (as a rank client given\n"
       "the group secret does). --rank defaults to the token's rank, else 0.\n"
       "Exit 0: accepted (it also says when the server requires none); exit 1:\n"
       "refused (UNAUTHENTICATED without one, PERMISSION_DENIED with a wrong one or\n"
       "one for another rank). Needs no admin token.",
       {"join_secret_file", "rank"}, true, false},
      {"rank-token", "--rank=R | --world_size=N", "issue rank tokens from the group's join secret",
       "Derives rank tokens from the group's join secret (--join_secret_file, else\n"
       "the environment variable DCPMERGE_JOIN_SECRET). --rank=R prints rank R's\n"
       "token (one line); --world_size=N the tokens of ranks 0..N-1, one\n"
       "\"<rank><TAB><token>\" line each; -o json one object {\"<rank>\": \"<token>\"}.\n"
       "A token acts for its own rank only: mount each rank its own. Rotating the\n"
       "group secret changes every token. Answered locally: needs no server.",
       {"rank", "world_size", "join_secret_file", "output", "json"}, false, false},
      {"help", "[COMMAND]", "this text, or one command's", "Prints the help, or one command's help.", {}, false,
       false},
      {"version", "", "dcpmergectl's version and build commit",
       "Prints dcpmergectl's version and the commit it was built from.", {}, false, false},
  };
  return *commands;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& c : Commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

const std::set<std::string>& GlobalFlags() {
  static const auto* s = new std::set<std::string>{
      "server", "token_file", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name", "deadline_ms"};
  return *s;
}

bool ParseArgs(int argc, char** argv, ParsedArgs* out, std::string* error) {
  const auto all = absl::GetAllFlags();
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (only_positional || arg.size() < 2 || arg[0] != '-') {
      out->positional.push_back(arg);
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
      out->help = true;
      continue;
    }
    if (name == "version") {
      out->version = true;
      continue;
    }
    if (name == "o") name = "output";  // -o json
    auto it = all.find(name);
    bool negated = false;
    if ((it == all.end() || !IsOurFlag(*it->second)) && absl::StartsWith(name, "no") && !has_value) {
      auto neg = all.find(name.substr(2));
      if (neg != all.end() && IsOurFlag(*neg->second) && IsBool(*neg->second)) {
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
    if (!has_value) {
      if (IsBool(*flag)) {
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
    out->flags.insert(name);
  }
  return true;
}

void PrintHelp() {
  std::string out = kIntro;
  for (const Command& c : Commands()) {
    const std::string usage = absl::StrCat(c.name, *c.args != '\0' ? " " : "", c.args);
    if (usage.size() <= 27) {
      absl::StrAppend(&out, "  ", usage, std::string(28 - usage.size(), ' '), c.summary, "\n");
    } else {
      absl::StrAppend(&out, "  ", usage, "\n", std::string(30, ' '), c.summary, "\n");
    }
  }
  out += kNotes;
  const auto flags = OurFlags();
  out += "\nglobal flags (every command):\n";
  for (const auto& [name, flag] : flags) {
    if (GlobalFlags().count(name)) out += FlagLine(*flag);
  }
  out += "\ncommand flags (each names its commands; dcpmergectl help COMMAND):\n";
  for (const auto& [name, flag] : flags) {
    if (!GlobalFlags().count(name)) out += FlagLine(*flag);
  }
  std::fputs(out.c_str(), stdout);
}

void PrintCommandHelp(const Command& c) {
  std::string out = absl::StrCat("usage: dcpmergectl [FLAGS] ", c.name, *c.args != '\0' ? " " : "", c.args, "\n\n",
                                 c.details, "\n");
  const auto flags = OurFlags();
  if (!c.flags.empty()) {
    out += "\nflags:\n";
    for (const std::string& name : c.flags) {
      if (auto it = flags.find(name); it != flags.end()) out += FlagLine(*it->second);
    }
  }
  if (c.needs_server) {
    out += "\nglobal flags:\n";
    for (const std::string& name : GlobalFlags()) {
      if (auto it = flags.find(name); it != flags.end()) out += FlagLine(*it->second);
    }
  }
  out += "\nexit codes: see dcpmergectl --help\n";
  std::fputs(out.c_str(), stdout);
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "dcpmergectl: %s\n", message.c_str());
  return kExitUsage;
}

}  // namespace dcpmerge::ctl
