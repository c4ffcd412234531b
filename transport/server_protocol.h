// The server's side of the data-plane protocol (wire.h): one merge step of
// the N ranks of one communicator, over any Transport (the server is rank N).
//
// One step, dynamic shape mode:
//   1. receive the N StepHeaders; host sync (the extra round trip: the
//      server must read num_tokens before it can post payload receives)
//   2. check them (Validate below):
//        framing bad, or a declared size beyond what max_tokens allows
//          -> protocol violation: Abort the communicator, return UNAVAILABLE
//             (nothing the rank sends can be matched safely any more; the
//             caller tells the other ranks over the control plane, re-forms)
//        otherwise inconsistent (step/layer/num_tokens differ, num_tokens
//        out of range, a size other than num_tokens implies, wrong config
//        version, wrong rank)
//          -> the step is rejected: every payload is still received (drained,
//             into the same per-rank buffers, which hold max_tokens), and
//             every rank is answered with the error and a poisoned payload of
//             the sizes it declared, so no send or receive stays unmatched
//             and the next step works
//   3. receive the payloads into per-rank buffers
//   4. call the merge callback (MergeFn) on them
//   5. send each rank its ResponseHeader + out/out_scales/out_lse (all
//      heads, or its head slice, copied into per-rank staging first)
//   6. wait for the sends: a step is done when every rank has its answer.
// Fixed shape mode posts 1 and 3 together (sizes are known), so one host sync
// less; a declared size that differs from the fixed one is then a protocol
// violation (the receives already posted cannot have matched it).
//
// Deadlines: ServeStep waits for the headers until `header_deadline` (the
// server may be idle between steps; pass absl::InfiniteFuture() and Abort
// the transport from another thread to stop), then gives the rest of the
// step `step_timeout`. Running past either aborts the communicator and
// returns UNAVAILABLE: a rank that died (or never came) cannot hang the
// server.
//
// Threading: one thread calls ServeStep at a time; the Transport's Abort may
// be called from any thread.
#ifndef DCPMERGE_TRANSPORT_SERVER_PROTOCOL_H_
#define DCPMERGE_TRANSPORT_SERVER_PROTOCOL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/layout.h"
#include "transport/transport.h"
#include "transport/wire.h"

namespace dcpmerge {
namespace transport {

// What the merge callback gets: MergeArgs-like, all pointers in Transport
// memory (device memory for NCCL), packed layouts (layout.h).
struct MergeStep {
  uint64_t step_id = 0;
  int32_t layer_id = 0;
  int64_t num_tokens = 0;
  const ProtocolConfig* config = nullptr;

  int32_t num_parts = 0;
  const void* partial_out[kMaxParts] = {};   // [T,H,D], input elem bytes
  const float* partial_lse[kMaxParts] = {};  // T*H, config->lse_layout
  uint64_t partial_out_bytes = 0;            // each part
  uint64_t partial_lse_bytes = 0;

  // The merged output, all heads ([T,H,D] etc.), sized for num_tokens.
  void* out = nullptr;
  uint64_t out_bytes = 0;
  float* out_scales = nullptr;  // dynamic scale layouts only
  uint64_t out_scales_bytes = 0;
  float* out_lse = nullptr;  // only if config->return_lse
  uint64_t out_lse_bytes = 0;

  // The transport's queue (cudaStream_t for NCCL): enqueue device work on
  // it; the response sends are enqueued after the callback returns. For the
  // fake transport it is null and the callback computes on the host.
  void* queue = nullptr;

