// What the data plane needs to know about a configuration: enough to compute
// every payload size of a step from num_tokens, and to cut a rank's head
// slice out of the merged output. Fixed per configuration version.
//
// The transport deliberately does not depend on the merge kernels: the
// server maps its MergeConfig onto a ProtocolConfig (input dtype -> element
// bytes, output mode -> output element bytes + scale layout, LSE layout),
// and the sizes below then equal the merge contract's (kernels/
// merge_contract.h): OutputBytes, OutputScaleCount * 4, T*H*4 for the LSE.
//
// Buffers on the wire, all packed:
//   partial_out  [T,H,D]  input element bytes        (rank -> server)
//   partial_lse  T*H fp32 in lse_layout              (rank -> server)
//   out          [T,h,D]  output element bytes       (server -> rank)
//   out_scales   fp32 dynamic scales                 (server -> rank)
//                  kPerToken: [T] (every rank gets all T, also in slice mode)
//                  kPerGroup: [T,h,D/G]
//   out_lse      T*h fp32 in lse_layout, only if return_lse
// where h = H in kFull mode and the rank's heads in kHeadSlice mode.
//
// Head slices: base/head_slice.h's rule (the gRPC plane cuts its responses
// with the same one): the H heads are split into N contiguous ranges, as
// even as possible, the first H % N ranks getting one head more.
// kHeadSlice needs H >= N.
#ifndef DCPMERGE_TRANSPORT_LAYOUT_H_
#define DCPMERGE_TRANSPORT_LAYOUT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "base/head_slice.h"
#include "base/limits.h"

namespace dcpmerge {
namespace transport {

enum class ScaleLayout : uint8_t {
  kNone,       // passthrough output: no scale
  kPerTensor,  // static per-layer scale: in the response header, no payload
  kPerToken,   // dynamic, one fp32 per token
  kPerGroup,   // dynamic, one fp32 per group of group_size values along D
};

enum class LseLayoutWire : uint8_t { kHeadsTokens, kTokensHeads };

enum class ReturnMode : uint8_t {
  kFull,       // every rank gets the whole [T,H,D] output
  kHeadSlice,  // rank r gets its heads only (see above)
};

enum class ShapeMode : uint8_t {
  // num_tokens varies per step (<= max_tokens). The server reads the
  // headers before it posts the payload receives: one extra round trip
  // (header in, host sync, then payload) per step.
  kDynamic,
  // num_tokens == fixed_tokens every step, set by the control plane. The
  // server posts header and payload receives at once, no extra round trip;
  // the rank's side is CUDA-graph capturable.
  kFixed,
};

struct ProtocolConfig {
  uint64_t config_version = 1;  // > 0; 0 in a StepHeader means "any"
  int32_t num_parts = 0;        // N, 1..kMaxParts; the server is rank N
  int32_t num_heads = 0;        // H
  int32_t head_size = 0;        // D
  int64_t max_tokens = 0;       // >= 0
  int32_t input_elem_bytes = 2;   // 2 (bf16/fp16) or 4 (fp32)
  int32_t output_elem_bytes = 1;  // 1 (FP8) or the input's (passthrough)
  ScaleLayout scale_layout = ScaleLayout::kPerTensor;
  int32_t group_size = 128;  // kPerGroup: divides head_size
  bool return_lse = false;
  LseLayoutWire lse_layout = LseLayoutWire::kHeadsTokens;
  ReturnMode return_mode = ReturnMode::kFull;
  ShapeMode shape_mode = ShapeMode::kDynamic;
  int64_t fixed_tokens = 0;  // kFixed: 0..max_tokens
};

// INVALID_ARGUMENT naming the field; also refuses sizes whose byte counts at
// max_tokens would not fit comfortably in int64 (> 2^52).
absl::Status ValidateProtocolConfig(const ProtocolConfig& config);

// The heads rank `rank` receives (all of them in kFull mode, its
// HeadSlice in kHeadSlice mode).
HeadRange RankHeads(const ProtocolConfig& config, int rank);

// Byte counts of one rank's five payload buffers for a step of num_tokens.
// Valid only for a validated config, 0 <= num_tokens <= max_tokens.
struct PayloadSizes {
  uint64_t partial_out = 0;
  uint64_t partial_lse = 0;
  uint64_t out = 0;
  uint64_t out_scales = 0;
  uint64_t out_lse = 0;

  bool operator==(const PayloadSizes& o) const {
    return partial_out == o.partial_out && partial_lse == o.partial_lse &&
           out == o.out && out_scales == o.out_scales && out_lse == o.out_lse;
  }
  bool operator!=(const PayloadSizes& o) const { return !(*this == o); }
};
PayloadSizes RankPayloadSizes(const ProtocolConfig& config, int rank,
                              int64_t num_tokens);

// The merged (all heads) output's sizes, as the merge callback writes them.
PayloadSizes FullPayloadSizes(const ProtocolConfig& config,
                              int64_t num_tokens);

// fp32 scales in a rank's out_scales for num_tokens.
uint64_t RankScaleCount(const ProtocolConfig& config, int rank,
                        int64_t num_tokens);

std::string DescribeConfig(const ProtocolConfig& config);

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_LAYOUT_H_
