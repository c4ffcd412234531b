#include "kernels/merge_contract.h"

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

// A valid MergeArgs with owned host buffers: N=3, T=4, H=16, D=128, bf16,
// packed strides, every output present and exactly as large as needed.
struct Fixture {
  MergeArgs args;
  std::vector<std::vector<float>> outs;  // float storage: aligned for all
  std::vector<std::vector<float>> lses;
  std::vector<float> out, scales, out_lse;
  float scale = 1.0f;

  explicit Fixture(OutputMode mode = OutputMode::kFp8PerTensor,
                   DType dtype = DType::kBFloat16) {
    MergeShape& s = args.shape;
    s.num_parts = 3;
    s.num_tokens = 4;
    s.num_heads = 16;
    s.head_size = 128;
    args.config.input_dtype = dtype;
    args.config.output_mode = mode;
    args.config.group_size = 128;
    args.head_stride = s.head_size;
    args.token_stride = s.num_heads * args.head_stride;
    const int64_t span =
        PartialOutSpanBytes(s, dtype, args.token_stride, args.head_stride);
    for (int i = 0; i < s.num_parts; ++i) {
      outs.emplace_back(span / 4 + 1);
      lses.emplace_back(s.num_tokens * s.num_heads);
      args.partial_out[i] = outs.back().data();
      args.partial_lse[i] = lses.back().data();
    }
    args.partial_out_bytes = span;
    args.partial_lse_bytes = s.num_tokens * s.num_heads * 4;
    args.static_scale = &scale;
    const int64_t ob = OutputBytes(s, args.config);
    out.resize(ob / 4 + 1);
    args.out = {out.data(), static_cast<size_t>(ob)};
    const int64_t sc = OutputScaleCount(s, args.config);
    scales.resize(sc + 1);
    args.out_scales = {scales.data(), static_cast<size_t>(sc * 4)};
    out_lse.resize(s.num_tokens * s.num_heads);
    args.out_lse = {out_lse.data(), out_lse.size() * 4};
  }
};

struct BadCase {
  std::string name;
  OutputMode mode;
  std::function<void(MergeArgs&)> mutate;
  std::string field;  // must appear in the message
};

TEST(ValidateMergeArgsTest, ValidBaseCasesPass) {
  for (OutputMode mode : {OutputMode::kFp8PerTensor, OutputMode::kFp8PerToken,
                          OutputMode::kFp8PerGroup, OutputMode::kPassthrough}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      SCOPED_TRACE(std::string(OutputModeName(mode)) + " " +
                   std::string(DTypeName(dtype)));
      Fixture f(mode, dtype);
      EXPECT_TRUE(ValidateMergeArgs(f.args).ok()) << ValidateMergeArgs(f.args);
      // Optional output LSE left out.
      f.args.out_lse = {};
      EXPECT_TRUE(ValidateMergeArgs(f.args).ok());
      // Pointers of parts >= N are ignored.
      f.args.partial_out[5] = nullptr;
      EXPECT_TRUE(ValidateMergeArgs(f.args).ok());
    }
  }
}

