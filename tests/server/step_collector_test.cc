#include "server/step_collector.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <iterator>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_config.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

// Writes byte (num_parts) everywhere; counts calls. With `stage` it also
// stages as a device backend does: one Staging per step, recording which
// ranks were staged there and on which threads.
class FakeBackend : public ComputeBackend {
 public:
  struct Recorded : Staging {
    explicit Recorded(std::atomic<int>* live) : live(live) { ++*live; }
    ~Recorded() override { --*live; }
    std::atomic<int>* const live;
    absl::Mutex mu;
    std::vector<std::pair<int, std::thread::id>> parts ABSL_GUARDED_BY(mu);
  };

  std::string name() const override { return "fake"; }
  absl::StatusOr<std::unique_ptr<Staging>> BeginStep(int, size_t, size_t) override {
    if (!stage) return nullptr;
    ++begun;
    return std::unique_ptr<Staging>(new Recorded(&live));
  }
  absl::Status StagePart(Staging* staging, int rank, const void*, const void*) override {
    if (staging == nullptr) return absl::OkStatus();
    if (rank == fail_rank) return absl::InternalError("copy failed");
    auto* r = static_cast<Recorded*>(staging);
    absl::MutexLock lock(&r->mu);
    r->parts.emplace_back(rank, std::this_thread::get_id());
    return absl::OkStatus();
  }
  absl::Status MergeStaged(const MergeArgs& args, Staging* staging, DeviceTimes*) override {
    ++calls;
    if (staging != nullptr) {
      auto* r = static_cast<Recorded*>(staging);
      absl::MutexLock lock(&r->mu);
      absl::MutexLock own(&mu);
      merged_parts = r->parts;
      merge_thread = std::this_thread::get_id();
    }
    memset(args.out.data, args.shape.num_parts, args.out.bytes);
    return absl::OkStatus();
  }
  bool MergesInline(const MergeShape&) const override { return inline_merge; }

  bool stage = false;
  bool inline_merge = false;
  int fail_rank = -1;  // StagePart fails this rank's part
  std::atomic<int> calls{0};
  std::atomic<int> begun{0};
  std::atomic<int> live{0};  // Stagings not yet given back
  absl::Mutex mu;
  std::vector<std::pair<int, std::thread::id>> merged_parts ABSL_GUARDED_BY(mu);  // of the last merge
  std::thread::id merge_thread ABSL_GUARDED_BY(mu);
};

// Collects the results of one rank's submissions.
class Sink {
 public:
  StepDone Done() {
    return [this](std::shared_ptr<const StepResult> r) {
      absl::MutexLock lock(&mu_);
      results_.push_back(std::move(r));
    };
  }
  // Waits for `n` results (bounded).
  std::vector<std::shared_ptr<const StepResult>> Wait(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return results_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
    return results_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::shared_ptr<const StepResult>> results_ ABSL_GUARDED_BY(mu_);
};

class StepCollectorTest : public ::testing::Test {
 protected:
  static constexpr int kN = 3;
  void SetUp() override { Init(absl::Seconds(5), 256); }
  void Init(absl::Duration timeout, size_t max_pending, size_t per_rank = 0, int64_t max_bytes = 0) {
    collector_.reset();
    ASSERT_TRUE(store_.Configure(testing::SmallConfig(kN), 0.5f).ok());
    group_ = std::make_unique<Group>(absl::Seconds(30));
    for (int r = 0; r < kN; ++r) {
      JoinInfo j;
      j.rank = r;
      j.num_parts = kN;
      auto s = group_->Join(j, *store_.Current());
      ASSERT_TRUE(s.ok());
      sessions_[r] = *s;
    }
    StepCollector::Options o;
    o.step_timeout = timeout;
    o.max_pending_steps = max_pending;
    o.max_pending_steps_per_rank = per_rank;
    o.max_pending_bytes = max_bytes;
    collector_ = std::make_unique<StepCollector>(&store_, group_.get(), &backend_, &stats_, o);
    collector_->Start();
  }
  StepPart Part(int rank, uint64_t step, int64_t tokens = 4, int32_t layer = 0) {
    StepPart p;
    p.header.set_step(step);
    p.header.set_layer(layer);
    p.header.set_num_tokens(tokens);
    p.header.set_rank(rank);
    p.header.set_session_id(sessions_[rank]);
    p.partial_out.assign(tokens * 2 * 64 * 2, '\0');
    p.lse.assign(tokens * 2 * 4, '\0');
    return p;
  }
  void SubmitAll(uint64_t step, Sink* sinks) {
    for (int r = 0; r < kN; ++r) collector_->Submit(Part(r, step), sinks[r].Done());
  }

