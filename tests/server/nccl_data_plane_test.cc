// The NCCL data plane end to end, in process, without GPUs: the whole
// MergeServer (gRPC control plane on loopback, --data_plane=nccl) and N
// ranks (RankClient + RankDevice), their communicators made by one
// transport::FakeHub (NCCL's bootstrap and p2p semantics over host memory).
// Outputs are checked against MergeOnCpu; failures (bad steps, a dead rank,
// shutdown) against the protocol's promises.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/rank_client.h"
#include "client/rank_device.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "base/log.h"
#include "server/merge_server.h"
#include "tests/server/server_harness.h"
#include "tests/server/test_config.h"
#include "tests/server/test_data.h"
#include "transport/fake_hub.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
constexpr int kH = 2, kD = 64;  // SmallConfig
constexpr float kScale = 0.05f;

// A CPU-backend server of 2 ranks on the NCCL plane, loopback.
MergeServerOptions NcclCpuOptions() {
  SetLogQuiet(true);
  MergeServerOptions o;
  o.rank_address = "127.0.0.1:0";
  o.admin_address = "127.0.0.1:0";
  o.backend = "cpu";
  o.data_plane = "nccl";
  o.initial_config = testing::SmallConfig(2);
  return o;
}

TEST(NcclPlaneStartTest, DeviceMemoryNeedsTheCudaBackend) {
  MergeServerOptions o = NcclCpuOptions();  // real NCCL: partials arrive in GPU memory
  auto s = MergeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("cuda backend"));
}

TEST(NcclPlaneStartTest, FixedTokensBeyondMaxTokensRefusedAtStart) {
  MergeServerOptions o = NcclCpuOptions();
  o.nccl.factory = transport::FakeHub::Create()->Factory();
  o.nccl.fixed_tokens = 9;  // max_tokens 8
  auto s = MergeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("fixed_tokens"));
}

// One rank's "device" buffers (host memory: the fake transport's) and what
// it got back.
struct RankRun {
  absl::Status status = absl::UnknownError("not run");
  DeviceStepInfo info;
  std::vector<uint8_t> out;
};

class NcclPlaneTest : public ::testing::Test {
 protected:
  void Start(int n, int64_t fixed_tokens = -1, absl::Duration heartbeat = absl::Seconds(10)) {
    SetLogQuiet(true);
    n_ = n;
    hub_ = transport::FakeHub::Create();
    MergeServerOptions o;
    o.rank_address = "127.0.0.1:0";
    o.admin_address = "127.0.0.1:0";
    o.backend = "cpu";
    o.data_plane = "nccl";
    o.nccl.factory = hub_->Factory();
    o.nccl.init_timeout = absl::Seconds(5);
    o.nccl.fixed_tokens = fixed_tokens;
    o.heartbeat_timeout = heartbeat;
    o.step_timeout = absl::Seconds(3);
    o.initial_config = testing::SmallConfig(n);
    o.initial_default_scale = kScale;
    auto s = MergeServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    target_ = absl::StrCat("127.0.0.1:", server_->rank_port());
    ranks_.resize(n);
  }
  void TearDown() override {
    ranks_.clear();
    server_.reset();
  }

  // A rank: its client and the device path bound to it (destroyed first).
  struct Rank {
    std::unique_ptr<RankClient> client;
    std::unique_ptr<RankDevice> device;
  };

  Rank NewRank(int rank, bool heartbeat = true) {
    RankClientOptions o;
    o.target = target_;
    o.rank = rank;
    o.num_parts = n_;
    o.rpc_timeout = absl::Seconds(5);
    o.heartbeat = heartbeat;
    auto c = RankClient::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    RankDeviceOptions d;
    d.factory = hub_->Factory();
    d.init_timeout = absl::Seconds(5);
    auto device = RankDevice::Create(c->get(), d);
    EXPECT_TRUE(device.ok()) << device.status();
    return Rank{std::move(*c), std::move(*device)};
  }

