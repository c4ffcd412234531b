#include "common/merge_adapter.h"

#include "absl/strings/str_cat.h"

namespace dcpmerge {

using transport::LseLayoutWire;
using transport::ProtocolConfig;
using transport::ScaleLayout;

absl::StatusOr<ProtocolConfig> ToProtocolConfig(const MergeConfig& merge,
                                                const ProtocolOptions& dp) {
  MergeShape shape;
  shape.num_parts = dp.num_parts;
  shape.num_tokens = dp.max_tokens;
  shape.num_heads = dp.num_heads;
  shape.head_size = dp.head_size;
  absl::Status s = ValidateMergeConfig(shape, merge);
  if (!s.ok()) return s;

  ProtocolConfig c;
  c.config_version = dp.config_version;
  c.num_parts = dp.num_parts;
  c.num_heads = dp.num_heads;
  c.head_size = dp.head_size;
  c.max_tokens = dp.max_tokens;
  c.input_elem_bytes = static_cast<int32_t>(DTypeSize(merge.input_dtype));
  c.group_size = merge.group_size;
  c.return_lse = dp.return_lse;
  c.lse_layout = merge.lse_layout == LseLayout::kHeadsTokens
                     ? LseLayoutWire::kHeadsTokens
                     : LseLayoutWire::kTokensHeads;
  c.return_mode = dp.return_mode;
  c.shape_mode = dp.shape_mode;
  c.fixed_tokens = dp.fixed_tokens;
  switch (merge.output_mode) {
    case OutputMode::kFp8PerTensor:
      c.output_elem_bytes = 1;
      c.scale_layout = ScaleLayout::kPerTensor;
      break;
    case OutputMode::kFp8PerToken:
      c.output_elem_bytes = 1;
      c.scale_layout = ScaleLayout::kPerToken;
      break;
    case OutputMode::kFp8PerGroup:
      c.output_elem_bytes = 1;
      c.scale_layout = ScaleLayout::kPerGroup;
      break;
    case OutputMode::kPassthrough:
      c.output_elem_bytes = c.input_elem_bytes;
      c.scale_layout = ScaleLayout::kNone;
      break;
    default:
      return absl::InvalidArgumentError("output_mode: unknown value");
  }
  s = transport::ValidateProtocolConfig(c);
  if (!s.ok()) return s;
  return c;
}

absl::StatusOr<ProtocolConfig> ProtocolConfigFor(const GroupSpec& spec, uint64_t config_version,
                                                 int64_t fixed_tokens) {
  ProtocolOptions o;
  o.config_version = config_version;
  o.num_parts = spec.num_parts;
  o.num_heads = spec.num_heads;
  o.head_size = spec.head_size;
  o.max_tokens = spec.max_tokens;
  o.return_lse = spec.return_lse;
  o.return_mode = spec.head_slice ? transport::ReturnMode::kHeadSlice : transport::ReturnMode::kFull;
  if (fixed_tokens >= 0) {
    o.shape_mode = transport::ShapeMode::kFixed;
    o.fixed_tokens = fixed_tokens;
  }
  return ToProtocolConfig(spec.merge, o);
}

MergeArgs ToMergeArgs(const transport::MergeStep& step, const MergeConfig& merge,
                      const float* static_scale) {
  MergeArgs a;
  a.shape.num_parts = step.num_parts;
  a.shape.num_tokens = step.num_tokens;
  a.shape.num_heads = step.config->num_heads;
  a.shape.head_size = step.config->head_size;
  a.config = merge;
  for (int i = 0; i < step.num_parts && i < kMaxParts; ++i) {
    a.partial_out[i] = step.partial_out[i];
    a.partial_lse[i] = step.partial_lse[i];
  }
  a.partial_out_bytes = step.partial_out_bytes;
  a.partial_lse_bytes = step.partial_lse_bytes;
  a.head_stride = step.config->head_size;
  a.token_stride = int64_t{step.config->num_heads} * step.config->head_size;
  a.static_scale = static_scale;
  a.out.data = step.out;
  a.out.bytes = step.out_bytes;
  a.out_scales.data = step.out_scales;
  a.out_scales.bytes = step.out_scales_bytes;
  a.out_lse.data = step.out_lse;
  a.out_lse.bytes = step.out_lse_bytes;
  return a;
}

}  // namespace dcpmerge
