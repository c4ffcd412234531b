// Issue 18 ("Hardening, round three") as a hostile client on loopback tries
// it, against the server binary:
//   1. 200 wrong-credential rank callers and 200 wrong-token admin callers
//      for $DCPMERGE_ATTACK_SECONDS (30): no legitimate step, heartbeat or
//      admin call fails, no rank is dropped, the attackers get only
//      UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED;
//   2. 1,100 idle TCP connections against an open-file limit of 1,024, held
//      20 s: within 10 s of their release the listeners accept again, or
//      liveness went NOT_SERVING and the process exited 3;
//   3. SIGTERM with 4 ranks stepping, 4 parts in flight each: every part
//      written before the signal is answered, OK or UNAVAILABLE.
// Every loop has a count, every wait a deadline.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/percentile.h"
#include "client/rank_client.h"
#include "common/join_secret.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "dcpmerge/v1/data.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/server/server_harness.h"
#include "tests/server/test_data.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

constexpr int kN = 4, kT = 4, kH = 2, kD = 64;
constexpr char kAdminToken[] = "attack-e2e-admin-token";
constexpr char kGroupSecret[] = "attack-e2e-group-secret";
constexpr char kLiveness[] = "";

// The server binary for a group of kN ranks, with a join secret and an
// admin token; its log (not --quiet: the tests read it) goes to `log`.
testing::ServerProc StartGroupServer(const std::vector<std::string>& flags, const std::string& log,
                                     const std::vector<std::string>& launcher = {}) {
  std::vector<std::string> args = {"--quiet=false",
                                   "--cpu_threads=1",
                                   absl::StrCat("--world_size=", kN),
                                   absl::StrCat("--num_heads=", kH),
                                   absl::StrCat("--head_size=", kD),
                                   absl::StrCat("--max_tokens=", kT),
                                   "--default_scale=0.05"};
  args.insert(args.end(), flags.begin(), flags.end());
  return testing::StartServer(
      args, {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kAdminToken), absl::StrCat("DCPMERGE_JOIN_SECRET=", kGroupSecret)},
      log, launcher);
}

// A channel with a connection of its own: gRPC shares connections between
// channels with equal arguments, and these tests count connections (the
// attackers' spread, a probe that must open a new one).
std::shared_ptr<grpc::Channel> OwnChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// grpc.health.v1 status of `service`: 1 SERVING, 2 NOT_SERVING, -1 no answer.
int CheckHealth(grpc::health::v1::Health::Stub* stub, const std::string& service, absl::Duration deadline) {
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(deadline));
  if (!stub->Check(&ctx, req, &resp).ok()) return -1;
  return resp.status();
}

std::string Bearer(const std::string& credential) { return JoinSecretMetadataValue(credential); }

// Kills the server if the test ends early (a failed ASSERT), so that no
// server outlives its test; StopServer and WaitExit leave pid -1.
class KillAtExit {
 public:
  explicit KillAtExit(testing::ServerProc* s) : s_(s) {}
  ~KillAtExit() {
    if (s_->pid > 0) {
      kill(s_->pid, SIGKILL);
      waitpid(s_->pid, nullptr, 0);
    }
  }

 private:
  testing::ServerProc* const s_;
};

// ------------------------------------------------------------ the ranks

// Counts a rank client's heartbeats (its heartbeat thread reports each).
class HeartbeatCounter : public RankClient::SessionObserver {
 public:
  void SessionEnding(End) override {}
  void SessionStarted(const v1::JoinResponse&) override {}
  void HeartbeatDone(const absl::Status& status, const v1::HeartbeatResponse&) override {
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      ++ok_;
    } else if (failed_++ == 0) {
      first_failure_ = status;
    }
  }
  int ok() const {
    absl::MutexLock lock(&mu_);
    return ok_;
  }
  int failed() const {
    absl::MutexLock lock(&mu_);
    return failed_;
  }
  absl::Status first_failure() const {
    absl::MutexLock lock(&mu_);
    return first_failure_;
  }

 private:
  mutable absl::Mutex mu_;
  int ok_ ABSL_GUARDED_BY(mu_) = 0;
  int failed_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status first_failure_ ABSL_GUARDED_BY(mu_);
};

