// grpc_plane_bench: the gRPC data plane of dcpmerge on loopback, next to a
// raw gRPC echo of the same bytes, measured in one run.
//
// For every decode shape (tokens 1/16/64/256 x {16 heads x 512, 128 heads x
// 128}, bf16 in, FP8 per tensor out, full return) and N = 2 and 4 ranks:
//
//   echo   an Echo.Stream server (bench/echo.proto) in this process; N rank
//          threads, each on its own channel and stream, send one request of
//          the rank's partial size (payload + LSE bytes) and read one
//          response of the merged output's size, all N at once per step.
//   merge  a merge server in this process (EmbeddedServer: --backend, CPU
//          by default; loopback ports); N rank threads, each with its own
//          RankClient, call Merge() with the rank's partial, all N at once
//          per step.
//
// Both use the rank channel and rank listener settings of RankClient and the
// server (common/channel_args.h: message size limits, 64 MiB HTTP/2 stream
// lookahead). A step is the time from the
// earliest rank starting its call to the last rank getting its answer; the
// ranks start each step together (barrier). A case's echo and merge steps
// alternate in blocks of 10 (both servers up, both sets of connections
// open), so both see the same load; steps/s = 1 / mean step time of each.
// Before timing, the first
// --verify_steps merges of every case are compared byte for byte with
// MergeOnCpu on the same inputs (the CUDA backend may be one FP8 code step
// off, the contract's tolerance). The server's merge phase (the last part's
// arrival to the results ready) comes from the server's stats (the numbers
// Admin.GetStats returns); with --backend=cuda, so do the device copies and
// kernel of the same steps (CUDA events), printed next to it.
//
//   bazel run -c opt //bench:grpc_plane_bench [-- --quick] [--backend=cuda]

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/heap.h"
#include "base/log.h"
#include "base/percentile.h"
#include "base/rng.h"
#include "base/version_flag.h"
#include "bench/echo.grpc.pb.h"
#include "client/rank_client.h"
#include "common/channel_args.h"
#include "common/group_spec.h"
#include "embed/embedded_server.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"
#include "kernels/numeric.h"

ABSL_FLAG(int32_t, max_steps, 2000, "Timed steps per measurement, at most");
ABSL_FLAG(int32_t, min_steps, 30, "Timed steps per measurement, at least (even past the time budget)");
ABSL_FLAG(double, seconds_per_measurement, 2.0,
          "Time budget of one measurement (one case's echo or merge), after warm-up");
ABSL_FLAG(int32_t, warmup_steps, 10, "Untimed steps before each measurement");
ABSL_FLAG(int32_t, verify_steps, 2, "Merges per case checked against MergeOnCpu before timing");
ABSL_FLAG(double, max_total_s, 150.0,
          "Whole-run budget: later measurements get shorter budgets to stay under it");
ABSL_FLAG(bool, quick, false, "Tokens 1 and 64 only, 0.5 s per measurement");
ABSL_FLAG(uint64_t, seed, 1, "Random seed of the inputs");
ABSL_FLAG(bool, verbose, false, "Server log lines on stderr");
ABSL_FLAG(std::string, backend, "cpu", "The merge server's compute backend: cpu | cuda");
ABSL_FLAG(bool, echo_separate_connections, false,
          "Echo channels each get their own TCP connection (local subchannel pool) instead of the "
          "RankClient settings, under which the channels of one process share one connection");

namespace dcpmerge {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Established TCP connections whose remote end is 127.0.0.1:port, plain or
// IPv4-mapped (gRPC's sockets are dual-stack): the client side of the
// loopback connections to a listener of this process.
int CountConnectionsTo(int port) {
  int n = 0;
  const std::string want4 = absl::StrFormat("0100007F:%04X", port);
  const std::string want6 = absl::StrFormat("0000000000000000FFFF00000100007F:%04X", port);
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream ss(line);
      std::string sl, local, remote, st;
      ss >> sl >> local >> remote >> st;
      if ((remote == want4 || remote == want6) && st == "01") ++n;
    }
  }
  return n;
}

