// Issue 11 ("Service hardening") against the server binary, on loopback:
//   4. SIGTERM: readiness NOT_SERVING first, no step accepted after it,
//      every step a rank sent answered (OK or UNAVAILABLE), streams end
//      UNAVAILABLE, exit 0;
//   5. a newline in a Join's host cannot forge a log line, a huge host
//      cannot grow the log; wrong admin tokens are answered at once and
//      logged rate-limited, the right token is never delayed;
//   6. a restarted server has its scales and its version (state file); a
//      corrupt state file stops the start;
//   and the limits' metrics.
// Every loop has a count, every wait a deadline.
#include <signal.h>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/rank_client.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "dcpmerge/v1/data.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/server/metrics/http_get.h"
#include "tests/server/server_harness.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "e2e-hardening-token";
constexpr int kT = 4, kH = 2, kD = 64;

struct Server {
  pid_t pid = -1;
  int rank_port = 0, admin_port = 0, metrics_port = 0, health_port = 0;
  std::string err_file;
  std::string rank_target() const { return absl::StrCat("127.0.0.1:", rank_port); }
  std::string admin_target() const { return absl::StrCat("127.0.0.1:", admin_port); }
  std::string Log() const { return testing::ReadFile(err_file); }
};

// The server binary on loopback (not --quiet: these tests read its log),
// waiting up to 30 s for its ready file. pid -1 when it did not start.
Server StartServer(int world, const std::vector<std::string>& extra) {
  Server s;
  const std::string ready = testing::TmpPath("ready");
  s.err_file = testing::TmpPath("stderr");
  std::vector<std::string> argv = {testing::Runfile("server/dcpmerge_server"), "--rank_address=127.0.0.1:0",
                                   "--admin_address=127.0.0.1:0", "--backend=cpu", "--cpu_threads=1",
                                   absl::StrCat("--world_size=", world), absl::StrCat("--num_heads=", kH),
                                   absl::StrCat("--head_size=", kD), absl::StrCat("--max_tokens=", kT),
                                   "--default_scale=0.05", absl::StrCat("--ready_file=", ready)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  const pid_t pid = testing::Spawn(argv, {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)}, "", s.err_file);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    std::ifstream in(ready);
    if (in >> s.rank_port >> s.admin_port >> s.metrics_port >> s.health_port) {
      s.pid = pid;
      return s;
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return s;
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return s;
}

// SIGTERM, then the exit code (-1: had to be killed after 20 s).
int Stop(Server& s) {
  if (s.pid <= 0) return -1;
  kill(s.pid, SIGTERM);
  const int rc = testing::WaitExit(s.pid, absl::Seconds(20));
  s.pid = -1;
  return rc;
}

std::unique_ptr<RankClient> Join(const Server& s, int rank, int world) {
  RankClientOptions o;
  o.target = s.rank_target();
  o.rank = rank;
  o.num_parts = world;
  o.merge_timeout = absl::Seconds(20);
  auto c = RankClient::Connect(o);
  if (!c.ok() || !(*c)->Join().ok()) return nullptr;
  return std::move(*c);
}

// ---------------------------------------------------------------- finding 4

// Before: during SIGTERM readiness stayed SERVING for 1.5-2 s (the metrics
// exporter's shutdown ran first) and steps were still accepted; streams
// ended CANCELLED; 1-3 steps per rank were never answered.
TEST(HardeningE2ETest, SigtermReadinessFirstEveryStepAnsweredStreamsEndUnavailable) {
  constexpr int kN = 4;
  Server s = StartServer(kN, {"--health_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0", "--quiet",
                              "--step_timeout_ms=3000"});
  ASSERT_GT(s.pid, 0) << s.Log();
  std::vector<std::unique_ptr<RankClient>> ranks;
  for (int r = 0; r < kN; ++r) {
    ranks.push_back(Join(s, r, kN));
    ASSERT_NE(ranks.back(), nullptr);
  }
  ASSERT_TRUE(ranks[0]->WaitForGroupReady(absl::Seconds(20)).ok());
  const std::string health = absl::StrCat("127.0.0.1:", s.health_port);
  ASSERT_EQ(testing::HealthStatus(health, "dcpmerge.v1.MergeData"), 1);
  // An idle extra stream, to see how streams end.
  auto stub = v1::MergeData::NewStub(grpc::CreateChannel(s.rank_target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext idle_ctx;
  idle_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto idle = stub->MergeStream(&idle_ctx);

  struct Call {
    absl::Time start, end;
    absl::Status status;
  };
  absl::Mutex mu;
  std::vector<Call> calls;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int r = 0; r < kN; ++r) {
    threads.emplace_back([&, r] {
      for (uint64_t step = 0; step < 100000 && !stop.load(); ++step) {
        const testing::PartData p = testing::MakePart(1, step, r, kT, kH, kD);
        Call c;
        c.start = absl::Now();
        c.status = ranks[r]->Merge(step, 0, kT, p.out.data(), p.out.size(), p.lse.data(), p.lse.size()).status();
        c.end = absl::Now();
        {
          absl::MutexLock lock(&mu);
          calls.push_back(c);
        }
        if (!c.status.ok()) break;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));  // stepping
  std::atomic<bool> polled{false};
  absl::Time not_serving = absl::InfiniteFuture();
  std::thread poller([&] {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (absl::Now() < until) {
      const int h = testing::HealthStatus(health, "dcpmerge.v1.MergeData");
      if (h != 1) {
        not_serving = absl::Now();
        break;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    polled = true;
  });
  absl::SleepFor(absl::Milliseconds(20));
  const absl::Time sigterm = absl::Now();
  kill(s.pid, SIGTERM);
  poller.join();
  for (auto& t : threads) t.join();
  stop = true;
  // Not half-closed: the server ends it (a stream the client half-closes
  // after all its answers ends OK, as any stream does).
  const grpc::Status idle_end = idle->Finish();
  const int rc = testing::WaitExit(s.pid, absl::Seconds(20));

  EXPECT_EQ(rc, 0);
  EXPECT_LT(not_serving - sigterm, absl::Milliseconds(500)) << "readiness must go NOT_SERVING first";
  EXPECT_EQ(idle_end.error_code(), grpc::StatusCode::UNAVAILABLE) << idle_end.error_message();
  int ok = 0, unavailable = 0;
  for (const Call& c : calls) {
    if (c.status.ok()) {
      ++ok;
      EXPECT_LT(c.start, not_serving) << "a step started after readiness went NOT_SERVING was accepted";
    } else {
      // Answered: by the server's UNAVAILABLE, never CANCELLED or a deadline.
      EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
      EXPECT_THAT(std::string(c.status.message()), HasSubstr("shutting down"));
      EXPECT_LT(c.end - sigterm, absl::Seconds(5));
      ++unavailable;
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_EQ(unavailable, kN) << "every rank's last step is answered UNAVAILABLE";
}

// ---------------------------------------------------------------- finding 5

// Before: a newline in the Join host string wrote a forged line into the
// log; a 1 MiB host string grew the log by 2 MiB per Join.
TEST(HardeningE2ETest, JoinHostCannotForgeOrFloodTheLog) {
  Server s = StartServer(2, {});
  ASSERT_GT(s.pid, 0) << s.Log();
  auto stub = v1::RankControl::NewStub(grpc::CreateChannel(s.rank_target(), grpc::InsecureChannelCredentials()));
  const std::string forged = "I1201 00:00:00.000000 dcpmerge] rank 1 joined (session 1, host forged";
  struct Case {
    std::string host;
    grpc::StatusCode code;
  };
  const Case cases[] = {{"node-7\n" + forged, grpc::StatusCode::OK},
                        {std::string(4096, 'h'), grpc::StatusCode::INVALID_ARGUMENT},
                        {std::string(1 << 20, 'h'), grpc::StatusCode::INVALID_ARGUMENT}};
  for (int i = 0; i < 10; ++i) {
    for (const Case& c : cases) {
      grpc::ClientContext ctx;
      v1::JoinRequest req;
      req.set_rank(0);
      req.set_world_size(2);
      req.set_host(c.host);
      req.set_device("cpu\r\x1b[2J");
      req.set_replace_existing(true);
      v1::JoinResponse resp;
      EXPECT_EQ(stub->Join(&ctx, req, &resp).error_code(), c.code);
    }
  }
  EXPECT_EQ(Stop(s), 0);
  const std::string log = s.Log();
  EXPECT_THAT(log, HasSubstr("host node-7\\nI1201 00:00:00.000000 dcpmerge] rank 1 joined"));
  EXPECT_THAT(log, HasSubstr("device cpu\\r\\x1b[2J"));
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    EXPECT_FALSE(absl::StartsWith(line, forged)) << "forged log line: " << line;
  }
  EXPECT_LT(log.size(), 64u << 10) << "30 joins with up to 1 MiB hosts";
}

// Round two: 2,000 wrong admin tokens in 0.4 s were not logged; then each
// failure held a handler thread for its penalty (up to 2 s), which let ~70
// wrong callers starve the listener. Now failures are answered at once and
// logged rate-limited; the right token is never delayed.
TEST(HardeningE2ETest, WrongAdminTokensAreAnsweredAtOnceAndLoggedRateLimited) {
  Server s = StartServer(2, {});
  ASSERT_GT(s.pid, 0) << s.Log();
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(s.admin_target(), grpc::InsecureChannelCredentials()));
  constexpr int kWrong = 20;
  std::vector<std::thread> threads;
  std::atomic<int> denied{0};
  const absl::Time t0 = absl::Now();
  for (int i = 0; i < kWrong; ++i) {
    threads.emplace_back([&, i] {
      v1::GetConfigResponse r;
      const grpc::Status st = testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &r,
                                                 absl::StrCat("Bearer guess-", i));
      denied += st.error_code() == grpc::StatusCode::PERMISSION_DENIED;
    });
  }
  // The right token is not slowed meanwhile.
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time r0 = absl::Now();
  v1::GetConfigResponse good;
  EXPECT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &good,
                                 absl::StrCat("Bearer ", kToken))
                  .ok());
  EXPECT_LT(absl::Now() - r0, absl::Milliseconds(500));
  for (auto& t : threads) t.join();
  const absl::Duration took = absl::Now() - t0;
  EXPECT_EQ(denied.load(), kWrong) << "within the per-address burst, each is PERMISSION_DENIED";
  EXPECT_LT(took, absl::Seconds(1)) << "no failure may hold a handler thread";
  EXPECT_EQ(Stop(s), 0);
  const std::string log = s.Log();
  int lines = 0, counted = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!absl::StrContains(line, "admin token: ")) continue;
    ++lines;
    int n = 0;
    const size_t at = line.find("admin token: ");
    if (absl::SimpleAtoi(line.substr(at + 13, line.find(' ', at + 13) - at - 13), &n)) counted += n;
    EXPECT_THAT(std::string(line), HasSubstr("PERMISSION_DENIED"));
  }
  EXPECT_EQ(counted, kWrong) << log;
  EXPECT_LE(lines, 3) << "rate-limited to one line a second";
  EXPECT_THAT(log, Not(HasSubstr("guess-")));  // never the token itself
}

// ---------------------------------------------------------------- finding 6

// Before: scales were lost on restart; every layer silently fell back to
// the default scale (wrong FP8 outputs without any error).
TEST(HardeningE2ETest, RestartedServerHasItsScalesAndVersion) {
  const std::string state = testing::TmpPath("state");
  const std::vector<std::string> flags = {absl::StrCat("--state_file=", state), "--quiet"};
  {
    Server s = StartServer(2, flags);  // no file yet and no --state_missing=fresh
    EXPECT_EQ(s.pid, -1);
    EXPECT_THAT(s.Log(), HasSubstr("state_missing=fresh"));
  }
  std::vector<std::string> first = flags;
  first.push_back("--state_missing=fresh");
  Server s = StartServer(2, first);
  ASSERT_GT(s.pid, 0) << s.Log();
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(s.admin_target(), grpc::InsecureChannelCredentials()));
  v1::SetScalesRequest req;
  (*req.mutable_layer_scales())[1] = 0.0125f;
  v1::SetScalesResponse set;
  ASSERT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::SetScales, req, &set, absl::StrCat("Bearer ", kToken))
                  .ok());
  EXPECT_EQ(Stop(s), 0);

  Server again = StartServer(2, flags);
  ASSERT_GT(again.pid, 0) << again.Log();
  admin = v1::Admin::NewStub(grpc::CreateChannel(again.admin_target(), grpc::InsecureChannelCredentials()));
  v1::GetConfigResponse cfg;
  ASSERT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &cfg,
                                 absl::StrCat("Bearer ", kToken))
                  .ok());
  EXPECT_EQ(cfg.config_version(), set.config_version());
  ASSERT_EQ(cfg.layer_scales().count(1), 1u);
  EXPECT_FLOAT_EQ(cfg.layer_scales().at(1), 0.0125f);
  // The merged output uses it: layer 1's step reports scale 0.0125.
  {
    auto r0 = Join(again, 0, 2);
    auto r1 = Join(again, 1, 2);
    ASSERT_TRUE(r0 && r1);
    absl::StatusOr<MergeResult> a = absl::UnknownError(""), b = absl::UnknownError("");
    const testing::PartData p0 = testing::MakePart(2, 1, 0, kT, kH, kD), p1 = testing::MakePart(2, 1, 1, kT, kH, kD);
    std::thread t([&] { a = r0->Merge(1, 1, kT, p0.out.data(), p0.out.size(), p0.lse.data(), p0.lse.size()); });
    b = r1->Merge(1, 1, kT, p1.out.data(), p1.out.size(), p1.lse.data(), p1.lse.size());
    t.join();
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->scales, std::vector<float>{0.0125f});
    EXPECT_EQ(a->config_version, set.config_version());
  }
  EXPECT_EQ(Stop(again), 0);

  // A damaged file stops the start, naming it.
  std::string text = testing::ReadFile(state);
  ASSERT_FALSE(text.empty());
  text[text.size() / 2] ^= 0x01;
  testing::WriteFile(state, text);
  Server broken = StartServer(2, flags);
  EXPECT_EQ(broken.pid, -1);
  EXPECT_THAT(broken.Log(), HasSubstr(state));
  EXPECT_THAT(broken.Log(), HasSubstr("checksum"));
}

