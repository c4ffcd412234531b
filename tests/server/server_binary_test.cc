// dcpmerge_server's command line: --help lists the server's own flags and
// --version prints the version and the build commit.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

TEST(ServerBinaryTest, HelpListsTheServersFlags) {
  const testing::RunResult r = testing::RunProcess({testing::Runfile("server/dcpmerge_server"), "--help"});
  // absl's --help exits 1 after printing.
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  const std::string text = r.out + r.err;
  EXPECT_THAT(text, HasSubstr("usage: dcpmerge_server"));
  for (const char* flag : {"--world_size", "--rank_address", "--admin_token_file", "--data_plane",
                           "--metrics_address", "--health_address", "--ready_file"}) {
    EXPECT_THAT(text, HasSubstr(flag));
  }
  EXPECT_THAT(text, Not(HasSubstr("--flagfile")));  // absl's own flags: --helpfull
}

TEST(ServerBinaryTest, VersionPrintsVersionAndCommit) {
  const testing::RunResult r = testing::RunProcess({testing::Runfile("server/dcpmerge_server"), "--version"});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_THAT(r.out, MatchesRegex("dcpmerge_server 0\\.2\\.0 \\(commit (unknown|[0-9a-f]+(-dirty)?)\\)\n"));
}

}  // namespace
}  // namespace dcpmerge
