#include "base/file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace dcpmerge {

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  if (in) ss << in.rdbuf();
  if (!in || in.bad()) {
    const int err = errno;
    return absl::NotFoundError(absl::StrCat(what, what.empty() ? "" : ": ", "cannot read ", path,
                                            err != 0 ? absl::StrCat(": ", std::strerror(err)) : ""));
  }
  return ss.str();
}

}  // namespace dcpmerge
