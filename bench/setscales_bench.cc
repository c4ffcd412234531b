// setscales_bench: Admin.SetScales latency on loopback while N ranks run
// merge steps, and the steps' latency with and without concurrent
// SetScales (issue 11: goal p99 < 1 ms for a 128-layer table, no visible
// effect on step p99).
//
// One process: a merge server (EmbeddedServer, CPU backend, loopback), N
// rank threads (RankClient, the demo's shape by default) stepping together
// (barrier per step; a step = earliest start to last answer), and an admin
// thread calling SetScales with the whole --layers table (replace=true,
// new values each call) on its own channel. Phases, each --seconds long:
//   steps          ranks stepping, no SetScales
//   steps+scales   ranks stepping, SetScales every --interval_ms (0: back to back)
//   scales         SetScales alone
// without a state file, with --state_file written without fsync, and with
// fsync (SetScales writes the state file before it answers). After each
// SetScales a grpc.health.v1 Check on the same channel gives the floor of a
// unary call under the same load. Every step's answer is checked for the
// scale of the version it reports, so the updates are seen to land.
//
//   bazel run -c opt //bench:setscales_bench [-- --seconds=5]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/barrier.h"
#include "base/heap.h"
#include "base/log.h"
#include "base/percentile.h"
#include "base/rng.h"
#include "client/rank_client.h"
#include "common/group_spec.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "embed/embedded_server.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"

ABSL_FLAG(int32_t, ranks, 4, "Rank threads");
ABSL_FLAG(int32_t, tokens, 64, "Tokens per step");
ABSL_FLAG(int32_t, heads, 16, "Heads");
ABSL_FLAG(int32_t, head_size, 512, "Head size");
ABSL_FLAG(int32_t, layers, 128, "Layers in the scale table (each SetScales sends all of them)");
ABSL_FLAG(double, seconds, 8.0, "Length of each phase");
ABSL_FLAG(int32_t, interval_ms, 10, "Pause between SetScales calls while ranks step (0: back to back)");
ABSL_FLAG(bool, state_file_too, true,
          "Repeat the phases with --state_file, with fsync before each answer and without");
ABSL_FLAG(bool, verbose, false, "Server log lines on stderr");

namespace dcpmerge {
namespace {

constexpr char kToken[] = "setscales-bench";

struct Summary {
  size_t n = 0;
  double p50 = 0, p99 = 0, max = 0;
};

Summary Summarize(std::vector<double> v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  s.p50 = Percentile(v, 0.5);
  s.p99 = Percentile(v, 0.99);
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

struct PhaseResult {
  Summary step_us;
  Summary set_us;
  Summary floor_us;  // health Check on the same channel, right after each SetScales
  double steps_per_s = 0;
  uint64_t failures = 0;
  uint64_t wrong_scale = 0;
};

class Bench {
 public:
  Bench(int n, int T, int H, int D, int layers, const std::string& state_file, bool fsync)
      : n_(n), T_(T), H_(H), D_(D), layers_(layers), barrier_(n) {
    EmbeddedServerOptions so;
    so.admin_token = kToken;
    so.initial_config = DefaultGroupConfig(n, H, D, T);
    so.initial_default_scale = 1.0f;
    so.backend = "cpu";
    so.step_timeout = absl::Seconds(10);
    so.state_file = state_file;
    so.state_fsync = fsync;
    auto s = EmbeddedServer::Start(so);
    if (!s.ok()) {
      error_ = s.status().ToString();
      return;
    }
    server_ = std::move(*s);
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->admin_port()),
                                       grpc::InsecureChannelCredentials());
    admin_ = v1::Admin::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
    for (int r = 0; r < n; ++r) {
      RankClientOptions o;
      o.target = absl::StrCat("127.0.0.1:", server_->rank_port());
      o.rank = r;
      o.num_parts = n;
      auto c = RankClient::Connect(o);
      if (!c.ok() || !(*c)->Join().ok()) {
        error_ = "rank join failed";
        return;
      }
      clients_.push_back(std::move(*c));
    }
    if (!clients_[0]->WaitForGroupReady(absl::Seconds(10)).ok()) error_ = "group not ready";
    // Inputs: bf16 values in [-2, 2), finite LSEs.
    SplitMix64 rng{7};
    inputs_.resize(n);
    for (int r = 0; r < n; ++r) {
      inputs_[r].out.resize(static_cast<size_t>(T) * H * D);
      for (auto& v : inputs_[r].out) v = static_cast<uint16_t>(0x3f80 + rng.Next() % 256);  // ~[1, 2)
      inputs_[r].lse.resize(static_cast<size_t>(T) * H);
      for (auto& l : inputs_[r].lse) l = static_cast<float>(rng.Next() % 1000) / 250.0f;
    }
  }
  const std::string& error() const { return error_; }

