// dcpmergectl end to end: the CLI binary against the server binary (both
// from the runfiles), loopback only. Checks every command, the exit codes
// (0 ok, 1 server error, 2 usage/invalid input, 3 unreachable, 4 condition
// not met) and that what the CLI changed is what the server then reports.
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "dcpmerge/v1/admin.pb.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using testing::RunProcess;
using testing::RunResult;
using testing::ServerProc;

constexpr char kToken[] = "ctl-test-token";
constexpr int kT = 4, kH = 2, kD = 64;

class CtlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = testing::TmpPath("token");
    testing::WriteFile(token_file_, std::string(kToken) + "\n");
    server_ = testing::StartServer({"--heartbeat_timeout_ms=5000", "--drain_timeout_ms=2000"},
                                   {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)});
    ASSERT_GT(server_.pid, 0) << "server did not start";
  }
  void TearDown() override {
    if (server_.pid > 0) {
      EXPECT_EQ(testing::StopServer(server_), 0) << "server exit code after SIGTERM";
    }
  }

  // Runs the CLI against the admin listener with the token file.
  RunResult Ctl(std::vector<std::string> args, bool with_token = true) {
    std::vector<std::string> argv = {testing::Runfile("tools/dcpmergectl/dcpmergectl"),
                                     absl::StrCat("--server=", server_.admin_target())};
    if (with_token) argv.push_back(absl::StrCat("--token_file=", token_file_));
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProcess(argv);
  }

  v1::GetConfigResponse Config() {
    RunResult r = Ctl({"get-config", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    v1::GetConfigResponse c;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &c).ok()) << r.out;
    return c;
  }

  v1::GetStatsResponse StatsJson() {
    RunResult r = Ctl({"stats", "-o", "json"});  // as --json
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    v1::GetStatsResponse s;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &s).ok()) << r.out;
    return s;
  }

  void ConfigureSmall() {
    RunResult r = Ctl({"configure", "--world_size=2", absl::StrCat("--num_heads=", kH),
                       absl::StrCat("--head_size=", kD), absl::StrCat("--max_tokens=", kT), "--input_dtype=bf16",
                       "--output_mode=fp8_per_tensor", "--default_scale=0.5"});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    EXPECT_THAT(r.out, HasSubstr("configured: version"));
  }

  std::string token_file_;
  ServerProc server_;
};