  // Joins every rank (new clients where null), forms the communicator and
  // waits until the server reports the group ready.
  void JoinAndConnect(std::vector<int> already_joined = {}) {
    for (int r = 0; r < n_; ++r) {
      if (ranks_[r].client == nullptr) ranks_[r] = NewRank(r);
      if (std::find(already_joined.begin(), already_joined.end(), r) != already_joined.end()) continue;
      absl::Status st = ranks_[r].client->Join();
      ASSERT_TRUE(st.ok()) << "rank " << r << ": " << st;
    }
    std::vector<absl::Status> st(n_);
    std::vector<std::thread> th;
    for (int r = 0; r < n_; ++r) th.emplace_back([&, r] { st[r] = ranks_[r].device->Connect(); });
    for (auto& t : th) t.join();
    for (int r = 0; r < n_; ++r) ASSERT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r];
    ASSERT_TRUE(ranks_[0].client->WaitForGroupReady(absl::Seconds(10)).ok());
  }

  std::vector<testing::PartData> Parts(uint64_t step, int64_t tokens) {
    std::vector<testing::PartData> p;
    for (int r = 0; r < n_; ++r) p.push_back(testing::MakePart(11, step, r, tokens, kH, kD));
    return p;
  }

  // Every rank in `ranks` (all by default) enqueues its part of `step`
  // (tokens[r] overrides num_tokens), then waits for its answer.
  std::vector<RankRun> Step(uint64_t step, int64_t tokens, const std::vector<testing::PartData>& parts,
                            std::vector<int64_t> per_rank_tokens = {}, std::vector<int> ranks = {},
                            absl::Duration wait = absl::Seconds(10)) {
    if (ranks.empty()) {
      for (int r = 0; r < n_; ++r) ranks.push_back(r);
    }
    std::vector<RankRun> runs(n_);
    std::vector<DeviceTicket> tickets(n_);
    std::vector<testing::PartData> own(n_);
    for (int r : ranks) {
      const int64_t t = per_rank_tokens.empty() ? tokens : per_rank_tokens[r];
      own[r] = t == tokens ? parts[r] : testing::MakePart(11, step, r, t, kH, kD);
      auto sizes = ranks_[r].device->Sizes(t);
      EXPECT_TRUE(sizes.ok()) << sizes.status();
      if (!sizes.ok()) continue;
      runs[r].out.assign(sizes->out, 0);
      transport::RankStep s;
      s.step_id = step;
      s.num_tokens = t;
      s.partial_out = own[r].out.data();
      s.partial_lse = own[r].lse.data();
      s.out = runs[r].out.data();
      auto ticket = ranks_[r].device->Merge(s, nullptr);
      if (!ticket.ok()) {
        runs[r].status = ticket.status();
        continue;
      }
      tickets[r] = *ticket;
      runs[r].status = absl::OkStatus();
    }
    for (int r : ranks) {
      if (!runs[r].status.ok()) continue;
      runs[r].status = ranks_[r].device->Wait(tickets[r], wait, &runs[r].info);
      if (runs[r].status.code() == absl::StatusCode::kUnavailable) continue;
      // After the stream work: CheckResponse reads the same answer.
      DeviceStepInfo again;
      const absl::Status checked = ranks_[r].device->CheckResponse(tickets[r], &again);
      EXPECT_EQ(checked, runs[r].status);
      EXPECT_EQ(again.step, runs[r].info.step);
      EXPECT_EQ(again.config_version, runs[r].info.config_version);
    }
    return runs;
  }

  void ExpectMerged(const std::vector<RankRun>& runs, const std::vector<testing::PartData>& parts,
                    int64_t tokens, float scale, uint64_t step) {
    const testing::Expected e =
        testing::MergeExpected(parts, tokens, kH, kD, OutputMode::kFp8PerTensor, scale);
    for (int r = 0; r < n_; ++r) {
      SCOPED_TRACE(absl::StrCat("rank ", r, " step ", step));
      ASSERT_TRUE(runs[r].status.ok()) << runs[r].status;
      EXPECT_EQ(runs[r].info.step, step);
      EXPECT_EQ(runs[r].info.num_tokens, tokens);
      EXPECT_EQ(runs[r].info.head_count, kH);
      EXPECT_EQ(runs[r].info.static_scale, scale);
      EXPECT_EQ(runs[r].out, e.out);
    }
  }

  // The server records a step once its sends completed, which may be just
  // after the ranks saw their answers.
  v1::GetStatsResponse StatsAfter(uint64_t steps) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    v1::GetStatsResponse st = server_->GetStats();
    while (st.steps_ok() + st.steps_failed() < steps && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
      st = server_->GetStats();
    }
    return st;
  }

  int n_ = 0;
  std::shared_ptr<transport::FakeHub> hub_;
  std::unique_ptr<MergeServer> server_;
  std::string target_;
  std::vector<Rank> ranks_;
};

