// --version for every binary: prints VersionLine(program) (base/version.h)
// on stdout and exits 0.
//
// - Binaries that parse flags with absl call UseVersionFlag(program) before
//   absl::ParseCommandLine (it sets absl's usage config; a binary with its
//   own usage config sets version_string itself, as server/main.cc does).
// - Binaries that parse argv themselves link //base:version_argv, which
//   answers --version before main runs.
#ifndef DCPMERGE_BASE_VERSION_FLAG_H_
#define DCPMERGE_BASE_VERSION_FLAG_H_

#include "absl/strings/string_view.h"

namespace dcpmerge {

void UseVersionFlag(absl::string_view program);

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_VERSION_FLAG_H_
