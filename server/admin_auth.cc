#include "server/admin_auth.h"

#include <cstdlib>
#include <utility>

#include <openssl/evp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/file.h"

namespace dcpmerge {

absl::StatusOr<std::string> LoadAdminToken(const std::string& token_file) {
  std::string token;
  if (!token_file.empty()) {
    absl::StatusOr<std::string> text = ReadFile(token_file, "admin_token_file");
    if (!text.ok()) return text.status();
    token = std::move(*text);
  } else if (const char* env = std::getenv("DCPMERGE_ADMIN_TOKEN"); env != nullptr) {
    token = env;
  }
  absl::StripTrailingAsciiWhitespace(&token);
  return token;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Compare over the longer length so the time depends on lengths only.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

grpc::Status CheckAdminToken(const grpc::ServerContextBase& context,
                             const std::string& token) {
  if (token.empty()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "admin disabled: no admin token configured (set "
                        "--admin_token_file or DCPMERGE_ADMIN_TOKEN)");
  }
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization: missing; send 'authorization: Bearer <token>'");
  }
  const absl::string_view value(it->second.data(), it->second.size());
  constexpr absl::string_view kPrefix = "Bearer ";
  if (!absl::StartsWith(value, kPrefix)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization: not a bearer token");
  }
  if (!ConstantTimeEquals(value.substr(kPrefix.size()), token)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "authorization: wrong admin token");
  }
  return grpc::Status::OK;
}

std::string TokenFingerprint(absl::string_view token) {
  if (token.empty()) return "none";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(token.data(), token.size(), md, &n, EVP_sha256(), nullptr) != 1 || n < 4) return "unknown";
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(md), 4));
}

absl::string_view PresentedBearerToken(const grpc::ServerContextBase& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return "";
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) return "";
  return value;
}

}  // namespace dcpmerge