struct Rank {
  HeartbeatCounter heartbeats;  // outlives the client, which reports to it
  std::unique_ptr<RankClient> client;
  uint64_t session_id = 0;
};

// Joins ranks 0..kN-1, each with the group secret (it derives its own rank
// token), heartbeats on, and waits for the group. Empty on failure.
std::vector<std::unique_ptr<Rank>> JoinGroup(const testing::ServerProc& s) {
  std::vector<std::unique_ptr<Rank>> ranks;
  for (int r = 0; r < kN; ++r) {
    RankClientOptions o;
    o.target = s.rank_target();
    o.rank = r;
    o.num_parts = kN;
    o.join_secret = kGroupSecret;
    o.merge_timeout = absl::Seconds(20);
    auto c = RankClient::Connect(o);
    if (!c.ok()) return {};
    auto rank = std::make_unique<Rank>();
    rank->client = std::move(*c);
    if (!rank->client->SetSessionObserver(&rank->heartbeats).ok() || !rank->client->Join().ok()) return {};
    rank->session_id = rank->client->join_info().session_id();
    ranks.push_back(std::move(rank));
  }
  for (auto& r : ranks) {
    if (!r->client->WaitForGroupReady(absl::Seconds(20)).ok()) return {};
  }
  return ranks;
}

// ------------------------------------------------- 1. wrong credentials

absl::Duration AttackDuration() {
  int seconds = 30;  // what the issue asks for
  if (const char* env = std::getenv("DCPMERGE_ATTACK_SECONDS"); env != nullptr) {
    if (!absl::SimpleAtoi(env, &seconds) || seconds < 1 || seconds > 600) seconds = 30;
  }
  return absl::Seconds(seconds);
}

// What attackers got back, by status code, and one example of a status an
// attacker must never get.
class Outcomes {
 public:
  void Add(const grpc::Status& st) {
    const int code = st.error_code();
    counts_[code >= 0 && code < kCodes ? code : grpc::StatusCode::UNKNOWN].fetch_add(1, std::memory_order_relaxed);
    if (!Allowed(st.error_code())) {
      absl::MutexLock lock(&mu_);
      if (example_.empty()) example_ = absl::StrCat("code ", code, ": ", st.error_message());
    }
  }
  static bool Allowed(grpc::StatusCode code) {
    return code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED ||
           code == grpc::StatusCode::RESOURCE_EXHAUSTED;
  }
  uint64_t Total() const {
    uint64_t n = 0;
    for (const auto& c : counts_) n += c.load();
    return n;
  }
  uint64_t Disallowed() const {
    uint64_t n = 0;
    for (int code = 0; code < kCodes; ++code) {
      if (!Allowed(static_cast<grpc::StatusCode>(code))) n += counts_[code].load();
    }
    return n;
  }
  std::string Describe() const {
    std::string out = absl::StrCat(Total(), " calls:");
    for (int code = 0; code < kCodes; ++code) {
      if (counts_[code].load() > 0) {
        absl::StrAppend(&out, " ", absl::StatusCodeToString(static_cast<absl::StatusCode>(code)), " ",
                        counts_[code].load());
      }
    }
    absl::MutexLock lock(&mu_);
    if (!example_.empty()) absl::StrAppend(&out, " (e.g. ", example_, ")");
    return out;
  }

 private:
  static constexpr int kCodes = 17;
  std::atomic<uint64_t> counts_[kCodes] = {};
  mutable absl::Mutex mu_;
  std::string example_ ABSL_GUARDED_BY(mu_);
};

// 200 + 200 callers; 10 share a connection, so the attack needs 40.
constexpr int kRankAttackers = 200, kAdminAttackers = 200, kAttackersPerChannel = 10;
constexpr int kMaxCallsPerAttacker = 1000000;

