// dcpmergectl rank-token (the CLI binary; answered locally, no server): the
// tokens it prints are RankToken(secret, rank) of common/join_secret.h, as
// one line, as "<rank>\t<token>" lines or as a JSON object, and bad flags
// are usage errors naming the flag.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/join_secret.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using testing::RunProcess;
using testing::RunResult;

constexpr char kSecret[] = "ctl-group-secret";

RunResult RankTokenCmd(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {testing::Runfile("tools/dcpmergectl/dcpmergectl"), "rank-token"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, env);
}

TEST(RankTokenTest, OneRankFromFileOrEnvironment) {
  const std::string secret_file = testing::TmpPath("group-secret");
  testing::WriteFile(secret_file, std::string(kSecret) + "\n");
  const RunResult file = RankTokenCmd({"--rank=3", absl::StrCat("--join_secret_file=", secret_file)});
  EXPECT_EQ(file.exit_code, 0) << file.Describe();
  EXPECT_EQ(file.out, RankToken(kSecret, 3) + "\n");
  const RunResult env = RankTokenCmd({"--rank=3"}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", kSecret)});
  EXPECT_EQ(env.exit_code, 0) << env.Describe();
  EXPECT_EQ(env.out, file.out);
  EXPECT_EQ(*RankOfToken(absl::StripSuffix(file.out, "\n")), 3);
}

TEST(RankTokenTest, WholeGroupAsLinesAndAsJson) {
  const std::string env = absl::StrCat("DCPMERGE_JOIN_SECRET=", kSecret);
  const RunResult lines = RankTokenCmd({"--world_size=4"}, {env});
  ASSERT_EQ(lines.exit_code, 0) << lines.Describe();
  std::string want;
  for (int r = 0; r < 4; ++r) absl::StrAppend(&want, r, "\t", RankToken(kSecret, r), "\n");
  EXPECT_EQ(lines.out, want);

  const RunResult json = RankTokenCmd({"--world_size=4", "-o", "json"}, {env});
  ASSERT_EQ(json.exit_code, 0) << json.Describe();
  google::protobuf::Struct tokens;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &tokens).ok()) << json.out;
  ASSERT_EQ(tokens.fields_size(), 4) << json.out;
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(tokens.fields().at(absl::StrCat(r)).string_value(), RankToken(kSecret, r)) << r;
  }
  // The largest group, and one rank as JSON.
  EXPECT_EQ(RankTokenCmd({"--world_size=64"}, {env}).exit_code, 0);
  const RunResult one = RankTokenCmd({"--rank=63", "--json"}, {env});
  ASSERT_EQ(one.exit_code, 0) << one.Describe();
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(one.out, &tokens).ok()) << one.out;
  EXPECT_EQ(tokens.fields_size(), 1);
  EXPECT_EQ(tokens.fields().at("63").string_value(), RankToken(kSecret, 63));
}

TEST(RankTokenTest, BadFlagsAndSecretsAreUsageErrors) {
  const std::string env = absl::StrCat("DCPMERGE_JOIN_SECRET=", kSecret);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--rank=-1"}, "--rank=-1: must be 0..63"},
      {{"--rank=64"}, "--rank=64: must be 0..63"},
      {{"--rank=one"}, "--rank=one"},
      {{"--world_size=0"}, "--world_size=0: must be 1..64"},
      {{"--world_size=65"}, "--world_size=65: must be 1..64"},
      {{}, "give --rank=R or --world_size=N"},
      {{"--rank=1", "--world_size=2"}, "give --rank=R or --world_size=N"},
      {{"--rank=1", "-o", "yaml"}, "--output=yaml"},
      {{"--rank=1", "extra"}, "takes no arguments"},
  };
  for (const Case& k : cases) {
    const RunResult r = RankTokenCmd(k.args, {env});
    EXPECT_EQ(r.exit_code, 2) << r.Describe();
    EXPECT_THAT(r.err, HasSubstr(k.message)) << r.Describe();
    EXPECT_EQ(r.out, "");
  }
  const RunResult none = RankTokenCmd({"--rank=0"});
  EXPECT_EQ(none.exit_code, 2) << none.Describe();
  EXPECT_THAT(none.err, HasSubstr("no join secret"));
  const RunResult missing = RankTokenCmd({"--rank=0", "--join_secret_file=/nonexistent/secret"});
  EXPECT_EQ(missing.exit_code, 2) << missing.Describe();
  EXPECT_THAT(missing.err, HasSubstr("--join_secret_file"));
  // A token is not a group secret: tokens derived from it would be refused.
  const RunResult token = RankTokenCmd({"--rank=0"}, {absl::StrCat("DCPMERGE_JOIN_SECRET=", RankToken(kSecret, 1))});
  EXPECT_EQ(token.exit_code, 2) << token.Describe();
  EXPECT_THAT(token.err, HasSubstr("holds a rank token"));
}

TEST(RankTokenTest, HelpNamesTheFlags) {
  const RunResult h = RankTokenCmd({"--help"});
  EXPECT_EQ(h.exit_code, 0) << h.Describe();
  EXPECT_THAT(h.out, HasSubstr("usage: dcpmergectl [FLAGS] rank-token --rank=R | --world_size=N"));
  EXPECT_THAT(h.out, HasSubstr("--join_secret_file"));
  EXPECT_THAT(h.out, ::testing::Not(HasSubstr("--token_file")));  // local: no server flags
}

}  // namespace
}  // namespace dcpmerge
