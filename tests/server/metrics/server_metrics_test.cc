// The server binary with --metrics_address: a real HTTP GET of /metrics
// before and after merge steps (driven by //client:rank_client), a failed
// step and a scale update; names, types and values must follow.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/version.h"
#include "client/rank_client.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/server/metrics/http_get.h"
#include "tests/server/server_harness.h"
#include "tests/testutil/ops_util.h"

namespace dcpmerge {
namespace {

using testing::Exposition;
using testing::HttpGet;
using testing::ParseExposition;

constexpr int kT = 4, kH = 2, kD = 64, kWorld = 2;
constexpr char kToken[] = "metrics-test-token";

Exposition Scrape(int port) {
  testing::HttpResponse r = HttpGet(port, "/metrics");
  EXPECT_EQ(r.status, 200) << r.body;
  return ParseExposition(r.body);
}

// A rank can have its answer before the server's writer thread has recorded
// the send: scrape until `series` reaches `want` (or 5 s passed).
Exposition ScrapeUntil(int port, const std::string& series, double want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  Exposition e = Scrape(port);
  while (e.Get(series) < want && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    e = Scrape(port);
  }
  return e;
}

absl::Status MergeAll(std::vector<std::unique_ptr<RankClient>>& clients, uint64_t step, int32_t layer,
                      std::vector<int64_t> tokens) {
  std::vector<absl::Status> st(clients.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < clients.size(); ++r) {
    threads.emplace_back([&, r] {
      const testing::PartData p = testing::MakePart(3, step, static_cast<int>(r), tokens[r], kH, kD);
      st[r] = clients[r]->Merge(step, layer, tokens[r], p.out.data(), p.out.size(), p.lse.data(), p.lse.size())
                  .status();
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& s : st) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

TEST(ServerMetricsTest, ScrapedValuesFollowSteps) {
  testing::ServerProc server = testing::StartServer(
      {"--metrics_address=127.0.0.1:0", absl::StrCat("--world_size=", kWorld), absl::StrCat("--num_heads=", kH),
       absl::StrCat("--head_size=", kD), absl::StrCat("--max_tokens=", kT), "--default_scale=0.5"},
      {absl::StrCat("DCPMERGE_ADMIN_TOKEN=", kToken)});
  ASSERT_GT(server.pid, 0);
  ASSERT_GT(server.metrics_port, 0);

  Exposition e = Scrape(server.metrics_port);
  // Types.
  EXPECT_EQ(e.types["dcpmerge_steps_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_payload_bytes_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_step_errors_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_fp8_saturated_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_step_phase_duration_seconds"], "histogram");
  EXPECT_EQ(e.types["dcpmerge_ranks_connected"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_group_ready"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_config_version"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_fp8_scale"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_server_info"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_nccl_communicator_state"], "gauge");
  // Values before any step.
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"ok\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_ranks_connected"), 0);
  EXPECT_EQ(e.Get("dcpmerge_group_ready"), 0);
  EXPECT_EQ(e.Get("dcpmerge_world_size"), kWorld);
  EXPECT_EQ(e.Get("dcpmerge_config_version"), 1);
  EXPECT_EQ(e.Get("dcpmerge_fp8_default_scale"), 0.5);
  EXPECT_EQ(e.Get("dcpmerge_server_info{backend=\"cpu\",data_plane=\"grpc\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_nccl_communicator_state{state=\"unused\"}"), 1);
  for (const char* phase : {"receive", "merge", "send", "total"}) {
    EXPECT_EQ(e.Get(absl::StrCat("dcpmerge_step_phase_duration_seconds_count{phase=\"", phase, "\"}")), 0) << phase;
  }
  // The first bucket is 1 us.
  EXPECT_TRUE(e.Has("dcpmerge_step_phase_duration_seconds_bucket{phase=\"merge\",le=\"1e-06\"}"));
  // Build, membership, process series, with their types and values.
  EXPECT_EQ(e.types["dcpmerge_build_info"], "gauge");
  EXPECT_EQ(e.Get(absl::StrCat("dcpmerge_build_info{version=\"", kVersion, "\",commit=\"", BuildCommit(),
                               "\",backend=\"cpu\",data_plane=\"grpc\"}")),
            1);
  EXPECT_EQ(e.types["dcpmerge_rank_joins_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_rank_leaves_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_rank_drops_total"], "counter");
  EXPECT_EQ(e.Get("dcpmerge_rank_joins_total"), 0);
  for (const char* reason : {"requested", "reconfigured"}) {
    EXPECT_EQ(e.Get(absl::StrCat("dcpmerge_rank_leaves_total{reason=\"", reason, "\"}")), 0) << reason;
  }
  for (const char* reason : {"heartbeat_timeout", "stream_broken", "replaced", "communicator_aborted"}) {
    EXPECT_EQ(e.Get(absl::StrCat("dcpmerge_rank_drops_total{reason=\"", reason, "\"}")), 0) << reason;
  }
  EXPECT_EQ(e.types["process_cpu_seconds_total"], "counter");
  for (const char* g : {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
                        "process_max_fds", "process_threads", "process_start_time_seconds"}) {
    EXPECT_EQ(e.types[g], "gauge") << g;
    EXPECT_GT(e.Get(g), 0) << g;
  }
  // The CPU backend has no device series.
  EXPECT_EQ(e.types.count("dcpmerge_device_memory_used_bytes"), 0u);
  EXPECT_EQ(e.types.count("dcpmerge_device_info"), 0u);

  // Join both ranks: connected and ready.
  std::vector<std::unique_ptr<RankClient>> clients;
  for (int r = 0; r < kWorld; ++r) {
    RankClientOptions o;
    o.target = server.rank_target();
    o.rank = r;
    o.num_parts = kWorld;
    o.merge_timeout = absl::Seconds(20);
    auto c = RankClient::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE((*c)->Join().ok());
    clients.push_back(std::move(*c));
  }
  for (auto& c : clients) ASSERT_TRUE(c->WaitForGroupReady(absl::Seconds(20)).ok());

  constexpr int kSteps = 5;
  for (int s = 0; s < kSteps; ++s) ASSERT_TRUE(MergeAll(clients, 100 + s, 2, {kT, kT}).ok());
  e = ScrapeUntil(server.metrics_port, "dcpmerge_step_phase_duration_seconds_count{phase=\"send\"}",
                  kSteps * kWorld);
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"ok\"}"), kSteps);
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"failed\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_ranks_connected"), kWorld);
  EXPECT_EQ(e.Get("dcpmerge_group_ready"), 1);
  EXPECT_EQ(e.Get("dcpmerge_payload_bytes_total{direction=\"in\"}"),
            kSteps * kWorld * (kT * kH * kD * 2 + kT * kH * 4));
  // FP8 per tensor, full return: T*H*D codes per rank per step (+ scale).
  EXPECT_GE(e.Get("dcpmerge_payload_bytes_total{direction=\"out\"}"), kSteps * kWorld * kT * kH * kD);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_count{phase=\"merge\"}"), kSteps);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_count{phase=\"total\"}"), kSteps);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_count{phase=\"send\"}"), kSteps * kWorld);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_bucket{phase=\"total\",le=\"+Inf\"}"), kSteps);
  EXPECT_GT(e.Get("dcpmerge_step_phase_duration_seconds_sum{phase=\"total\"}"), 0);
  EXPECT_TRUE(e.Has("dcpmerge_rank_heartbeat_age_seconds{rank=\"1\"}"));
  // Scale 0.5 on values up to 4 never saturates.
  EXPECT_EQ(e.Get("dcpmerge_fp8_saturated_total"), 0);

  // A step whose ranks disagree on num_tokens fails for both ranks.
  EXPECT_EQ(MergeAll(clients, 200, 2, {kT, kT - 1}).code(), absl::StatusCode::kInvalidArgument);
  // A tiny scale saturates FP8 codes on the next good step.
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(server.admin_target(), grpc::InsecureChannelCredentials()));
  v1::SetScalesRequest req;
  (*req.mutable_layer_scales())[2] = 1e-3f;
  v1::SetScalesResponse resp;
  ASSERT_TRUE(testing::AdminCall(admin.get(), &v1::Admin::Stub::SetScales, req, &resp,
                                 absl::StrCat("Bearer ", kToken))
                  .ok());
  ASSERT_TRUE(MergeAll(clients, 201, 2, {kT, kT}).ok());
  e = Scrape(server.metrics_port);
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"failed\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"ok\"}"), kSteps + 1);
  EXPECT_EQ(e.Get("dcpmerge_step_errors_total{code=\"INVALID_ARGUMENT\"}"), kWorld);
  EXPECT_EQ(e.Get("dcpmerge_config_version"), static_cast<double>(resp.config_version()));
  EXPECT_EQ(e.Get("dcpmerge_config_version"), 2);
  EXPECT_FLOAT_EQ(static_cast<float>(e.Get("dcpmerge_fp8_scale{layer=\"2\"}")), 1e-3f);
  EXPECT_GT(e.Get("dcpmerge_fp8_saturated_total"), 0);

  // Ranks leave: gauges drop, leaves count.
  EXPECT_EQ(e.Get("dcpmerge_rank_joins_total"), kWorld);
  clients.clear();
  e = Scrape(server.metrics_port);
  EXPECT_EQ(e.Get("dcpmerge_ranks_connected"), 0);
  EXPECT_EQ(e.Get("dcpmerge_group_ready"), 0);
  EXPECT_EQ(e.Get("dcpmerge_rank_leaves_total{reason=\"requested\"}"), kWorld);
  EXPECT_EQ(e.Get("dcpmerge_rank_drops_total{reason=\"stream_broken\"}"), 0);

  const int port = server.metrics_port;
  EXPECT_EQ(testing::StopServer(server), 0);
  EXPECT_EQ(HttpGet(port, "/metrics").status, -1) << "metrics listener still open after exit";
}

