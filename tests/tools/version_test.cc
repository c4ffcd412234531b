// One version everywhere: every binary's --version, Admin.GetConfig's
// server_version/server_commit (and dcpmergectl get-config), the newest
// CHANGELOG.md section, the image tag the overlays deploy and the
// Dockerfile's build example.
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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

std::string VersionLineRegex(const std::string& program) {
  std::string version = kVersion;
  std::string escaped;
  for (char c : version) escaped += c == '.' ? std::string("\\.") : std::string(1, c);
  return absl::StrCat("^", program, " ", escaped, " \\(commit (unknown|[0-9a-f]{12}(-dirty)?)\\)\n$");
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
    EXPECT_TRUE(std::regex_search(r.out, std::regex(VersionLineRegex(name)))) << path << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("(commit ", BuildCommit(), ")"))) << path;
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
  std::smatch m;
  ASSERT_TRUE(std::regex_search(changelog, m, std::regex("\n## \\[([0-9]+\\.[0-9]+\\.[0-9]+)\\]")));
  EXPECT_EQ(m[1].str(), kVersion) << "the newest CHANGELOG.md section is the release base/version.h names";
  for (const char* overlay : {"group-a", "group-b", "group-c-nccl"}) {
    const std::string k =
        testing::ReadFile(testing::Runfile(absl::StrCat("deploy/k8s/overlays/", overlay, "/kustomization.yaml")));
    ASSERT_TRUE(std::regex_search(k, m, std::regex("newTag: *\"?([^\"\\s]+)"))) << overlay;
    EXPECT_EQ(m[1].str(), kVersion) << overlay << " deploys another release's image";
  }
  const std::string dockerfile = testing::ReadFile(testing::Runfile("deploy/Dockerfile"));
  EXPECT_THAT(dockerfile, HasSubstr(absl::StrCat("--build-arg VERSION=", kVersion, " ")));
}

}  // namespace
}  // namespace dcpmerge