  // One SetScales of the whole table with scales derived from `round`;
  // returns its latency in us (negative on error). Records version->scale.
  double SetScalesOnce(uint64_t round) {
    v1::SetScalesRequest req;
    const float base = 0.01f + static_cast<float>(round % 97) * 1e-3f;
    for (int l = 0; l < layers_; ++l) (*req.mutable_layer_scales())[l] = base + static_cast<float>(l) * 1e-5f;
    req.set_replace(true);
    {
      // Only this thread changes the configuration: the answer's version is
      // the next one. Recorded first, so a step that runs on it before the
      // answer arrives is checked against the right scale.
      std::lock_guard<std::mutex> l(versions_mu_);
      version_base_[last_version_ + 1] = base;
    }
    v1::SetScalesResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto t0 = std::chrono::steady_clock::now();
    const grpc::Status st = admin_->SetScales(&ctx, req, &resp);
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    if (!st.ok()) return -1;
    std::lock_guard<std::mutex> l(versions_mu_);
    version_base_[resp.config_version()] = base;
    last_version_ = resp.config_version();
    return us;
  }

  // One grpc.health.v1 Check on the same channel: the floor of a unary call
  // on this listener under the same load (us; negative on error).
  double HealthOnce() {
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto t0 = std::chrono::steady_clock::now();
    const grpc::Status st = health_->Check(&ctx, req, &resp);
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    return st.ok() ? us : -1;
  }

