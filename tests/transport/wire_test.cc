// The wire format (transport/wire.h) and payload layout (transport/layout.h).
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "transport/layout.h"
#include "transport/wire.h"

namespace dcpmerge {
namespace transport {
namespace {

template <typename T>
T At(const void* base, size_t offset) {
  T v;
  std::memcpy(&v, static_cast<const char*>(base) + offset, sizeof(v));
  return v;
}

TEST(WireTest, StepHeaderBytesAreTheDocumentedLayout) {
  StepHeader h = NewStepHeader();
  h.step_id = 0x1122334455667788ull;
  h.layer_id = -5;
  h.rank = 7;
  h.num_tokens = 300;
  h.config_version = 9;
  h.partial_out_bytes = 1001;
  h.partial_lse_bytes = 1002;
  h.out_bytes = 1003;
  h.out_scale_bytes = 1004;
  h.out_lse_bytes = 1005;
  const unsigned char* b = reinterpret_cast<const unsigned char*>(&h);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b), 4), "DCPS");
  EXPECT_EQ(At<uint16_t>(&h, 4), kWireVersion);
  EXPECT_EQ(At<uint16_t>(&h, 6), 96);
  EXPECT_EQ(b[8], 0x88);  // little-endian
  EXPECT_EQ(At<uint64_t>(&h, 8), 0x1122334455667788ull);
  EXPECT_EQ(At<int32_t>(&h, 16), -5);
  EXPECT_EQ(At<int32_t>(&h, 20), 7);
  EXPECT_EQ(At<int64_t>(&h, 24), 300);
  EXPECT_EQ(At<uint64_t>(&h, 32), 9u);
  EXPECT_EQ(At<uint64_t>(&h, 40), 1001u);
  EXPECT_EQ(At<uint64_t>(&h, 48), 1002u);
  EXPECT_EQ(At<uint64_t>(&h, 56), 1003u);
  EXPECT_EQ(At<uint64_t>(&h, 64), 1004u);
  EXPECT_EQ(At<uint64_t>(&h, 72), 1005u);
  EXPECT_EQ(At<uint32_t>(&h, 80), 0u);
  EXPECT_EQ(At<uint64_t>(&h, 88), 0u);
}

TEST(WireTest, ResponseHeaderBytesAreTheDocumentedLayout) {
  ResponseHeader h = NewResponseHeader();
  h.step_id = 42;
  h.layer_id = 3;
  h.config_version = 5;
  h.num_tokens = 17;
  h.out_bytes = 11;
  h.out_scale_bytes = 12;
  h.out_lse_bytes = 13;
  h.scale_count = 3;
  h.static_scale = 0.5f;
  h.head_begin = 4;
  h.head_count = 2;
  SetResponseStatus(absl::InvalidArgumentError("bad"), &h);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&h), 4), "DCPR");
  EXPECT_EQ(At<uint16_t>(&h, 6), 256);
  EXPECT_EQ(At<uint64_t>(&h, 8), 42u);
  EXPECT_EQ(At<int32_t>(&h, 16), 3);
  EXPECT_EQ(At<int32_t>(&h, 20), 3);  // INVALID_ARGUMENT
  EXPECT_EQ(At<uint64_t>(&h, 24), 5u);
  EXPECT_EQ(At<int64_t>(&h, 32), 17);
  EXPECT_EQ(At<uint64_t>(&h, 40), 11u);
  EXPECT_EQ(At<uint64_t>(&h, 48), 12u);
  EXPECT_EQ(At<uint64_t>(&h, 56), 13u);
  EXPECT_EQ(At<uint32_t>(&h, 64), 3u);
  EXPECT_EQ(At<float>(&h, 68), 0.5f);
  EXPECT_EQ(At<int32_t>(&h, 72), 4);
  EXPECT_EQ(At<int32_t>(&h, 76), 2);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&h) + 80), "bad");
}

