#include "tests/fuzz/fuzz_configs.h"

#include "common/group_spec.h"

namespace dcpmerge::fuzz {

using transport::LseLayoutWire;
using transport::ProtocolConfig;
using transport::ReturnMode;
using transport::ScaleLayout;
using transport::ShapeMode;

// Return mode (uneven head slices included), scale layout, LSE back or not,
// fixed or dynamic shape, 2- and 4-byte inputs, sizes far beyond 32 bits.
std::vector<ProtocolConfig> WireConfigs() {
  std::vector<ProtocolConfig> c(4);
  c[0].num_parts = 1;  // bf16 in, FP8 per tensor, full
  c[0].num_heads = 1;
  c[0].head_size = 16;
  c[0].max_tokens = 4;
  c[1].num_parts = 4;  // 6 heads over 4 ranks
  c[1].num_heads = 6;
  c[1].head_size = 64;
  c[1].max_tokens = 8;
  c[1].input_elem_bytes = 4;
  c[1].scale_layout = ScaleLayout::kPerGroup;
  c[1].group_size = 32;
  c[1].return_lse = true;
  c[1].lse_layout = LseLayoutWire::kTokensHeads;
  c[1].return_mode = ReturnMode::kHeadSlice;
  c[2].num_parts = 3;  // passthrough, fixed shape
  c[2].num_heads = 3;
  c[2].head_size = 32;
  c[2].max_tokens = 16;
  c[2].output_elem_bytes = 2;
  c[2].scale_layout = ScaleLayout::kNone;
  c[2].return_lse = true;
  c[2].shape_mode = ShapeMode::kFixed;
  c[2].fixed_tokens = 5;
  c[3].num_parts = 2;  // FP8 per token, 2^20 tokens
  c[3].num_heads = 4;
  c[3].head_size = 128;
  c[3].max_tokens = int64_t{1} << 20;
  c[3].scale_layout = ScaleLayout::kPerToken;
  c[3].return_mode = ReturnMode::kHeadSlice;
  for (ProtocolConfig& config : c) config.config_version = 7;
  return c;
}

std::vector<v1::GroupConfig> MergeConfigs() {
  std::vector<v1::GroupConfig> c = {
      DefaultGroupConfig(2, 2, 16, 4),  // bf16 in, FP8 per tensor, full
      DefaultGroupConfig(3, 3, 64, 2),
      DefaultGroupConfig(4, 4, 8, 3),
      DefaultGroupConfig(1, 1, 8, 3),
  };
  c[1].set_input_dtype(v1::DTYPE_FLOAT32);
  c[1].set_output_mode(v1::OUTPUT_MODE_FP8_PER_GROUP);
  c[1].set_group_size(64);
  c[1].set_return_mode(v1::RETURN_MODE_HEAD_SLICE);
  c[1].set_return_lse(true);
  c[1].set_lse_layout(v1::LSE_LAYOUT_TOKENS_HEADS);
  c[2].set_input_dtype(v1::DTYPE_FLOAT16);
  c[2].set_output_mode(v1::OUTPUT_MODE_FP8_PER_TOKEN);
  c[2].set_lse_base(v1::LSE_BASE_2);
  c[2].set_return_mode(v1::RETURN_MODE_HEAD_SLICE);
  c[2].set_return_lse(true);
  c[3].set_output_mode(v1::OUTPUT_MODE_PASSTHROUGH);
  c[3].set_return_lse(true);
  return c;
}

}  // namespace dcpmerge::fuzz
