// The server binary's log: --log_format=json gives one JSON object per line
// (time with the year, level, component, message); the text format has the
// year; every admin change (Configure, SetScales, Drain), made or refused,
// is logged with its caller's peer address and token fingerprint, and the
// token itself appears nowhere.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/server/server_harness.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kToken[] = "admin-log-test-token-s3cret";
constexpr char kTokenSha256[] = "1385981b";  // first 8 hex digits of SHA-256(kToken)
constexpr char kWrongToken[] = "wrong-token-abc";
constexpr char kWrongSha256[] = "ba1ce52d";

struct Line {
  google::protobuf::Struct json;
  std::string Get(const std::string& key) const {
    auto it = json.fields().find(key);
    return it == json.fields().end() ? "<missing>" : it->second.string_value();
  }
};

// Runs a server with `args`, makes admin changes as the test's caller, stops
// it, and returns its stderr.
std::string RunAndChange(const std::vector<std::string>& args) {
  const std::string err = testing::TmpPath("server-log");
  std::vector<std::string> all = {"--world_size=1", "--num_heads=2", "--head_size=64", "--max_tokens=4", "--noquiet"};
  all.insert(all.end(), args.begin(), args.end());
  testing::ServerProc server = testing::StartServer(all, {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)}, err);
  EXPECT_GT(server.pid, 0);
  if (server.pid <= 0) return testing::ReadFile(err);
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(server.admin_target(), grpc::InsecureChannelCredentials()));
  const std::string good = absl::StrCat("Bearer ", kToken);
  v1::GetConfigResponse cfg;
  EXPECT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &cfg, good).ok());
  v1::ConfigureRequest conf;
  *conf.mutable_config() = cfg.config();
  conf.mutable_config()->set_max_tokens(8);
  v1::ConfigureResponse conf_resp;
  EXPECT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::Configure, conf, &conf_resp, good).ok());
  v1::SetScalesRequest scales;
  (*scales.mutable_layer_scales())[5] = 0.25f;
  v1::SetScalesResponse scales_resp;
  EXPECT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::SetScales, scales, &scales_resp, good).ok());
  v1::DrainRequest drain;
  drain.set_timeout_ms(100);
  v1::DrainResponse drain_resp;
  EXPECT_EQ(testing::AdminCall(admin.get(), &v1::Admin::Stub::Drain, drain, &drain_resp,
                               absl::StrCat("Bearer ", kWrongToken))
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(testing::AdminCall(admin.get(), &v1::Admin::Stub::Configure, conf, &conf_resp, "").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::Drain, drain, &drain_resp, good).ok());
  EXPECT_EQ(testing::StopServer(server), 0);
  return testing::ReadFile(err);
}