TEST(WireTest, FramingChecks) {
  StepHeader s = NewStepHeader();
  EXPECT_TRUE(CheckStepFraming(s).ok());
  s.magic = 0x12345678;
  EXPECT_NE(CheckStepFraming(s).message().find("magic"), std::string::npos);
  s = NewStepHeader();
  s.version = 2;
  EXPECT_NE(CheckStepFraming(s).message().find("version"), std::string::npos);
  s = NewStepHeader();
  s.header_bytes = 128;
  EXPECT_NE(CheckStepFraming(s).message().find("header_bytes"),
            std::string::npos);
  ResponseHeader r = NewResponseHeader();
  EXPECT_TRUE(CheckResponseFraming(r).ok());
  r.magic = kStepMagic;  // a step header where a response belongs
  EXPECT_FALSE(CheckResponseFraming(r).ok());
  ResponseHeader zero;
  std::memset(&zero, 0, sizeof(zero));
  EXPECT_FALSE(CheckResponseFraming(zero).ok());
}

TEST(WireTest, StatusRoundTripsAndTruncates) {
  ResponseHeader h = NewResponseHeader();
  SetResponseStatus(absl::OkStatus(), &h);
  EXPECT_TRUE(ResponseStatus(h).ok());
  EXPECT_EQ(ResponseMessage(h), "");

  SetResponseStatus(absl::FailedPreconditionError("config_version: x"), &h);
  EXPECT_EQ(ResponseStatus(h),
            absl::FailedPreconditionError("config_version: x"));

  const std::string long_message(500, 'm');
  SetResponseStatus(absl::UnavailableError(long_message), &h);
  EXPECT_EQ(ResponseMessage(h).size(), kResponseMessageBytes - 1);
  EXPECT_EQ(h.message[kResponseMessageBytes - 1], '\0');
  EXPECT_TRUE(absl::IsUnavailable(ResponseStatus(h)));

  // A message filling the array without a NUL is still read safely.
  std::memset(h.message, 'z', sizeof(h.message));
  EXPECT_EQ(ResponseMessage(h).size(), kResponseMessageBytes);

  h.status_code = 99;
  EXPECT_TRUE(absl::IsInternal(ResponseStatus(h)));
  h.status_code = -1;
  EXPECT_TRUE(absl::IsInternal(ResponseStatus(h)));
}

ProtocolConfig BaseConfig() {
  ProtocolConfig c;
  c.num_parts = 3;
  c.num_heads = 8;
  c.head_size = 128;
  c.max_tokens = 64;
  c.input_elem_bytes = 2;
  c.output_elem_bytes = 1;
  c.scale_layout = ScaleLayout::kPerGroup;
  c.group_size = 64;
  c.return_lse = true;
  return c;
}

TEST(LayoutTest, HeadSlicesCoverAllHeadsInOrder) {
  for (int heads : {3, 8, 13, 128}) {
    for (int ranks : {1, 2, 3, 8}) {
      if (heads < ranks) continue;
      ProtocolConfig c = BaseConfig();
      c.num_heads = heads;
      c.num_parts = ranks;
      c.return_mode = ReturnMode::kHeadSlice;
      ASSERT_TRUE(ValidateProtocolConfig(c).ok());
      int next = 0;
      for (int r = 0; r < ranks; ++r) {
        const HeadRange h = RankHeads(c, r);
        EXPECT_EQ(h.begin, next);
        EXPECT_GE(h.count, heads / ranks);
        EXPECT_LE(h.count, heads / ranks + 1);
        next += h.count;
      }
      EXPECT_EQ(next, heads);
    }
  }
  ProtocolConfig c = BaseConfig();
  c.num_heads = 8;
  c.return_mode = ReturnMode::kHeadSlice;
  EXPECT_EQ(RankHeads(c, 0).count, 3);
  EXPECT_EQ(RankHeads(c, 1).begin, 3);
  EXPECT_EQ(RankHeads(c, 2).begin, 6);
  EXPECT_EQ(RankHeads(c, 2).count, 2);
}