  ConfigStore store_;
  std::unique_ptr<Group> group_;
  FakeBackend backend_;
  Stats stats_;
  uint64_t sessions_[kN] = {};
  std::unique_ptr<StepCollector> collector_;
};

TEST_F(StepCollectorTest, MergesOnceAndFansOut) {
  Sink sinks[kN];
  std::vector<std::thread> threads;
  for (int r = 0; r < kN; ++r) {
    threads.emplace_back([&, r] {
      for (uint64_t s = 0; s < 20; ++s) collector_->Submit(Part(r, s), sinks[r].Done());
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kN; ++r) {
    auto res = sinks[r].Wait(20);
    ASSERT_EQ(res.size(), 20u);
    for (auto& x : res) {
      ASSERT_TRUE(x->status.ok()) << x->status;
      EXPECT_EQ(x->output.size(), 4u * 2 * 64);
      EXPECT_EQ(x->output[0], kN);
      EXPECT_EQ(x->scales, std::vector<float>{0.5f});
      EXPECT_EQ(x->config_version, 1u);
    }
  }
  EXPECT_EQ(backend_.calls.load(), 20);
  EXPECT_TRUE(collector_->WaitIdle(absl::Seconds(5)));
  EXPECT_EQ(stats_.Snapshot().steps_ok, 20u);
}

// One row per bad part: every rank of the step gets the status naming the
// field, the step after it still merges.
TEST_F(StepCollectorTest, BadPartsFailTheWholeStepOnly) {
  struct Case {
    const char* name;
    const char* field;
    absl::StatusCode code;
    std::function<void(StepPart*)> mutate;
  };
  const std::vector<Case> cases = {
      {"tokens mismatch", "header.num_tokens", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) {
         p->header.set_num_tokens(3);
         p->partial_out.resize(3 * 2 * 64 * 2);
         p->lse.resize(3 * 2 * 4);
       }},
      {"layer mismatch", "header.layer", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) { p->header.set_layer(9); }},
      {"too many tokens", "header.num_tokens", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) { p->header.set_num_tokens(9); }},
      {"negative tokens", "header.num_tokens", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) { p->header.set_num_tokens(-1); }},
      {"truncated out", "partial_out", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) { p->partial_out.resize(p->partial_out.size() - 1); }},
      {"oversize out", "partial_out", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) { p->partial_out.append(4096, 'x'); }},
      {"truncated lse", "lse", absl::StatusCode::kInvalidArgument,
       [](StepPart* p) { p->lse.resize(3); }},
      {"duplicate rank", "header.rank", absl::StatusCode::kInvalidArgument,
       [this](StepPart* p) {
         p->header.set_rank(0);
         p->header.set_session_id(sessions_[0]);
       }},
  };
  uint64_t step = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Sink sinks[kN];
    collector_->Submit(Part(0, step), sinks[0].Done());
    StepPart bad = Part(1, step);
    c.mutate(&bad);
    collector_->Submit(std::move(bad), sinks[1].Done());
    collector_->Submit(Part(2, step), sinks[2].Done());  // late: still told
    for (int r = 0; r < kN; ++r) {
      auto res = sinks[r].Wait(1);
      ASSERT_FALSE(res.empty()) << "rank " << r;
      EXPECT_EQ(res[0]->status.code(), c.code) << "rank " << r << ": " << res[0]->status;
      EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr(c.field)) << "rank " << r;
      EXPECT_EQ(res[0]->step, step);
    }
    // The next step is not lost.
    Sink ok[kN];
    SubmitAll(step + 1, ok);
    for (int r = 0; r < kN; ++r) {
      auto res = ok[r].Wait(1);
      ASSERT_EQ(res.size(), 1u);
      EXPECT_TRUE(res[0]->status.ok()) << res[0]->status;
    }
    step += 2;
  }
  EXPECT_EQ(stats_.Snapshot().errors_by_code.at("INVALID_ARGUMENT"), cases.size() * kN);
}

