// dcpmergectl check-join against the server binary (loopback): the rank
// listener's join secret (issue 11), taken from a file or the environment
// the way the server and the rank client take it.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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
  testing::ServerProc s = testing::StartServer(
      {"--world_size=2", "--num_heads=2", "--head_size=64", "--max_tokens=4",
       absl::StrCat("--join_secret_file=", secret_file)},
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