// ------------------------------------------------------------ the metrics

TEST(HardeningE2ETest, LimitsAreMetrics) {
  Server s = StartServer(2, {"--metrics_address=127.0.0.1:0", "--quiet", "--max_streams=77"});
  ASSERT_GT(s.pid, 0) << s.Log();
  const testing::HttpResponse r = testing::HttpGet(s.metrics_port, "/metrics");
  ASSERT_EQ(r.status, 200);
  testing::Exposition e = testing::ParseExposition(r.body);
  EXPECT_EQ(e.types["dcpmerge_limit"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_limit_usage"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_limit_refusals_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_group_stalled"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_auth_failures_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_heap_free_bytes"], "gauge");
  EXPECT_EQ(e.Get("dcpmerge_limit{limit=\"max_streams\"}"), 77);
  EXPECT_EQ(e.Get("dcpmerge_limit{limit=\"max_message_bytes\"}"), 64 << 20);  // the derived floor
  EXPECT_EQ(e.Get("dcpmerge_limit{limit=\"max_buffered_bytes\"}"), 256 << 20);
  EXPECT_EQ(e.Get("dcpmerge_limit{limit=\"max_layers\"}"), 4096);
  EXPECT_EQ(e.Get("dcpmerge_limit_refusals_total{limit=\"max_pending_steps_per_rank\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_group_stalled"), 0);
  EXPECT_EQ(Stop(s), 0);
}

}  // namespace
}  // namespace dcpmerge