TEST_F(NcclPlaneTest, OutputsEqualMergeOnCpu) {
  Start(3);
  JoinAndConnect();
  const v1::JoinResponse j = ranks_[1].client->join_info();
  EXPECT_EQ(j.data_plane(), v1::DATA_PLANE_NCCL);
  EXPECT_FALSE(j.nccl_unique_id().empty());
  EXPECT_EQ(j.nccl_generation(), 1u);
  EXPECT_EQ(j.server_nccl_rank(), 3);
  EXPECT_FALSE(j.nccl_fixed_shape());
  EXPECT_TRUE(server_->Ready());
  EXPECT_EQ(testing::HealthStatus(target_, kMergeHealthService), 1);
  uint64_t step = 100;
  for (int64_t tokens : {4, 0, 8, 1}) {
    ++step;
    auto parts = Parts(step, tokens);
    ExpectMerged(Step(step, tokens, parts), parts, tokens, kScale, step);
  }
  const v1::GetStatsResponse stats = StatsAfter(4);
  EXPECT_EQ(stats.steps_ok(), 4u);
  EXPECT_EQ(stats.steps_failed(), 0u);
  EXPECT_GT(stats.bytes_in(), 0u);
  EXPECT_EQ(stats.total().count(), 4u);
  v1::GetConfigResponse cfg;
  server_->GetConfig(&cfg);
  EXPECT_EQ(cfg.data_plane(), v1::DATA_PLANE_NCCL);
  EXPECT_EQ(hub_->formed(), 1);
}

