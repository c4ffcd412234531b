// A merge group's configuration in C++ terms, and its conversion from and to
// the v1 API's GroupConfig: the one place that reads a GroupConfig. The
// server validates every Configure with it, the rank client reads the
// JoinResponse's config with it, and the tools build configs from it.
//
// N: GroupSpec::num_parts; GroupConfig calls it world_size (the v1 wire name,
// kept for compatibility; base/limits.h).
#ifndef DCPMERGE_COMMON_GROUP_SPEC_H_
#define DCPMERGE_COMMON_GROUP_SPEC_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/head_slice.h"
#include "dcpmerge/v1/config.pb.h"
#include "kernels/merge_contract.h"

namespace dcpmerge {

// Largest partial output one part may carry (max_tokens*H*D*element bytes).
// Bounds every allocation a configuration implies, and the gRPC message
// sizes (common/channel_args.h).
inline constexpr int64_t kMaxPayloadBytes = 192ll << 20;

// A validated GroupConfig in the kernel contract's terms.
struct GroupSpec {
  int32_t num_parts = 0;  // N (GroupConfig.world_size)
  int32_t num_heads = 0;
  int32_t head_size = 0;
  int64_t max_tokens = 0;
  MergeConfig merge;
  bool head_slice = false;  // RETURN_MODE_HEAD_SLICE
  bool return_lse = false;

  // Element bytes of the partial outputs (input dtype) and of the merged
  // output (1 for FP8 codes, the input's for passthrough).
  int64_t InputElementBytes() const;
  int64_t OutputElementBytes() const;
  // Wire sizes of one rank's part for T tokens.
  int64_t PartialOutBytes(int64_t num_tokens) const;
  int64_t LseBytes(int64_t num_tokens) const;
  // The heads `rank` gets back: all of them, or its slice
  // (base/head_slice.h) in head-slice mode. Needs 0 <= rank < num_parts.
  HeadRange Heads(int32_t rank) const;
};

// Checks every field; INVALID_ARGUMENT naming the field ("config.num_heads").
absl::StatusOr<GroupSpec> GroupSpecFromProto(const v1::GroupConfig& config);
v1::GroupConfig GroupSpecToProto(const GroupSpec& spec);
// Hash of the shape-defining fields (what a rank must agree with).
uint64_t GroupSpecHash(const GroupSpec& spec);

// Checks one static FP8 scale (IsValidFp8Scale); INVALID_ARGUMENT naming
// `field` otherwise.
absl::Status ValidateScale(float scale, absl::string_view field);

// The defaults of every field but the shape, the same as dcpmerge_server's
// flag defaults: bf16 in, LSE base e, LSE layout [H,T], FP8 per tensor,
// group size 128, full return, no LSE back. The shape (world_size,
// num_heads, head_size, max_tokens) is 0: set it before use.
v1::GroupConfig DefaultGroupConfig();
// DefaultGroupConfig() with the shape set.
v1::GroupConfig DefaultGroupConfig(int32_t num_parts, int32_t num_heads, int32_t head_size,
                                   int64_t max_tokens);

}  // namespace dcpmerge

#endif  // DCPMERGE_COMMON_GROUP_SPEC_H_
