// Glue between the merge contract (kernels/merge_contract.h) and the NCCL
// data plane's protocol (transport/), which does not depend on the kernels:
//   - the ProtocolConfig of a configuration (element sizes from the input
//     dtype and output mode, scale layout, LSE layout, head slices, shape
//     mode), the one helper both ends of the NCCL plane use: the server
//     (server/nccl_data_plane.cc) and the rank's device path
//     (client/rank_device.cc), so they agree on every payload size;
//   - the MergeArgs of one step the server's protocol received, for its
//     backend (the CPU reference or the CUDA kernel).
#ifndef DCPMERGE_COMMON_MERGE_ADAPTER_H_
#define DCPMERGE_COMMON_MERGE_ADAPTER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/group_spec.h"
#include "kernels/merge_contract.h"
#include "transport/layout.h"
#include "transport/server_protocol.h"

namespace dcpmerge {

// What the data plane adds to a MergeConfig.
struct ProtocolOptions {
  uint64_t config_version = 1;
  int32_t num_parts = 0;
  int32_t num_heads = 0;
  int32_t head_size = 0;
  int64_t max_tokens = 0;
  bool return_lse = false;
  transport::ReturnMode return_mode = transport::ReturnMode::kFull;
  transport::ShapeMode shape_mode = transport::ShapeMode::kDynamic;
  int64_t fixed_tokens = 0;
};

// The ProtocolConfig for a merge configuration. Validated (INVALID_ARGUMENT
// naming the field).
absl::StatusOr<transport::ProtocolConfig> ToProtocolConfig(const MergeConfig& merge,
                                                           const ProtocolOptions& options);

// The ProtocolConfig of a group: `spec` at `config_version` (>= 1), in
// fixed-shape mode with fixed_tokens tokens per step when fixed_tokens >= 0,
// else with num_tokens varying per step.
absl::StatusOr<transport::ProtocolConfig> ProtocolConfigFor(const GroupSpec& spec,
                                                            uint64_t config_version,
                                                            int64_t fixed_tokens);

// MergeArgs for one step the protocol received: packed strides, every
// buffer with its exact capacity. `static_scale` is the per-layer scale
// (kFp8PerTensor; a device pointer for the CUDA kernel).
MergeArgs ToMergeArgs(const transport::MergeStep& step, const MergeConfig& merge,
                      const float* static_scale);

}  // namespace dcpmerge

#endif  // DCPMERGE_COMMON_MERGE_ADAPTER_H_