// One rank attacker: Join or Heartbeat in a tight loop, with no token, a
// token of another secret, garbage, or rank 0's real token used as rank 1-3.
void AttackRanks(int id, v1::RankControl::Stub* stub, const std::atomic<bool>& stop, Outcomes* out) {
  const int rank = 1 + id % (kN - 1);
  for (int n = 0; n < kMaxCallsPerAttacker && !stop.load(std::memory_order_relaxed); ++n) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineIn(absl::Seconds(5)));
    v1::JoinRequest join;
    join.set_rank(rank);
    join.set_world_size(kN);
    join.set_host("attacker");
    join.set_replace_existing(true);
    v1::JoinResponse joined;
    switch (id % 4) {
      case 0:  // no credential
        out->Add(stub->Join(&ctx, join, &joined));
        break;
      case 1:  // a well-formed token of another group's secret
        ctx.AddMetadata(kJoinSecretMetadataKey, Bearer(RankToken("not-the-group-secret", rank)));
        out->Add(stub->Join(&ctx, join, &joined));
        break;
      case 2: {  // garbage, on the heartbeat path, guessing a session
        ctx.AddMetadata(kJoinSecretMetadataKey, Bearer(absl::StrCat("guess-", id, "-", n)));
        v1::HeartbeatRequest hb;
        hb.set_rank(rank);
        hb.set_session_id(static_cast<uint64_t>(n) * 2654435761u + id);
        v1::HeartbeatResponse resp;
        out->Add(stub->Heartbeat(&ctx, hb, &resp));
        break;
      }
      default:  // rank 0's own token, replacing another rank
        ctx.AddMetadata(kJoinSecretMetadataKey, Bearer(RankToken(kGroupSecret, 0)));
        out->Add(stub->Join(&ctx, join, &joined));
        break;
    }
  }
}

// One admin attacker: GetConfig or SetScales without or with a wrong token.
void AttackAdmin(int id, v1::Admin::Stub* stub, const std::atomic<bool>& stop, Outcomes* out) {
  for (int n = 0; n < kMaxCallsPerAttacker && !stop.load(std::memory_order_relaxed); ++n) {
    const std::string auth = id % 3 == 0 ? "" : absl::StrCat("Bearer wrong-admin-token-", id);
    if (id % 2 == 0) {
      v1::GetConfigResponse resp;
      out->Add(testing::AdminCall(stub, &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &resp, auth));
    } else {
      v1::SetScalesRequest req;
      (*req.mutable_layer_scales())[0] = 1000.0f;
      v1::SetScalesResponse resp;
      out->Add(testing::AdminCall(stub, &v1::Admin::Stub::SetScales, req, &resp, auth));
    }
  }
}

// Ranks that step in lockstep until told to stop; a stop lands at a step
// every rank still runs (no rank is left alone in a step).
class Stepping {
 public:
  explicit Stepping(std::vector<std::unique_ptr<Rank>>* ranks) : ranks_(ranks) {
    for (int r = 0; r < kN; ++r) threads_.emplace_back([this, r] { Run(r); });
  }
  void StopAndJoin() {
    {
      absl::MutexLock lock(&mu_);
      stop_requested_ = true;
    }
    for (auto& t : threads_) t.join();
  }
  // Steps every rank ran (after StopAndJoin), their latencies, failures.
  uint64_t steps() const {
    absl::MutexLock lock(&mu_);
    return stop_at_;
  }
  std::vector<double> latencies_ms() const {
    absl::MutexLock lock(&mu_);
    return latencies_ms_;
  }
  int failures() const {
    absl::MutexLock lock(&mu_);
    return failures_;
  }
  absl::Status first_failure() const {
    absl::MutexLock lock(&mu_);
    return first_failure_;
  }

 private:
  static constexpr uint64_t kMaxSteps = 1000000;

  void Run(int r) {
    RankClient* client = (*ranks_)[r]->client.get();
    for (uint64_t step = 0; step < kMaxSteps; ++step) {
      {
        // A rank deciding here has not sent `step`, so no rank is past it:
        // every rank runs exactly the steps below stop_at_.
        absl::MutexLock lock(&mu_);
        if (stop_requested_ && stop_at_ == kMaxSteps) stop_at_ = step + 1;
        if (step >= stop_at_) return;
      }
      const testing::PartData p = testing::MakePart(3, step, r, kT, kH, kD);
      const absl::Time start = absl::Now();
      const absl::Status st =
          client->Merge(step, 0, kT, p.out.data(), p.out.size(), p.lse.data(), p.lse.size()).status();
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
      absl::MutexLock lock(&mu_);
      latencies_ms_.push_back(ms);
      if (!st.ok() && failures_++ == 0) first_failure_ = st;
    }
  }