TEST(AdminLogTest, JsonLinesCarryTheCallerAndNeverTheToken) {
  const std::string log = RunAndChange({"--log_format=json"});
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
  EXPECT_THAT(log, Not(HasSubstr(kWrongToken)));

  std::vector<Line> lines;
  for (absl::string_view text : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    Line l;
    const auto st = google::protobuf::util::JsonStringToMessage(std::string(text), &l.json);
    ASSERT_TRUE(st.ok()) << st.ToString() << ": " << text;
    for (const char* key : {"time", "level", "component", "message"}) {
      EXPECT_NE(l.Get(key), "<missing>") << key << ": " << text;
    }
    absl::Time t;
    std::string err;
    EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, l.Get("time"), &t, &err)) << err << ": " << text;
    EXPECT_LT(absl::AbsDuration(absl::Now() - t), absl::Minutes(5)) << text;  // year and all
    EXPECT_THAT(l.Get("level"), MatchesRegex("info|warning|error"));
    lines.push_back(std::move(l));
  }
  ASSERT_GE(lines.size(), 8u) << log;

  auto admin_lines = [&](const std::string& method) {
    std::vector<const Line*> out;
    for (const Line& l : lines) {
      if (l.Get("component") == "admin" && l.Get("method") == method) out.push_back(&l);
    }
    return out;
  };
  // Configure: one made (ours), one refused (no token).
  const auto configure = admin_lines("Configure");
  ASSERT_EQ(configure.size(), 2u) << log;
  EXPECT_EQ(configure[0]->Get("level"), "info");
  EXPECT_THAT(configure[0]->Get("message"), HasSubstr("config version 2"));
  EXPECT_THAT(configure[0]->Get("message"), HasSubstr("max_tokens 8"));
  EXPECT_THAT(configure[0]->Get("peer"), StartsWith("ipv4:127.0.0.1:"));
  EXPECT_EQ(configure[0]->Get("token_sha256"), kTokenSha256);
  EXPECT_EQ(configure[1]->Get("level"), "warning");
  EXPECT_THAT(configure[1]->Get("message"), HasSubstr("refused: UNAUTHENTICATED"));
  EXPECT_EQ(configure[1]->Get("token_sha256"), "none");
  EXPECT_THAT(configure[1]->Get("peer"), StartsWith("ipv4:127.0.0.1:"));

  const auto set_scales = admin_lines("SetScales");
  ASSERT_EQ(set_scales.size(), 1u) << log;
  EXPECT_THAT(set_scales[0]->Get("message"), HasSubstr("config version 3: 1 layer(s)"));
  EXPECT_EQ(set_scales[0]->Get("token_sha256"), kTokenSha256);

  // Drain: refused with the wrong token (its fingerprint, not the right
  // one's), then started and finished with ours.
  const auto drain = admin_lines("Drain");
  ASSERT_EQ(drain.size(), 3u) << log;
  EXPECT_EQ(drain[0]->Get("level"), "warning");
  EXPECT_THAT(drain[0]->Get("message"), HasSubstr("refused: PERMISSION_DENIED"));
  EXPECT_EQ(drain[0]->Get("token_sha256"), kWrongSha256);
  EXPECT_THAT(drain[1]->Get("message"), HasSubstr("draining"));
  EXPECT_THAT(drain[2]->Get("message"), HasSubstr("drained"));
  EXPECT_EQ(drain[2]->Get("token_sha256"), kTokenSha256);

  // At start, which token is in force (by fingerprint).
  bool loaded = false;
  for (const Line& l : lines) {
    if (l.Get("message") == "admin token loaded") {
      loaded = true;
      EXPECT_EQ(l.Get("token_sha256"), kTokenSha256);
      EXPECT_EQ(l.Get("source"), "DCPMERGE_ADMIN_TOKEN");
    }
  }
  EXPECT_TRUE(loaded) << log;
}

TEST(AdminLogTest, TextLinesHaveTheYearAndTheCaller) {
  const std::string log = RunAndChange({});
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
  EXPECT_THAT(log, Not(HasSubstr(kWrongToken)));
  const std::string year = absl::FormatTime("%Y", absl::Now(), absl::LocalTimeZone());
  int admin = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    EXPECT_THAT(std::string(line), MatchesRegex("[IWE][0-9]{8} [0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6} [a-z_]+\\] .*"));
    EXPECT_EQ(line.substr(1, 4), year) << line;
    if (absl::StrContains(line, " admin] Configure: config version 2")) {
      ++admin;
      EXPECT_THAT(std::string(line), HasSubstr(" method=Configure peer=ipv4:127.0.0.1:"));
      EXPECT_THAT(std::string(line), HasSubstr(absl::StrCat(" token_sha256=", kTokenSha256)));
    }
    if (absl::StrContains(line, " admin] Drain: refused")) {
      ++admin;
      EXPECT_EQ(line[0], 'W');
      EXPECT_THAT(std::string(line), HasSubstr(absl::StrCat(" token_sha256=", kWrongSha256)));
    }
  }
  EXPECT_EQ(admin, 2) << log;
}

TEST(AdminLogTest, UnknownLogFormatIsAUsageError) {
  const testing::RunResult r =
      testing::RunProcess({testing::Runfile("server/dcpmerge_server"), "--rank_address=127.0.0.1:0",
                           "--admin_address=127.0.0.1:0", "--backend=cpu", "--log_format=yaml"});
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  EXPECT_THAT(r.err, HasSubstr("--log_format: 'yaml' is not text or json"));
}

}  // namespace
}  // namespace dcpmerge