TEST_F(CtlTest, HealthConfigureSetScalesStatsDrain) {
  // Unconfigured: alive, not ready.
  RunResult h = Ctl({"health"}, /*with_token=*/false);
  EXPECT_EQ(h.exit_code, 0) << h.Describe();
  EXPECT_THAT(h.out, HasSubstr("liveness  (\"\"): SERVING"));
  EXPECT_THAT(h.out, HasSubstr("readiness (\"dcpmerge.v1.MergeData\"): NOT_SERVING"));
  EXPECT_EQ(Ctl({"health", "--ready"}, false).exit_code, 4);
  EXPECT_FALSE(Config().configured());

  ConfigureSmall();
  v1::GetConfigResponse c = Config();
  EXPECT_TRUE(c.configured());
  EXPECT_EQ(c.config().world_size(), 2);
  EXPECT_EQ(c.config().num_heads(), kH);
  EXPECT_EQ(c.config().head_size(), kD);
  EXPECT_EQ(c.config().max_tokens(), kT);
  EXPECT_EQ(c.config().input_dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_FLOAT_EQ(c.default_scale(), 0.5f);
  const uint64_t v1_version = c.config_version();

  // A partial configure changes only what it names.
  RunResult p = Ctl({"configure", "--return_lse"});
  ASSERT_EQ(p.exit_code, 0) << p.Describe();
  c = Config();
  EXPECT_TRUE(c.config().return_lse());
  EXPECT_EQ(c.config().num_heads(), kH);
  EXPECT_GT(c.config_version(), v1_version);
  RunResult back = Ctl({"configure", "--noreturn_lse"});
  ASSERT_EQ(back.exit_code, 0) << back.Describe();
  EXPECT_FALSE(Config().config().return_lse());

  // Scales: from a file, merged; one layer; replace.
  const std::string scales = testing::TmpPath("scales.json");
  testing::WriteFile(scales, "{\n  \"0\": 0.0125,\n  \"5\": 0.25\n}\n");
  RunResult s = Ctl({"set-scales", absl::StrCat("--file=", scales)});
  ASSERT_EQ(s.exit_code, 0) << s.Describe();
  EXPECT_THAT(s.out, HasSubstr("scales updated: version"));
  RunResult one = Ctl({"set-scale", "9", "0.75"});
  ASSERT_EQ(one.exit_code, 0) << one.Describe();
  c = Config();
  ASSERT_EQ(c.layer_scales_size(), 3);
  EXPECT_FLOAT_EQ(c.layer_scales().at(0), 0.0125f);
  EXPECT_FLOAT_EQ(c.layer_scales().at(5), 0.25f);
  EXPECT_FLOAT_EQ(c.layer_scales().at(9), 0.75f);
  RunResult human = Ctl({"get-config"});
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_THAT(human.out, HasSubstr("layer scales     0=0.0125 5=0.25 9=0.75"));
  testing::WriteFile(scales, "{\"5\": 0.5}");
  RunResult rep = Ctl({"set-scales", absl::StrCat("--file=", scales), "--replace", "--default_scale=0.125"});
  ASSERT_EQ(rep.exit_code, 0) << rep.Describe();
  c = Config();
  ASSERT_EQ(c.layer_scales_size(), 1);
  EXPECT_FLOAT_EQ(c.layer_scales().at(5), 0.5f);
  EXPECT_FLOAT_EQ(c.default_scale(), 0.125f);

  // Steps through the rank client move the stats; the group is then ready.
  ASSERT_TRUE(testing::RunSteps(server_.rank_target(), 2, 1, 3, 5, kT, kH, kD).ok());
  v1::GetStatsResponse st = StatsJson();
  EXPECT_EQ(st.steps_ok(), 3u);
  EXPECT_EQ(st.steps_failed(), 0u);
  EXPECT_EQ(st.bytes_in(), 3u * 2 * (kT * kH * kD * 2 + kT * kH * 4));
  EXPECT_GT(st.bytes_out(), 0u);
  EXPECT_EQ(st.total().count(), 3u);
  RunResult table = Ctl({"stats"});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_THAT(table.out, HasSubstr("steps ok         3"));

  // Drain: idle -> exit 0; afterwards the merge service is not ready.
  RunResult d = Ctl({"drain", "--drain_timeout_ms=1000"});
  EXPECT_EQ(d.exit_code, 0) << d.Describe();
  EXPECT_THAT(d.out, HasSubstr("drained: yes"));
  EXPECT_EQ(Ctl({"health", "--ready"}, false).exit_code, 4);
  EXPECT_TRUE(Config().draining());
}

TEST_F(CtlTest, TokenErrorsAreServerErrors) {
  RunResult missing = Ctl({"get-config"}, /*with_token=*/false);
  EXPECT_EQ(missing.exit_code, 1) << missing.Describe();
  EXPECT_THAT(missing.err, HasSubstr("UNAUTHENTICATED"));

  const std::string wrong = testing::TmpPath("wrong-token");
  testing::WriteFile(wrong, "not-the-token\n");
  RunResult denied = Ctl({absl::StrCat("--token_file=", wrong), "stats"}, false);
  EXPECT_EQ(denied.exit_code, 1) << denied.Describe();
  EXPECT_THAT(denied.err, HasSubstr("PERMISSION_DENIED"));

  // The environment variable is the other source.
  RunResult env = RunProcess({testing::Runfile("tools/dcpmergectl/dcpmergectl"),
                       absl::StrCat("--server=", server_.admin_target()), "get-config"},
                      {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)});
  EXPECT_EQ(env.exit_code, 0) << env.Describe();

  // An unreadable token file is invalid input, not a server error.
  RunResult nofile = Ctl({"--token_file=/nonexistent/token", "stats"}, false);
  EXPECT_EQ(nofile.exit_code, 2) << nofile.Describe();
  EXPECT_THAT(nofile.err, HasSubstr("--token_file"));
}

