// Shared helpers for the server unit tests.
#ifndef DCPMERGE_TESTS_SERVER_TEST_CONFIG_H_
#define DCPMERGE_TESTS_SERVER_TEST_CONFIG_H_

#include "dcpmerge/v1/config.pb.h"

namespace dcpmerge::testing {

inline v1::GroupConfig SmallConfig(int num_parts = 3) {
  v1::GroupConfig c;
  c.set_world_size(num_parts);
  c.set_num_heads(2);
  c.set_head_size(64);
  c.set_max_tokens(8);
  c.set_input_dtype(v1::DTYPE_BFLOAT16);
  c.set_lse_base(v1::LSE_BASE_E);
  c.set_lse_layout(v1::LSE_LAYOUT_HEADS_TOKENS);
  c.set_output_mode(v1::OUTPUT_MODE_FP8_PER_TENSOR);
  c.set_return_mode(v1::RETURN_MODE_FULL);
  return c;
}

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_SERVER_TEST_CONFIG_H_
