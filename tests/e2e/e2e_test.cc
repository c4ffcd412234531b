// End to end with real processes: the server binary (fork/exec, found in the
// runfiles) and DCP ranks as child processes of this test binary (re-exec of
// itself with --rank_child). Loopback only; every wait is bounded.
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/rank_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_harness.h"
#include "tests/server/test_data.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

constexpr int kT = 8, kH = 4, kD = 128;
constexpr uint64_t kSeed = 11;
constexpr float kScale = 0.05f;

std::string ServerBinary() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  return absl::StrCat(srcdir ? srcdir : ".", "/", ws ? ws : "dcpmerge", "/server/dcpmerge_server");
}

std::string TmpPath(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return absl::StrCat(tmp ? tmp : "/tmp", "/", name, "-", getpid());
}

pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits for `pid` up to `timeout`; returns its wait status or -1 (killed
// then, so the test never hangs).
int WaitPid(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

struct ServerProcess {
  pid_t pid = -1;
  int rank_port = 0;
  int admin_port = 0;
  std::string target() const { return absl::StrCat("127.0.0.1:", rank_port); }
};

ServerProcess StartServer(int num_parts, int64_t step_timeout_ms = 3000) {
  ServerProcess s;
  const std::string ready = TmpPath(absl::StrCat("ready", num_parts, "-", absl::ToUnixNanos(absl::Now())));
  s.pid = Spawn({ServerBinary(), "--rank_address=127.0.0.1:0", "--admin_address=127.0.0.1:0",
                 absl::StrCat("--world_size=", num_parts), absl::StrCat("--num_heads=", kH),
                 absl::StrCat("--head_size=", kD), absl::StrCat("--max_tokens=", kT), "--input_dtype=bf16",
                 "--output_mode=fp8_per_tensor", absl::StrCat("--default_scale=", kScale), "--backend=cpu",
                 absl::StrCat("--step_timeout_ms=", step_timeout_ms), "--heartbeat_timeout_ms=3000",
                 "--quiet", absl::StrCat("--ready_file=", ready)},
                {"DCPMERGE_ADMIN_TOKEN=e2e-token"});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    std::ifstream in(ready);
    if (in >> s.rank_port >> s.admin_port) return s;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ADD_FAILURE() << "server did not become ready: " << ServerBinary();
  return s;
}

// ---------------------------------------------------------- rank child ---
// One record per step: step, status code, ms the Merge took, output bytes.
struct Record {
  int64_t step = 0;
  int32_t code = 0;
  int64_t ms = 0;
  std::string message;
  std::string output;
};

void WriteRecord(std::ofstream& out, const Record& r) {
  out << r.step << " " << r.code << " " << r.ms << " " << r.message.size() << " " << r.output.size() << "\n";
  out.write(r.message.data(), r.message.size());
  out.write(r.output.data(), r.output.size());
  out << "\n";
  out.flush();
}

std::vector<Record> ReadRecords(const std::string& path) {
  std::vector<Record> out;
  std::ifstream in(path);
  Record r;
  size_t ml, ol;
  while (in >> r.step >> r.code >> r.ms >> ml >> ol) {
    in.get();
    r.message.resize(ml);
    in.read(r.message.data(), ml);
    r.output.resize(ol);
    in.read(r.output.data(), ol);
    in.get();
    out.push_back(r);
  }
  return out;
}

// args: target rank world first_step last_step die_at_step out_file replace
int RankChildMain(const std::vector<std::string>& a) {
  int rank, world, first, last, die;
  if (a.size() != 8 || !absl::SimpleAtoi(a[1], &rank) || !absl::SimpleAtoi(a[2], &world) ||
      !absl::SimpleAtoi(a[3], &first) || !absl::SimpleAtoi(a[4], &last) || !absl::SimpleAtoi(a[5], &die)) {
    return 2;
  }
  RankClientOptions o;
  o.target = a[0];
  o.rank = rank;
  o.num_parts = world;
  o.replace_existing = a[7] == "1";
  o.merge_timeout = absl::Seconds(20);
  auto c = RankClient::Connect(o);
  if (!c.ok() || !(*c)->Join().ok()) return 3;
  if (!(*c)->WaitForGroupReady(absl::Seconds(30)).ok()) return 4;
  std::ofstream out(a[6], std::ios::binary | std::ios::app);
  for (int step = first; step <= last; ++step) {
    if (step == die) {
      absl::SleepFor(absl::Milliseconds(300));  // the others have sent this step
      raise(SIGKILL);
    }
    const testing::PartData p = testing::MakePart(kSeed, step, rank, kT, kH, kD);
    const absl::Time t0 = absl::Now();
    auto res = (*c)->Merge(step, 0, kT, p.out.data(), p.out.size(), p.lse.data(), p.lse.size());
    Record r;
    r.step = step;
    r.ms = absl::ToInt64Milliseconds(absl::Now() - t0);
    r.code = static_cast<int32_t>(res.status().code());
    if (res.ok()) {
      r.output = res->output;
    } else {
      r.message = std::string(res.status().message());
    }
    WriteRecord(out, r);
    if (!res.ok() && !(*c)->WaitForGroupReady(absl::Seconds(30)).ok()) return 5;
  }
  return 0;
}

pid_t SpawnRank(const ServerProcess& s, int rank, int world, int first, int last, int die,
                const std::string& out, bool replace = false) {
  return Spawn({"/proc/self/exe", "--rank_child", s.target(), absl::StrCat(rank), absl::StrCat(world),
                absl::StrCat(first), absl::StrCat(last), absl::StrCat(die), out, replace ? "1" : "0"});
}

std::string Expected(uint64_t step, int world) {
  std::vector<testing::PartData> parts;
  for (int r = 0; r < world; ++r) parts.push_back(testing::MakePart(kSeed, step, r, kT, kH, kD));
  const testing::Expected e = testing::MergeExpected(parts, kT, kH, kD, OutputMode::kFp8PerTensor, kScale);
  return std::string(e.out.begin(), e.out.end());
}

void StopServer(ServerProcess& s) {
  kill(s.pid, SIGTERM);
  const int st = WaitPid(s.pid, absl::Seconds(20));
  EXPECT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << "server exit status " << st;
}

TEST(E2ETest, RankProcessesGetMergeOnCpuResults) {
  constexpr int kN = 4, kSteps = 12;
  ServerProcess s = StartServer(kN);
  ASSERT_GT(s.rank_port, 0);
  std::vector<pid_t> pids;
  std::vector<std::string> files;
  for (int r = 0; r < kN; ++r) {
    files.push_back(TmpPath(absl::StrCat("ok-rank", r)));
    pids.push_back(SpawnRank(s, r, kN, 0, kSteps - 1, -1, files.back()));
  }
  for (int r = 0; r < kN; ++r) {
    const int st = WaitPid(pids[r], absl::Seconds(50));
    EXPECT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << "rank " << r << " status " << st;
  }
  for (int r = 0; r < kN; ++r) {
    auto recs = ReadRecords(files[r]);
    ASSERT_EQ(recs.size(), static_cast<size_t>(kSteps)) << "rank " << r;
    for (const Record& rec : recs) {
      ASSERT_EQ(rec.code, 0) << rec.message;
      EXPECT_EQ(rec.output, Expected(rec.step, kN)) << "rank " << r << " step " << rec.step;
    }
  }
  StopServer(s);
}

TEST(E2ETest, KilledRankFailsOthersFastAndGroupRecovers) {
  constexpr int kN = 4, kDie = 5, kLast = 10;
  constexpr int64_t kStepTimeoutMs = 4000;
  ServerProcess s = StartServer(kN, kStepTimeoutMs);
  ASSERT_GT(s.rank_port, 0);
  std::vector<pid_t> pids;
  std::vector<std::string> files;
  for (int r = 0; r < kN; ++r) {
    files.push_back(TmpPath(absl::StrCat("kill-rank", r)));
    pids.push_back(SpawnRank(s, r, kN, 0, kLast, r == kN - 1 ? kDie : -1, files.back()));
  }
  const int died = WaitPid(pids[kN - 1], absl::Seconds(40));
  ASSERT_TRUE(died != -1 && WIFSIGNALED(died) && WTERMSIG(died) == SIGKILL) << died;
  // The restarted rank rejoins and continues after the lost step.
  const std::string again = TmpPath("kill-rank3-again");
  const pid_t restarted = SpawnRank(s, kN - 1, kN, kDie + 1, kLast, -1, again, /*replace=*/true);
  for (int r = 0; r < kN - 1; ++r) {
    const int st = WaitPid(pids[r], absl::Seconds(50));
    EXPECT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << "rank " << r << " status " << st;
  }
  const int st = WaitPid(restarted, absl::Seconds(50));
  EXPECT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << "restarted rank status " << st;

  for (int r = 0; r < kN - 1; ++r) {
    auto recs = ReadRecords(files[r]);
    ASSERT_EQ(recs.size(), static_cast<size_t>(kLast + 1)) << "rank " << r;
    for (const Record& rec : recs) {
      if (rec.step == kDie) {
        EXPECT_EQ(rec.code, static_cast<int>(absl::StatusCode::kUnavailable)) << rec.message;
        EXPECT_THAT(rec.message, HasSubstr("rank 3"));
        EXPECT_LT(rec.ms, kStepTimeoutMs) << "the failure must come before the step deadline";
      } else {
        ASSERT_EQ(rec.code, 0) << "rank " << r << " step " << rec.step << ": " << rec.message;
        EXPECT_EQ(rec.output, Expected(rec.step, kN));
      }
    }
  }
  auto recs = ReadRecords(again);
  ASSERT_EQ(recs.size(), static_cast<size_t>(kLast - kDie));
  for (const Record& rec : recs) EXPECT_EQ(rec.code, 0) << rec.message;
  StopServer(s);
}

TEST(E2ETest, SigtermFailsInFlightStepsAndExitsZero) {
  constexpr int kN = 2;
  ServerProcess s = StartServer(kN, 20000);
  ASSERT_GT(s.rank_port, 0);
  std::vector<std::unique_ptr<RankClient>> clients;
  for (int r = 0; r < kN; ++r) {
    RankClientOptions o;
    o.target = s.target();
    o.rank = r;
    o.num_parts = kN;
    o.merge_timeout = absl::Seconds(20);
    auto c = RankClient::Connect(o);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Join().ok());
    clients.push_back(std::move(*c));
  }
  ASSERT_TRUE(clients[0]->WaitForGroupReady(absl::Seconds(20)).ok());
  EXPECT_EQ(testing::HealthStatus(s.target(), "dcpmerge.v1.MergeData"), 1);
  // Rank 0 sends step 0; rank 1 never does: the step is in flight.
  absl::StatusOr<MergeResult> res = absl::UnknownError("");
  const testing::PartData p = testing::MakePart(kSeed, 0, 0, kT, kH, kD);
  std::thread t([&] { res = clients[0]->Merge(0, 0, kT, p.out.data(), p.out.size(), p.lse.data(), p.lse.size()); });
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time t0 = absl::Now();
  kill(s.pid, SIGTERM);
  t.join();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  EXPECT_EQ(res.status().code(), absl::StatusCode::kUnavailable) << res.status();
  EXPECT_THAT(std::string(res.status().message()), HasSubstr("shutting down"));
  const int st = WaitPid(s.pid, absl::Seconds(20));
  EXPECT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << "server exit status " << st;
}

}  // namespace
}  // namespace dcpmerge

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--rank_child") {
    return dcpmerge::RankChildMain(std::vector<std::string>(argv + 2, argv + argc));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
