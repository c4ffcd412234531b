// dcpmergectl: operator CLI for a dcpmerge server (Admin service +
// grpc.health.v1). `dcpmergectl --help` lists commands, flags and exit
// codes; `dcpmergectl help COMMAND` (or COMMAND --help) one command.
//
// The seams: cli.{h,cc} (commands, flags per command, argv, help texts),
// flags.{h,cc}, connection.{h,cc} (channel, TLS, token, deadlines),
// commands.{h,cc} (one function per command), print.{h,cc} (tables, JSON,
// server errors), scales_json.{h,cc} (the scales file).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/dcpmergectl/cli.h"
#include "tools/dcpmergectl/commands.h"
#include "tools/dcpmergectl/connection.h"

namespace dcpmerge::ctl {
namespace {

int Main(int argc, char** argv) {
  ParsedArgs args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) return Usage(error);
  std::vector<std::string>& positional = args.positional;
  if (args.version && positional.empty()) return Version();
  if (positional.empty()) {
    if (args.help) {
      PrintHelp();
      return kExitOk;
    }
    std::fputs("dcpmergectl: missing COMMAND (see --help)\n", stderr);
    return kExitUsage;
  }
  const std::string name = positional[0];
  positional.erase(positional.begin());
  const Command* cmd = FindCommand(name);
  if (cmd == nullptr) return Usage(absl::StrCat("unknown command '", name, "' (see --help)"));
  if (name == "help") {
    if (positional.empty()) {
      PrintHelp();
      return kExitOk;
    }
    const Command* about = FindCommand(positional[0]);
    if (about == nullptr || positional.size() > 1) {
      return Usage(absl::StrCat("help: unknown command '", positional[0], "' (see --help)"));
    }
    PrintCommandHelp(*about);
    return kExitOk;
  }
  if (args.help) {
    PrintCommandHelp(*cmd);
    return kExitOk;
  }
  for (const std::string& f : args.flags) {
    if (!GlobalFlags().count(f) && !cmd->flags.count(f)) {
      return Usage(absl::StrCat("--", f, " does not apply to '", name, "' (see dcpmergectl help ", name, ")"));
    }
  }
  if (name == "version") {
    if (!positional.empty()) return Usage("'version' takes no arguments");
    return Version();
  }
  // Local input first: invalid input is exit 2 even when the server is down.
  ScalesInput scales;
  Output output = Output::kTable;
  if (name == "set-scale") {
    if (int rc = ParseSetScale(positional, &scales); rc != kExitOk) return rc;
  } else if (name == "set-scales") {
    if (int rc = ParseSetScales(positional, &scales); rc != kExitOk) return rc;
  } else if (!positional.empty()) {
    return Usage(absl::StrCat("'", name, "' takes no arguments, got '", positional[0], "'"));
  }
  if (cmd->flags.count("output")) {
    if (int rc = ParseOutput(&output); rc != kExitOk) return rc;
  }
  if (name == "rank-token") return RankTokens(output);
  Connection c;
  if (cmd->needs_token) {
    if (int rc = c.LoadToken(); rc != kExitOk) return rc;
  }
  if (int rc = c.Open(); rc != kExitOk) return rc;
  if (name == "get-config") return GetConfig(c, output);
  if (name == "configure") return Configure(c);
  if (name == "set-scale" || name == "set-scales") return SendScales(c, scales);
  if (name == "stats") return Stats(c, output);
  if (name == "drain") return Drain(c);
  if (name == "check-join") return CheckJoin(c);
  return Health(c);
}

}  // namespace
}  // namespace dcpmerge::ctl

int main(int argc, char** argv) { return dcpmerge::ctl::Main(argc, argv); }