TEST_F(StepCollectorTest, SessionRankAndConfigErrors) {
  Sink s;
  StepPart p = Part(0, 1);
  p.header.set_rank(7);
  collector_->Submit(std::move(p), s.Done());
  StepPart q = Part(1, 1);
  q.header.set_session_id(12345);
  collector_->Submit(std::move(q), s.Done());
  auto res = s.Wait(2);
  ASSERT_EQ(res.size(), 2u);
  EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("header.rank"));
  EXPECT_EQ(res[1]->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(res[1]->status.message()), HasSubstr("header.session_id"));

  ConfigStore empty;
  StepCollector c2(&empty, group_.get(), &backend_, &stats_, {});
  c2.Start();
  Sink s2;
  c2.Submit(Part(0, 1), s2.Done());
  ASSERT_EQ(s2.Wait(1).size(), 1u);
  EXPECT_EQ(s2.Wait(1)[0]->status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(StepCollectorTest, MissingRankTimesOutWithUnavailable) {
  Init(absl::Milliseconds(200), 256);
  Sink sinks[kN];
  const absl::Time start = absl::Now();
  collector_->Submit(Part(0, 5), sinks[0].Done());
  collector_->Submit(Part(1, 5), sinks[1].Done());
  for (int r = 0; r < 2; ++r) {
    auto res = sinks[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("rank(s) 2"));
  }
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, absl::Milliseconds(190));
  EXPECT_LT(waited, absl::Seconds(3));
  // The straggler is told too.
  collector_->Submit(Part(2, 5), sinks[2].Done());
  ASSERT_EQ(sinks[2].Wait(1).size(), 1u);
  EXPECT_EQ(sinks[2].Wait(1)[0]->status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(StepCollectorTest, FailPendingAndGroupIncomplete) {
  Sink sinks[kN];
  collector_->Submit(Part(0, 9), sinks[0].Done());
  collector_->FailPending(absl::UnavailableError("rank 2 lost: killed"));
  auto res = sinks[0].Wait(1);
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("rank 2 lost"));
  group_->MarkLost(2, sessions_[2], "test");
  collector_->Submit(Part(0, 10), sinks[1].Done());
  auto r1 = sinks[1].Wait(1);
  ASSERT_EQ(r1.size(), 1u);
  EXPECT_EQ(r1[0]->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r1[0]->status.message()), HasSubstr("not joined"));
}

TEST_F(StepCollectorTest, QueueFullIsResourceExhausted) {
  Init(absl::Seconds(5), 4, /*per_rank=*/100);
  Sink s;
  for (uint64_t step = 0; step < 5; ++step) collector_->Submit(Part(0, step), s.Done());
  auto res = s.Wait(1);
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(res[0]->step, 4u);
  collector_->Stop();  // fails the 4 pending steps while `s` is alive
  EXPECT_EQ(s.Wait(5).size(), 5u);
}

TEST_F(StepCollectorTest, StopFailsInFlightWithShuttingDown) {
  Sink s;
  collector_->Submit(Part(0, 1), s.Done());
  collector_->Stop();
  auto res = s.Wait(1);
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(res[0]->status.message(), "server shutting down");
  Sink after;
  collector_->Submit(Part(1, 2), after.Done());
  ASSERT_EQ(after.Wait(1).size(), 1u);
  EXPECT_EQ(after.Wait(1)[0]->status.code(), absl::StatusCode::kUnavailable);
}

