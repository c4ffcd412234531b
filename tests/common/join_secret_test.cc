// The rank plane's credential: per-rank tokens derived from the group
// secret (common/join_secret.h).
#include "common/join_secret.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

constexpr char kSecret[] = "group-secret";

// The MAC is HMAC-SHA256(secret, "dcpmerge rank token v1:<rank>"),
// computed independently (Python's hmac module) for this vector.
TEST(RankTokenTest, KnownAnswer) {
  EXPECT_EQ(RankToken(kSecret, 3),
            "dcpmerge-rank-3.4329a7a61721209b4bcb66a3544eae877ee5089a795ae7e549415c692333d1db");
}

TEST(RankTokenTest, NamesItsRankAndVerifiesOnlyUnderItsSecret) {
  for (int32_t rank : {0, 1, 63, 1000}) {
    const std::string token = RankToken(kSecret, rank);
    EXPECT_EQ(RankOfToken(token).value(), rank);
    EXPECT_EQ(VerifyRankToken(kSecret, token).value(), rank);
    const absl::StatusOr<int32_t> other = VerifyRankToken("another-secret", token);
    EXPECT_EQ(other.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(other.status().message()), HasSubstr("wrong rank token"));
  }
  EXPECT_NE(RankToken(kSecret, 1), RankToken(kSecret, 2));
}

// A token edited to name another rank keeps the first rank's MAC: refused.
TEST(RankTokenTest, RenamedTokenIsRefused) {
  std::string token = RankToken(kSecret, 1);
  token.replace(token.find("-1."), 3, "-2.");
  EXPECT_EQ(RankOfToken(token).value(), 2);
  EXPECT_EQ(VerifyRankToken(kSecret, token).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST(RankTokenTest, MalformedTokensAreNotTokens) {
  const std::string mac(64, 'a');
  for (const std::string& text :
       {std::string(), std::string(kSecret), "dcpmerge-rank-." + mac, "dcpmerge-rank-+1." + mac,
        "dcpmerge-rank- 1." + mac, "dcpmerge-rank-1." + mac.substr(1), "dcpmerge-rank-1." + mac + "0",
        "dcpmerge-rank-1." + std::string(64, 'g'), "dcpmerge-rank-1234567890." + mac, "dcpmerge-rank-1" + mac,
        "xdcpmerge-rank-1." + mac}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(RankOfToken(text).status().code(), absl::StatusCode::kInvalidArgument);
    const absl::StatusOr<int32_t> v = VerifyRankToken(kSecret, text);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(v.status().message()), HasSubstr("not a rank token"));
  }
}

// A rank client sends a token as given, and derives one from a secret.
TEST(RankTokenTest, RankCredentialPassesTokensAndDerivesFromSecrets) {
  const std::string token = RankToken(kSecret, 5);
  EXPECT_EQ(RankCredential(token, 5), token);
  EXPECT_EQ(RankCredential(token, 6), token);  // the server refuses it for rank 6
  EXPECT_EQ(RankCredential(kSecret, 6), RankToken(kSecret, 6));
}

}  // namespace
}  // namespace dcpmerge