  std::vector<std::unique_ptr<Rank>>* const ranks_;
  mutable absl::Mutex mu_;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t stop_at_ ABSL_GUARDED_BY(mu_) = kMaxSteps;
  std::vector<double> latencies_ms_ ABSL_GUARDED_BY(mu_);
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status first_failure_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

// The members' (rank, session) as the admin sees them.
std::map<int, uint64_t> Sessions(const v1::GetConfigResponse& cfg) {
  std::map<int, uint64_t> out;
  for (const v1::Member& m : cfg.members()) out[m.rank()] = m.session_id();
  return out;
}

// Before: ~70 concurrent wrong-secret calls filled the rank listener's
// threads (each slept its penalty); heartbeats failed from ~1 s and all 4
// ranks were dropped at ~10 s; 31 of 41 legitimate admin calls failed.
TEST(AttackE2ETest, WrongCredentialFloodLeavesRanksAndOperatorsUntouched) {
  const absl::Duration attack = AttackDuration();
  const std::string log = testing::TmpPath("server-log");
  // Heartbeats every 750 ms, dropped after 3 s: a stall would show.
  testing::ServerProc s = StartGroupServer({"--heartbeat_timeout_ms=3000"}, log);
  ASSERT_GT(s.pid, 0) << testing::ReadFile(log);
  KillAtExit kill_at_exit(&s);
  std::vector<std::unique_ptr<Rank>> ranks = JoinGroup(s);
  ASSERT_EQ(ranks.size(), static_cast<size_t>(kN)) << testing::ReadFile(log);
  std::map<int, uint64_t> sessions;
  for (int r = 0; r < kN; ++r) sessions[r] = ranks[r]->session_id;

  // The operator: GetConfig every 100 ms; the members keep their sessions.
  auto admin = v1::Admin::NewStub(OwnChannel(s.admin_target()));
  std::atomic<bool> stop_admin{false};
  int admin_calls = 0, admin_failures = 0, session_changes = 0;
  double admin_max_ms = 0;
  std::string admin_problem;
  std::thread operator_thread([&] {
    const absl::Time until = absl::Now() + attack + absl::Seconds(30);
    while (!stop_admin.load() && absl::Now() < until) {
      const absl::Time start = absl::Now();
      v1::GetConfigResponse cfg;
      const grpc::Status st = testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &cfg,
                                                 absl::StrCat("Bearer ", kAdminToken));
      admin_max_ms = std::max(admin_max_ms, absl::ToDoubleMilliseconds(absl::Now() - start));
      ++admin_calls;
      if (!st.ok()) {
        if (admin_failures++ == 0) admin_problem = absl::StrCat(st.error_code(), ": ", st.error_message());
      } else if (Sessions(cfg) != sessions) {
        ++session_changes;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  Stepping stepping(&ranks);
  absl::SleepFor(absl::Milliseconds(500));  // a baseline before the attack

  std::atomic<bool> stop_attack{false};
  Outcomes rank_outcomes, admin_outcomes;
  std::vector<std::unique_ptr<v1::RankControl::Stub>> rank_stubs;
  std::vector<std::unique_ptr<v1::Admin::Stub>> admin_stubs;
  for (int c = 0; c < kRankAttackers / kAttackersPerChannel; ++c) {
    rank_stubs.push_back(v1::RankControl::NewStub(OwnChannel(s.rank_target())));
  }
  for (int c = 0; c < kAdminAttackers / kAttackersPerChannel; ++c) {
    admin_stubs.push_back(v1::Admin::NewStub(OwnChannel(s.admin_target())));
  }
  std::vector<std::thread> attackers;
  for (int i = 0; i < kRankAttackers; ++i) {
    attackers.emplace_back(AttackRanks, i, rank_stubs[i / kAttackersPerChannel].get(), std::cref(stop_attack),
                           &rank_outcomes);
  }
  for (int i = 0; i < kAdminAttackers; ++i) {
    attackers.emplace_back(AttackAdmin, i, admin_stubs[i / kAttackersPerChannel].get(), std::cref(stop_attack),
                           &admin_outcomes);
  }
  absl::SleepFor(attack);
  stop_attack = true;
  for (auto& t : attackers) t.join();
  absl::SleepFor(absl::Milliseconds(500));  // and after it
  stepping.StopAndJoin();
  stop_admin = true;
  operator_thread.join();

  // The group as the operator sees it afterwards.
  v1::GetConfigResponse cfg;
  ASSERT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &cfg,
                                 absl::StrCat("Bearer ", kAdminToken))
                  .ok());
  v1::GetStatsResponse stats;
  ASSERT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::GetStats, v1::GetStatsRequest(), &stats,
                                 absl::StrCat("Bearer ", kAdminToken))
                  .ok());
  int heartbeats_ok = 0;
  for (int r = 0; r < kN; ++r) {
    heartbeats_ok += ranks[r]->heartbeats.ok();
    EXPECT_EQ(ranks[r]->heartbeats.failed(), 0) << "rank " << r << ": " << ranks[r]->heartbeats.first_failure();
    EXPECT_TRUE(ranks[r]->client->last_heartbeat_status().ok()) << ranks[r]->client->last_heartbeat_status();
  }
  const double p50 = Percentile(stepping.latencies_ms(), 0.50), p99 = Percentile(stepping.latencies_ms(), 0.99);
  std::printf(
      "attack %s: legit steps %llu (%.0f/s, step p50 %.2f ms, p99 %.2f ms), failed parts %d; heartbeats ok %d; "
      "admin GetConfig %d (max %.1f ms), failed %d\n  rank attackers: %s\n  admin attackers: %s\n",
      absl::FormatDuration(attack).c_str(), static_cast<unsigned long long>(stepping.steps()),
      stepping.steps() / absl::ToDoubleSeconds(attack + absl::Seconds(1)), p50, p99, stepping.failures(), heartbeats_ok,
      admin_calls, admin_max_ms, admin_failures, rank_outcomes.Describe().c_str(), admin_outcomes.Describe().c_str());

