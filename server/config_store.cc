#include "server/config_store.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dcpmerge {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

int64_t ElementBytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace

int64_t GroupSpec::PartialOutBytes(int64_t num_tokens) const {
  return num_tokens * num_heads * head_size * ElementBytes(merge.input_dtype);
}

int64_t GroupSpec::LseBytes(int64_t num_tokens) const {
  return num_tokens * num_heads * static_cast<int64_t>(sizeof(float));
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
    if (c.group_size() != 64 && c.group_size() != 128) {
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
      if (s.num_heads % s.num_parts != 0) {
        return Invalid("config.return_mode", absl::StrCat("head slice needs world_size ", s.num_parts,
                                                          " to divide num_heads ", s.num_heads));
      }
      s.head_slice = true;
      break;
    default: return Invalid("config.return_mode", "unknown");
  }
  s.return_lse = c.return_lse();
  // Bound every payload before any rank allocates for it.
  const int64_t elems = s.max_tokens * s.num_heads * int64_t{s.head_size};
  if (s.max_tokens > (int64_t{1} << 40) / s.num_heads / s.head_size ||
      elems * ElementBytes(s.merge.input_dtype) > kMaxPayloadBytes) {
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

float ConfigSnapshot::ScaleForLayer(int32_t layer) const {
  auto it = layer_scales.find(layer);
  return it == layer_scales.end() ? default_scale : it->second;
}

ConfigStore::ConfigStore() : current_(std::make_shared<const ConfigSnapshot>()) {}

std::shared_ptr<const ConfigSnapshot> ConfigStore::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> ConfigStore::Configure(
    const v1::GroupConfig& config, float default_scale) {
  absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(config);
  if (!spec.ok()) return spec.status();
  if (default_scale != 0.0f) {
    absl::Status st = ValidateScale(default_scale, "default_scale");
    if (!st.ok()) return st;
  }
  absl::MutexLock lock(&mu_);
  auto next = std::make_shared<ConfigSnapshot>(*current_);
  next->version = current_->version + 1;
  next->configured = true;
  next->spec = *spec;
  next->hash = GroupSpecHash(*spec);
  if (default_scale != 0.0f) next->default_scale = default_scale;
  current_ = std::move(next);
  return current_;
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> ConfigStore::SetScales(
    const std::map<int32_t, float>& layer_scales, bool replace,
    float default_scale) {
  for (const auto& [layer, scale] : layer_scales) {
    absl::Status st = ValidateScale(scale, absl::StrCat("layer_scales[", layer, "]"));
    if (!st.ok()) return st;
  }
  if (default_scale != 0.0f) {
    absl::Status st = ValidateScale(default_scale, "default_scale");
    if (!st.ok()) return st;
  }
  absl::MutexLock lock(&mu_);
  auto next = std::make_shared<ConfigSnapshot>(*current_);
  next->version = current_->version + 1;
  if (replace) next->layer_scales.clear();
  for (const auto& [layer, scale] : layer_scales) next->layer_scales[layer] = scale;
  if (default_scale != 0.0f) next->default_scale = default_scale;
  current_ = std::move(next);
  return current_;
}

}  // namespace dcpmerge