TEST(LayoutTest, PayloadSizes) {
  ProtocolConfig c = BaseConfig();  // T=10: H=8, D=128, G=64
  PayloadSizes s = RankPayloadSizes(c, 1, 10);
  EXPECT_EQ(s.partial_out, 10u * 8 * 128 * 2);
  EXPECT_EQ(s.partial_lse, 10u * 8 * 4);
  EXPECT_EQ(s.out, 10u * 8 * 128);
  EXPECT_EQ(s.out_scales, 10u * 8 * 2 * 4);
  EXPECT_EQ(s.out_lse, 10u * 8 * 4);
  EXPECT_EQ(RankScaleCount(c, 1, 10), 10u * 8 * 2);

  c.return_mode = ReturnMode::kHeadSlice;  // rank 2 gets heads 6..7
  s = RankPayloadSizes(c, 2, 10);
  EXPECT_EQ(s.partial_out, 10u * 8 * 128 * 2);  // sends all heads
  EXPECT_EQ(s.out, 10u * 2 * 128);
  EXPECT_EQ(s.out_scales, 10u * 2 * 2 * 4);
  EXPECT_EQ(s.out_lse, 10u * 2 * 4);
  EXPECT_EQ(FullPayloadSizes(c, 10).out, 10u * 8 * 128);

  c.scale_layout = ScaleLayout::kPerToken;  // every rank: all T scales
  EXPECT_EQ(RankPayloadSizes(c, 2, 10).out_scales, 10u * 4);
  c.scale_layout = ScaleLayout::kPerTensor;
  EXPECT_EQ(RankPayloadSizes(c, 2, 10).out_scales, 0u);
  c.scale_layout = ScaleLayout::kNone;
  c.output_elem_bytes = 2;  // passthrough bf16
  c.return_lse = false;
  s = RankPayloadSizes(c, 0, 10);
  EXPECT_EQ(s.out, 10u * 3 * 128 * 2);
  EXPECT_EQ(s.out_scales, 0u);
  EXPECT_EQ(s.out_lse, 0u);
  EXPECT_EQ(RankPayloadSizes(c, 0, 0), PayloadSizes());
}

TEST(LayoutTest, ValidateNamesTheField) {
  auto field_of = [](const ProtocolConfig& c) {
    const absl::Status s = ValidateProtocolConfig(c);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    const std::string m(s.message());
    return m.substr(0, m.find(':'));
  };
  EXPECT_TRUE(ValidateProtocolConfig(BaseConfig()).ok());
  ProtocolConfig c = BaseConfig();
  c.config_version = 0;
  EXPECT_EQ(field_of(c), "config_version");
  c = BaseConfig();
  c.num_parts = 0;
  EXPECT_EQ(field_of(c), "num_parts");
  c.num_parts = kMaxParts + 1;
  EXPECT_EQ(field_of(c), "num_parts");
  c = BaseConfig();
  c.group_size = 48;
  EXPECT_EQ(field_of(c), "group_size");
  c = BaseConfig();
  c.input_elem_bytes = 1;
  EXPECT_EQ(field_of(c), "input_elem_bytes");
  c = BaseConfig();
  c.output_elem_bytes = 2;  // FP8 scales with 2-byte output
  EXPECT_EQ(field_of(c), "output_elem_bytes");
  c = BaseConfig();
  c.num_heads = 2;
  c.return_mode = ReturnMode::kHeadSlice;
  EXPECT_EQ(field_of(c), "return_mode");
  c = BaseConfig();
  c.shape_mode = ShapeMode::kFixed;
  c.fixed_tokens = 65;
  EXPECT_EQ(field_of(c), "fixed_tokens");
  c = BaseConfig();
  c.max_tokens = int64_t{1} << 41;
  EXPECT_EQ(field_of(c), "max_tokens");
  c = BaseConfig();
  c.max_tokens = -1;
  EXPECT_EQ(field_of(c), "max_tokens");
}

}  // namespace
}  // namespace transport
}  // namespace dcpmerge