  EXPECT_GT(stepping.steps(), 0u);
  EXPECT_EQ(stepping.failures(), 0) << stepping.first_failure();
  EXPECT_EQ(stats.steps_failed(), 0u);
  // 750 ms apart for about attack + 1 s, per rank.
  EXPECT_GE(heartbeats_ok, kN * static_cast<int>(absl::ToDoubleSeconds(attack) / 0.75) / 2);
  EXPECT_GT(admin_calls, 0);
  EXPECT_EQ(admin_failures, 0) << admin_problem;
  EXPECT_EQ(session_changes, 0) << "a rank was dropped or replaced during the attack";
  EXPECT_EQ(Sessions(cfg), sessions) << "no rank may be dropped or replaced";
  EXPECT_TRUE(cfg.group_ready());
  EXPECT_GT(rank_outcomes.Total(), 0u);
  EXPECT_GT(admin_outcomes.Total(), 0u);
  EXPECT_EQ(rank_outcomes.Disallowed(), 0u) << rank_outcomes.Describe();
  EXPECT_EQ(admin_outcomes.Disallowed(), 0u) << admin_outcomes.Describe();
  EXPECT_EQ(cfg.layer_scales().count(0), 0u) << "an attacker's SetScales was applied";

  ranks.clear();
  EXPECT_EQ(testing::StopServer(s), 0) << testing::ReadFile(log);
}

// --------------------------------------------- 2. descriptor exhaustion

constexpr int kServerFileLimit = 1024, kIdleConnections = 1100;

// Raises this process's soft open-file limit to its hard limit; returns it.
rlim_t RaiseOwnOpenFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);
  getrlimit(RLIMIT_NOFILE, &lim);
  return lim.rlim_cur;
}

// TCP connections to a loopback port that never send a byte (no HTTP/2
// preface). Closed when destroyed.
class IdleConnections {
 public:
  IdleConnections(int port, int count) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < count; ++i) {
      // Non-blocking: once the server stops accepting, a connect beyond the
      // accept backlog would wait for the kernel's SYN retries.
      const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        ++failed_;
        continue;
      }
      if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 && errno != EINPROGRESS) {
        ++failed_;
        close(fd);
        continue;
      }
      fds_.push_back(fd);
    }
  }
  ~IdleConnections() { Release(); }
  void Release() {
    for (int fd : fds_) close(fd);
    fds_.clear();
  }
  int opened() const { return static_cast<int>(fds_.size()); }
  int failed() const { return failed_; }

 private:
  std::vector<int> fds_;
  int failed_ = 0;
};

