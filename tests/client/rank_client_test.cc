#include "client/rank_client.h"

#include <thread>

#include "client/rank_device.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/log.h"
#include "embed/embedded_server.h"
#include "tests/server/test_config.h"
#include "tests/server/test_data.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
constexpr int kT = 4, kH = 2, kD = 64;

class RankClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogQuiet(true);
    EmbeddedServerOptions o;
    o.backend = "cpu";
    o.initial_config = testing::SmallConfig(2);
    o.step_timeout = absl::Seconds(10);
    auto s = EmbeddedServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  std::unique_ptr<RankClient> Client(int rank, absl::Duration merge_timeout = absl::ZeroDuration()) {
    RankClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", server_->rank_port());
    o.rank = rank;
    o.num_parts = 2;
    o.merge_timeout = merge_timeout;
    auto c = RankClient::Connect(o);
    EXPECT_TRUE(c.ok());
    return std::move(*c);
  }
  absl::StatusOr<MergeResult> Merge(RankClient* c, int rank, uint64_t step) {
    const testing::PartData p = testing::MakePart(3, step, rank, kT, kH, kD);
    return c->Merge(step, 0, kT, p.out.data(), p.out.size(), p.lse.data(), p.lse.size());
  }
  std::unique_ptr<EmbeddedServer> server_;
};

TEST_F(RankClientTest, ConnectValidatesOptions) {
  RankClientOptions o;
  EXPECT_THAT(std::string(RankClient::Connect(o).status().message()), HasSubstr("target"));
  o.target = "127.0.0.1:1";
  o.num_parts = 2;
  o.rank = 2;
  EXPECT_THAT(std::string(RankClient::Connect(o).status().message()), HasSubstr("rank"));
}

TEST_F(RankClientTest, MergeBeforeJoinFails) {
  auto c = Client(0);
  EXPECT_EQ(Merge(c.get(), 0, 0).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RankClientTest, MergeHonoursItsDeadline) {
  auto c0 = Client(0, absl::Milliseconds(200));
  auto c1 = Client(1);
  ASSERT_TRUE(c0->Join().ok());
  ASSERT_TRUE(c1->Join().ok());
  const absl::Time t0 = absl::Now();
  auto r = Merge(c0.get(), 0, 1);  // rank 1 never sends step 1
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
}

TEST_F(RankClientTest, ConcurrentStepsOnOneClient) {
  auto c0 = Client(0);
  auto c1 = Client(1);
  ASSERT_TRUE(c0->Join().ok());
  ASSERT_TRUE(c1->Join().ok());
  ASSERT_TRUE(c0->WaitForGroupReady(absl::Seconds(10)).ok());
  std::vector<std::thread> th;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    th.emplace_back([&, t] {
      for (uint64_t s = t * 10u; s < t * 10u + 5; ++s) {
        auto a = Merge(c0.get(), 0, s);
        ok += a.ok();
      }
    });
    th.emplace_back([&, t] {
      for (uint64_t s = t * 10u; s < t * 10u + 5; ++s) {
        auto b = Merge(c1.get(), 1, s);
        ok += b.ok();
      }
    });
  }
  for (auto& x : th) x.join();
  EXPECT_EQ(ok.load(), 40);
}

TEST_F(RankClientTest, SameStepTwiceInFlightIsRefused) {
  auto c0 = Client(0, absl::Milliseconds(500));
  auto c1 = Client(1);
  ASSERT_TRUE(c0->Join().ok());
  ASSERT_TRUE(c1->Join().ok());
  std::thread t([&] { Merge(c0.get(), 0, 7).status().IgnoreError(); });
  absl::SleepFor(absl::Milliseconds(100));
  auto r = Merge(c0.get(), 0, 7);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("step"));
  t.join();
}

TEST_F(RankClientTest, ServerShutdownGivesUnavailable) {
  auto c0 = Client(0);
  auto c1 = Client(1);
  ASSERT_TRUE(c0->Join().ok());
  ASSERT_TRUE(c1->Join().ok());
  ASSERT_TRUE(c0->WaitForGroupReady(absl::Seconds(10)).ok());
  absl::StatusOr<MergeResult> r = absl::UnknownError("");
  std::thread t([&] { r = Merge(c0.get(), 0, 1); });
  absl::SleepFor(absl::Milliseconds(200));
  server_->Shutdown();
  t.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("shutting down"));
  auto again = Merge(c0.get(), 0, 2);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable) << again.status();
}

TEST_F(RankClientTest, DevicePathNeedsJoinAndAnNcclGroup) {
  auto c = Client(0);
  auto d = RankDevice::Create(c.get(), {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(RankDevice::Create(c.get(), {}).status().code(), absl::StatusCode::kFailedPrecondition);  // one per client
  EXPECT_EQ((*d)->Connect().code(), absl::StatusCode::kFailedPrecondition);
  transport::RankStep step;
  EXPECT_EQ((*d)->Merge(step, nullptr).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(c->Join().ok());
  // This server runs the gRPC data plane.
  const absl::Status st = (*d)->Connect();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("Merge()"));
  EXPECT_EQ((*d)->Sizes(1).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RankClientTest, DeviceOutlivingItsClientIsHarmless) {
  auto c = Client(0);
  auto d = RankDevice::Create(c.get(), {});
  ASSERT_TRUE(d.ok()) << d.status();
  c.reset();  // tells the device to forget the client
  EXPECT_EQ((*d)->Connect().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace dcpmerge