// A rank that stops heartbeating is dropped, and counted by reason; one that
// takes over a live rank counts as "replaced". No scrape carries a NaN.
TEST(ServerMetricsTest, DropsAreCountedByReason) {
  testing::ServerProc server = testing::StartServer(
      {"--metrics_address=127.0.0.1:0", "--world_size=2", absl::StrCat("--num_heads=", kH),
       absl::StrCat("--head_size=", kD), absl::StrCat("--max_tokens=", kT), "--heartbeat_timeout_ms=1500"},
      {});
  ASSERT_GT(server.metrics_port, 0);
  auto control =
      v1::RankControl::NewStub(grpc::CreateChannel(server.rank_target(), grpc::InsecureChannelCredentials()));
  auto join = [&](bool replace) {
    v1::JoinRequest req;
    req.set_rank(0);
    req.set_world_size(2);
    req.set_host("test");
    req.set_replace_existing(replace);
    v1::JoinResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return control->Join(&ctx, req, &resp).ok();
  };
  ASSERT_TRUE(join(false));
  ASSERT_TRUE(join(true));  // takes rank 0 over: the first session is dropped
  // No heartbeats: the second session expires after 1.5 s.
  Exposition e = ScrapeUntil(server.metrics_port, "dcpmerge_rank_drops_total{reason=\"heartbeat_timeout\"}", 1);
  EXPECT_EQ(e.Get("dcpmerge_rank_joins_total"), 2);
  EXPECT_EQ(e.Get("dcpmerge_rank_drops_total{reason=\"replaced\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_rank_drops_total{reason=\"heartbeat_timeout\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_rank_leaves_total{reason=\"requested\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_ranks_connected"), 0);
  for (int i = 0; i < 2; ++i) {
    const testing::HttpResponse r = HttpGet(server.metrics_port, "/metrics");
    ASSERT_EQ(r.status, 200);
    for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
      if (line.empty() || line[0] == '#') continue;
      EXPECT_FALSE(absl::StrContains(absl::AsciiStrToLower(line), "nan")) << line;
    }
  }
  EXPECT_EQ(testing::StopServer(server), 0);
}

TEST(ServerMetricsTest, BusyMetricsPortFailsStartUp) {
  testing::ServerProc first = testing::StartServer({"--metrics_address=127.0.0.1:0"}, {});
  ASSERT_GT(first.metrics_port, 0);
  const std::string out = testing::TmpPath("err");
  const pid_t pid = testing::Spawn({testing::Runfile("server/dcpmerge_server"), "--rank_address=127.0.0.1:0",
                                    "--admin_address=127.0.0.1:0", "--backend=cpu",
                                    absl::StrCat("--metrics_address=127.0.0.1:", first.metrics_port)},
                                   {}, "", out);
  EXPECT_EQ(testing::WaitExit(pid, absl::Seconds(20)), 1);
  EXPECT_THAT(testing::ReadFile(out), ::testing::HasSubstr("metrics_address"));
  EXPECT_EQ(testing::StopServer(first), 0);
}

}  // namespace
}  // namespace dcpmerge