// Polls liveness every 50 ms over one connection opened before the attack
// (a new one may not be accepted during it).
class LivenessWatch {
 public:
  explicit LivenessWatch(const std::string& health_target)
      : stub_(grpc::health::v1::Health::NewStub(OwnChannel(health_target))) {}
  ~LivenessWatch() { Stop(); }
  // Connects, then polls on a thread; false when liveness is not SERVING.
  bool Start() {
    if (CheckHealth(stub_.get(), kLiveness, absl::Seconds(5)) != 1) return false;
    thread_ = std::thread([this] {
      for (int i = 0; i < 2000; ++i) {  // 100 s at most
        const int h = CheckHealth(stub_.get(), kLiveness, absl::Milliseconds(500));
        {
          absl::MutexLock lock(&mu_);
          if (h == 2 && not_serving_at_ == absl::InfiniteFuture()) not_serving_at_ = absl::Now();
          h == 1 ? ++serving_ : h == 2 ? ++not_serving_ : ++no_answer_;
          auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
          if (mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Milliseconds(50))) return;
        }
      }
    });
    return true;
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }
  absl::Time not_serving_at() const {
    absl::MutexLock lock(&mu_);
    return not_serving_at_;
  }
  std::string Describe() const {
    absl::MutexLock lock(&mu_);
    return absl::StrCat("liveness answers: SERVING ", serving_, ", NOT_SERVING ", not_serving_, ", none ", no_answer_);
  }

 private:
  std::unique_ptr<grpc::health::v1::Health::Stub> stub_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time not_serving_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  int serving_ ABSL_GUARDED_BY(mu_) = 0, not_serving_ ABSL_GUARDED_BY(mu_) = 0, no_answer_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

// Liveness over a new connection to each listener: all answer SERVING.
bool ListenersAccept(const testing::ServerProc& s) {
  for (const std::string& target : {s.rank_target(), s.admin_target(), s.health_target()}) {
    auto stub = grpc::health::v1::Health::NewStub(OwnChannel(target));
    if (CheckHealth(stub.get(), kLiveness, absl::Milliseconds(500)) != 1) return false;
  }
  return true;
}