TEST_F(CtlTest, InvalidInputIsExitTwoAndChangesNothing) {
  ConfigureSmall();
  const uint64_t version = Config().config_version();
  struct Case {
    std::string content;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"{\"1\": 0.5,}", "trailing ','"},
      {"{\"1\": -2}", "layer \"1\": scale -2 must be > 0"},
      {"{\"x\": 1}", "layer id \"x\" is not a non-negative decimal integer"},
      {"{\"1\": 1, \"1\": 2}", "duplicate layer 1"},
      {"", "empty file"},
  };
  for (const Case& k : cases) {
    const std::string f = testing::TmpPath("bad.json");
    testing::WriteFile(f, k.content);
    RunResult r = Ctl({"set-scales", absl::StrCat("--file=", f)});
    EXPECT_EQ(r.exit_code, 2) << k.content << "\n" << r.Describe();
    EXPECT_THAT(r.err, HasSubstr("invalid scales file")) << k.content;
    EXPECT_THAT(r.err, HasSubstr(k.message)) << k.content;
  }
  RunResult nofile = Ctl({"set-scales", "--file=/nonexistent/scales.json"});
  EXPECT_EQ(nofile.exit_code, 2) << nofile.Describe();
  EXPECT_THAT(nofile.err, HasSubstr("cannot read /nonexistent/scales.json"));
  EXPECT_EQ(Ctl({"set-scale", "3", "0"}).exit_code, 2);
  EXPECT_EQ(Ctl({"set-scale", "3", "inf"}).exit_code, 2);
  EXPECT_EQ(Ctl({"set-scale", "x", "1"}).exit_code, 2);
  EXPECT_EQ(Ctl({"set-scale", "3"}).exit_code, 2);
  EXPECT_EQ(Ctl({"configure", "--input_dtype=int8"}).exit_code, 2);
  EXPECT_EQ(Ctl({"configure", "--num_heads=many"}).exit_code, 2);
  EXPECT_EQ(Ctl({"stats", "--file=x"}).exit_code, 2);
  EXPECT_EQ(Ctl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Ctl({"--bogus_flag", "stats"}).exit_code, 2);
  EXPECT_EQ(Ctl({}).exit_code, 2);
  EXPECT_EQ(Config().config_version(), version) << "invalid input must not reach the server";

  // The server validates what it owns: INVALID_ARGUMENT is a server error.
  RunResult bad_cfg = Ctl({"configure", "--num_heads=0"});
  EXPECT_EQ(bad_cfg.exit_code, 1) << bad_cfg.Describe();
  EXPECT_THAT(bad_cfg.err, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(bad_cfg.err, HasSubstr("num_heads"));
  EXPECT_EQ(Config().config_version(), version);

  RunResult help = Ctl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("exit codes:"));
  EXPECT_THAT(help.out, HasSubstr("3  server unreachable"));
}

