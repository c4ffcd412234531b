// Whole steps of the data-plane protocol that succeed: N rank threads and a
// server thread over the fake transport, outputs checked byte for byte.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/transport/harness.h"

namespace dcpmerge {
namespace transport {
namespace testing {
namespace {

void ExpectStepMerged(Harness& h, const StepSpec& spec, const StepRun& run) {
  ASSERT_TRUE(run.server.ok()) << run.server.status();
  EXPECT_TRUE(run.server->step_status.ok()) << run.server->step_status;
  EXPECT_FALSE(run.server->drained);
  EXPECT_EQ(run.server->step_id, spec.step_id);
  EXPECT_EQ(run.server->layer_id, spec.layer_id);
  EXPECT_EQ(run.server->num_tokens, spec.num_tokens);
  const ProtocolConfig& c = h.config();
  for (int r = 0; r < c.num_parts; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r, " step ", spec.step_id));
    const RankResult& got = run.ranks[static_cast<size_t>(r)];
    ASSERT_TRUE(got.status.ok()) << got.status;
    EXPECT_EQ(got.response.step_id, spec.step_id);
    EXPECT_EQ(got.response.layer_id, spec.layer_id);
    EXPECT_EQ(got.response.config_version, c.config_version);
    EXPECT_EQ(got.response.num_tokens, spec.num_tokens);
    const HeadRange heads = RankHeads(c, r);
    EXPECT_EQ(got.response.head_begin, heads.begin);
    EXPECT_EQ(got.response.head_count, heads.count);
    EXPECT_EQ(got.response.scale_count,
              RankScaleCount(c, r, spec.num_tokens));
    std::vector<uint8_t> out, scales, lse;
    h.ExpectedForRank(spec, r, &out, &scales, &lse);
    EXPECT_EQ(got.out, out);
    EXPECT_EQ(got.out_scales, scales);
    EXPECT_EQ(got.out_lse, lse);
  }
  // Every send met its receive; every queue is drained.
  EXPECT_EQ(h.world().UnmatchedTransfers(), 0);
  for (int r = 0; r <= c.num_parts; ++r) EXPECT_TRUE(h.world().Idle(r));
}

class ProtocolTest : public ::testing::TestWithParam<int> {};

TEST_P(ProtocolTest, FullOutputEqualsTheMerge) {
  const int n = GetParam();
  Harness h(Fp32Config(n));
  uint64_t id = 100;
  // Varying batch sizes, the empty step and a full one.
  for (int64_t tokens : {5, 0, 32, 1}) {
    StepSpec spec;
    spec.step_id = ++id;
    spec.layer_id = static_cast<int32_t>(id % 7);
    spec.num_tokens = tokens;
    ExpectStepMerged(h, spec, h.Run(spec));
  }
  EXPECT_EQ(h.server().steps_served(), 4u);
}

TEST_P(ProtocolTest, HeadSlicesWithGroupScalesAndTokenMajorLse) {
  const int n = GetParam();
  ProtocolConfig c = Fp8Config(n, ScaleLayout::kPerGroup);
  c.return_mode = ReturnMode::kHeadSlice;
  Harness h(c, PatternMerge);
  for (int64_t tokens : {7, 32}) {
    StepSpec spec;
    spec.step_id = static_cast<uint64_t>(tokens);
    spec.layer_id = 2;
    spec.num_tokens = tokens;
    ExpectStepMerged(h, spec, h.Run(spec));
  }
}

TEST_P(ProtocolTest, HeadSlicesWithTokenScalesAndHeadMajorLse) {
  const int n = GetParam();
  ProtocolConfig c = Fp8Config(n, ScaleLayout::kPerToken);
  c.return_mode = ReturnMode::kHeadSlice;
  c.lse_layout = LseLayoutWire::kHeadsTokens;
  Harness h(c, PatternMerge);
  StepSpec spec;
  spec.step_id = 9;
  spec.num_tokens = 11;
  ExpectStepMerged(h, spec, h.Run(spec));
}

TEST_P(ProtocolTest, FixedShapeMode) {
  const int n = GetParam();
  ProtocolConfig c = Fp32Config(n);
  c.shape_mode = ShapeMode::kFixed;
  c.fixed_tokens = 16;
  Harness h(c);
  for (uint64_t id = 1; id <= 3; ++id) {
    StepSpec spec;
    spec.step_id = id;
    spec.layer_id = static_cast<int32_t>(id);
    spec.num_tokens = 16;
    ExpectStepMerged(h, spec, h.Run(spec));
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, ProtocolTest, ::testing::Values(1, 3, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat("N", info.param);
                         });

TEST(ProtocolTest, ExactMergeIsTheContractsMath) {
  // N=1: the merge is the identity (where the partition is not empty).
  Harness one(Fp32Config(1));
  StepSpec spec;
  spec.num_tokens = 3;
  StepRun run = one.Run(spec);
  ASSERT_TRUE(run.ranks[0].status.ok()) << run.ranks[0].status;
  std::vector<uint8_t> in;
  std::vector<float> lse;
  one.Inputs(spec, 0, &in, &lse);
  const float* got = reinterpret_cast<const float*>(run.ranks[0].out.data());
  const float* want = reinterpret_cast<const float*>(in.data());
  const ProtocolConfig& c = one.config();
  for (int64_t t = 0; t < spec.num_tokens; ++t) {
    for (int hh = 0; hh < c.num_heads; ++hh) {
      const float l = lse[static_cast<size_t>(hh * spec.num_tokens + t)];
      for (int d = 0; d < c.head_size; ++d) {
        const int64_t i = (t * c.num_heads + hh) * c.head_size + d;
        EXPECT_EQ(got[i], std::isfinite(l) ? want[i] : 0.0f) << i;
      }
    }
  }
}

TEST(ProtocolTest, PerTensorScaleIsEchoed) {
  Harness h(Fp8Config(3, ScaleLayout::kPerTensor), PatternMerge);
  StepSpec spec;
  spec.num_tokens = 4;
  StepRun run = h.Run(spec);
  ExpectStepMerged(h, spec, run);
  for (const RankResult& r : run.ranks) {
    EXPECT_EQ(r.response.static_scale, 0.25f);
    EXPECT_EQ(r.response.scale_count, 0u);
  }
}

TEST(ProtocolTest, ReconfigureAppliesAtAStepBoundary) {
  ProtocolConfig c = Fp32Config(3);
  Harness h(c);
  StepSpec spec;
  spec.step_id = 1;
  spec.tweak = [](int, RankStep* s) { s->expect_config_version = 2; };
  StepRun run = h.Run(spec);
  ASSERT_TRUE(run.server.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(run.server->step_status));
  for (const RankResult& r : run.ranks) {
    EXPECT_TRUE(absl::IsFailedPrecondition(r.status)) << r.status;
    EXPECT_NE(r.status.message().find("config_version"), std::string::npos);
  }
  c.config_version = 2;
  ASSERT_TRUE(h.server().Reconfigure(c).ok());
  spec.step_id = 2;
  run = h.Run(spec);
  ASSERT_TRUE(run.server.ok());
  EXPECT_TRUE(run.server->step_status.ok()) << run.server->step_status;
  for (const RankResult& r : run.ranks) {
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.response.config_version, 2u);
  }
  // A different world size is not a reconfiguration but a re-formation.
  c.num_parts = 4;
  EXPECT_TRUE(absl::IsInvalidArgument(h.server().Reconfigure(c)));
}

TEST(ProtocolTest, FixedShapeRankRefusesOtherSizesLocally) {
  ProtocolConfig c = Fp32Config(3);
  c.shape_mode = ShapeMode::kFixed;
  c.fixed_tokens = 16;
  Harness h(c);
  RankStep step;
  step.num_tokens = 17;
  absl::StatusOr<StepTicket> t = h.rank(0).EnqueueStep(step);
  EXPECT_TRUE(absl::IsInvalidArgument(t.status())) << t.status();
  step.num_tokens = 33;  // beyond max_tokens in any mode
  EXPECT_TRUE(absl::IsInvalidArgument(h.rank(0).EnqueueStep(step).status()));
  step.num_tokens = 16;  // null buffers
  EXPECT_TRUE(absl::IsInvalidArgument(h.rank(0).EnqueueStep(step).status()));
  EXPECT_EQ(h.world().UnmatchedTransfers(), 0);
}

TEST(ProtocolTest, RankResponseCheckNeedsACompletedStep) {
  Harness h(Fp32Config(1));
  RankBuffers& b = h.buffers(0);
  RankStep step;
  step.step_id = 5;
  step.num_tokens = 2;
  step.partial_out = b.partial_out.data();
  step.partial_lse = b.partial_lse.as<float>();
  step.out = b.out.data();
  step.out_lse = b.out_lse.as<float>();
  absl::StatusOr<StepTicket> t = h.rank(0).EnqueueStep(step);
  ASSERT_TRUE(t.ok());
  // No server yet: the response slot holds nothing valid.
  EXPECT_TRUE(absl::IsInternal(h.rank(0).CheckResponse(*t)));
  absl::StatusOr<StepOutcome> served =
      h.server().ServeStep(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_TRUE(h.rank(0).Complete(*t, absl::Now() + absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace testing
}  // namespace transport
}  // namespace dcpmerge
