// The NCCL data plane's protocol with the real merge: ProtocolConfig from a
// MergeConfig (and from a GroupSpec), the server's callback running the CPU
// reference (MergeOnCpu) on ToMergeArgs.
#include "common/merge_adapter.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "common/group_spec.h"
#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"
#include "tests/transport/harness.h"

namespace dcpmerge {
namespace {

using transport::FullPayloadSizes;
using transport::MergeFn;
using transport::MergeStep;
using transport::PayloadSizes;
using transport::ProtocolConfig;
using transport::ReturnMode;
using transport::ShapeMode;
using transport::testing::Harness;
using transport::testing::RankResult;
using transport::testing::StepRun;
using transport::testing::StepSpec;

constexpr DType kDTypes[] = {DType::kFloat32, DType::kFloat16,
                             DType::kBFloat16};
constexpr OutputMode kModes[] = {OutputMode::kFp8PerTensor,
                                 OutputMode::kFp8PerToken,
                                 OutputMode::kFp8PerGroup,
                                 OutputMode::kPassthrough};

ProtocolOptions Options(int ranks) {
  ProtocolOptions o;
  o.num_parts = ranks;
  o.num_heads = 8;
  o.head_size = 128;
  o.max_tokens = 32;
  o.return_lse = true;
  return o;
}

TEST(MergeAdapterTest, SizesEqualTheContracts) {
  for (DType dtype : kDTypes) {
    for (OutputMode mode : kModes) {
      MergeConfig m;
      m.input_dtype = dtype;
      m.output_mode = mode;
      m.group_size = 64;
      absl::StatusOr<ProtocolConfig> c = ToProtocolConfig(m, Options(3));
      ASSERT_TRUE(c.ok()) << c.status();
      for (int64_t t : {0, 1, 7, 32}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " ", OutputModeName(mode),
                                  " T=", t));
        MergeShape shape{3, t, 8, 128};
        const PayloadSizes s = FullPayloadSizes(*c, t);
        EXPECT_EQ(static_cast<int64_t>(s.out), OutputBytes(shape, m));
        EXPECT_EQ(static_cast<int64_t>(s.out_scales),
                  OutputScaleCount(shape, m) * 4);
        EXPECT_EQ(static_cast<int64_t>(s.partial_out),
                  PartialOutSpanBytes(shape, dtype, 8 * 128, 128));
        EXPECT_EQ(s.partial_lse, static_cast<uint64_t>(t * 8 * 4));
      }
    }
  }
}

TEST(MergeAdapterTest, RejectsWhatTheContractRejects) {
  MergeConfig m;
  m.output_mode = OutputMode::kFp8PerGroup;
  m.group_size = 96;  // the contract allows 64 or 128
  EXPECT_TRUE(absl::IsInvalidArgument(ToProtocolConfig(m, Options(3)).status()));
  m.group_size = 128;
  ProtocolOptions o = Options(3);
  o.num_heads = 2;
  o.return_mode = ReturnMode::kHeadSlice;  // fewer heads than ranks
  EXPECT_TRUE(absl::IsInvalidArgument(ToProtocolConfig(m, o).status()));
}

TEST(MergeAdapterTest, ProtocolConfigForAGroupSpec) {
  v1::GroupConfig g = DefaultGroupConfig(4, 8, 128, 32);
  g.set_return_mode(v1::RETURN_MODE_HEAD_SLICE);
  g.set_return_lse(true);
  absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(g);
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<ProtocolConfig> dynamic = ProtocolConfigFor(*spec, 7, -1);
  ASSERT_TRUE(dynamic.ok()) << dynamic.status();
  EXPECT_EQ(dynamic->config_version, 7u);
  EXPECT_EQ(dynamic->num_parts, 4);
  EXPECT_EQ(dynamic->input_elem_bytes, 2);
  EXPECT_EQ(dynamic->output_elem_bytes, 1);
  EXPECT_TRUE(dynamic->return_lse);
  EXPECT_EQ(dynamic->return_mode, ReturnMode::kHeadSlice);
  EXPECT_EQ(dynamic->shape_mode, ShapeMode::kDynamic);
  // Both planes hand out the same heads (base/head_slice.h).
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(transport::RankHeads(*dynamic, r).begin, spec->Heads(r).begin);
    EXPECT_EQ(transport::RankHeads(*dynamic, r).count, spec->Heads(r).count);
  }
  absl::StatusOr<ProtocolConfig> fixed = ProtocolConfigFor(*spec, 7, 5);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(fixed->shape_mode, ShapeMode::kFixed);
  EXPECT_EQ(fixed->fixed_tokens, 5);
  EXPECT_TRUE(absl::IsInvalidArgument(ProtocolConfigFor(*spec, 7, 33).status()));  // > max_tokens
}

