// A DCP rank's side of the data-plane protocol (wire.h), over any Transport.
//
// EnqueueStep only enqueues, with no host synchronisation:
//   copy StepHeader (pinned host slot -> device)
//   group { send header, send partial_out, send partial_lse }  to the server
//   group { recv response header, recv out, out_scales, out_lse } from it
//   copy ResponseHeader (device -> pinned host slot)
// so it can run on the model's stream and, in fixed-shape mode, be captured
// in a CUDA graph. The rank always posts the receives of the sizes it
// declared, and the server always answers with exactly those sizes, also
// when it rejects the step (then the payload is poisoned, 0xFF).
//
// After the queue work has completed (the caller's own stream sync, or
// Complete()), CheckResponse reads the response header from its host slot:
// the step's status, as the server decided it.
//
// Host slots: EnqueueStep writes the header into one of `slots` pinned host
// slots (a ring), and the response lands in the same slot. At most `slots`
// steps may be enqueued before the oldest one is checked.
//
// CUDA graphs (fixed-shape mode): capture one EnqueueStep; before each replay
// call RewriteHeader(&ticket, step_id, layer_id), which updates the slot the
// captured copy reads (the previous replay must have completed).
#ifndef DCPMERGE_TRANSPORT_RANK_PROTOCOL_H_
#define DCPMERGE_TRANSPORT_RANK_PROTOCOL_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/layout.h"
#include "transport/transport.h"
#include "transport/wire.h"

namespace dcpmerge {
namespace transport {

struct RankStep {
  uint64_t step_id = 0;
  int32_t layer_id = 0;
  int64_t num_tokens = 0;
  uint64_t expect_config_version = 0;  // 0: whatever the server has

  // Transport (device) memory, packed layouts (layout.h); sizes follow from
  // the config and num_tokens (RankProtocol::Sizes). Unused buffers (0
  // bytes) may be null.
  const void* partial_out = nullptr;
  const float* partial_lse = nullptr;
  void* out = nullptr;
  float* out_scales = nullptr;
  float* out_lse = nullptr;
};

struct StepTicket {
  uint64_t step_id = 0;
  int slot = -1;
  PayloadSizes sizes;
};

class RankProtocol {
 public:
  // `transport` is rank `config`'s rank r < num_parts of a communicator of
  // num_parts + 1; it must outlive this object.
  static absl::StatusOr<std::unique_ptr<RankProtocol>> Create(
      Transport* transport, const ProtocolConfig& config, int slots = 4);

  // The buffer sizes a step of num_tokens sends and receives.
  PayloadSizes Sizes(int64_t num_tokens) const;

  // Enqueues the step. Local checks (num_tokens range, fixed shape, null
  // buffers) fail with INVALID_ARGUMENT before anything is enqueued; the
  // caller must then still take part in the step (enqueue a valid one) or
  // have the group re-formed, since the server waits for this rank.
  absl::StatusOr<StepTicket> EnqueueStep(const RankStep& step);

  // Reads the response of a completed step: its framing, its step id, then
  // its status. `response` (optional) receives the header.
  absl::Status CheckResponse(const StepTicket& ticket,
                             ResponseHeader* response = nullptr) const;

  // Waits for the queue until `deadline`, then CheckResponse. On a timeout
  // or transport failure the communicator is aborted and UNAVAILABLE or
  // DEADLINE_EXCEEDED returned.
  absl::Status Complete(const StepTicket& ticket, absl::Time deadline,
                        ResponseHeader* response = nullptr);

  // CUDA-graph replay: new ids into the slot a captured step reads.
  absl::Status RewriteHeader(StepTicket* ticket, uint64_t step_id,
                             int32_t layer_id);

  const ProtocolConfig& config() const { return config_; }
  int rank() const { return rank_; }

 private:
  RankProtocol(Transport* transport, const ProtocolConfig& config, int slots);

  Transport* const transport_;
  const ProtocolConfig config_;
  const int rank_;
  const int slots_;
  int next_slot_ = 0;
  Buffer header_host_, header_dev_;      // slots x StepHeader
  Buffer response_host_, response_dev_;  // slots x ResponseHeader
};

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_RANK_PROTOCOL_H_