  PhaseResult Run(bool steps, bool scales, double seconds, int interval_ms) {
    PhaseResult res;
    std::atomic<bool> stop{false};
    std::vector<double> set_us, floor_us;
    std::thread admin;
    if (scales) {
      admin = std::thread([&] {
        while (!stop.load()) {
          const double us = SetScalesOnce(round_++);
          if (us < 0) {
            ++res.failures;
          } else {
            set_us.push_back(us);
          }
          if (const double f = HealthOnce(); f >= 0) floor_us.push_back(f);
          if (interval_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
        }
      });
    }
    std::vector<double> step_us;
    const auto start = std::chrono::steady_clock::now();
    if (steps) {
      std::vector<std::thread> threads;
      std::vector<int64_t> begin_ns(n_), end_ns(n_);
      std::atomic<bool> done{false};
      std::atomic<uint64_t> failures{0}, wrong{0};
      const int layer = 3;
      for (int r = 0; r < n_; ++r) {
        threads.emplace_back([&, r] {
          for (uint64_t i = 0;; ++i) {
            barrier_.Wait();
            if (done.load()) return;
            const uint64_t step = next_step_ + i;
            const auto t0 = std::chrono::steady_clock::now();
            begin_ns[r] = t0.time_since_epoch().count();
            auto m = clients_[r]->Merge(step, layer, T_, inputs_[r].out.data(), inputs_[r].out.size() * 2,
                                        inputs_[r].lse.data(), inputs_[r].lse.size());
            end_ns[r] = std::chrono::steady_clock::now().time_since_epoch().count();
            if (!m.ok()) {
              ++failures;
            } else if (r == 0 && m->scales.size() == 1) {
              std::lock_guard<std::mutex> l(versions_mu_);
              auto it = version_base_.find(m->config_version);
              const float want = it == version_base_.end() ? 1.0f : it->second + layer * 1e-5f;
              if (m->scales[0] != want) ++wrong;
            }
            barrier_.Wait();
            if (r == 0) {
              const int64_t b = *std::min_element(begin_ns.begin(), begin_ns.end());
              const int64_t e = *std::max_element(end_ns.begin(), end_ns.end());
              step_us.push_back((e - b) / 1e3);
              const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
              if (el >= seconds) done = true;
            }
          }
        });
      }
      for (auto& t : threads) t.join();
      next_step_ += 1000000;
      res.failures += failures.load();
      res.wrong_scale = wrong.load();
    } else {
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stop = true;
    if (admin.joinable()) admin.join();
    res.step_us = Summarize(step_us);
    res.set_us = Summarize(set_us);
    res.floor_us = Summarize(floor_us);
    res.steps_per_s = step_us.size() / wall;
    return res;
  }

 private:
  struct Input {
    std::vector<uint16_t> out;
    std::vector<float> lse;
  };
  const int n_, T_, H_, D_, layers_;
  Barrier barrier_;
  std::string error_;
  std::unique_ptr<EmbeddedServer> server_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::vector<std::unique_ptr<RankClient>> clients_;
  std::vector<Input> inputs_;
  std::mutex versions_mu_;
  std::map<uint64_t, float> version_base_;
  uint64_t last_version_ = 1;  // the initial configuration
  std::atomic<uint64_t> round_{0};
  uint64_t next_step_ = 0;
};

void Print(const char* phase, const char* state, const PhaseResult& r) {
  auto col = [](const Summary& s) {
    return s.n == 0 ? std::string("| - | - | - | -") : absl::StrFormat("| %zu | %.0f | %.0f | %.0f", s.n, s.p50, s.p99, s.max);
  };
  auto floor = [](const Summary& s) {
    return s.n == 0 ? std::string("| - | -") : absl::StrFormat("| %.0f | %.0f", s.p50, s.p99);
  };
  std::printf("| %s | %s %s | %.1f %s %s | %llu | %llu |\n", phase, state, col(r.step_us).c_str(), r.steps_per_s,
              col(r.set_us).c_str(), floor(r.floor_us).c_str(), static_cast<unsigned long long>(r.failures),
              static_cast<unsigned long long>(r.wrong_scale));
}

int Run() {
  SetLogQuiet(!absl::GetFlag(FLAGS_verbose));
  const int N = absl::GetFlag(FLAGS_ranks), T = absl::GetFlag(FLAGS_tokens), H = absl::GetFlag(FLAGS_heads),
            D = absl::GetFlag(FLAGS_head_size), L = absl::GetFlag(FLAGS_layers);
  const double secs = absl::GetFlag(FLAGS_seconds);
  const int interval = absl::GetFlag(FLAGS_interval_ms);
  if (N < 1 || T < 1 || H < 1 || D < 1 || L < 1 || L > 4096 || secs <= 0 || interval < 0) {
    std::fprintf(stderr, "ranks, tokens, heads, head_size >= 1; layers 1..4096; seconds > 0; interval_ms >= 0\n");
    return 2;
  }
  std::printf("setscales_bench: %d ranks, %d x %d x %d bf16 -> FP8 per tensor, CPU backend, loopback; "
              "%d-layer table per SetScales (replace); %.1f s per phase; SetScales every %d ms while stepping; "
              "%u hardware threads\n\n",
              N, T, H, D, L, secs, interval, std::thread::hardware_concurrency());
  std::printf("| phase | state file | steps | step p50 us | step p99 us | step max us | steps/s | SetScales calls "
              "| SetScales p50 us | SetScales p99 us | SetScales max us | health p50 us | health p99 us | failures "
              "| wrong scale |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  bool pass = true;
  // State file: off, written without fsync, written with fsync.
  std::vector<int> modes = {0};
  if (absl::GetFlag(FLAGS_state_file_too)) modes = {0, 1, 2};
  for (int mode : modes) {
    const char* tmp = std::getenv("TMPDIR");
    const std::string path =
        mode > 0 ? absl::StrCat(tmp ? tmp : "/tmp", "/setscales-bench-state-", getpid()) : std::string();
    if (mode > 0) std::remove(path.c_str());
    Bench b(N, T, H, D, L, path, mode == 2);
    if (!b.error().empty()) {
      std::fprintf(stderr, "setup: %s\n", b.error().c_str());
      return 1;
    }
    b.SetScalesOnce(0);  // warm the admin channel
    b.Run(true, false, 1.0, interval);  // warm-up
    const char* label = mode == 0 ? "off" : mode == 1 ? "no fsync" : "fsync";
    const PhaseResult a = b.Run(true, false, secs, interval);
    Print("steps", label, a);
    const PhaseResult c = b.Run(true, true, secs, interval);
    Print("steps+scales", label, c);
    const PhaseResult d = b.Run(false, true, secs, interval);
    Print("scales", label, d);
    std::fflush(stdout);
    pass &= a.failures + c.failures + d.failures + c.wrong_scale == 0;
    if (mode > 0) std::remove(path.c_str());
  }
  std::printf("\n%s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace dcpmerge

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("setscales_bench: Admin.SetScales latency while ranks step, and its effect on steps");
  absl::ParseCommandLine(argc, argv);
  dcpmerge::KeepFreedBuffersInHeap();
  return dcpmerge::Run();
}
