// dcpmergectl's command line: exit codes, the commands and the flags each
// accepts, the argv parser and the help texts.
#ifndef DCPMERGE_TOOLS_DCPMERGECTL_CLI_H_
#define DCPMERGE_TOOLS_DCPMERGECTL_CLI_H_

#include <set>
#include <string>
#include <vector>

namespace dcpmerge::ctl {

enum ExitCode {
  kExitOk = 0,
  kExitServerError = 1,  // the server answered with an error
  kExitUsage = 2,        // usage error or invalid input
  kExitUnreachable = 3,  // no connection within --deadline_ms
  kExitNotMet = 4,       // answered, but the condition was not met
};

struct Command {
  const char* name;
  const char* args;     // positional arguments, for the usage line
  const char* summary;  // one line, for the command list
  const char* details;  // paragraph(s), for `help COMMAND`
  std::set<std::string> flags;  // its own flags (the global ones always apply)
  bool needs_server;    // false: answered locally (help, version)
  bool needs_token;     // false: health (grpc.health.v1 takes no token)
};

// Every command, in help order; nullptr for an unknown name.
const std::vector<Command>& Commands();
const Command* FindCommand(const std::string& name);

// Flags every command accepts (--server, --token_file, --tls_*, --deadline_ms).
const std::set<std::string>& GlobalFlags();

struct ParsedArgs {
  std::vector<std::string> positional;  // the command and its arguments
  std::set<std::string> flags;          // names of the flags given
  bool help = false;                    // --help / -h / --helpfull
  bool version = false;                 // --version
};

// Parses argv: flags (--name=value, --name value, --bool, --nobool, and -o
// VALUE for --output) anywhere, the rest positional. Never exits. false
// with *error on an unknown flag or a bad value.
bool ParseArgs(int argc, char** argv, ParsedArgs* out, std::string* error);

// The help texts (to stdout): every command, the global flags and the exit
// codes; or one command's usage, details and flags.
void PrintHelp();
void PrintCommandHelp(const Command& command);

// Prints "dcpmergectl: <message>" to stderr; returns kExitUsage.
int Usage(const std::string& message);

}  // namespace dcpmerge::ctl

#endif  // DCPMERGE_TOOLS_DCPMERGECTL_CLI_H_
