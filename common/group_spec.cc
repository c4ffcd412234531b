#include "common/group_spec.h"

#include "absl/strings/str_cat.h"
#include "base/limits.h"

namespace dcpmerge {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

int64_t GroupSpec::InputElementBytes() const { return static_cast<int64_t>(DTypeSize(merge.input_dtype)); }

int64_t GroupSpec::OutputElementBytes() const {
  return merge.output_mode == OutputMode::kPassthrough ? InputElementBytes() : 1;
}

int64_t GroupSpec::PartialOutBytes(int64_t num_tokens) const {
  return num_tokens * num_heads * head_size * InputElementBytes();
}

int64_t GroupSpec::LseBytes(int64_t num_tokens) const {
  return num_tokens * num_heads * static_cast<int64_t>(sizeof(float));
}

HeadRange GroupSpec::Heads(int32_t rank) const {
  if (!head_slice) return HeadRange{0, num_heads};
  return HeadSlice(num_heads, num_parts, rank);
}

absl::Status ValidateScale(float scale, absl::string_view field) {
  if (!IsValidFp8Scale(scale)) {
    return Invalid(field, absl::StrCat("scale ", scale,
                                       " must be finite and in [2^-126, 2^126]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GroupSpec> GroupSpecFromProto(const v1::GroupConfig& c) {
  GroupSpec s;
  if (c.world_size() < 1 || c.world_size() > kMaxParts) {
    return Invalid("config.world_size",
                   absl::StrCat(c.world_size(), " is not in 1..", kMaxParts));
  }
  if (c.num_heads() < 1) return Invalid("config.num_heads", "must be >= 1");
  if (c.head_size() < 1) return Invalid("config.head_size", "must be >= 1");
  if (c.max_tokens() < 1) return Invalid("config.max_tokens", "must be >= 1");
  s.num_parts = c.world_size();
  s.num_heads = c.num_heads();
  s.head_size = c.head_size();
  s.max_tokens = c.max_tokens();
  switch (c.input_dtype()) {
    case v1::DTYPE_FLOAT32: s.merge.input_dtype = DType::kFloat32; break;
    case v1::DTYPE_FLOAT16: s.merge.input_dtype = DType::kFloat16; break;
    case v1::DTYPE_BFLOAT16: s.merge.input_dtype = DType::kBFloat16; break;
    default: return Invalid("config.input_dtype", "must be FLOAT32, FLOAT16 or BFLOAT16");
  }
  switch (c.lse_base()) {
    case v1::LSE_BASE_E: s.merge.lse_base = LseBase::kNatural; break;
    case v1::LSE_BASE_2: s.merge.lse_base = LseBase::kTwo; break;
    default: return Invalid("config.lse_base", "must be LSE_BASE_E or LSE_BASE_2 (never guessed)");
  }
  switch (c.lse_layout()) {
    case v1::LSE_LAYOUT_HEADS_TOKENS: s.merge.lse_layout = LseLayout::kHeadsTokens; break;
    case v1::LSE_LAYOUT_TOKENS_HEADS: s.merge.lse_layout = LseLayout::kTokensHeads; break;
    default: return Invalid("config.lse_layout", "must be HEADS_TOKENS or TOKENS_HEADS");
  }
  switch (c.output_mode()) {
    case v1::OUTPUT_MODE_FP8_PER_TENSOR: s.merge.output_mode = OutputMode::kFp8PerTensor; break;
    case v1::OUTPUT_MODE_FP8_PER_TOKEN: s.merge.output_mode = OutputMode::kFp8PerToken; break;
    case v1::OUTPUT_MODE_FP8_PER_GROUP: s.merge.output_mode = OutputMode::kFp8PerGroup; break;
    case v1::OUTPUT_MODE_PASSTHROUGH: s.merge.output_mode = OutputMode::kPassthrough; break;
    default: return Invalid("config.output_mode", "unspecified or unknown");
  }
  if (s.merge.output_mode == OutputMode::kFp8PerGroup) {
    if (!IsSupportedGroupSize(c.group_size())) {
      return Invalid("config.group_size", absl::StrCat(c.group_size(), " is not 64 or 128"));
    }
    if (s.head_size % c.group_size() != 0) {
      return Invalid("config.group_size", absl::StrCat(c.group_size(), " does not divide head_size ", s.head_size));
    }
    s.merge.group_size = c.group_size();
  } else {
    s.merge.group_size = c.group_size() == 64 ? 64 : 128;
  }
  s.merge.power_of_two_scales = c.power_of_two_scales();
  switch (c.return_mode()) {
    case v1::RETURN_MODE_UNSPECIFIED:
    case v1::RETURN_MODE_FULL: s.head_slice = false; break;
    case v1::RETURN_MODE_HEAD_SLICE:
      // HeadSlice would split unevenly too; the v1 API promises every rank
      // the same number of heads.
      if (s.num_heads % s.num_parts != 0) {
        return Invalid("config.return_mode", absl::StrCat("head slice needs world_size ", s.num_parts,
                                                          " to divide num_heads ", s.num_heads));
      }
      s.head_slice = true;
      break;
    default: return Invalid("config.return_mode", "unknown");
  }
  s.return_lse = c.return_lse();
  // Bound every payload before any rank allocates for it. The product is
  // formed only once the first test has bounded it (formed first, it
  // overflowed int64 for a max_tokens near 2^63: UBSan, tests/fuzz).
  if (s.max_tokens > (int64_t{1} << 40) / s.num_heads / s.head_size ||
      s.max_tokens * s.num_heads * int64_t{s.head_size} * s.InputElementBytes() > kMaxPayloadBytes) {
    return Invalid("config.max_tokens",
                   absl::StrCat("max_tokens*num_heads*head_size*dtype exceeds ",
                                kMaxPayloadBytes, " bytes per part"));
  }
  return s;
}

v1::GroupConfig GroupSpecToProto(const GroupSpec& s) {
  v1::GroupConfig c;
  c.set_world_size(s.num_parts);
  c.set_num_heads(s.num_heads);
  c.set_head_size(s.head_size);
  c.set_max_tokens(s.max_tokens);
  c.set_input_dtype(s.merge.input_dtype == DType::kFloat32   ? v1::DTYPE_FLOAT32
                    : s.merge.input_dtype == DType::kFloat16 ? v1::DTYPE_FLOAT16
                                                             : v1::DTYPE_BFLOAT16);
  c.set_lse_base(s.merge.lse_base == LseBase::kNatural ? v1::LSE_BASE_E : v1::LSE_BASE_2);
  c.set_lse_layout(s.merge.lse_layout == LseLayout::kHeadsTokens ? v1::LSE_LAYOUT_HEADS_TOKENS
                                                                  : v1::LSE_LAYOUT_TOKENS_HEADS);
  switch (s.merge.output_mode) {
    case OutputMode::kFp8PerTensor: c.set_output_mode(v1::OUTPUT_MODE_FP8_PER_TENSOR); break;
    case OutputMode::kFp8PerToken: c.set_output_mode(v1::OUTPUT_MODE_FP8_PER_TOKEN); break;
    case OutputMode::kFp8PerGroup: c.set_output_mode(v1::OUTPUT_MODE_FP8_PER_GROUP); break;
    case OutputMode::kPassthrough: c.set_output_mode(v1::OUTPUT_MODE_PASSTHROUGH); break;
  }
  c.set_group_size(s.merge.group_size);
  c.set_power_of_two_scales(s.merge.power_of_two_scales);
  c.set_return_mode(s.head_slice ? v1::RETURN_MODE_HEAD_SLICE : v1::RETURN_MODE_FULL);
  c.set_return_lse(s.return_lse);
  return c;
}

uint64_t GroupSpecHash(const GroupSpec& s) {
  // FNV-1a over the fields in a fixed order.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](int64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= static_cast<uint64_t>(v >> (8 * i)) & 0xFF;
      h *= 1099511628211ull;
    }
  };
  mix(s.num_parts);
  mix(s.num_heads);
  mix(s.head_size);
  mix(s.max_tokens);
  mix(static_cast<int64_t>(s.merge.input_dtype));
  mix(static_cast<int64_t>(s.merge.lse_base));
  mix(static_cast<int64_t>(s.merge.lse_layout));
  mix(static_cast<int64_t>(s.merge.output_mode));
  mix(s.merge.group_size);
  mix(s.merge.power_of_two_scales);
  mix(s.head_slice);
  mix(s.return_lse);
  return h == 0 ? 1 : h;
}

v1::GroupConfig DefaultGroupConfig() {
  v1::GroupConfig c;
  c.set_input_dtype(v1::DTYPE_BFLOAT16);
  c.set_lse_base(v1::LSE_BASE_E);
  c.set_lse_layout(v1::LSE_LAYOUT_HEADS_TOKENS);
  c.set_output_mode(v1::OUTPUT_MODE_FP8_PER_TENSOR);
  c.set_group_size(128);
  c.set_power_of_two_scales(false);
  c.set_return_mode(v1::RETURN_MODE_FULL);
  c.set_return_lse(false);
  return c;
}

v1::GroupConfig DefaultGroupConfig(int32_t num_parts, int32_t num_heads, int32_t head_size,
                                   int64_t max_tokens) {
  v1::GroupConfig c = DefaultGroupConfig();
  c.set_world_size(num_parts);
  c.set_num_heads(num_heads);
  c.set_head_size(head_size);
  c.set_max_tokens(max_tokens);
  return c;
}

}  // namespace dcpmerge
