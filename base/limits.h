// N, the number of partial outputs one merge combines, and its limit.
//
// N has one name in C++: `num_parts` (the DCP ranks of a group: each rank
// sends one part of every step). The v1 API calls it `world_size`
// (GroupConfig.world_size, JoinRequest.world_size) and keeps that name on the
// wire; code converts at the proto boundary (common/group_spec.h). A rank's
// index is still `rank` (0..num_parts-1); over NCCL the server is party
// num_parts of a communicator of num_parts + 1 parties.
//
// The limit lives here, below the kernels and the transport, so that both
// use the one definition without depending on each other.
#ifndef DCPMERGE_BASE_LIMITS_H_
#define DCPMERGE_BASE_LIMITS_H_

namespace dcpmerge {

// Most parts one merge combines (num_parts is 1..kMaxParts).
inline constexpr int kMaxParts = 64;

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_LIMITS_H_