TEST(ValidateMergeArgsTest, InvalidArgsNameTheField) {
  using M = OutputMode;
  const std::vector<BadCase> cases = {
      {"parts0", M::kFp8PerTensor, [](MergeArgs& a) { a.shape.num_parts = 0; },
       "shape.num_parts"},
      {"parts65", M::kFp8PerTensor,
       [](MergeArgs& a) { a.shape.num_parts = 65; }, "shape.num_parts"},
      {"partsneg", M::kFp8PerTensor,
       [](MergeArgs& a) { a.shape.num_parts = -1; }, "shape.num_parts"},
      {"tokensneg", M::kFp8PerTensor,
       [](MergeArgs& a) { a.shape.num_tokens = -1; }, "shape.num_tokens"},
      {"heads0", M::kFp8PerTensor, [](MergeArgs& a) { a.shape.num_heads = 0; },
       "shape.num_heads"},
      {"headsneg", M::kPassthrough,
       [](MergeArgs& a) { a.shape.num_heads = -3; }, "shape.num_heads"},
      {"head_size0", M::kFp8PerTensor,
       [](MergeArgs& a) { a.shape.head_size = 0; }, "shape.head_size"},
      {"dtype", M::kFp8PerTensor,
       [](MergeArgs& a) { a.config.input_dtype = static_cast<DType>(3); },
       "config.input_dtype"},
      {"base", M::kFp8PerTensor,
       [](MergeArgs& a) { a.config.lse_base = static_cast<LseBase>(2); },
       "config.lse_base"},
      {"layout", M::kFp8PerTensor,
       [](MergeArgs& a) { a.config.lse_layout = static_cast<LseLayout>(9); },
       "config.lse_layout"},
      {"mode", M::kFp8PerTensor,
       [](MergeArgs& a) { a.config.output_mode = static_cast<OutputMode>(4); },
       "config.output_mode"},
      {"group32", M::kFp8PerGroup,
       [](MergeArgs& a) { a.config.group_size = 32; }, "config.group_size"},
      {"group0", M::kFp8PerGroup, [](MergeArgs& a) { a.config.group_size = 0; },
       "config.group_size"},
      {"group_not_dividing", M::kFp8PerGroup,
       [](MergeArgs& a) {
         a.shape.head_size = 192;  // 192 % 128 != 0
         a.head_stride = 192;
       },
       "config.group_size"},
      {"group_larger_than_d", M::kFp8PerGroup,
       [](MergeArgs& a) { a.shape.head_size = 64; }, "config.group_size"},
      {"head_stride_small", M::kFp8PerTensor,
       [](MergeArgs& a) { a.head_stride = 127; }, "head_stride"},
      {"head_stride_neg", M::kFp8PerTensor,
       [](MergeArgs& a) { a.head_stride = -128; }, "head_stride"},
      {"token_stride0", M::kFp8PerTensor,
       [](MergeArgs& a) { a.token_stride = 0; }, "token_stride"},
      {"token_stride_overflow", M::kFp8PerTensor,
       [](MergeArgs& a) { a.token_stride = int64_t{1} << 62; }, "token_stride"},
      {"head_stride_span", M::kFp8PerTensor,
       [](MergeArgs& a) { a.head_stride = 256; }, "partial_out_bytes"},
      {"partial_out_bytes", M::kFp8PerTensor,
       [](MergeArgs& a) { a.partial_out_bytes -= 1; }, "partial_out_bytes"},
      {"partial_lse_bytes", M::kFp8PerTensor,
       [](MergeArgs& a) { a.partial_lse_bytes -= 4; }, "partial_lse_bytes"},
      {"partial_out_null", M::kFp8PerTensor,
       [](MergeArgs& a) { a.partial_out[2] = nullptr; }, "partial_out[2]"},
      {"partial_lse_null", M::kFp8PerTensor,
       [](MergeArgs& a) { a.partial_lse[1] = nullptr; }, "partial_lse[1]"},
      {"partial_out_misaligned", M::kPassthrough,
       [](MergeArgs& a) {
         a.partial_out[0] = static_cast<const char*>(a.partial_out[0]) + 1;
       },
       "partial_out[0]"},
      {"partial_lse_misaligned", M::kPassthrough,
       [](MergeArgs& a) {
         a.partial_lse[1] = reinterpret_cast<const float*>(
             reinterpret_cast<const char*>(a.partial_lse[1]) + 2);
       },
       "partial_lse[1]"},
      {"static_scale_null", M::kFp8PerTensor,
       [](MergeArgs& a) { a.static_scale = nullptr; }, "static_scale"},
      {"out_null", M::kFp8PerTensor, [](MergeArgs& a) { a.out.data = nullptr; },
       "out.data"},
      {"out_small", M::kFp8PerTensor, [](MergeArgs& a) { a.out.bytes -= 1; },
       "out.bytes"},
      {"passthrough_given_fp8_sized_out", M::kPassthrough,
       [](MergeArgs& a) { a.out.bytes /= 2; }, "out.bytes"},
      {"passthrough_out_misaligned", M::kPassthrough,
       [](MergeArgs& a) { a.out.data = static_cast<char*>(a.out.data) + 1; },
       "out.data"},
      {"per_token_scales_null", M::kFp8PerToken,
       [](MergeArgs& a) { a.out_scales.data = nullptr; }, "out_scales.data"},
      {"per_token_scales_small", M::kFp8PerToken,
       [](MergeArgs& a) { a.out_scales.bytes -= 1; }, "out_scales.bytes"},
      {"per_group_scales_small", M::kFp8PerGroup,
       [](MergeArgs& a) { a.out_scales.bytes -= 4; }, "out_scales.bytes"},
      {"per_group_scales_for_g128_with_g64", M::kFp8PerGroup,
       [](MergeArgs& a) { a.config.group_size = 64; }, "out_scales.bytes"},
      {"per_group_scales_misaligned", M::kFp8PerGroup,
       [](MergeArgs& a) {
         a.out_scales.data = static_cast<char*>(a.out_scales.data) + 1;
       },
       "out_scales.data"},
      {"out_lse_small", M::kFp8PerTensor,
       [](MergeArgs& a) { a.out_lse.bytes -= 1; }, "out_lse.bytes"},
      {"out_lse_zero_bytes", M::kFp8PerToken,
       [](MergeArgs& a) { a.out_lse.bytes = 0; }, "out_lse.bytes"},
      {"out_lse_misaligned", M::kFp8PerTensor,
       [](MergeArgs& a) {
         a.out_lse.data = static_cast<char*>(a.out_lse.data) + 2;
       },
       "out_lse.data"},
      {"elements_overflow", M::kFp8PerTensor,
       [](MergeArgs& a) { a.shape.num_tokens = int64_t{1} << 62; },
       "shape.num_tokens"},
      {"passthrough_bytes_overflow", M::kPassthrough,
       [](MergeArgs& a) {
         a.config.input_dtype = DType::kFloat32;
         a.shape.num_tokens = int64_t{1} << 51;  // T*H*D = 2^62, *4 overflows
       },
       "shape.num_tokens"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    Fixture f(c.mode);
    c.mutate(f.args);
    const absl::Status s = ValidateMergeArgs(f.args);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(c.field), absl::string_view::npos)
        << "message \"" << s.message() << "\" does not name " << c.field;
  }
}

