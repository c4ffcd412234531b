// Reading a whole file (certificates, keys, tokens, scale tables).
#ifndef DCPMERGE_BASE_FILE_H_
#define DCPMERGE_BASE_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dcpmerge {

// The file's bytes. NOT_FOUND "<what>: cannot read <path>: <reason>" when it
// cannot be opened or read (`what` names the flag or field it came from;
// empty: the message starts with "cannot read").
absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what = "");

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_FILE_H_
