#include "base/version.h"

#include "absl/strings/str_cat.h"

namespace dcpmerge {

// Defined in the file the build generates (base/BUILD, :build_commit).
extern const char kBuildCommit[];

absl::string_view BuildCommit() {
  return kBuildCommit[0] == '\0' ? absl::string_view("unknown") : absl::string_view(kBuildCommit);
}

std::string VersionLine(absl::string_view program) {
  return absl::StrCat(program, " ", kVersion, " (commit ", BuildCommit(), ")");
}

}  // namespace dcpmerge