TEST_F(NcclPlaneTest, FixedShapeMode) {
  Start(2, /*fixed_tokens=*/4);
  JoinAndConnect();
  EXPECT_TRUE(ranks_[0].client->join_info().nccl_fixed_shape());
  EXPECT_EQ(ranks_[0].client->join_info().nccl_fixed_tokens(), 4);
  for (uint64_t step = 1; step <= 3; ++step) {
    auto parts = Parts(step, 4);
    ExpectMerged(Step(step, 4, parts), parts, 4, kScale, step);
  }
  // Other sizes are refused locally, before anything is enqueued.
  auto sizes = ranks_[0].device->Sizes(3);
  ASSERT_TRUE(sizes.ok());
  std::vector<uint8_t> in(sizes->partial_out), out(sizes->out);
  std::vector<float> lse(sizes->partial_lse / 4);
  transport::RankStep s;
  s.step_id = 9;
  s.num_tokens = 3;
  s.partial_out = in.data();
  s.partial_lse = lse.data();
  s.out = out.data();
  EXPECT_EQ(ranks_[0].device->Merge(s, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  auto parts = Parts(4, 4);
  ExpectMerged(Step(4, 4, parts), parts, 4, kScale, 4);
}

TEST_F(NcclPlaneTest, MismatchedStepFailsForEveryRankAndTheNextWorks) {
  Start(3);
  JoinAndConnect();
  auto parts = Parts(1, 4);
  // Rank 1 sends 3 tokens where the others send 4.
  std::vector<RankRun> runs = Step(1, 4, parts, {4, 3, 4});
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE(r);
    EXPECT_EQ(runs[r].status.code(), absl::StatusCode::kInvalidArgument) << runs[r].status;
    EXPECT_THAT(std::string(runs[r].status.message()), HasSubstr("num_tokens"));
    for (uint8_t b : runs[r].out) ASSERT_EQ(b, 0xFF) << "payload of a rejected step is poisoned";
  }
  // The communicator survives: the next step merges.
  parts = Parts(2, 4);
  ExpectMerged(Step(2, 4, parts), parts, 4, kScale, 2);
  const v1::GetStatsResponse stats = StatsAfter(2);
  EXPECT_EQ(stats.steps_failed(), 1u);
  EXPECT_EQ(stats.steps_ok(), 1u);
  EXPECT_EQ(stats.errors_by_code().at("INVALID_ARGUMENT"), 3u);
  EXPECT_EQ(hub_->formed(), 1);
}

TEST_F(NcclPlaneTest, ScaleUpdateAppliesAtTheNextStep) {
  Start(2);
  JoinAndConnect();
  auto parts = Parts(1, 4);
  std::vector<RankRun> runs = Step(1, 4, parts);
  ExpectMerged(runs, parts, 4, kScale, 1);
  const uint64_t v1 = runs[0].info.config_version;
  // The server already waits for step 2's headers: the change must still
  // land on step 2, pinned when its headers arrive.
  absl::SleepFor(absl::Milliseconds(50));
  auto snap = server_->SetScales({{0, 0.1f}}, false, 0.0f);
  ASSERT_TRUE(snap.ok()) << snap.status();
  parts = Parts(2, 4);
  runs = Step(2, 4, parts);
  ExpectMerged(runs, parts, 4, 0.1f, 2);
  EXPECT_EQ(runs[0].info.config_version, (*snap)->version);
  EXPECT_GT(runs[0].info.config_version, v1);
  EXPECT_EQ(hub_->formed(), 1);  // no re-formation for a scale change
}

TEST_F(NcclPlaneTest, DeadRankFailsTheStepWithinTheDeadlineAndTheGroupReforms) {
  Start(3, -1, /*heartbeat=*/absl::Milliseconds(400));
  // Rank 2 heartbeats from a thread of the test, so it can die silently.
  ranks_[2] = NewRank(2, /*heartbeat=*/false);
  ASSERT_TRUE(ranks_[2].client->Join().ok());
  std::atomic<bool> alive{true};
  const uint64_t session = ranks_[2].client->join_info().session_id();
  auto stub = v1::RankControl::NewStub(grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  std::thread beat([&] {
    while (alive.load()) {
      v1::HeartbeatRequest req;
      req.set_rank(2);
      req.set_session_id(session);
      v1::HeartbeatResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      stub->Heartbeat(&ctx, req, &resp);
      absl::SleepFor(absl::Milliseconds(50));
    }
  });
  JoinAndConnect({2});
  const std::string first_id = ranks_[0].client->join_info().nccl_unique_id();
  auto parts = Parts(1, 4);
  ExpectMerged(Step(1, 4, parts), parts, 4, kScale, 1);

  // Rank 2 dies: its party freezes, its heartbeats stop.
  alive.store(false);
  beat.join();
  hub_->World(first_id)->Kill(2);
  const absl::Time t0 = absl::Now();
  parts = Parts(2, 4);
  std::vector<RankRun> runs = Step(2, 4, parts, {}, {0, 1}, absl::Seconds(20));
  const absl::Duration took = absl::Now() - t0;
  for (int r : {0, 1}) {
    EXPECT_EQ(runs[r].status.code(), absl::StatusCode::kUnavailable) << runs[r].status;
  }
  // Heartbeat timeout (400 ms) + the ranks' heartbeat interval, not the
  // 20 s the ranks were prepared to wait.
  EXPECT_LT(took, absl::Seconds(4));
  EXPECT_FALSE(server_->Ready());
  v1::GetConfigResponse cfg;
  server_->GetConfig(&cfg);
  EXPECT_FALSE(cfg.group_ready());
  EXPECT_NE(testing::HealthStatus(target_, kMergeHealthService), 1);

  // A replacement for rank 2, and the survivors, join again: a fresh id,
  // generation 2, a new communicator.
  ranks_[2] = NewRank(2);
  JoinAndConnect();
  const v1::JoinResponse j = ranks_[0].client->join_info();
  EXPECT_EQ(j.nccl_generation(), 2u);
  EXPECT_NE(j.nccl_unique_id(), first_id);
  parts = Parts(3, 4);
  ExpectMerged(Step(3, 4, parts), parts, 4, kScale, 3);
  EXPECT_EQ(hub_->formed(), 2);
}

TEST_F(NcclPlaneTest, RankThatLeavesMakesTheOthersRejoin) {
  Start(2, -1, /*heartbeat=*/absl::Seconds(1));
  JoinAndConnect();
  auto parts = Parts(1, 4);
  ExpectMerged(Step(1, 4, parts), parts, 4, kScale, 1);
  ASSERT_TRUE(ranks_[1].client->Leave().ok());
  // Rank 0's session is ended by the server; its heartbeat thread aborts
  // its communicator, so a step enqueued now cannot hang.
  absl::Status st;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    absl::SleepFor(absl::Milliseconds(20));
    st = ranks_[0].client->last_heartbeat_status();
  } while (st.ok() && absl::Now() < deadline);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  std::vector<RankRun> runs = Step(2, 4, Parts(2, 4), {}, {0});
  EXPECT_EQ(runs[0].status.code(), absl::StatusCode::kUnavailable) << runs[0].status;
  EXPECT_THAT(std::string(runs[0].status.message()), HasSubstr("Join() and RankDevice::Connect() again"));
  EXPECT_EQ(ranks_[0].device->Connect().code(), absl::StatusCode::kUnavailable);
  JoinAndConnect();
  parts = Parts(3, 4);
  ExpectMerged(Step(3, 4, parts), parts, 4, kScale, 3);
}

TEST_F(NcclPlaneTest, ShutdownAbortsTheCommunicatorCleanly) {
  Start(2);
  JoinAndConnect();
  auto parts = Parts(1, 4);
  ExpectMerged(Step(1, 4, parts), parts, 4, kScale, 1);
  const std::string id = ranks_[0].client->join_info().nccl_unique_id();
  // Rank 0 is half way into step 2 (rank 1 never sends) when SIGTERM comes.
  auto sizes = ranks_[0].device->Sizes(4);
  ASSERT_TRUE(sizes.ok());
  parts = Parts(2, 4);
  std::vector<uint8_t> out(sizes->out);
  transport::RankStep s;
  s.step_id = 2;
  s.num_tokens = 4;
  s.partial_out = parts[0].out.data();
  s.partial_lse = parts[0].lse.data();
  s.out = out.data();
  auto ticket = ranks_[0].device->Merge(s, nullptr);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  const absl::Time t0 = absl::Now();
  server_->Shutdown();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  EXPECT_FALSE(server_->Ready());
  // The rank learns it over the control plane (its heartbeats fail) and
  // its step ends UNAVAILABLE instead of waiting forever.
  const absl::Time t1 = absl::Now();
  absl::Status st = ranks_[0].device->Wait(*ticket, absl::Seconds(20));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_LT(absl::Now() - t1, absl::Seconds(8));
  server_.reset();
  ranks_.clear();
}


}  // namespace
}  // namespace dcpmerge
