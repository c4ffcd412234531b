#include "transport/layout.h"

#include "absl/strings/str_cat.h"

namespace dcpmerge {
namespace transport {

namespace {

constexpr int64_t kMaxSaneBytes = int64_t{1} << 52;

absl::Status Invalid(absl::string_view field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

absl::Status ValidateProtocolConfig(const ProtocolConfig& c) {
  if (c.config_version == 0) {
    return Invalid("config_version", "must be > 0 (0 means \"any\" on the wire)");
  }
  if (c.num_parts < 1 || c.num_parts > kMaxParts) {
    return Invalid("num_parts", absl::StrCat(c.num_parts, " is outside 1..",
                                             kMaxParts));
  }
  if (c.num_heads < 1) {
    return Invalid("num_heads", absl::StrCat(c.num_heads, " must be >= 1"));
  }
  if (c.head_size < 1) {
    return Invalid("head_size", absl::StrCat(c.head_size, " must be >= 1"));
  }
  if (c.max_tokens < 0) {
    return Invalid("max_tokens", absl::StrCat(c.max_tokens, " must be >= 0"));
  }
  if (c.input_elem_bytes != 2 && c.input_elem_bytes != 4) {
    return Invalid("input_elem_bytes",
                   absl::StrCat(c.input_elem_bytes, " is not 2 or 4"));
  }
  if (c.output_elem_bytes != 1 && c.output_elem_bytes != 2 &&
      c.output_elem_bytes != 4) {
    return Invalid("output_elem_bytes",
                   absl::StrCat(c.output_elem_bytes, " is not 1, 2 or 4"));
  }
  switch (c.scale_layout) {
    case ScaleLayout::kNone:
      break;
    case ScaleLayout::kPerTensor:
    case ScaleLayout::kPerToken:
      if (c.output_elem_bytes != 1) {
        return Invalid("output_elem_bytes",
                       "FP8 scale layouts need 1-byte output elements");
      }
      break;
    case ScaleLayout::kPerGroup:
      if (c.output_elem_bytes != 1) {
        return Invalid("output_elem_bytes",
                       "FP8 scale layouts need 1-byte output elements");
      }
      if (c.group_size < 1 || c.head_size % c.group_size != 0) {
        return Invalid("group_size",
                       absl::StrCat(c.group_size, " does not divide head_size ",
                                    c.head_size));
      }
      break;
    default:
      return Invalid("scale_layout", "unknown value");
  }
  if (c.lse_layout != LseLayoutWire::kHeadsTokens &&
      c.lse_layout != LseLayoutWire::kTokensHeads) {
    return Invalid("lse_layout", "unknown value");
  }
  if (c.return_mode != ReturnMode::kFull &&
      c.return_mode != ReturnMode::kHeadSlice) {
    return Invalid("return_mode", "unknown value");
  }
  if (c.return_mode == ReturnMode::kHeadSlice && c.num_heads < c.num_parts) {
    return Invalid("return_mode",
                   absl::StrCat("head slices need num_heads (", c.num_heads,
                                ") >= num_parts (", c.num_parts, ")"));
  }
  if (c.shape_mode != ShapeMode::kDynamic && c.shape_mode != ShapeMode::kFixed) {
    return Invalid("shape_mode", "unknown value");
  }
  if (c.shape_mode == ShapeMode::kFixed &&
      (c.fixed_tokens < 0 || c.fixed_tokens > c.max_tokens)) {
    return Invalid("fixed_tokens", absl::StrCat(c.fixed_tokens,
                                                " is outside 0..max_tokens (",
                                                c.max_tokens, ")"));
  }
  // Largest buffer: max_tokens * H * D * 4 bytes; keep it far from overflow.
  const int64_t hd = int64_t{c.num_heads} * c.head_size;  // < 2^62
  if (hd > kMaxSaneBytes / 4 ||
      (c.max_tokens > 0 && c.max_tokens > kMaxSaneBytes / 4 / hd)) {
    return Invalid("max_tokens",
                   absl::StrCat(c.max_tokens, " x ", c.num_heads, " heads x ",
                                c.head_size, " is too large"));
  }
  return absl::OkStatus();
}

HeadRange RankHeads(const ProtocolConfig& c, int rank) {
  HeadRange range;
  if (c.return_mode == ReturnMode::kFull) {
    range.begin = 0;
    range.count = c.num_heads;
    return range;
  }
  return HeadSlice(c.num_heads, c.num_parts, rank);
}

namespace {

uint64_t ScaleCount(const ProtocolConfig& c, int64_t num_tokens,
                    int32_t heads) {
  const uint64_t t = static_cast<uint64_t>(num_tokens);
  switch (c.scale_layout) {
    case ScaleLayout::kPerToken:
      return t;
    case ScaleLayout::kPerGroup:
      return t * static_cast<uint64_t>(heads) *
             static_cast<uint64_t>(c.head_size / c.group_size);
    case ScaleLayout::kNone:
    case ScaleLayout::kPerTensor:
    default:
      return 0;
  }
}

PayloadSizes Sizes(const ProtocolConfig& c, int64_t num_tokens,
                   int32_t out_heads) {
  const uint64_t t = static_cast<uint64_t>(num_tokens);
  const uint64_t h = static_cast<uint64_t>(c.num_heads);
  const uint64_t d = static_cast<uint64_t>(c.head_size);
  const uint64_t oh = static_cast<uint64_t>(out_heads);
  PayloadSizes s;
  s.partial_out = t * h * d * static_cast<uint64_t>(c.input_elem_bytes);
  s.partial_lse = t * h * 4;
  s.out = t * oh * d * static_cast<uint64_t>(c.output_elem_bytes);
  s.out_scales = ScaleCount(c, num_tokens, out_heads) * 4;
  s.out_lse = c.return_lse ? t * oh * 4 : 0;
  return s;
}

}  // namespace

uint64_t RankScaleCount(const ProtocolConfig& c, int rank,
                        int64_t num_tokens) {
  return ScaleCount(c, num_tokens, RankHeads(c, rank).count);
}

PayloadSizes RankPayloadSizes(const ProtocolConfig& c, int rank,
                              int64_t num_tokens) {
  return Sizes(c, num_tokens, RankHeads(c, rank).count);
}

PayloadSizes FullPayloadSizes(const ProtocolConfig& c, int64_t num_tokens) {
  return Sizes(c, num_tokens, c.num_heads);
}

std::string DescribeConfig(const ProtocolConfig& c) {
  return absl::StrCat(
      "v", c.config_version, " N=", c.num_parts, " H=", c.num_heads,
      " D=", c.head_size, " max_tokens=", c.max_tokens,
      " in=", c.input_elem_bytes, "B out=", c.output_elem_bytes,
      "B scales=", static_cast<int>(c.scale_layout),
      c.return_lse ? " +lse" : "",
      c.return_mode == ReturnMode::kHeadSlice ? " head-slice" : " full",
      c.shape_mode == ShapeMode::kFixed
          ? absl::StrCat(" fixed T=", c.fixed_tokens)
          : std::string(" dynamic"));
}

}  // namespace transport
}  // namespace dcpmerge