  // Set by the callback: the static per-tensor scale it used (kPerTensor),
  // echoed to the ranks in the response header.
  float static_scale_used = 0.0f;
};

// Returns OK if the merge was enqueued/done; any other status rejects the
// step (every rank gets that status and a poisoned payload).
using MergeFn = std::function<absl::Status(MergeStep& step)>;

struct ServerOptions {
  // From the headers' arrival to the last response sent.
  absl::Duration step_timeout = absl::Seconds(10);
  // Host sync between payload receive and merge callback. Needed when the
  // callback reads the buffers on the host (fake transport, CPU merge); a
  // callback that only enqueues on MergeStep::queue can set it false.
  bool sync_before_merge = true;
  // Called once per step when its headers have arrived, before they are
  // checked: the step boundary as the ranks see it (the server may have
  // been waiting for these headers since the previous step). Returns the
  // configuration version the step runs with and reports; 0 keeps
  // config().config_version. For changes that keep every size (new static
  // scales): the owner pins its scale table here, with no Reconfigure.
  std::function<uint64_t()> step_version;
};

// What became of one step whose communication completed.
struct StepOutcome {
  absl::Status step_status;  // what every rank was told (OK: merged)
  uint64_t step_id = 0;      // rank 0's values
  int32_t layer_id = 0;
  int64_t num_tokens = 0;
  bool drained = false;  // rejected after receiving its headers
  absl::Duration header_wait;
  absl::Duration step_time;  // headers in -> responses delivered
};

// The five payload sizes a rank's header declares.
PayloadSizes DeclaredSizes(const StepHeader& header);

class ServerProtocol {
 public:
  // `transport` must have num_parties == config.num_parts + 1 and rank ==
  // config.num_parts; it must outlive this object. Allocates every buffer
  // for max_tokens up front.
  static absl::StatusOr<std::unique_ptr<ServerProtocol>> Create(
      Transport* transport, const ProtocolConfig& config, MergeFn merge,
      ServerOptions options = ServerOptions());

  // Serves one step (see the top of this file).
  //   OK:            the step's communication completed; outcome.step_status
  //                  says whether it merged or was rejected.
  //   UNAVAILABLE:   protocol violation, timeout or transport failure: the
  //                  communicator is aborted; re-form it (new Transport and
  //                  new ServerProtocol) and tell the ranks.
  //   FAILED_PRECONDITION: the transport was already aborted.
  absl::StatusOr<StepOutcome> ServeStep(absl::Time header_deadline);

  // Switches to a new configuration between steps (same num_parts);
  // reallocates buffers unless only config_version changed.
  absl::Status Reconfigure(const ProtocolConfig& config);

  const ProtocolConfig& config() const { return config_; }
  uint64_t steps_served() const { return steps_served_; }

  // Checks N received headers against the configuration. Returns
  //   OK if the step is valid,
  //   UNAVAILABLE (prefixed "protocol violation") if it cannot be matched,
  //   anything else: the step's status for every rank.
  // Exposed for tests and for the server's diagnostics.
  static absl::Status Validate(const ProtocolConfig& config,
                               const StepHeader* headers, int num_parts);

  ~ServerProtocol();

 private:
  ServerProtocol(Transport* transport, MergeFn merge, ServerOptions options);
  absl::Status Allocate();
  absl::Status Fail(const absl::Status& cause, absl::string_view phase);
  absl::Status PostPayloadRecvs(const std::vector<PayloadSizes>& sizes);
  absl::Status SendResponses(const std::vector<PayloadSizes>& sizes,
                             const absl::Status& step_status,
                             const MergeStep& merged);

  Transport* const transport_;
  MergeFn merge_;
  ServerOptions options_;
  ProtocolConfig config_;
  uint64_t steps_served_ = 0;

  // Per-rank maxima (max_tokens) and their offsets in the big buffers.
  std::vector<PayloadSizes> max_sizes_;
  PayloadSizes full_max_;
  uint64_t part_out_stride_ = 0, part_lse_stride_ = 0;
  uint64_t slice_out_stride_ = 0, slice_scales_stride_ = 0,
           slice_lse_stride_ = 0;

  Buffer headers_dev_, headers_host_;      // N StepHeaders
  Buffer responses_dev_, responses_host_;  // N ResponseHeaders
  Buffer partial_out_, partial_lse_;       // N parts each
  Buffer out_, out_scales_, out_lse_;      // merged, all heads
  Buffer slice_out_, slice_scales_, slice_lse_;  // kHeadSlice staging
  Buffer poison_;                          // kPoisonByte, largest response
};

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_SERVER_PROTOCOL_H_
