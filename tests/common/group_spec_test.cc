// GroupSpec (common/group_spec.h) and the enum names (common/names.h). The
// field-by-field validation is covered through ConfigStore in
// tests/server/config_store_test.cc.
#include "common/group_spec.h"

#include <cstdint>
#include <limits>
#include <string>

#include "common/names.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

TEST(GroupSpecTest, DefaultConfigIsValidOnceShaped) {
  EXPECT_FALSE(GroupSpecFromProto(DefaultGroupConfig()).ok());  // no shape
  absl::StatusOr<GroupSpec> s = GroupSpecFromProto(DefaultGroupConfig(4, 16, 512, 64));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->num_parts, 4);
  EXPECT_EQ(s->merge.input_dtype, DType::kBFloat16);
  EXPECT_EQ(s->merge.lse_base, LseBase::kNatural);
  EXPECT_EQ(s->merge.lse_layout, LseLayout::kHeadsTokens);
  EXPECT_EQ(s->merge.output_mode, OutputMode::kFp8PerTensor);
  EXPECT_FALSE(s->head_slice);
  EXPECT_FALSE(s->return_lse);
}

TEST(GroupSpecTest, HashTracksShapeNotScales) {
  auto a = GroupSpecFromProto(DefaultGroupConfig(3, 2, 64, 8));
  auto b = GroupSpecFromProto(DefaultGroupConfig(3, 4, 64, 8));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(GroupSpecHash(*a), GroupSpecHash(*b));
  EXPECT_EQ(GroupSpecHash(*a), GroupSpecHash(*GroupSpecFromProto(DefaultGroupConfig(3, 2, 64, 8))));
  // Round trip.
  auto round = GroupSpecFromProto(GroupSpecToProto(*a));
  ASSERT_TRUE(round.ok());
  EXPECT_EQ(GroupSpecHash(*round), GroupSpecHash(*a));
  EXPECT_EQ(GroupSpecToProto(*a).world_size(), 3);
}

TEST(GroupSpecTest, ElementSizesAndPayloadBytes) {
  v1::GroupConfig c = DefaultGroupConfig(2, 4, 128, 16);
  c.set_input_dtype(v1::DTYPE_FLOAT32);
  auto fp8 = GroupSpecFromProto(c);
  ASSERT_TRUE(fp8.ok());
  EXPECT_EQ(fp8->InputElementBytes(), 4);
  EXPECT_EQ(fp8->OutputElementBytes(), 1);
  EXPECT_EQ(fp8->PartialOutBytes(3), 3 * 4 * 128 * 4);
  EXPECT_EQ(fp8->LseBytes(3), 3 * 4 * 4);
  c.set_input_dtype(v1::DTYPE_FLOAT16);
  c.set_output_mode(v1::OUTPUT_MODE_PASSTHROUGH);
  auto pass = GroupSpecFromProto(c);
  ASSERT_TRUE(pass.ok());
  EXPECT_EQ(pass->InputElementBytes(), 2);
  EXPECT_EQ(pass->OutputElementBytes(), 2);
}

// A max_tokens whose payload would overflow int64 is refused. The old code
// formed that product first (undefined behaviour; gcc happens to drop it,
// clang's UBSan reports it): tests/fuzz's capi_json_fuzzer replays
// corpus/capi_json_fuzzer/regress_max_tokens_overflow in tools/test.sh.
TEST(GroupSpecTest, MaxTokensBeyondInt64PayloadIsRefused) {
  for (int64_t max_tokens : {int64_t{1} << 62, std::numeric_limits<int64_t>::max()}) {
    absl::StatusOr<GroupSpec> s = GroupSpecFromProto(DefaultGroupConfig(1, 4, 4, max_tokens));
    ASSERT_FALSE(s.ok()) << max_tokens;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("config.max_tokens"));
  }
}

TEST(GroupSpecTest, HeadsFollowTheOneSlicingRule) {
  v1::GroupConfig c = DefaultGroupConfig(4, 8, 64, 8);
  auto full = GroupSpecFromProto(c);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->Heads(3).begin, 0);
  EXPECT_EQ(full->Heads(3).count, 8);
  c.set_return_mode(v1::RETURN_MODE_HEAD_SLICE);
  auto slice = GroupSpecFromProto(c);
  ASSERT_TRUE(slice.ok());
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(slice->Heads(r).begin, 2 * r);
    EXPECT_EQ(slice->Heads(r).count, 2);
  }
  // The v1 API promises every rank the same number of heads.
  c.set_num_heads(6);
  auto uneven = GroupSpecFromProto(c);
  ASSERT_FALSE(uneven.ok());
  EXPECT_THAT(std::string(uneven.status().message()), HasSubstr("config.return_mode"));
}

TEST(GroupSpecTest, ScalesOutsideTheNormalRangeAreRefused) {
  EXPECT_TRUE(ValidateScale(0.5f, "x").ok());
  EXPECT_THAT(std::string(ValidateScale(0.0f, "layer_scales[3]").message()), HasSubstr("layer_scales[3]"));
  EXPECT_FALSE(ValidateScale(1e-39f, "x").ok());
}

TEST(NamesTest, EveryNameParsesBackToItsValue) {
  for (const auto& n : kOutputModeNames) {
    v1::OutputMode m;
    ASSERT_TRUE(ParseName(kOutputModeNames, "output_mode", n.name, &m).ok());
    EXPECT_EQ(m, n.value);
    EXPECT_EQ(NameOf(kOutputModeNames, m), n.name);
  }
  v1::DType d;
  EXPECT_TRUE(ParseName(kDTypeNames, "input_dtype", "BF16", &d).ok());  // any case
  EXPECT_EQ(d, v1::DTYPE_BFLOAT16);
  absl::Status bad = ParseName(kDTypeNames, "input_dtype", "fp64", &d);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "--input_dtype: 'fp64' is not one of bf16 | fp16 | fp32");
  EXPECT_EQ(NameOf(kDataPlaneNames, v1::DATA_PLANE_UNSPECIFIED), "");
  EXPECT_EQ(NameOf(kLseBaseNames, v1::LSE_BASE_2), "2");
  EXPECT_EQ(NameOf(kReturnModeNames, v1::RETURN_MODE_HEAD_SLICE), "head_slice");
  EXPECT_EQ(NameOf(kLseLayoutNames, v1::LSE_LAYOUT_TOKENS_HEADS), "tokens_heads");
}

}  // namespace
}  // namespace dcpmerge