// A scale change lands at a step boundary: a step pinned before the change
// keeps the old version and scale; under concurrent updates every result's
// scale is the one its version had.
TEST_F(StepCollectorTest, ConfigChangesApplyAtStepBoundaries) {
  Sink a[kN];
  collector_->Submit(Part(0, 1), a[0].Done());
  ASSERT_TRUE(store_.SetScales({{0, 0.25f}}, false, 0.0f).ok());  // version 2
  collector_->Submit(Part(1, 1), a[1].Done());
  collector_->Submit(Part(2, 1), a[2].Done());
  for (int r = 0; r < kN; ++r) {
    auto res = a[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    EXPECT_EQ(res[0]->config_version, 1u);
    EXPECT_EQ(res[0]->scales, std::vector<float>{0.5f});
  }
  // Concurrent: scale of version v is v (set below).
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop.load()) {
      const float v = static_cast<float>(store_.Current()->version + 1);
      ASSERT_TRUE(store_.SetScales({{0, v}}, false, 0.0f).ok());
      std::this_thread::yield();
    }
  });
  Sink sinks[kN];
  std::vector<std::thread> threads;
  for (int r = 0; r < kN; ++r) {
    threads.emplace_back([&, r] {
      for (uint64_t s = 10; s < 60; ++s) collector_->Submit(Part(r, s), sinks[r].Done());
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kN; ++r) sinks[r].Wait(50);
  stop = true;
  writer.join();
  std::map<uint64_t, uint64_t> version_of_step;
  for (int r = 0; r < kN; ++r) {
    for (auto& x : sinks[r].Wait(50)) {
      ASSERT_TRUE(x->status.ok()) << x->status;
      if (x->config_version >= 3) {
        EXPECT_EQ(x->scales[0], static_cast<float>(x->config_version));
      }
      auto [it, fresh] = version_of_step.emplace(x->step, x->config_version);
      if (!fresh) {
        EXPECT_EQ(it->second, x->config_version) << "ranks disagree";
      }
    }
  }
  EXPECT_EQ(version_of_step.size(), 50u);
}


// ---------------------------------------------------------------------------
// Issue 11, finding 3: one rank can no longer stall the group.

// Rank 0 sends 10 step ids nobody else sends (quota 4): it loses its own
// oldest steps, at once, with RESOURCE_EXHAUSTED; the other ranks still
// start steps, and a step all ranks send completes.
TEST_F(StepCollectorTest, RankOverItsQuotaGivesUpItsOwnStepsOnly) {
  Init(absl::Seconds(30), 256, /*per_rank=*/4);
  std::atomic<int> stall_changes{0};
  collector_->SetStallCallback([&] { ++stall_changes; });
  Sink flood;
  for (uint64_t step = 1000; step < 1010; ++step) collector_->Submit(Part(0, step), flood.Done());
  auto dropped = flood.Wait(6);
  ASSERT_EQ(dropped.size(), 6u);
  for (size_t i = 0; i < dropped.size(); ++i) {
    EXPECT_EQ(dropped[i]->status.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(dropped[i]->step, 1000 + i) << "the oldest go first";
    EXPECT_THAT(std::string(dropped[i]->status.message()), HasSubstr("max_pending_steps_per_rank"));
  }
  EXPECT_EQ(collector_->InFlight(), 4u);
  EXPECT_TRUE(collector_->Stalled());
  EXPECT_EQ(stall_changes.load(), 1);
  EXPECT_EQ(collector_->LimitRefusals()[StepCollector::kMaxPendingStepsPerRank], 6u);
  // Ranks 1 and 2 start step 7 first; rank 0 (at its quota) joins it.
  Sink sinks[kN];
  collector_->Submit(Part(1, 7), sinks[1].Done());
  collector_->Submit(Part(2, 7), sinks[2].Done());
  collector_->Submit(Part(0, 7), sinks[0].Done());
  for (int r = 0; r < kN; ++r) {
    auto res = sinks[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    EXPECT_TRUE(res[0]->status.ok()) << res[0]->status;
  }
  collector_->Stop();
  EXPECT_EQ(flood.Wait(10).size(), 10u);
}

// A rank at its quota whose steps all have other ranks' parts cannot give
// one up: its new part is refused, and that step fails for the others too
// (at once, not after the step timeout).
TEST_F(StepCollectorTest, RankOverItsQuotaWithNothingToGiveUpIsRefused) {
  Init(absl::Seconds(30), 256, /*per_rank=*/2);
  Sink r0, r1, late;
  for (uint64_t step : {1, 2}) {
    collector_->Submit(Part(0, step), r0.Done());
    collector_->Submit(Part(1, step), r1.Done());
  }
  collector_->Submit(Part(0, 3), r0.Done());
  auto res = r0.Wait(1);
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0]->step, 3u);
  EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kResourceExhausted);
  collector_->Submit(Part(1, 3), late.Done());
  auto l = late.Wait(1);
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0]->status.code(), absl::StatusCode::kResourceExhausted);
  collector_->Stop();
  r0.Wait(3);
  r1.Wait(2);
}

