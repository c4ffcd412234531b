// RankDevice: a rank's device path on the NCCL data plane. It merges device
// buffers over one NCCL communicator of the group's N ranks and the server,
// bound to the session of a RankClient (client/rank_client.h) whose group
// runs --data_plane=nccl (join_info().data_plane() == DATA_PLANE_NCCL).
// The same class exists in every build; without CUDA and NCCL only an
// injected transport (RankDeviceOptions::factory, e.g. transport::FakeHub
// in tests) can form a communicator, and Connect() says so otherwise.
//
//   (*client)->Join();
//   auto device = RankDevice::Create(client->get(), {});
//   (*device)->Connect();                     // NCCL init, all N+1 parties
//   auto sizes = (*device)->Sizes(T);         // bytes of each device buffer
//   transport::RankStep s;                    // ids, T, device pointers
//   s.step_id = step; s.layer_id = layer; s.num_tokens = T;
//   s.partial_out = o; s.partial_lse = lse; s.out = out; ...
//   auto ticket = (*device)->Merge(s, stream);  // enqueue only
//   ... stream work that consumes s.out ...
//   cudaStreamSynchronize(stream);            // or any later sync point
//   absl::Status st = (*device)->CheckResponse(*ticket);  // the server's status
//
// Merge enqueues the header and payload sends and the response receives on
// the communicator's stream (joined to `stream` with CUDA events when they
// differ) and never synchronises with the host, so it may be captured in a
// CUDA graph in fixed-shape mode (join_info().nccl_fixed_shape(); replay
// with RewriteStep). The server answers every step with exactly the sizes
// the rank declared; on error the payload is poisoned (0xFF, NaN in every
// output format), so check the status before trusting the output. If the
// server gives the communicator up (a peer died, a step timed out), the
// client's heartbeat tells this object, which aborts its communicator (the
// stream work then ends instead of waiting forever); CheckResponse returns
// UNAVAILABLE, and the caller must Join() and Connect() again (the server
// hands out a fresh unique id). Join() again, Leave() and destroying the
// client abort the communicator too.
//
// Thread-safety: every method is thread-safe and device calls are
// serialised, but NCCL needs every rank to enqueue steps in the same order:
// issue them from one thread per rank. Destroy a RankDevice before its
// RankClient, or at least not while the client is being destroyed.
#ifndef DCPMERGE_CLIENT_RANK_DEVICE_H_
#define DCPMERGE_CLIENT_RANK_DEVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/cuda_stream.h"
#include "client/rank_client.h"
#include "dcpmerge/v1/control.pb.h"
#include "transport/factory.h"
#include "transport/layout.h"
#include "transport/rank_protocol.h"

namespace dcpmerge {

struct RankDeviceOptions {
  int cuda_device = 0;  // this rank's GPU (NCCL: one party per GPU)
  // The stream the communicator enqueues on. The model's stream: no events
  // per step. Null: a stream of the communicator's own, joined to the
  // caller's stream with CUDA events in every Merge.
  CudaStream nccl_stream = nullptr;
  absl::Duration init_timeout = absl::Seconds(60);
  int slots = 4;  // steps enqueued before the oldest must be checked
  // Unset: NCCL (transport::MakeNcclCommunicatorFactory). Tests inject
  // transport::FakeHub (host memory; pass a null stream to Merge).
  transport::CommunicatorFactory factory;
};

// A step enqueued by Merge.
struct DeviceTicket {
  uint64_t communicator = 0;  // which Connect it was enqueued on
  transport::StepTicket ticket;
};

// What the server answered (valid when CheckResponse returns OK).
struct DeviceStepInfo {
  uint64_t step = 0;
  int32_t layer = 0;
  int64_t num_tokens = 0;
  uint64_t config_version = 0;
  int32_t head_begin = 0;
  int32_t head_count = 0;
  uint32_t scale_count = 0;  // dynamic modes: fp32 scales in out_scales
  float static_scale = 0;    // per-tensor mode: the layer's scale used
};

class RankDevice : private RankClient::SessionObserver {
 public:
  // Binds to `client`'s session (joined or not yet). FAILED_PRECONDITION
  // when the client already has a RankDevice.
  static absl::StatusOr<std::unique_ptr<RankDevice>> Create(RankClient* client, RankDeviceOptions options);
  ~RankDevice() override;  // aborts the communicator

  // Forms this rank's party of the communicator whose id the last Join
  // returned (blocks until all N+1 parties joined, up to init_timeout).
  // FAILED_PRECONDITION when not joined or the group uses the gRPC data
  // plane; DEADLINE_EXCEEDED / UNAVAILABLE / CANCELLED when the
  // communicator did not form (Join again: the server has made a fresh id
  // by then).
  absl::Status Connect();
  // Byte sizes of this rank's buffers for a step of num_tokens.
  absl::StatusOr<transport::PayloadSizes> Sizes(int64_t num_tokens) const;
  // Enqueues the step (device memory, the transport's memory; packed
  // layouts as in RankClient::Merge; buffers of 0 bytes may be null); no
  // host synchronisation. INVALID_ARGUMENT (nothing enqueued; the server
  // still waits for this rank's step) for a bad num_tokens or a null
  // buffer; UNAVAILABLE once the communicator was aborted. A non-null
  // `stream` with the in-process fake transport is INVALID_ARGUMENT.
  absl::StatusOr<DeviceTicket> Merge(const transport::RankStep& step, CudaStream stream);
  // Once the step's stream work completed: the server's status for it.
  absl::Status CheckResponse(const DeviceTicket& ticket, DeviceStepInfo* info = nullptr);
  // Waits for the communicator's stream (host sync, up to `timeout`; on
  // expiry the communicator is aborted), then CheckResponse.
  absl::Status Wait(const DeviceTicket& ticket, absl::Duration timeout, DeviceStepInfo* info = nullptr);
  // CUDA-graph replay of a captured fixed-shape step: new step/layer ids
  // into the host slot the captured header copy reads. The previous replay
  // must have completed.
  absl::Status RewriteStep(DeviceTicket* ticket, uint64_t step, int32_t layer);

 private:
  struct Communicator;

  RankDevice(RankClient* client, RankDeviceOptions options);
  // RankClient::SessionObserver.
  void SessionEnding(End end) override;
  void SessionStarted(const v1::JoinResponse& join) override;
  void HeartbeatDone(const absl::Status& status, const v1::HeartbeatResponse& response) override;

  // Aborts the current communicator, keeping it (later calls say why).
  void Abort(const std::string& why);
  // Takes the current communicator away and aborts it.
  void Drop(const std::string& why);
  std::shared_ptr<Communicator> current() const;
  absl::Status Gone(const Communicator& c) const;
  // The communicator `ticket` was enqueued on, or UNAVAILABLE when it is gone.
  absl::StatusOr<std::shared_ptr<Communicator>> CommunicatorOf(const DeviceTicket& ticket) const;

  const RankDeviceOptions options_;
  absl::Mutex device_mu_;  // serialises device calls; taken before mu_
  mutable absl::Mutex mu_;
  RankClient* client_ ABSL_GUARDED_BY(mu_);  // null once the client closed
  v1::JoinResponse join_ ABSL_GUARDED_BY(mu_);  // the session's
  std::shared_ptr<Communicator> comm_ ABSL_GUARDED_BY(mu_);
  uint64_t serial_ ABSL_GUARDED_BY(mu_) = 0;
  bool session_ended_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> cancel_{false};  // cancels Connect's formation
};

}  // namespace dcpmerge

#endif  // DCPMERGE_CLIENT_RANK_DEVICE_H_
