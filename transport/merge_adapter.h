// Glue between the merge contract (kernels/merge_contract.h) and the data
// plane (transport/): the server configures the transport from its
// MergeConfig and turns each MergeStep into the MergeArgs its backend (CPU
// reference or CUDA kernel) takes. Kept apart from the protocol so that
// //transport:server_protocol does not depend on the kernels.
#ifndef DCPMERGE_TRANSPORT_MERGE_ADAPTER_H_
#define DCPMERGE_TRANSPORT_MERGE_ADAPTER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/merge_contract.h"
#include "transport/layout.h"
#include "transport/server_protocol.h"

namespace dcpmerge {
namespace transport {

// What the data plane adds to a MergeConfig.
struct DataPlaneOptions {
  uint64_t config_version = 1;
  int32_t num_parts = 0;
  int32_t num_heads = 0;
  int32_t head_size = 0;
  int64_t max_tokens = 0;
  bool return_lse = false;
  ReturnMode return_mode = ReturnMode::kFull;
  ShapeMode shape_mode = ShapeMode::kDynamic;
  int64_t fixed_tokens = 0;
};

// The ProtocolConfig for a merge configuration: element sizes from the
// input dtype and output mode, scale layout from the output mode, the LSE
// layout. Validated (INVALID_ARGUMENT naming the field).
absl::StatusOr<ProtocolConfig> ToProtocolConfig(const MergeConfig& merge,
                                                const DataPlaneOptions& dp);

// MergeArgs for one step the protocol received: packed strides, every
// buffer with its exact capacity. `static_scale` is the per-layer scale
// (kFp8PerTensor; a device pointer for the CUDA kernel).
MergeArgs ToMergeArgs(const MergeStep& step, const MergeConfig& merge,
                      const float* static_scale);

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_MERGE_ADAPTER_H_