TEST_F(StepCollectorTest, PendingBytesAreCapped) {
  const int64_t part = 4 * 2 * 64 * 2 + 4 * 2 * 4;  // Part(): 4 tokens x 2 heads x 64, bf16, + LSE
  Init(absl::Seconds(30), 256, 0, /*max_bytes=*/2 * part + part / 2);
  Sink s[kN];
  collector_->Submit(Part(0, 1), s[0].Done());
  collector_->Submit(Part(1, 1), s[1].Done());
  EXPECT_EQ(collector_->PendingBytes(), 2 * part);
  collector_->Submit(Part(2, 1), s[2].Done());
  for (int r = 0; r < kN; ++r) {
    auto res = s[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kResourceExhausted) << r;
    EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("max_pending_bytes"));
  }
  EXPECT_EQ(collector_->PendingBytes(), 0);
  EXPECT_EQ(collector_->LimitRefusals()[StepCollector::kMaxPendingBytes], 1u);
}

// Issue 11, finding 5: the same layer range on every API.
TEST_F(StepCollectorTest, LayerOutsideTheServersRangeNamesTheField) {
  for (int32_t layer : {-7, kDefaultMaxLayers}) {
    Sink s[kN];
    const uint64_t step = 50 + static_cast<uint64_t>(layer + 10);
    for (int r = 0; r < kN; ++r) collector_->Submit(Part(r, step, 4, layer), s[r].Done());
    for (int r = 0; r < kN; ++r) {
      auto res = s[r].Wait(1);
      ASSERT_EQ(res.size(), 1u);
      EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("header.layer"));
      EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("max_layers"));
    }
  }
}

// Issue 20: each accepted part is staged once, on the thread that submitted
// it, into the one staging of its step; the step merges that staging once
// every part is in, on the last part's thread when the backend says the
// merge is short; the staging is given back after.
TEST_F(StepCollectorTest, StagesEachPartOnArrivalAndMergesOnTheLastPartsThread) {
  backend_.stage = true;
  backend_.inline_merge = true;
  Sink s[kN];
  std::thread::id submitter[kN];
  std::vector<std::thread> threads;
  for (int r = 0; r < kN; ++r) {
    threads.emplace_back([&, r] {
      submitter[r] = std::this_thread::get_id();
      collector_->Submit(Part(r, 1), s[r].Done());
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kN; ++r) {
    auto res = s[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    ASSERT_TRUE(res[0]->status.ok()) << res[0]->status;
    EXPECT_EQ(res[0]->output[0], kN);
  }
  EXPECT_TRUE(collector_->WaitIdle(absl::Seconds(5)));
  EXPECT_EQ(backend_.begun.load(), 1);
  EXPECT_EQ(backend_.calls.load(), 1);
  EXPECT_EQ(backend_.live.load(), 0);
  absl::MutexLock lock(&backend_.mu);
  ASSERT_EQ(backend_.merged_parts.size(), static_cast<size_t>(kN));
  std::vector<bool> seen(kN, false);
  for (const auto& [rank, thread] : backend_.merged_parts) {
    ASSERT_FALSE(seen[rank]) << "rank " << rank << " staged twice";
    seen[rank] = true;
    EXPECT_EQ(thread, submitter[rank]) << "rank " << rank;
  }
  // Merged by the thread that brought a part (the last one), not the merge thread.
  EXPECT_NE(std::find(std::begin(submitter), std::end(submitter), backend_.merge_thread), std::end(submitter));
}

// A part the backend cannot stage fails its step for every rank, naming the
// rank; nothing merges, the staging is given back, and the next step merges.
TEST_F(StepCollectorTest, AFailedStagingFailsTheStepForEveryRank) {
  backend_.stage = true;
  backend_.fail_rank = 1;
  Sink s[kN];
  SubmitAll(2, s);
  for (int r = 0; r < kN; ++r) {
    auto res = s[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    EXPECT_EQ(res[0]->status.code(), absl::StatusCode::kInternal) << r;
    EXPECT_THAT(std::string(res[0]->status.message()), HasSubstr("staging rank 1's part: copy failed"));
  }
  EXPECT_TRUE(collector_->WaitIdle(absl::Seconds(5)));
  EXPECT_EQ(backend_.calls.load(), 0);
  EXPECT_EQ(backend_.live.load(), 0);
  backend_.fail_rank = -1;
  Sink next[kN];
  SubmitAll(3, next);
  for (int r = 0; r < kN; ++r) {
    auto res = next[r].Wait(1);
    ASSERT_EQ(res.size(), 1u);
    EXPECT_TRUE(res[0]->status.ok()) << res[0]->status;
  }
  EXPECT_EQ(backend_.calls.load(), 1);
}

}  // namespace
}  // namespace dcpmerge
