#include "common/join_secret.h"

#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"

namespace dcpmerge {

absl::StatusOr<std::string> LoadJoinSecret(const std::string& file, const std::string& what) {
  std::string secret;
  if (!file.empty()) {
    absl::StatusOr<std::string> text = ReadFile(file, what);
    if (!text.ok()) return text.status();
    secret = std::move(*text);
  } else if (const char* env = std::getenv(kJoinSecretEnv); env != nullptr) {
    secret = env;
  }
  absl::StripTrailingAsciiWhitespace(&secret);
  return secret;
}

std::string JoinSecretMetadataValue(const std::string& secret) { return absl::StrCat("Bearer ", secret); }

}  // namespace dcpmerge