// Rotation: the server re-reads --admin_token_file (every 2 s, and at once on
// SIGHUP); an emptied file keeps the current token.
TEST_F(CtlTest, OutputJsonSpellings) {
  ConfigureSmall();
  const RunResult a = Ctl({"get-config", "--json"});
  const RunResult b = Ctl({"get-config", "-o", "json"});
  const RunResult c = Ctl({"get-config", "--output=json"});
  ASSERT_EQ(a.exit_code, 0) << a.Describe();
  v1::GetConfigResponse ja, jb, jc;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(a.out, &ja).ok()) << a.out;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(b.out, &jb).ok()) << b.out;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(c.out, &jc).ok()) << c.out;
  EXPECT_EQ(ja.config_version(), jb.config_version());
  EXPECT_EQ(ja.config_version(), jc.config_version());
  const RunResult table = Ctl({"get-config", "-o", "table"});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_THAT(table.out, HasSubstr("world_size 2, num_heads 2"));
  EXPECT_EQ(Ctl({"stats", "-o", "yaml"}).exit_code, 2);
  EXPECT_EQ(Ctl({"drain", "-o", "json"}).exit_code, 2);  // drain prints no table
}

// Strings the server hands back come from its callers: a member's host and
// device reach the table escaped (no control byte reaches the terminal) and
// the JSON intact.
TEST_F(CtlTest, UntrustedStringsPrintEscaped) {
  ConfigureSmall();
  const std::string host = "evil\n\x1b[31mred\x07";
  const std::string device = "cuda:0\r\x1b]0;title\x07\x7f";
  auto control =
      v1::RankControl::NewStub(grpc::CreateChannel(server_.rank_target(), grpc::InsecureChannelCredentials()));
  v1::JoinRequest join;
  join.set_rank(0);
  join.set_world_size(2);
  join.set_host(host);
  join.set_device(device);
  join.set_pid(1);
  v1::JoinResponse joined;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::Status st = control->Join(&ctx, join, &joined);
  ASSERT_TRUE(st.ok()) << st.error_message();

  const RunResult table = Ctl({"get-config"});
  ASSERT_EQ(table.exit_code, 0) << table.Describe();
  EXPECT_THAT(table.out, HasSubstr("evil\\n\\x1b[31mred\\x07"));
  EXPECT_THAT(table.out, HasSubstr("cuda:0\\r\\x1b]0;title\\x07\\x7f"));
  for (const char c : table.out) {
    EXPECT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7f)) << "byte " << static_cast<int>(c) << " in\n" << table.out;
  }
  // The member is still one line: host and device on it.
  const std::vector<std::string> lines = absl::StrSplit(table.out, '\n');
  EXPECT_EQ(std::count_if(
                lines.begin(), lines.end(),
                [](const std::string& l) { return absl::StrContains(l, "evil") && absl::StrContains(l, "cuda:0"); }),
            1)
      << table.out;

  const RunResult json = Ctl({"get-config", "-o", "json"});
  ASSERT_EQ(json.exit_code, 0) << json.Describe();
  EXPECT_EQ(json.out.find('\x1b'), std::string::npos) << json.out;
  EXPECT_EQ(json.out.find('\x07'), std::string::npos) << json.out;
  v1::GetConfigResponse c;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &c).ok()) << json.out;
  ASSERT_EQ(c.members_size(), 1);
  EXPECT_EQ(c.members(0).host(), host);
  EXPECT_EQ(c.members(0).device(), device);
}

// Help and version are answered locally: no server, no token.
TEST(CtlHelpTest, PerCommandHelpAndTheHelpAndVersionCommands) {
  const std::string ctl = testing::Runfile("tools/dcpmergectl/dcpmergectl");
  const RunResult h = RunProcess({ctl, "stats", "--help"});
  EXPECT_EQ(h.exit_code, 0) << h.Describe();
  EXPECT_THAT(h.out, HasSubstr("usage: dcpmergectl [FLAGS] stats"));
  EXPECT_THAT(h.out, HasSubstr("--output"));
  EXPECT_THAT(h.out, ::testing::Not(HasSubstr("--replace")));
  const RunResult hc = RunProcess({ctl, "help", "set-scales"});
  EXPECT_EQ(hc.exit_code, 0) << hc.Describe();
  EXPECT_THAT(hc.out, HasSubstr("--replace"));
  const RunResult all = RunProcess({ctl, "help"});
  EXPECT_EQ(all.exit_code, 0);
  EXPECT_THAT(all.out, HasSubstr("exit codes:"));
  EXPECT_EQ(RunProcess({ctl, "help", "no-such-command"}).exit_code, 2);
  for (const char* spelling : {"version", "--version"}) {
    const RunResult v = RunProcess({ctl, spelling});
    EXPECT_EQ(v.exit_code, 0) << v.Describe();
    EXPECT_THAT(v.out, ::testing::MatchesRegex("dcpmergectl 0\\.2\\.0 \\(commit (unknown|[0-9a-f]+(-dirty)?)\\)\n"));
  }
}

