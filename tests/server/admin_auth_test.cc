#include "server/admin_auth.h"

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

TEST(AdminAuthTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("abcd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

TEST(AdminAuthTest, TokenFromFileThenEnv) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp") +
                           "/admin_token";
  std::ofstream(path) << "from-file\n";
  setenv("DCPMERGE_ADMIN_TOKEN", "from-env", 1);
  auto t = LoadAdminToken(path);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, "from-file");
  t = LoadAdminToken("");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, "from-env");
  unsetenv("DCPMERGE_ADMIN_TOKEN");
  EXPECT_EQ(*LoadAdminToken(""), "");
  auto missing = LoadAdminToken(path + ".missing");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// SHA-256 known answers (FIPS 180-2): the first 4 bytes, in hex.
TEST(AdminAuthTest, TokenFingerprintIsAShortSha256) {
  EXPECT_EQ(TokenFingerprint("abc"), "ba7816bf");
  EXPECT_EQ(TokenFingerprint("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), "248d6a61");
  EXPECT_EQ(TokenFingerprint(""), "none");
  EXPECT_NE(TokenFingerprint("abd"), TokenFingerprint("abc"));
}

}  // namespace
}  // namespace dcpmerge
