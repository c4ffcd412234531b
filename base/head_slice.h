// The head-slicing rule: which heads each rank gets back when a group
// returns head slices (RETURN_MODE_HEAD_SLICE) instead of the full output.
// Both data planes cut responses with it (the gRPC plane's responses and the
// NCCL protocol's payload sizes), so a rank's slice never depends on the
// plane.
//
// The H heads are split into num_parts contiguous ranges, as even as
// possible, the first H % N ranks getting one head more: rank r gets
//   [r*(H/N) + min(r, H%N), + H/N + (r < H%N)).
// Needs 1 <= num_parts <= num_heads and 0 <= rank < num_parts.
#ifndef DCPMERGE_BASE_HEAD_SLICE_H_
#define DCPMERGE_BASE_HEAD_SLICE_H_

#include <cstdint>

namespace dcpmerge {

struct HeadRange {
  int32_t begin = 0;
  int32_t count = 0;
};

inline HeadRange HeadSlice(int32_t num_heads, int32_t num_parts, int32_t rank) {
  const int32_t base = num_heads / num_parts;
  const int32_t extra = num_heads % num_parts;
  HeadRange r;
  r.begin = rank * base + (rank < extra ? rank : extra);
  r.count = base + (rank < extra ? 1 : 0);
  return r;
}

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_HEAD_SLICE_H_
