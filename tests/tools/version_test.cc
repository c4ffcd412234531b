// One version everywhere: every binary's --version, Admin.GetConfig's
// server_version/server_commit (and dcpmergectl get-config), the newest
// CHANGELOG.md section, the image tag the overlays deploy and the
// Dockerfile's build example.
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/version.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/server/server_harness.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// The text after the first `marker` in `text`, up to the first of `ends`.
std::string After(const std::string& text, const std::string& marker, const std::string& ends) {
  const size_t at = text.find(marker);
  if (at == std::string::npos) return "<no " + marker + ">";
  const size_t from = at + marker.size();
  return text.substr(from, text.find_first_of(ends, from) - from);
}

TEST(VersionTest, EveryBinaryAnswersVersion) {
  const std::vector<std::pair<std::string, std::string>> binaries = {
      {"server/dcpmerge_server", "dcpmerge_server"},
      {"tools/dcpmergectl/dcpmergectl", "dcpmergectl"},
      {"tools/dcpmerge_demo", "dcpmerge_demo"},
      {"bench/grpc_plane_bench", "grpc_plane_bench"},
      {"bench/merge_bench", "merge_bench"},
      {"client/examples/merge_example", "merge_example"},
  };
  for (const auto& [path, name] : binaries) {
    const testing::RunResult r = testing::RunProcess({testing::Runfile(path), "--version"});
    EXPECT_EQ(r.exit_code, 0) << path << "\n" << r.Describe();
    EXPECT_EQ(r.out, VersionLine(name) + "\n") << path;
    EXPECT_THAT(r.out, MatchesRegex(absl::StrCat(name, " [0-9]+\\.[0-9]+\\.[0-9]+ \\(commit "
                                                 "(unknown|[0-9a-f]{12}(-dirty)?)\\)\n")))
        << path;
  }
}

TEST(VersionTest, GetConfigReportsTheServersVersion) {
  constexpr char kToken[] = "version-test-token";
  testing::ServerProc server = testing::StartServer({}, {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)});
  ASSERT_GT(server.pid, 0);
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(server.admin_target(), grpc::InsecureChannelCredentials()));
  v1::GetConfigResponse cfg;
  ASSERT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &cfg,
                                 absl::StrCat("Bearer ", kToken))
                  .ok());
  EXPECT_EQ(cfg.server_version(), kVersion);
  EXPECT_EQ(cfg.server_commit(), BuildCommit());
  const testing::RunResult ctl = testing::RunProcess(
      {testing::Runfile("tools/dcpmergectl/dcpmergectl"), absl::StrCat("--server=", server.admin_target()),
       "get-config"},
      {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)});
  EXPECT_EQ(ctl.exit_code, 0) << ctl.Describe();
  EXPECT_THAT(ctl.out, HasSubstr(absl::StrCat("server version   ", kVersion, " (commit ", BuildCommit(), ")")));
  const testing::RunResult json = testing::RunProcess(
      {testing::Runfile("tools/dcpmergectl/dcpmergectl"), absl::StrCat("--server=", server.admin_target()),
       "get-config", "-o", "json"},
      {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)});
  EXPECT_THAT(json.out, HasSubstr(absl::StrCat("\"server_version\": \"", kVersion, "\"")));
  EXPECT_EQ(testing::StopServer(server), 0);
}

// The release number is written in a few places by hand; they agree.
TEST(VersionTest, OneReleaseNumberEverywhere) {
  const std::string changelog = testing::ReadFile(testing::Runfile("CHANGELOG.md"));
  EXPECT_EQ(After(changelog, "\n## [", "]"), kVersion)
      << "the newest CHANGELOG.md section is the release base/version.h names";
  for (const char* overlay : {"group-a", "group-b", "group-c-nccl"}) {
    const std::string k =
        testing::ReadFile(testing::Runfile(absl::StrCat("deploy/k8s/overlays/", overlay, "/kustomization.yaml")));
    std::string tag = After(k, "newTag:", "\n");
    absl::StripAsciiWhitespace(&tag);
    EXPECT_EQ(std::string(absl::StripSuffix(absl::StripPrefix(tag, "\""), "\"")), kVersion)
        << overlay << " deploys another release's image";
  }
  const std::string dockerfile = testing::ReadFile(testing::Runfile("deploy/Dockerfile"));
  EXPECT_THAT(dockerfile, HasSubstr(absl::StrCat("--build-arg VERSION=", kVersion, " ")));
}

}  // namespace
}  // namespace dcpmerge