// The exit code once `pid` has exited, else nullopt (not waiting).
std::optional<int> ExitedWith(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, WNOHANG) != pid) return std::nullopt;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Before: with an open-file limit of 1,024, 1,100 idle connections left the
// rank, admin and health listeners dead for good (62 s after the attacker
// left). Either design the issue allows passes; the test says which ran.
TEST(AttackE2ETest, IdleConnectionsBeyondTheDescriptorLimitDoNotKillTheListenersSilently) {
  const rlim_t own = RaiseOwnOpenFileLimit();
  if (own < kIdleConnections + 512) GTEST_SKIP() << "this process may open only " << own << " files";
  const std::string log = testing::TmpPath("server-log");
  testing::ServerProc s =
      StartGroupServer({"--health_address=127.0.0.1:0"}, log, testing::WithOpenFileLimit(kServerFileLimit));
  ASSERT_GT(s.pid, 0) << testing::ReadFile(log);
  KillAtExit kill_at_exit(&s);
  ASSERT_GT(s.health_port, 0);
  // The lowered limit applied (the server can raise its soft limit only to
  // the hard one), and the server logged what it has.
  EXPECT_THAT(testing::ReadFile(log), HasSubstr("open files: soft limit 1024 -> 1024 (hard limit 1024)"));
  LivenessWatch liveness(s.health_target());
  ASSERT_TRUE(liveness.Start());
  ASSERT_TRUE(ListenersAccept(s));

  std::optional<int> exit_code;
  absl::Time exited_at = absl::InfiniteFuture();
  auto poll_exit = [&] {
    if (!exit_code) exit_code = ExitedWith(s.pid);
    if (exit_code && exited_at == absl::InfiniteFuture()) exited_at = absl::Now();
  };
  const absl::Time attacked = absl::Now();
  IdleConnections attack(s.rank_port, kIdleConnections);
  EXPECT_EQ(attack.opened(), kIdleConnections) << attack.failed() << " connects failed";
  for (int i = 0; i < 400; ++i) {  // held 20 s
    absl::SleepFor(absl::Milliseconds(50));
    poll_exit();
  }
  attack.Release();
  const absl::Time released = absl::Now();
  bool accepting = false;
  while (absl::Now() < released + absl::Seconds(10)) {
    poll_exit();
    if (exit_code) break;
    if (ListenersAccept(s)) {
      accepting = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  const absl::Duration after_release = absl::Now() - released;
  liveness.Stop();
  const std::string server_log = testing::ReadFile(log);

  if (exit_code) {
    std::printf(
        "descriptor pressure: liveness NOT_SERVING %s after the connections opened, then the server "
        "exited %d, %s later (the connections were held %s); %s\n",
        absl::FormatDuration(absl::Trunc(liveness.not_serving_at() - attacked, absl::Milliseconds(1))).c_str(),
        *exit_code,
        absl::FormatDuration(absl::Trunc(exited_at - liveness.not_serving_at(), absl::Milliseconds(1))).c_str(),
        absl::FormatDuration(absl::Trunc(released - attacked, absl::Milliseconds(1))).c_str(),
        liveness.Describe().c_str());
    s.pid = -1;
    EXPECT_EQ(*exit_code, 3) << server_log;
    EXPECT_LT(liveness.not_serving_at(), exited_at)
        << "liveness must say NOT_SERVING before the exit; " << liveness.Describe();
    EXPECT_THAT(server_log, HasSubstr("listener has stopped accepting connections"));
    EXPECT_THAT(server_log, HasSubstr("exiting (3)"));
  } else {
    std::printf("descriptor pressure: all three listeners accept again %s after the release; %s\n",
                absl::FormatDuration(absl::Trunc(after_release, absl::Milliseconds(1))).c_str(),
                liveness.Describe().c_str());
    EXPECT_TRUE(accepting) << "10 s after the release the listeners still do not accept, and the process lives\n"
                           << liveness.Describe() << "\n"
                           << server_log;
    EXPECT_EQ(liveness.not_serving_at(), absl::InfiniteFuture()) << "liveness failed, yet the process lives";
    EXPECT_EQ(testing::StopServer(s), 0);
  }
}

// ------------------------------------------------------- 3. SIGTERM

constexpr int kInFlightPerRank = 4;

// One rank's own MergeData stream (the rank client's hides when a part is
// written): keeps kInFlightPerRank parts unanswered, records when each was
// written and how it was answered.
class PartStream {
 public:
  struct Part {
    absl::Time written = absl::InfiniteFuture();
    absl::Time answered = absl::InfiniteFuture();
    int code = -1;
    std::string message;
  };

  PartStream(const std::string& target, int rank, uint64_t session)
      : rank_(rank), session_(session), stub_(v1::MergeData::NewStub(OwnChannel(target))) {
    ctx_.AddMetadata(kJoinSecretMetadataKey, Bearer(RankToken(kGroupSecret, rank)));
    ctx_.set_deadline(DeadlineIn(absl::Seconds(20)));
    rw_ = stub_->MergeStream(&ctx_);
    writer_ = std::thread([this] { Write(); });
    reader_ = std::thread([this] { Read(); });
  }
  ~PartStream() { Join(); }
  void Join() {
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
  }
  // After Join.
  const std::map<uint64_t, Part>& parts() const { return parts_; }
  const grpc::Status& end() const { return end_; }

 private:
  static constexpr uint64_t kMaxSteps = 100000;

  // Steps 0, 1, ... until its first refused part or the stream's end.
  void Write() {
    for (uint64_t step = 0; step < kMaxSteps; ++step) {
      {
        absl::MutexLock lock(&mu_);
        auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return unanswered_ < kInFlightPerRank || refused_ || ended_;
        };
        if (!mu_.AwaitWithTimeout(absl::Condition(&room), absl::Seconds(20)) || refused_ || ended_) break;
        ++unanswered_;
        parts_[step];
      }
      const testing::PartData p = testing::MakePart(5, step, rank_, kT, kH, kD);
      v1::MergeRequest req;
      v1::MergeHeader* h = req.mutable_header();
      h->set_step(step);
      h->set_layer(0);
      h->set_num_tokens(kT);
      h->set_rank(rank_);
      h->set_session_id(session_);
      req.set_partial_out(p.out);
      req.set_lse(p.lse.data(), p.lse.size() * sizeof(float));
      const bool ok = rw_->Write(req);
      absl::MutexLock lock(&mu_);
      if (!ok) {
        parts_.erase(step);  // never handed to gRPC
        break;
      }
      parts_[step].written = absl::Now();
    }
    absl::MutexLock lock(&mu_);
    writer_done_ = true;
  }

  void Read() {
    v1::MergeResponse resp;
    while (rw_->Read(&resp)) {
      absl::MutexLock lock(&mu_);
      Part& p = parts_[resp.step()];
      p.answered = absl::Now();
      p.code = resp.status_code();
      p.message = resp.status_message();
      --unanswered_;
      refused_ |= resp.status_code() != 0;
    }
    {
      // Finish once the writer is out of Write.
      absl::MutexLock lock(&mu_);
      ended_ = true;
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return writer_done_; };
      mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(10));
    }
    end_ = rw_->Finish();
  }

  const int rank_;
  const uint64_t session_;
  std::unique_ptr<v1::MergeData::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::MergeRequest, v1::MergeResponse>> rw_;
  absl::Mutex mu_;
  std::map<uint64_t, Part> parts_ ABSL_GUARDED_BY(mu_);
  int unanswered_ ABSL_GUARDED_BY(mu_) = 0;
  bool refused_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool writer_done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status end_;
  std::thread writer_, reader_;
};

