#include "common/join_secret.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"

namespace dcpmerge {
namespace {

constexpr absl::string_view kRankTokenPrefix = "dcpmerge-rank-";
constexpr size_t kMacHexDigits = 64;  // SHA-256

std::string RankMacHex(absl::string_view secret, int32_t rank) {
  const std::string message = absl::StrCat("dcpmerge rank token v1:", rank);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(mac), len));
}

}  // namespace

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

std::string JoinSecretMetadataValue(const std::string& credential) { return absl::StrCat("Bearer ", credential); }

std::string RankToken(absl::string_view secret, int32_t rank) {
  return absl::StrCat(kRankTokenPrefix, rank, ".", RankMacHex(secret, rank));
}

absl::StatusOr<int32_t> RankOfToken(absl::string_view text) {
  const auto invalid = [] {
    return absl::InvalidArgumentError(
        absl::StrCat("not a rank token (", kRankTokenPrefix, "<rank>.<", kMacHexDigits, " hex digits>)"));
  };
  if (!absl::ConsumePrefix(&text, kRankTokenPrefix)) return invalid();
  const size_t dot = text.find('.');
  int32_t rank = -1;
  // Digits only: "+1" or " 1" would name the same rank in two spellings.
  if (dot == absl::string_view::npos || dot == 0 || dot > 9 ||
      !std::all_of(text.begin(), text.begin() + dot, absl::ascii_isdigit) ||
      !absl::SimpleAtoi(text.substr(0, dot), &rank)) {
    return invalid();
  }
  const absl::string_view mac = text.substr(dot + 1);
  if (mac.size() != kMacHexDigits || !std::all_of(mac.begin(), mac.end(), absl::ascii_isxdigit)) return invalid();
  return rank;
}

std::string RankCredential(const std::string& secret_or_token, int32_t rank) {
  if (RankOfToken(secret_or_token).ok()) return secret_or_token;
  return RankToken(secret_or_token, rank);
}

absl::StatusOr<int32_t> VerifyRankToken(absl::string_view secret, absl::string_view token) {
  absl::StatusOr<int32_t> rank = RankOfToken(token);
  if (!rank.ok()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "authorization: ", rank.status().message(),
        "; ranks send their rank token (dcpmergectl rank-token), or give the rank client the group secret to "
        "derive it"));
  }
  const std::string expected = RankToken(secret, *rank);
  if (expected.size() != token.size() || CRYPTO_memcmp(expected.data(), token.data(), token.size()) != 0) {
    return absl::PermissionDeniedError("authorization: wrong rank token (not issued under this group's secret)");
  }
  return *rank;
}

}  // namespace dcpmerge
