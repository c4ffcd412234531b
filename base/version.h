// The one version of dcpmerge, and the commit the binary was built from.
// Every binary's --version (dcpmerge_server --version, dcpmergectl version)
// prints VersionLine().
//
// The commit is stamped at build time: tools/workspace_status.sh (Bazel's
// --workspace_status_command, set in .bazelrc) reports `git rev-parse HEAD`
// of the checkout, with "-dirty" when tracked files differ from it. It is
// "unknown" where that cannot be known (no git, not a git checkout, or a
// build without the status command). Nothing is fetched: it works offline.
#ifndef DCPMERGE_BASE_VERSION_H_
#define DCPMERGE_BASE_VERSION_H_

#include <string>

#include "absl/strings/string_view.h"

namespace dcpmerge {

// Semantic version of the project (the API is dcpmerge.v1 regardless).
inline constexpr char kVersion[] = "0.2.0";

// The build commit: 12 hex digits (+ "-dirty"), or "unknown".
absl::string_view BuildCommit();

// "<program> <kVersion> (commit <BuildCommit()>)".
std::string VersionLine(absl::string_view program);

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_VERSION_H_
