// dcpmergectl check-join against the server binary (loopback): the rank
// listener's join secret (issue 11), taken from a file or the environment
// the way the server and the rank client take it, and the rank tokens
// derived from it (issue 18), which act for their own rank only.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/join_secret.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using testing::RunProcess;
using testing::RunResult;

constexpr char kSecret[] = "ctl-join-secret";

RunResult CheckJoin(const testing::ServerProc& s, const std::vector<std::string>& args,
                    const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {testing::Runfile("tools/dcpmergectl/dcpmergectl"),
                                   absl::StrCat("--server=", s.rank_target()), "check-join"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, env);
}

TEST(CheckJoinTest, SecretFromFileOrEnvironment) {
  const std::string secret_file = testing::TmpPath("join-secret");
  testing::WriteFile(secret_file, std::string(kSecret) + "\n");
  // No grace after a rotation: the old secret's tokens stop at once.
  testing::ServerProc s = testing::StartServer(
      {"--world_size=2", "--num_heads=2", "--head_size=64", "--max_tokens=4",
       absl::StrCat("--join_secret_file=", secret_file), "--join_secret_grace_ms=0"},
      {});
  ASSERT_GT(s.pid, 0);
  RunResult ok = CheckJoin(s, {absl::StrCat("--join_secret_file=", secret_file)});
  EXPECT_EQ(ok.exit_code, 0) << ok.Describe();
  EXPECT_THAT(ok.out, HasSubstr("join secret accepted"));
  RunResult env = CheckJoin(s, {}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", kSecret)});
  EXPECT_EQ(env.exit_code, 0) << env.Describe();
  RunResult none = CheckJoin(s, {});
  EXPECT_EQ(none.exit_code, 1) << none.Describe();
  EXPECT_THAT(none.err, HasSubstr("UNAUTHENTICATED"));
  RunResult wrong = CheckJoin(s, {}, {"DCPMERGE_JOIN_SECRET=nope"});
  EXPECT_EQ(wrong.exit_code, 1) << wrong.Describe();
  EXPECT_THAT(wrong.err, HasSubstr("PERMISSION_DENIED"));
  // Rotation: the server re-reads the file (SIGHUP: at once).
  testing::WriteFile(secret_file, "rotated\n");
  kill(s.pid, SIGHUP);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  RunResult rotated;
  do {
    absl::SleepFor(absl::Milliseconds(100));
    rotated = CheckJoin(s, {}, {"DCPMERGE_JOIN_SECRET=rotated"});
  } while (rotated.exit_code != 0 && absl::Now() < deadline);
  EXPECT_EQ(rotated.exit_code, 0) << rotated.Describe();
  EXPECT_EQ(CheckJoin(s, {}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", kSecret)}).exit_code, 1);
  RunResult missing = CheckJoin(s, {"--join_secret_file=/nonexistent"});
  EXPECT_EQ(missing.exit_code, 2) << missing.Describe();
  EXPECT_EQ(testing::StopServer(s), 0);
}

TEST(CheckJoinTest, RankTokensActForTheirOwnRankOnly) {
  const std::string secret_file = testing::TmpPath("join-secret");
  testing::WriteFile(secret_file, std::string(kSecret) + "\n");
  testing::ServerProc s = testing::StartServer(
      {"--world_size=4", "--num_heads=2", "--head_size=64", "--max_tokens=4",
       absl::StrCat("--join_secret_file=", secret_file)},
      {});
  ASSERT_GT(s.pid, 0);
  // The token rank-token issues, from a file: accepted as its rank.
  const RunResult issued = RunProcess({testing::Runfile("tools/dcpmergectl/dcpmergectl"), "rank-token", "--rank=2",
                                       absl::StrCat("--join_secret_file=", secret_file)});
  ASSERT_EQ(issued.exit_code, 0) << issued.Describe();
  const std::string token_file = testing::TmpPath("rank-2-token");
  testing::WriteFile(token_file, issued.out);
  RunResult ok = CheckJoin(s, {absl::StrCat("--join_secret_file=", token_file)});
  EXPECT_EQ(ok.exit_code, 0) << ok.Describe();
  EXPECT_THAT(ok.out, HasSubstr("rank token accepted for rank 2"));
  EXPECT_EQ(CheckJoin(s, {"--rank=2"}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", RankToken(kSecret, 2))}).exit_code, 0);
  // The group secret derives the token of the rank asked for.
  RunResult derived = CheckJoin(s, {"--rank=3", absl::StrCat("--join_secret_file=", secret_file)});
  EXPECT_EQ(derived.exit_code, 0) << derived.Describe();
  EXPECT_THAT(derived.out, HasSubstr("join secret accepted for rank 3"));
  // Rank 2's token asking as rank 1, a token under another secret, a
  // forged one: refused.
  RunResult other_rank = CheckJoin(s, {"--rank=1", absl::StrCat("--join_secret_file=", token_file)});
  EXPECT_EQ(other_rank.exit_code, 1) << other_rank.Describe();
  EXPECT_THAT(other_rank.err, HasSubstr("PERMISSION_DENIED"));
  EXPECT_THAT(other_rank.err, HasSubstr("rank 2, not rank 1"));
  RunResult wrong = CheckJoin(s, {}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", RankToken("another-secret", 2))});
  EXPECT_EQ(wrong.exit_code, 1) << wrong.Describe();
  EXPECT_THAT(wrong.err, HasSubstr("PERMISSION_DENIED"));
  std::string forged = RankToken(kSecret, 2);
  forged.back() = forged.back() == '0' ? '1' : '0';
  RunResult bad = CheckJoin(s, {}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", forged)});
  EXPECT_EQ(bad.exit_code, 1) << bad.Describe();
  EXPECT_THAT(bad.err, HasSubstr("wrong rank token"));
  // A rank no group has is checked before anything is sent.
  RunResult out_of_range = CheckJoin(s, {"--rank=64"}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", kSecret)});
  EXPECT_EQ(out_of_range.exit_code, 2) << out_of_range.Describe();
  EXPECT_THAT(out_of_range.err, HasSubstr("--rank=64"));
  EXPECT_EQ(testing::StopServer(s), 0);
}

TEST(CheckJoinTest, ServerWithoutASecretSaysSo) {
  testing::ServerProc s = testing::StartServer({}, {});
  ASSERT_GT(s.pid, 0);
  RunResult none = CheckJoin(s, {});
  EXPECT_EQ(none.exit_code, 0) << none.Describe();
  EXPECT_THAT(none.out, HasSubstr("requires none"));
  RunResult any = CheckJoin(s, {}, {"DCPMERGE_JOIN_SECRET=whatever"});
  EXPECT_EQ(any.exit_code, 0) << any.Describe();
  EXPECT_THAT(any.out, HasSubstr("requires no join secret"));
  EXPECT_EQ(testing::StopServer(s), 0);
}

}  // namespace
}  // namespace dcpmerge