bool ShuttingDown(int code, const std::string& message) {
  return code == static_cast<int>(grpc::StatusCode::UNAVAILABLE) && message.find("shutting down") != std::string::npos;
}

// Issue 18, finding 6: at SIGTERM 0-2 parts per rank got no answer.
TEST(AttackE2ETest, SigtermAnswersEveryPartWrittenBeforeIt) {
  const std::string log = testing::TmpPath("server-log");
  testing::ServerProc s = StartGroupServer({"--step_timeout_ms=3000"}, log);
  ASSERT_GT(s.pid, 0) << testing::ReadFile(log);
  KillAtExit kill_at_exit(&s);
  std::vector<std::unique_ptr<Rank>> ranks = JoinGroup(s);
  ASSERT_EQ(ranks.size(), static_cast<size_t>(kN)) << testing::ReadFile(log);
  std::vector<std::unique_ptr<PartStream>> streams;
  for (int r = 0; r < kN; ++r) {
    streams.push_back(std::make_unique<PartStream>(s.rank_target(), r, ranks[r]->session_id));
  }
  absl::SleepFor(absl::Milliseconds(700));  // stepping
  const absl::Time sigterm = absl::Now();
  kill(s.pid, SIGTERM);
  for (auto& st : streams) st->Join();
  const int rc = testing::WaitExit(s.pid, absl::Seconds(20));
  s.pid = -1;

  EXPECT_EQ(rc, 0) << testing::ReadFile(log);
  int before = 0, in_flight = 0, ok = 0, unavailable = 0, written = 0;
  for (int r = 0; r < kN; ++r) {
    const PartStream& stream = *streams[r];
    EXPECT_TRUE(ShuttingDown(stream.end().error_code(), stream.end().error_message()))
        << "rank " << r << "'s stream ended " << stream.end().error_code() << ": " << stream.end().error_message();
    for (const auto& [step, p] : stream.parts()) {
      ++written;
      if (p.written < sigterm) {
        ++before;
        in_flight += p.answered > sigterm;
        EXPECT_NE(p.answered, absl::InfiniteFuture())
            << "rank " << r << " step " << step << " was written before SIGTERM and never answered";
      }
      if (p.answered == absl::InfiniteFuture()) continue;  // written after the signal; the stream's end answers it
      // Answered by the server: a result, or its UNAVAILABLE, never CANCELLED or a deadline.
      if (p.code == 0) {
        ++ok;
      } else {
        ++unavailable;
        EXPECT_TRUE(ShuttingDown(p.code, p.message))
            << "rank " << r << " step " << step << ": " << p.code << " " << p.message;
      }
    }
  }
  std::printf(
      "SIGTERM: %d parts written (%d before the signal, %d of them in flight at it); answered OK %d, "
      "UNAVAILABLE \"shutting down\" %d\n",
      written, before, in_flight, ok, unavailable);
  EXPECT_GT(ok, 0);
  EXPECT_GT(in_flight, 0) << "the signal found no part in flight: the test proved nothing";
  ranks.clear();  // their Leave fails fast: the server is gone
}

}  // namespace
}  // namespace dcpmerge