TEST(CtlTokenRotationTest, ServerPicksUpANewTokenFile) {
  const std::string server_token = testing::TmpPath("server-token");
  const std::string old_token = testing::TmpPath("old"), new_token = testing::TmpPath("new");
  testing::WriteFile(server_token, "token-one\n");
  testing::WriteFile(old_token, "token-one\n");
  testing::WriteFile(new_token, "token-two\n");
  ServerProc s = testing::StartServer({absl::StrCat("--admin_token_file=", server_token)}, {});
  ASSERT_GT(s.pid, 0);
  auto ctl = [&](const std::string& token_file) {
    return RunProcess({testing::Runfile("tools/dcpmergectl/dcpmergectl"), absl::StrCat("--server=", s.admin_target()),
                       absl::StrCat("--token_file=", token_file), "stats"});
  };
  EXPECT_EQ(ctl(old_token).exit_code, 0);
  EXPECT_EQ(ctl(new_token).exit_code, 1);

  // Rotate by replacing the file (as a Secret update does), then SIGHUP.
  testing::WriteFile(server_token + ".tmp", "token-two\n");
  ASSERT_EQ(rename((server_token + ".tmp").c_str(), server_token.c_str()), 0);
  kill(s.pid, SIGHUP);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ctl(new_token).exit_code != 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(ctl(new_token).exit_code, 0) << "new token not accepted after rotation";
  RunResult old = ctl(old_token);
  EXPECT_EQ(old.exit_code, 1);
  EXPECT_THAT(old.err, HasSubstr("PERMISSION_DENIED"));

  // Without a signal: the periodic re-read (every 2 s) picks it up too.
  testing::WriteFile(server_token, "token-one\n");
  const absl::Time deadline2 = absl::Now() + absl::Seconds(10);
  while (ctl(old_token).exit_code != 0 && absl::Now() < deadline2) absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(ctl(old_token).exit_code, 0) << "token file change not picked up without SIGHUP";

  // An empty file (rotation half done) keeps the current token.
  testing::WriteFile(server_token, "");
  kill(s.pid, SIGHUP);
  absl::SleepFor(absl::Milliseconds(2500));
  EXPECT_EQ(ctl(old_token).exit_code, 0);
  EXPECT_EQ(testing::StopServer(s), 0);
}

TEST(CtlUnreachableTest, ClosedPortIsExitThree) {
  // A port that was free a moment ago (bound, then closed).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  close(fd);
  const absl::Time t0 = absl::Now();
  RunResult r = RunProcess({testing::Runfile("tools/dcpmergectl/dcpmergectl"), absl::StrCat("--server=127.0.0.1:", port),
                     "--deadline_ms=500", "stats"},
                    {"DCPMERGE_ADMIN_TOKEN=x"});
  EXPECT_EQ(r.exit_code, 3) << r.Describe();
  EXPECT_THAT(r.err, HasSubstr("cannot reach"));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  RunResult h = RunProcess({testing::Runfile("tools/dcpmergectl/dcpmergectl"), absl::StrCat("--server=127.0.0.1:", port),
                     "--deadline_ms=500", "health"});
  EXPECT_EQ(h.exit_code, 3) << h.Describe();
}

}  // namespace
}  // namespace dcpmerge
