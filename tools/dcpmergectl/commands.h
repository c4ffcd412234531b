// dcpmergectl's commands. Each returns an exit code (cli.h) and prints its
// result to stdout, errors to stderr. Input that can be checked locally is
// checked before connecting (Parse*), so invalid input is exit 2 even when
// the server is down.
#ifndef DCPMERGE_TOOLS_DCPMERGECTL_COMMANDS_H_
#define DCPMERGE_TOOLS_DCPMERGECTL_COMMANDS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tools/dcpmergectl/connection.h"

namespace dcpmerge::ctl {

enum class Output { kTable, kJson };
// --output (-o) and --json: kExitUsage for a format other than table/json.
int ParseOutput(Output* output);

struct ScalesInput {
  std::map<int32_t, float> scales;
  bool replace = false;
  float default_scale = 0.0f;  // 0: unchanged
};
int ParseSetScale(const std::vector<std::string>& args, ScalesInput* in);
int ParseSetScales(const std::vector<std::string>& args, ScalesInput* in);

int GetConfig(Connection& c, Output output);
int Configure(Connection& c);
int SendScales(Connection& c, const ScalesInput& in);
int Stats(Connection& c, Output output);
int Drain(Connection& c);
int Health(Connection& c);
int CheckJoin(Connection& c);
// Local: --rank or --world_size, the group secret from --join_secret_file or
// the environment.
int RankTokens(Output output);
int Version();

}  // namespace dcpmerge::ctl

#endif  // DCPMERGE_TOOLS_DCPMERGECTL_COMMANDS_H_