struct Case {
  const char* name;
  DType dtype;
  OutputMode mode;
  ReturnMode ret;
  ShapeMode shape;
  int ranks;
};

class MergeAdapterEndToEnd : public ::testing::TestWithParam<Case> {};

TEST_P(MergeAdapterEndToEnd, RanksGetTheReferenceMerge) {
  const Case& k = GetParam();
  MergeConfig m;
  m.input_dtype = k.dtype;
  m.output_mode = k.mode;
  m.group_size = 64;
  m.lse_layout = LseLayout::kTokensHeads;
  ProtocolOptions o = Options(k.ranks);
  o.return_mode = k.ret;
  o.shape_mode = k.shape;
  o.fixed_tokens = 9;
  absl::StatusOr<ProtocolConfig> c = ToProtocolConfig(m, o);
  ASSERT_TRUE(c.ok()) << c.status();
  static const float kScale = 0.75f;
  MergeFn merge = [m](MergeStep& step) {
    step.static_scale_used = kScale;
    return MergeOnCpu(ToMergeArgs(step, m, &kScale), 1);
  };
  Harness h(*c, merge);
  for (uint64_t id = 1; id <= 2; ++id) {
    StepSpec spec;
    spec.step_id = id;
    spec.layer_id = static_cast<int32_t>(id);
    spec.num_tokens = 9;
    StepRun run = h.Run(spec);
    ASSERT_TRUE(run.server.ok()) << run.server.status();
    ASSERT_TRUE(run.server->step_status.ok()) << run.server->step_status;
    for (int r = 0; r < k.ranks; ++r) {
      SCOPED_TRACE(absl::StrCat("rank ", r));
      const RankResult& got = run.ranks[static_cast<size_t>(r)];
      ASSERT_TRUE(got.status.ok()) << got.status;
      std::vector<uint8_t> out, scales, lse;
      h.ExpectedForRank(spec, r, &out, &scales, &lse);
      EXPECT_EQ(got.out, out);
      EXPECT_EQ(got.out_scales, scales);
      EXPECT_EQ(got.out_lse, lse);
      if (k.mode == OutputMode::kFp8PerTensor) {
        EXPECT_EQ(got.response.static_scale, kScale);
      }
    }
  }
  EXPECT_EQ(h.world().UnmatchedTransfers(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, MergeAdapterEndToEnd,
    ::testing::Values(
        Case{"bf16_group_slice_n3", DType::kBFloat16, OutputMode::kFp8PerGroup,
             ReturnMode::kHeadSlice, ShapeMode::kDynamic, 3},
        Case{"fp16_token_full_n8", DType::kFloat16, OutputMode::kFp8PerToken,
             ReturnMode::kFull, ShapeMode::kDynamic, 8},
        Case{"fp32_tensor_slice_fixed_n3", DType::kFloat32,
             OutputMode::kFp8PerTensor, ReturnMode::kHeadSlice,
             ShapeMode::kFixed, 3},
        Case{"bf16_passthrough_full_n1", DType::kBFloat16,
             OutputMode::kPassthrough, ReturnMode::kFull, ShapeMode::kFixed,
             1}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace dcpmerge
