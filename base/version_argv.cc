// --version for binaries that read argv themselves (no absl flags), e.g.
// //bench:merge_bench: linked in (alwayslink), it runs before main. glibc
// passes argc, argv and envp to the constructors of the executable; when
// one argument is exactly "--version", it prints VersionLine(<program>)
// and exits 0 before the binary's own parser sees the argument.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/version.h"

namespace dcpmerge {
namespace {

__attribute__((constructor)) void AnswerVersionBeforeMain(int argc, char** argv, char** /*envp*/) {
  if (argv == nullptr) return;
  for (int i = 1; i < argc && argv[i] != nullptr; ++i) {
    if (std::strcmp(argv[i], "--version") != 0) continue;
    const char* slash = argv[0] != nullptr ? std::strrchr(argv[0], '/') : nullptr;
    const std::string program = argv[0] == nullptr ? "dcpmerge" : slash != nullptr ? slash + 1 : argv[0];
    const std::string line = VersionLine(program) + "\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
    std::exit(0);
  }
}

}  // namespace
}  // namespace dcpmerge
