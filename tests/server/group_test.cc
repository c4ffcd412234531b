#include "server/group.h"

#include <atomic>
#include <set>
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_config.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const ConfigSnapshot> Configured(ConfigStore& store, int n) {
  auto r = store.Configure(testing::SmallConfig(n), 1.0f);
  EXPECT_TRUE(r.ok());
  return *r;
}

JoinInfo Info(int rank, int n) {
  JoinInfo j;
  j.rank = rank;
  j.num_parts = n;
  j.host = "test";
  return j;
}

TEST(GroupTest, JoinUntilComplete) {
  ConfigStore store;
  auto cfg = Configured(store, 2);
  Group g(absl::Seconds(10));
  int changes = 0;
  g.SetCallbacks(nullptr, [&] { ++changes; });
  EXPECT_FALSE(g.Complete());
  auto s0 = g.Join(Info(0, 2), *cfg);
  ASSERT_TRUE(s0.ok());
  EXPECT_FALSE(g.Complete());
  EXPECT_EQ(g.MissingRanks(), std::vector<int32_t>{1});
  auto s1 = g.Join(Info(1, 2), *cfg);
  ASSERT_TRUE(s1.ok());
  EXPECT_TRUE(g.Complete());
  EXPECT_NE(*s0, *s1);
  EXPECT_TRUE(g.CheckSession(0, *s0).ok());
  EXPECT_EQ(g.CheckSession(0, *s1).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(changes, 2);
}

TEST(GroupTest, JoinErrors) {
  ConfigStore store;
  Group g(absl::Seconds(10));
  EXPECT_EQ(g.Join(Info(0, 2), *store.Current()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto cfg = Configured(store, 2);
  auto ws = g.Join(Info(0, 3), *cfg);
  EXPECT_EQ(ws.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ws.status().message()), HasSubstr("world_size"));
  auto rk = g.Join(Info(2, 2), *cfg);
  EXPECT_EQ(rk.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(rk.status().message()), HasSubstr("rank"));
  JoinInfo h = Info(0, 2);
  h.expected_config_hash = cfg->hash + 1;
  auto hh = g.Join(h, *cfg);
  EXPECT_THAT(std::string(hh.status().message()), HasSubstr("expected_config_hash"));
  ASSERT_TRUE(g.Join(Info(0, 2), *cfg).ok());
  auto dup = g.Join(Info(0, 2), *cfg);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(dup.status().message()), HasSubstr("rank"));
}

TEST(GroupTest, ReplaceLeaveAndLoss) {
  ConfigStore store;
  auto cfg = Configured(store, 2);
  Group g(absl::Seconds(10));
  std::vector<int32_t> lost;
  g.SetCallbacks([&](int32_t r, const absl::Status& st) {
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
    lost.push_back(r);
  }, nullptr);
  auto a = g.Join(Info(0, 2), *cfg);
  JoinInfo again = Info(0, 2);
  again.replace_existing = true;
  auto b = g.Join(again, *cfg);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(lost, std::vector<int32_t>{0});
  EXPECT_EQ(g.Heartbeat(0, *a).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(g.Heartbeat(0, *b).ok());
  g.MarkLost(0, *a, "stale");  // not the live session: no-op
  EXPECT_EQ(lost.size(), 1u);
  g.MarkLost(0, *b, "stream broken");
  EXPECT_EQ(lost.size(), 2u);
  auto c = g.Join(Info(0, 2), *cfg);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(g.Leave(0, *b).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(g.Leave(0, *c).ok());
  EXPECT_EQ(lost.size(), 3u);
}

TEST(GroupTest, WatchdogDropsSilentMembers) {
  ConfigStore store;
  auto cfg = Configured(store, 2);
  Group g(absl::Milliseconds(100));
  std::atomic<int> lost{0};
  g.SetCallbacks([&](int32_t r, const absl::Status& st) {
    EXPECT_EQ(r, 1);
    EXPECT_THAT(std::string(st.message()), HasSubstr("no heartbeat"));
    ++lost;
  }, nullptr);
  auto s0 = g.Join(Info(0, 2), *cfg);
  auto s1 = g.Join(Info(1, 2), *cfg);
  g.StartWatchdog();
  for (int i = 0; i < 30; ++i) {  // 300 ms: rank 0 beats, rank 1 is silent
    ASSERT_TRUE(g.Heartbeat(0, *s0).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  g.StopWatchdog();
  EXPECT_EQ(lost.load(), 1);
  EXPECT_EQ(g.MissingRanks(), std::vector<int32_t>{1});
  EXPECT_TRUE(g.CheckSession(0, *s0).ok());
}

// Every way a membership ends is counted once, under its reason; a drop
// of a slot nobody holds counts nothing.
TEST(GroupTest, CountsJoinsAndEveryEndByReason) {
  ConfigStore store;
  auto cfg = Configured(store, 2);
  Group g(absl::Milliseconds(50));
  auto end_count = [&g](MemberEnd e) { return g.Counts().ends[static_cast<int>(e)]; };
  EXPECT_EQ(g.Counts().joins, 0u);

  auto a = g.Join(Info(0, 2), *cfg);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(g.Leave(0, *a).ok());
  EXPECT_EQ(end_count(MemberEnd::kLeft), 1u);
  EXPECT_FALSE(g.Leave(0, *a).ok());  // already gone: not counted again
  EXPECT_EQ(end_count(MemberEnd::kLeft), 1u);

  auto b = g.Join(Info(0, 2), *cfg);
  ASSERT_TRUE(b.ok());
  JoinInfo again = Info(0, 2);
  again.replace_existing = true;
  auto c = g.Join(again, *cfg);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(end_count(MemberEnd::kReplaced), 1u);

  g.MarkLost(0, *b, "stale session");  // not the live one: nothing
  EXPECT_EQ(end_count(MemberEnd::kStreamBroken), 0u);
  g.MarkLost(0, *c, "stream broken");
  EXPECT_EQ(end_count(MemberEnd::kStreamBroken), 1u);

  auto d = g.Join(Info(0, 2), *cfg);
  ASSERT_TRUE(d.ok());
  g.MarkLost(0, *d, "communicator aborted", MemberEnd::kCommunicatorAborted);
  EXPECT_EQ(end_count(MemberEnd::kCommunicatorAborted), 1u);

  auto e = g.Join(Info(0, 2), *cfg);
  auto f = g.Join(Info(1, 2), *cfg);
  ASSERT_TRUE(e.ok() && f.ok());
  g.Reset(2, "shape changed");  // two members, two ends
  EXPECT_EQ(end_count(MemberEnd::kReconfigured), 2u);

  auto h = g.Join(Info(1, 2), *cfg);
  ASSERT_TRUE(h.ok());
  g.ExpireStale(absl::Now() + absl::Seconds(1));
  EXPECT_EQ(end_count(MemberEnd::kHeartbeatTimeout), 1u);

  EXPECT_EQ(g.Counts().joins, 7u);
  uint64_t ends = 0;
  for (uint64_t n : g.Counts().ends) ends += n;
  EXPECT_EQ(ends, 7u) << "every member that joined has ended, each counted once";
}

TEST(GroupTest, MemberEndNamesAndKinds) {
  std::set<std::string> names;
  for (int i = 0; i < kNumMemberEnds; ++i) names.insert(MemberEndName(static_cast<MemberEnd>(i)));
  EXPECT_EQ(names, (std::set<std::string>{"requested", "reconfigured", "heartbeat_timeout", "stream_broken",
                                          "replaced", "communicator_aborted"}));
  EXPECT_TRUE(IsOrderlyEnd(MemberEnd::kLeft));
  EXPECT_TRUE(IsOrderlyEnd(MemberEnd::kReconfigured));
  EXPECT_FALSE(IsOrderlyEnd(MemberEnd::kHeartbeatTimeout));
  EXPECT_FALSE(IsOrderlyEnd(MemberEnd::kReplaced));
}

}  // namespace
}  // namespace dcpmerge