// Position of an E4M3 code on the number line (codes are sign-magnitude).
int CodeOrdinal(uint8_t c) { return (c & 0x80) ? -(c & 0x7F) : (c & 0x7F); }

// ------------------------------------------------------------ echo server ---

class EchoService final : public bench::Echo::Service {
 public:
  explicit EchoService(size_t max_response) : buffer_(max_response, '\x5a') {}

  grpc::Status Stream(grpc::ServerContext*,
                      grpc::ServerReaderWriter<bench::EchoResponse, bench::EchoRequest>* stream) override {
    bench::EchoRequest req;
    bench::EchoResponse resp;
    while (stream->Read(&req)) {
      resp.set_seq(req.seq());
      // A copy of the answer's bytes into the message (the merge server
      // sends its output without one since issue 20: grpc_response.h).
      resp.set_payload(buffer_.data(), std::min<size_t>(req.response_bytes(), buffer_.size()));
      resp.clear_scales();
      resp.add_scales(1.0f);
      if (!stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }

 private:
  const std::string buffer_;
};

// ------------------------------------------------------------ lock-step ---

// N threads run steps together: every thread calls Next() before each step;
// the last to arrive decides whether another step runs (warm-up, then until
// max_steps, or min_steps and the time budget are both reached) and releases
// them all. Next() returns the step index (warm-up steps first) or -1.
class StepGate {
 public:
  StepGate(int n, int warmup, int max_steps, int min_steps, double budget_s)
      : n_(n), warmup_(warmup), max_steps_(max_steps), min_steps_(min_steps), budget_s_(budget_s) {}

  int Next() {
    std::unique_lock<std::mutex> l(mu_);
    const uint64_t gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      Decide();
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(l, [&] { return gen_ != gen; });
    }
    return current_;
  }

  int timed_steps() const { return std::max(0, issued_ - warmup_); }

 private:
  void Decide() {
    const int next = issued_;
    if (next >= warmup_) {
      const int m = next - warmup_;
      if (m == 0) start_ = Clock::now();
      if (m >= max_steps_ || (m >= min_steps_ && SecondsSince(start_) >= budget_s_)) {
        current_ = -1;
        return;
      }
    }
    current_ = next;
    ++issued_;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  const int n_, warmup_, max_steps_, min_steps_;
  const double budget_s_;
  int arrived_ = 0;
  uint64_t gen_ = 0;
  int issued_ = 0;
  int current_ = 0;
  Clock::time_point start_;
};

struct Timing {
  int steps = 0;
  std::vector<double> step_us;  // per timed step: first start to last end
  double wall_s = 0;            // RunSteps: first timed start to last timed end; per kind: sum of steps
  int failures = 0;
  std::string first_error;
};

// op(rank, step_index) runs one rank's part of a step.
using RankOp = std::function<absl::Status(int rank, int index)>;

Timing RunSteps(int n, int warmup, int max_steps, int min_steps, double budget_s, const RankOp& op) {
  StepGate gate(n, warmup, max_steps, min_steps, budget_s);
  std::vector<std::vector<int64_t>> t0(n, std::vector<int64_t>(max_steps)), t1 = t0;
  std::mutex err_mu;
  Timing out;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      for (int idx; (idx = gate.Next()) >= 0;) {
        const int64_t a = NowNs();
        const absl::Status st = op(r, idx);
        const int64_t b = NowNs();
        if (idx >= warmup) {
          t0[r][idx - warmup] = a;
          t1[r][idx - warmup] = b;
        }
        if (!st.ok()) {
          std::lock_guard<std::mutex> l(err_mu);
          if (out.failures++ == 0) out.first_error = absl::StrCat("rank ", r, ": ", st.ToString());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  out.steps = gate.timed_steps();
  if (out.steps == 0) return out;
  int64_t first = t0[0][0], last = t1[0][out.steps - 1];
  for (int i = 0; i < out.steps; ++i) {
    int64_t s = t0[0][i], e = t1[0][i];
    for (int r = 1; r < n; ++r) {
      s = std::min(s, t0[r][i]);
      e = std::max(e, t1[r][i]);
    }
    out.step_us.push_back((e - s) / 1e3);
    first = std::min(first, s);
    last = std::max(last, e);
  }
  out.wall_s = (last - first) / 1e9;
  return out;
}

// ------------------------------------------------------------------ data ---

struct RankData {
  std::vector<uint16_t> out;  // [T,H,D] bf16
  std::vector<float> lse;     // [H,T], base e, all finite
};

struct Case {
  int T, H, D, N;
  // Per rank and step, bytes on the wire (payload fields only).
  int64_t in_rank() const { return int64_t{T} * H * D * 2 + int64_t{T} * H * 4; }
  int64_t out_rank() const { return int64_t{T} * H * D + 4; }  // FP8 codes + one scale
};

constexpr float kScale = 4.0f / 448.0f;  // merged values are means of values in [-4, 4)
constexpr int kSets = 2;                 // input sets, alternated step by step
constexpr int kInputRanks = 4;         // inputs are made for the largest N

// sets[s][r]
std::vector<std::vector<RankData>> MakeInputs(int T, int H, int D, uint64_t seed) {
  std::vector<std::vector<RankData>> sets(kSets, std::vector<RankData>(kInputRanks));
  for (int s = 0; s < kSets; ++s) {
    for (int r = 0; r < kInputRanks; ++r) {
      SplitMix64 rng{seed * 1000003ull + (uint64_t(T) << 40) + (uint64_t(H) << 24) + s * 7919ull + r};
      RankData& d = sets[s][r];
      d.out.resize(int64_t{T} * H * D);
      for (auto& x : d.out) x = FloatToBFloat16Bits(rng.Uniform(-4.0f, 4.0f));
      d.lse.resize(int64_t{T} * H);
      for (auto& x : d.lse) x = rng.Uniform(-4.0f, 4.0f);
    }
  }
  return sets;
}

// ----------------------------------------------------------------- cases ---

struct Row {
  Case c;
  Timing merge, echo;
  v1::GetStatsResponse stats;
  int merge_conns = 0, echo_conns = 0;
  int64_t verified_codes = 0, mismatched_codes = 0;
  int64_t codes_beyond_one_step = 0;  // differ by more than one FP8 code step
  std::string error;  // setup or verification failure
};

class Bench {
 public:
  Bench(int echo_port, double deadline_s)
      : echo_target_(absl::StrCat("127.0.0.1:", echo_port)), echo_port_(echo_port), deadline_s_(deadline_s) {}

  // Budget of one measurement (a case has two) given `left` cases still
  // to run.
  double Budget(int left) const {
    const double remaining = deadline_s_ - SecondsSince(start_);
    return std::max(0.0,
                    std::min(absl::GetFlag(FLAGS_seconds_per_measurement), remaining / std::max(1, 2 * left)));
  }

  // One case: its echo and its merge, their steps interleaved.
  void RunCase(const std::vector<std::vector<RankData>>& sets, int left, Row* row) {
    const double budget = Budget(left);
    WithEcho(sets, row, [&](const RankOp& echo) {
      WithMerge(sets, row, [&](const RankOp& merge) { RunInterleaved(row->c.N, echo, merge, budget, row); });
    });
  }

 private:
  // Connects the echo's ranks and runs `body` with their step.
  void WithEcho(const std::vector<std::vector<RankData>>& sets, Row* row,
                const std::function<void(const RankOp&)>& body) {
    const Case c = row->c;
    struct EchoRank {
      std::shared_ptr<grpc::Channel> channel;
      std::unique_ptr<bench::Echo::Stub> stub;
      grpc::ClientContext ctx;
      std::unique_ptr<grpc::ClientReaderWriter<bench::EchoRequest, bench::EchoResponse>> rw;
      bench::EchoResponse resp;
    };
    std::vector<std::unique_ptr<EchoRank>> ranks;
    for (int r = 0; r < c.N; ++r) {
      auto e = std::make_unique<EchoRank>();
      grpc::ChannelArguments args = RankChannelArguments();  // as RankClient::Connect
      if (absl::GetFlag(FLAGS_echo_separate_connections)) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      e->channel = grpc::CreateCustomChannel(echo_target_, grpc::InsecureChannelCredentials(), args);
      e->stub = bench::Echo::NewStub(e->channel);
      e->rw = e->stub->Stream(&e->ctx);
      ranks.push_back(std::move(e));
    }
    const size_t out_bytes = static_cast<size_t>(c.out_rank() - 4);
    RankOp op = [&](int r, int idx) -> absl::Status {
      const RankData& d = sets[idx % kSets][r];
      EchoRank& e = *ranks[r];
      bench::EchoRequest req;  // a fresh message per call, as RankClient::Merge
      req.set_seq(idx);
      req.set_response_bytes(static_cast<uint32_t>(out_bytes));
      req.set_payload(d.out.data(), d.out.size() * sizeof(uint16_t));
      req.set_lse(d.lse.data(), d.lse.size() * sizeof(float));
      if (!e.rw->Write(req)) return absl::UnavailableError("echo write failed");
      if (!e.rw->Read(&e.resp)) return absl::UnavailableError("echo read failed");
      const std::string got = std::move(*e.resp.mutable_payload());
      if (e.resp.seq() != static_cast<uint64_t>(idx) || got.size() != out_bytes) {
        return absl::InternalError("echo: wrong response");
      }
      return absl::OkStatus();
    };
    body(op);
    row->echo_conns = CountConnectionsTo(echo_port_);
    for (auto& e : ranks) {
      e->rw->WritesDone();
      grpc::Status st = e->rw->Finish();
      if (!st.ok() && row->echo.first_error.empty()) row->echo.first_error = st.error_message();
    }
  }

  // Starts a merge server, joins the ranks, checks the first merges against
  // MergeOnCpu and runs `body` with the ranks' step (not on a failure).
  void WithMerge(const std::vector<std::vector<RankData>>& sets, Row* row,
                 const std::function<void(const RankOp&)>& body) {
    const Case c = row->c;
    // bf16 in, LSE base e in [H,T], FP8 per tensor, full return.
    const v1::GroupConfig cfg = DefaultGroupConfig(c.N, c.H, c.D, c.T);

    EmbeddedServerOptions so;
    so.rank_address = "127.0.0.1:0";
    so.admin_address = "127.0.0.1:0";
    so.admin_token = "grpc-plane-bench";  // unused; set so no warning is logged
    so.initial_config = cfg;
    so.initial_default_scale = kScale;
    so.backend = absl::GetFlag(FLAGS_backend);
    so.step_timeout = absl::Seconds(10);
    auto server = EmbeddedServer::Start(so);
    if (!server.ok()) {
      row->error = absl::StrCat("server: ", server.status().ToString());
      return;
    }
    const std::string target = absl::StrCat("127.0.0.1:", (*server)->rank_port());
    std::vector<std::unique_ptr<RankClient>> clients(c.N);
    for (int r = 0; r < c.N; ++r) {
      RankClientOptions co;
      co.target = target;
      co.rank = r;
      co.num_parts = c.N;
      auto client = RankClient::Connect(co);
      if (!client.ok()) {
        row->error = absl::StrCat("rank ", r, ": ", client.status().ToString());
        return;
      }
      if (absl::Status st = (*client)->Join(); !st.ok()) {
        row->error = absl::StrCat("rank ", r, " join: ", st.ToString());
        return;
      }
      clients[r] = std::move(*client);
    }
    if (absl::Status st = clients[0]->WaitForGroupReady(absl::Seconds(10)); !st.ok()) {
      row->error = absl::StrCat("group: ", st.ToString());
      return;
    }

    // Correctness first: the first steps against MergeOnCpu, byte for byte.
    const int verify = absl::GetFlag(FLAGS_verify_steps);
    std::vector<absl::StatusOr<MergeResult>> results(c.N, absl::UnknownError("none"));
    auto merge_one = [&](int r, uint64_t step, const RankData& d) {
      return clients[r]->Merge(step, 0, c.T, d.out.data(), d.out.size() * sizeof(uint16_t), d.lse.data(),
                               d.lse.size());
    };
    for (int v = 0; v < verify && row->error.empty(); ++v) {
      const auto& set = sets[v % kSets];
      std::vector<std::thread> threads;
      for (int r = 0; r < c.N; ++r) {
        threads.emplace_back([&, r] { results[r] = merge_one(r, v, set[r]); });
      }
      for (auto& t : threads) t.join();
      MergeArgs args;
      args.shape = {c.N, c.T, c.H, c.D};
      args.config.input_dtype = DType::kBFloat16;
      args.config.lse_base = LseBase::kNatural;
      args.config.lse_layout = LseLayout::kHeadsTokens;
      args.config.output_mode = OutputMode::kFp8PerTensor;
      for (int r = 0; r < c.N; ++r) {
        args.partial_out[r] = set[r].out.data();
        args.partial_lse[r] = set[r].lse.data();
      }
      args.partial_out_bytes = set[0].out.size() * sizeof(uint16_t);
      args.partial_lse_bytes = set[0].lse.size() * sizeof(float);
      args.token_stride = int64_t{c.H} * c.D;
      args.head_stride = c.D;
      const float scale = kScale;
      args.static_scale = &scale;
      std::string want(static_cast<size_t>(int64_t{c.T} * c.H * c.D), '\0');
      args.out = {want.data(), want.size()};
      if (absl::Status st = MergeOnCpu(args); !st.ok()) {
        row->error = absl::StrCat("MergeOnCpu: ", st.ToString());
        break;
      }
      for (int r = 0; r < c.N; ++r) {
        if (!results[r].ok()) {
          row->error = absl::StrCat("verify step ", v, " rank ", r, ": ", results[r].status().ToString());
          break;
        }
        const MergeResult& m = *results[r];
        if (m.scales.size() != 1 || m.scales[0] != kScale || m.head_begin != 0 || m.head_count != c.H ||
            m.num_tokens != c.T || m.output.size() != want.size()) {
          row->error = absl::StrCat("verify step ", v, " rank ", r, ": wrong scale, heads, tokens or size");
          break;
        }
        for (size_t i = 0; i < want.size(); ++i) {
          const uint8_t got = static_cast<uint8_t>(m.output[i]), exp = static_cast<uint8_t>(want[i]);
          row->mismatched_codes += got != exp;
          row->codes_beyond_one_step += std::abs(CodeOrdinal(got) - CodeOrdinal(exp)) > 1;
        }
        row->verified_codes += want.size();
      }
    }
    if (!row->error.empty()) return;
    row->merge_conns = CountConnectionsTo((*server)->rank_port());

    RankOp op = [&](int r, int idx) -> absl::Status {
      auto res = merge_one(r, verify + idx, sets[idx % kSets][r]);
      if (!res.ok()) return res.status();
      if (res->output.size() != static_cast<size_t>(int64_t{c.T} * c.H * c.D)) {
        return absl::InternalError("merge: wrong output size");
      }
      return absl::OkStatus();
    };
    body(op);
    row->stats = (*server)->GetStats();
    clients.clear();
    (*server)->Shutdown();
  }

  // The echo's and the merge's steps alternate in blocks of kBlockSteps,
  // so both see the same load: on a shared machine, load that changed
  // between two separate measurements moved their ratio by tens of %.
  // Each gets the warm-up, at least min_steps and the budget it would get
  // alone.
  static void RunInterleaved(int n, const RankOp& echo, const RankOp& merge, double budget_s, Row* row) {
    constexpr int kBlockSteps = 10;
    auto is_echo = [](int idx) { return (idx / kBlockSteps) % 2 == 0; };
    const RankOp op = [&](int r, int idx) { return is_echo(idx) ? echo(r, idx) : merge(r, idx); };
    const int warmup = 2 * absl::GetFlag(FLAGS_warmup_steps);
    const Timing all = RunSteps(n, warmup, 2 * absl::GetFlag(FLAGS_max_steps), 2 * absl::GetFlag(FLAGS_min_steps),
                                2 * budget_s, op);
    for (int i = 0; i < all.steps; ++i) {
      (is_echo(warmup + i) ? row->echo : row->merge).step_us.push_back(all.step_us[i]);
    }
    for (Timing* t : {&row->echo, &row->merge}) {
      t->steps = static_cast<int>(t->step_us.size());
      for (double us : t->step_us) t->wall_s += us / 1e6;
    }
    row->merge.failures = all.failures;
    row->merge.first_error = all.first_error;
  }

  const std::string echo_target_;
  const int echo_port_;
  const double deadline_s_;
  const Clock::time_point start_ = Clock::now();
};

std::string Bytes(double b) {
  if (b >= 1e6) return absl::StrFormat("%.2f MB", b / 1e6);
  if (b >= 1e3) return absl::StrFormat("%.1f KB", b / 1e3);
  return absl::StrFormat("%.0f B", b);
}

int Run() {
  SetLogQuiet(!absl::GetFlag(FLAGS_verbose));
  const bool quick = absl::GetFlag(FLAGS_quick);
  if (quick) absl::SetFlag(&FLAGS_seconds_per_measurement, 0.5);
  const std::vector<int> tokens = quick ? std::vector<int>{1, 64} : std::vector<int>{1, 16, 64, 256};
  const std::vector<std::pair<int, int>> heads = {{16, 512}, {128, 128}};  // (H, D)
  const std::vector<int> ranks = {2, 4};
  if (absl::GetFlag(FLAGS_max_steps) < 1 || absl::GetFlag(FLAGS_min_steps) < 1 ||
      absl::GetFlag(FLAGS_warmup_steps) < 0 || absl::GetFlag(FLAGS_verify_steps) < 1) {
    std::fprintf(stderr, "max_steps, min_steps, verify_steps >= 1 and warmup_steps >= 0 required\n");
    return 2;
  }
  absl::SetFlag(&FLAGS_min_steps, std::min(absl::GetFlag(FLAGS_min_steps), absl::GetFlag(FLAGS_max_steps)));
  const auto t_start = Clock::now();

  // The echo server: the rank listener's settings.
  int64_t max_out = 0;
  for (int T : tokens) {
    for (auto [H, D] : heads) max_out = std::max(max_out, int64_t{T} * H * D);
  }
  EchoService echo(static_cast<size_t>(max_out));
  grpc::ServerBuilder builder;
  int echo_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &echo_port);
  builder.RegisterService(&echo);
  ConfigureRankListener(&builder);
  std::unique_ptr<grpc::Server> echo_server = builder.BuildAndStart();
  if (echo_server == nullptr || echo_port == 0) {
    std::fprintf(stderr, "echo server failed to start\n");
    return 1;
  }

  std::vector<Row> rows;
  for (auto [H, D] : heads) {
    for (int T : tokens) {
      for (int N : ranks) rows.push_back(Row{Case{T, H, D, N}, {}, {}, {}});
    }
  }
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "cpu" && backend != "cuda") {
    std::fprintf(stderr, "--backend: '%s' is not cpu or cuda\n", backend.c_str());
    return 2;
  }
  const bool cuda = backend == "cuda";
  std::printf("grpc_plane_bench: %zu cases, bf16 in, FP8 per tensor out (full return), %s backend, "
              "loopback; %d warm-up steps, %d..%d timed steps or %.1f s per measurement; "
              "%u hardware threads%s\n",
              rows.size(), backend.c_str(), absl::GetFlag(FLAGS_warmup_steps), absl::GetFlag(FLAGS_min_steps),
              absl::GetFlag(FLAGS_max_steps), absl::GetFlag(FLAGS_seconds_per_measurement),
              std::thread::hardware_concurrency(),
              absl::GetFlag(FLAGS_echo_separate_connections) ? "; echo on separate connections" : "");
  std::fflush(stdout);

  Bench bench(echo_port, absl::GetFlag(FLAGS_max_total_s));
  int left = static_cast<int>(rows.size());
  for (size_t i = 0; i < rows.size();) {
    // All cases of one shape share its inputs (generated for 4 ranks).
    const Case c0 = rows[i].c;
    const auto sets = MakeInputs(c0.T, c0.H, c0.D, absl::GetFlag(FLAGS_seed));
    for (; i < rows.size() && rows[i].c.T == c0.T && rows[i].c.H == c0.H; ++i) {
      Row& row = rows[i];
      bench.RunCase(sets, left--, &row);
      std::fprintf(stderr, "  T=%d H=%d D=%d N=%d: echo %d steps, merge %d steps%s\n", row.c.T, row.c.H,
                   row.c.D, row.c.N, row.echo.steps, row.merge.steps,
                   row.error.empty() ? "" : absl::StrCat(" ERROR ", row.error).c_str());
    }
  }

  // --------------------------------------------------------------- table ---
  std::printf("\n| shape T x H x D | N | in/step | out/step | steps | step p50 us | step p90 us | step p99 us "
              "| echo p50 us | echo p99 us | step/echo p50 | merge p50 us | rest p50 us | steps/s | MB/s in "
              "| echo steps/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<double> ratios, merge_share, rest_share;
  int64_t verified = 0, mismatched = 0, beyond_one_step = 0;
  int failures = 0, errors = 0;
  double best_mbs = 0;
  const Row* best = nullptr;
  for (const Row& r : rows) {
    verified += r.verified_codes;
    mismatched += r.mismatched_codes;
    beyond_one_step += r.codes_beyond_one_step;
    failures += r.merge.failures + r.echo.failures;
    if (!r.error.empty() || r.merge.steps == 0 || r.echo.steps == 0) {
      ++errors;
      std::printf("| %d x %d x %d | %d | error: %s |\n", r.c.T, r.c.H, r.c.D, r.c.N,
                  r.error.empty() ? "no steps" : r.error.c_str());
      continue;
    }
    const double in_step = static_cast<double>(r.c.in_rank()) * r.c.N;
    const double out_step = static_cast<double>(r.c.out_rank()) * r.c.N;
    const double p50 = Percentile(r.merge.step_us, 0.5), p90 = Percentile(r.merge.step_us, 0.9),
                 p99 = Percentile(r.merge.step_us, 0.99);
    const double e50 = Percentile(r.echo.step_us, 0.5), e99 = Percentile(r.echo.step_us, 0.99);
    const double m50 = r.stats.merge().p50_us();
    const double rest = p50 - e50 - m50;
    const double sps = r.merge.steps / r.merge.wall_s, eps = r.echo.steps / r.echo.wall_s;
    const double mbs = sps * in_step / 1e6;
    ratios.push_back(p50 / e50);
    merge_share.push_back(m50 / p50);
    rest_share.push_back(rest / p50);
    if (mbs > best_mbs) {
      best_mbs = mbs;
      best = &r;
    }
    std::printf("| %d x %d x %d | %d | %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f | %.0f | %.0f | %.0f "
                "| %.1f | %.0f |\n",
                r.c.T, r.c.H, r.c.D, r.c.N, Bytes(in_step).c_str(), Bytes(out_step).c_str(), r.merge.steps, p50,
                p90, p99, e50, e99, p50 / e50, m50, rest, sps, mbs, eps);
  }

  // Server phases (the numbers Admin.GetStats returns; the window also holds
  // the verify and warm-up steps of the case).
  std::printf("\nServer phases per case (us; p50 unless noted; samples include %d verify + %d warm-up steps):\n\n",
              absl::GetFlag(FLAGS_verify_steps), absl::GetFlag(FLAGS_warmup_steps));
  std::printf("| shape T x H x D | N | receive | merge | merge p99 | send (per response) | total (first part to "
              "merged) | samples | TCP conns merge/echo |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    if (!r.error.empty()) continue;
    const auto& s = r.stats;
    std::printf("| %d x %d x %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %llu | %d/%d |\n", r.c.T, r.c.H, r.c.D,
                r.c.N, s.receive().p50_us(), s.merge().p50_us(), s.merge().p99_us(), s.send().p50_us(),
                s.total().p50_us(), static_cast<unsigned long long>(s.merge().count()), r.merge_conns,
                r.echo_conns);
  }

  // The CUDA backend's merge phase next to what it cannot do without: the
  // last part's H2D copy, the kernel and the D2H copy of the output, from
  // the device's clock in the same steps.
  std::vector<double> cuda_ratios;
  if (cuda) {
    std::printf("\nCUDA merge phase vs its copies and kernel (us, p50 over the same steps; device times from CUDA "
                "events):\n\n| shape T x H x D | N | merge phase | H2D last part | kernel | D2H output | copies + "
                "kernel | merge / (copies + kernel) |\n|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows) {
      if (!r.error.empty()) continue;
      const auto& s = r.stats;
      const double need = s.device_copy_in().p50_us() + s.device_kernel().p50_us() + s.device_copy_out().p50_us();
      const double ratio = need > 0 ? s.merge().p50_us() / need : 0;
      if (need > 0) cuda_ratios.push_back(ratio);
      std::printf("| %d x %d x %d | %d | %.0f | %.1f | %.1f | %.1f | %.1f | %.2f |\n", r.c.T, r.c.H, r.c.D, r.c.N,
                  s.merge().p50_us(), s.device_copy_in().p50_us(), s.device_kernel().p50_us(),
                  s.device_copy_out().p50_us(), need, ratio);
    }
  }

  // ------------------------------------------------------------- summary ---
  const double total_s = SecondsSince(t_start);
  std::printf("\nSUMMARY\n");
  std::printf("  correctness  %lld FP8 codes from %d verify steps per case compared with MergeOnCpu: %lld differ, "
              "%lld by more than one code step\n",
              static_cast<long long>(verified), absl::GetFlag(FLAGS_verify_steps),
              static_cast<long long>(mismatched), static_cast<long long>(beyond_one_step));
  std::printf("  failures     %d failed calls, %d cases with errors\n", failures, errors);
  if (!ratios.empty()) {
    std::printf("  step/echo    p50 ratio min %.2f, median %.2f, max %.2f over %zu cases\n",
                *std::min_element(ratios.begin(), ratios.end()), Percentile(ratios, 0.5),
                *std::max_element(ratios.begin(), ratios.end()), ratios.size());
    std::printf("  split        server merge = %.0f%%..%.0f%% of step p50 (median %.0f%%); step - echo - merge "
                "= %.0f%%..%.0f%% (median %.0f%%)\n",
                100 * *std::min_element(merge_share.begin(), merge_share.end()),
                100 * *std::max_element(merge_share.begin(), merge_share.end()), 100 * Percentile(merge_share, 0.5),
                100 * *std::min_element(rest_share.begin(), rest_share.end()),
                100 * *std::max_element(rest_share.begin(), rest_share.end()), 100 * Percentile(rest_share, 0.5));
  }
  if (best != nullptr) {
    std::printf("  throughput   best %.1f MB/s of partials in (T=%d H=%d D=%d N=%d)\n", best_mbs, best->c.T,
                best->c.H, best->c.D, best->c.N);
  }
  if (!cuda_ratios.empty()) {
    std::printf("  cuda merge   merge phase / (H2D last part + kernel + D2H) p50: min %.2f, median %.2f, max %.2f\n",
                *std::min_element(cuda_ratios.begin(), cuda_ratios.end()), Percentile(cuda_ratios, 0.5),
                *std::max_element(cuda_ratios.begin(), cuda_ratios.end()));
  }
  std::printf("  wall         %.1f s\n", total_s);
  // The CPU backend is the reference itself; the GPU's merge may round one
  // code step apart (the contract's tolerance, as the GPU tests hold it).
  const bool pass = (cuda ? beyond_one_step == 0 : mismatched == 0) && failures == 0 && errors == 0;
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  echo_server->Shutdown();
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace dcpmerge

int main(int argc, char** argv) {
  dcpmerge::UseVersionFlag("grpc_plane_bench");
  absl::SetProgramUsageMessage("grpc_plane_bench: dcpmerge's gRPC data plane vs a raw gRPC echo, on loopback");
  absl::ParseCommandLine(argc, argv);
  dcpmerge::KeepFreedBuffersInHeap();
  return dcpmerge::Run();
}