TEST(ValidateMergeArgsTest, ExactMessages) {
  {
    Fixture f;
    f.args.shape.num_parts = 0;
    EXPECT_EQ(ValidateMergeArgs(f.args).message(),
              "shape.num_parts must be in [1, 64], got 0");
  }
  {
    Fixture f;
    f.args.out.bytes = 1024;
    EXPECT_EQ(ValidateMergeArgs(f.args).message(),
              "out.bytes is 1024 but output_mode fp8_per_tensor with "
              "T=4,H=16,D=128 needs 8192");
  }
}

TEST(ValidateMergeArgsTest, EmptyStepNeedsNoBuffers) {
  for (OutputMode mode :
       {OutputMode::kFp8PerToken, OutputMode::kFp8PerGroup,
        OutputMode::kPassthrough, OutputMode::kFp8PerTensor}) {
    SCOPED_TRACE(std::string(OutputModeName(mode)));
    MergeArgs a;
    a.shape = {2, 0, 8, 128};
    a.config.output_mode = mode;
    a.head_stride = 128;
    a.token_stride = 1024;
    float scale = 1.0f;
    if (mode == OutputMode::kFp8PerTensor) a.static_scale = &scale;
    EXPECT_TRUE(ValidateMergeArgs(a).ok()) << ValidateMergeArgs(a);
  }
  // The per-tensor scale pointer is part of the configuration: required
  // even for an empty step.
  MergeArgs a;
  a.shape = {2, 0, 8, 128};
  a.head_stride = 128;
  a.token_stride = 1024;
  EXPECT_EQ(ValidateMergeArgs(a).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateMergeArgsTest, StridedHeadsExactCapacity) {
  Fixture f(OutputMode::kFp8PerTensor, DType::kFloat32);
  // Padded heads and tokens; the part buffers are big enough for both.
  f.args.head_stride = 136;
  f.args.token_stride = 16 * 136 + 40;
  const int64_t span = PartialOutSpanBytes(
      f.args.shape, DType::kFloat32, f.args.token_stride, f.args.head_stride);
  EXPECT_EQ(span, (3 * (16 * 136 + 40) + 15 * 136 + 128) * 4);
  std::vector<std::vector<float>> big(3, std::vector<float>(span / 4));
  for (int i = 0; i < 3; ++i) f.args.partial_out[i] = big[i].data();
  f.args.partial_out_bytes = span;
  EXPECT_TRUE(ValidateMergeArgs(f.args).ok()) << ValidateMergeArgs(f.args);
  f.args.partial_out_bytes = span - 1;
  EXPECT_EQ(ValidateMergeArgs(f.args).code(),
            absl::StatusCode::kInvalidArgument);
  // Overlapping layouts ([H,T,D]-like, token_stride = D) are allowed.
  f.args.partial_out_bytes = span;
  f.args.token_stride = 128;
  f.args.head_stride = 4 * 128;
  EXPECT_TRUE(ValidateMergeArgs(f.args).ok()) << ValidateMergeArgs(f.args);
}

TEST(ValidateMergeConfigTest, ShapeAndConfig) {
  MergeConfig c;
  EXPECT_TRUE(ValidateMergeConfig({1, 0, 1, 1}, c).ok());
  EXPECT_TRUE(ValidateMergeConfig({64, 1 << 20, 128, 576}, c).ok());
  c.output_mode = OutputMode::kFp8PerGroup;
  c.group_size = 64;
  EXPECT_TRUE(ValidateMergeConfig({8, 16, 8, 64}, c).ok());
  EXPECT_FALSE(ValidateMergeConfig({8, 16, 8, 96}, c).ok());
  c.group_size = 128;
  EXPECT_TRUE(ValidateMergeConfig({8, 16, 8, 512}, c).ok());
  // group_size is ignored outside kFp8PerGroup.
  c.output_mode = OutputMode::kFp8PerToken;
  c.group_size = 7;
  EXPECT_TRUE(ValidateMergeConfig({8, 16, 8, 96}, c).ok());
}

TEST(HelpersTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(static_cast<DType>(7)), 0u);
  EXPECT_EQ(DTypeName(DType::kFloat32), "fp32");
  EXPECT_EQ(DTypeName(DType::kFloat16), "fp16");
  EXPECT_EQ(DTypeName(DType::kBFloat16), "bf16");
  EXPECT_EQ(OutputModeName(OutputMode::kFp8PerTensor), "fp8_per_tensor");
  EXPECT_EQ(OutputModeName(OutputMode::kFp8PerToken), "fp8_per_token");
  EXPECT_EQ(OutputModeName(OutputMode::kFp8PerGroup), "fp8_per_group");
  EXPECT_EQ(OutputModeName(OutputMode::kPassthrough), "passthrough");

  const MergeShape s{4, 5, 8, 128};
  MergeConfig c;
  c.input_dtype = DType::kFloat16;
  c.output_mode = OutputMode::kFp8PerTensor;
  EXPECT_EQ(OutputBytes(s, c), 5 * 8 * 128);
  EXPECT_EQ(OutputScaleCount(s, c), 0);
  c.output_mode = OutputMode::kFp8PerToken;
  EXPECT_EQ(OutputBytes(s, c), 5 * 8 * 128);
  EXPECT_EQ(OutputScaleCount(s, c), 5);
  c.output_mode = OutputMode::kFp8PerGroup;
  c.group_size = 64;
  EXPECT_EQ(OutputScaleCount(s, c), 5 * 8 * 2);
  c.group_size = 128;
  EXPECT_EQ(OutputScaleCount(s, c), 5 * 8);
  c.output_mode = OutputMode::kPassthrough;
  EXPECT_EQ(OutputBytes(s, c), 5 * 8 * 128 * 2);
  EXPECT_EQ(OutputScaleCount(s, c), 0);
  c.input_dtype = DType::kFloat32;
  EXPECT_EQ(OutputBytes(s, c), 5 * 8 * 128 * 4);
  // Large shapes stay in int64: T*H*D > 2^31.
  const MergeShape big{2, 1 << 20, 128, 512};
  EXPECT_EQ(OutputBytes(big, c), int64_t{1} << 38);  // 2^36 elements * 4
  const MergeShape huge{2, int64_t{1} << 60, 128, 512};
  EXPECT_EQ(OutputBytes(huge, c), -1);

  EXPECT_EQ(PartialOutSpanBytes(s, DType::kBFloat16, 1024, 128),
            (4 * 1024 + 7 * 128 + 128) * 2);
  EXPECT_EQ(PartialOutSpanBytes({1, 0, 8, 128}, DType::kFloat32, 1024, 128), 0);
  EXPECT_EQ(PartialOutSpanBytes(s, DType::kFloat32, int64_t{1} << 62, 128), -1);
  EXPECT_EQ(PartialOutSpanBytes(s, DType::kFloat32, -1, 128), -1);
}

TEST(HelpersTest, IsValidFp8Scale) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(IsValidFp8Scale(1.0f));
  EXPECT_TRUE(IsValidFp8Scale(1e-3f));
  EXPECT_TRUE(IsValidFp8Scale(std::ldexp(1.0f, -126)));
  EXPECT_TRUE(IsValidFp8Scale(std::ldexp(1.0f, 126)));
  EXPECT_FALSE(IsValidFp8Scale(0.0f));
  EXPECT_FALSE(IsValidFp8Scale(-0.0f));
  EXPECT_FALSE(IsValidFp8Scale(-1.0f));
  EXPECT_FALSE(IsValidFp8Scale(inf));
  EXPECT_FALSE(IsValidFp8Scale(-inf));
  EXPECT_FALSE(IsValidFp8Scale(std::numeric_limits<float>::quiet_NaN()));
  EXPECT_FALSE(IsValidFp8Scale(std::numeric_limits<float>::denorm_min()));
  EXPECT_FALSE(IsValidFp8Scale(std::numeric_limits<float>::max()));
}

}  // namespace
}  // namespace dcpmerge
