// The Transport over NCCL: one party of a communicator of N+1 ranks (DCP
// ranks 0..N-1, the merge server N), enqueueing on a CUDA stream.
//
// Failure practice (PyTorch ProcessGroupNCCL, TensorRT-LLM): the
// communicator is non-blocking (ncclConfig_t.blocking = 0), so no NCCL host
// call can hang on a dead peer; initialisation and every enqueue that
// returns ncclInProgress are polled with ncclCommGetAsyncError under a
// deadline; completion is polled with cudaStreamQuery + ncclCommGetAsyncError
// under the caller's deadline; on any failure the communicator is aborted
// (ncclCommAbort, never ncclCommDestroy) and the parties re-form with a fresh
// unique id. Every NCCL host call of the process is serialised by one mutex
// (it is never held while sleeping, so threads driving parties of one
// communicator, as in tests, interleave).
//
// Grouping: Send/Recv between GroupStart and GroupEnd are recorded on the
// host and issued at GroupEnd as one ncclGroupStart ... ncclGroupEnd under
// the mutex, so a group is never interleaved with another thread's calls.
//
// Without CUDA/NCCL at build time (DCPMERGE_WITH_NCCL undefined) the class
// still exists and Create returns UNIMPLEMENTED, so callers compile either
// way.
#ifndef DCPMERGE_TRANSPORT_NCCL_NCCL_TRANSPORT_H_
#define DCPMERGE_TRANSPORT_NCCL_NCCL_TRANSPORT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "transport/factory.h"
#include "transport/transport.h"

namespace dcpmerge {
namespace transport {

// Whether this build has the NCCL transport.
bool NcclTransportAvailable();

struct NcclTransportOptions {
  int device = 0;  // CUDA device of this party (one party per GPU)
  // cudaStream_t to enqueue on (e.g. the model's stream, for graph capture);
  // null: the transport creates its own non-blocking stream.
  void* stream = nullptr;
  // Sleep between polls of init, enqueue and completion.
  absl::Duration poll_interval = absl::Microseconds(20);
  // Limit for an enqueue (ncclGroupEnd) that returned ncclInProgress.
  absl::Duration enqueue_timeout = absl::Seconds(30);
  // Create: once *cancel is true (any thread), the init in progress is
  // aborted and CANCELLED returned (the server's data plane cancels a
  // formation when a member is lost or it shuts down). May be null.
  const std::atomic<bool>* cancel = nullptr;
};

class NcclTransport final : public Transport {
 public:
  // A fresh ncclUniqueId as bytes (NCCL_UNIQUE_ID_BYTES = 128), for the
  // control plane to hand out; made by the server for every (re-)formation.
  static absl::StatusOr<std::string> NewUniqueId();

  // Joins the communicator `unique_id` as `rank` of `num_parties`. Every party
  // must call this (one thread or process each) before `init_deadline`;
  // otherwise the half-made communicator is aborted and DEADLINE_EXCEEDED
  // returned.
  static absl::StatusOr<std::unique_ptr<NcclTransport>> Create(
      absl::string_view unique_id, int num_parties, int rank,
      const NcclTransportOptions& options, absl::Time init_deadline);

  // Aborts if not idle and healthy; otherwise finalises and destroys.
  ~NcclTransport() override;

  int rank() const override { return rank_; }
  int num_parties() const override { return num_parties_; }

  absl::StatusOr<Buffer> AllocateDevice(size_t bytes) override;
  absl::StatusOr<Buffer> AllocateHost(size_t bytes) override;

  absl::Status GroupStart() override;
  absl::Status GroupEnd() override;
  absl::Status Send(const void* data, size_t bytes, int peer) override;
  absl::Status Recv(void* data, size_t bytes, int peer) override;

  absl::Status Copy(void* dst, const void* src, size_t bytes) override;
  absl::Status Copy2D(void* dst, size_t dpitch, const void* src,
                      size_t spitch, size_t width, size_t rows) override;
  absl::Status Fill(void* dst, uint8_t value, size_t bytes) override;

  absl::Status Wait(absl::Time deadline) override;
  void Abort(absl::string_view reason) override;
  bool aborted() const override { return aborted_.load(); }
  void* native_queue() const override { return stream_; }

  std::string abort_reason() const;

 private:
  struct P2P {
    bool is_send;
    void* data;
    size_t bytes;
    int peer;
  };

  NcclTransport(int num_parties, int rank, const NcclTransportOptions& options);
  absl::Status Issue(const std::vector<P2P>& ops);
  absl::Status Usable() const;
  absl::Status CheckPeer(int peer, size_t bytes, const void* data) const;

  const int num_parties_;
  const int rank_;
  const NcclTransportOptions options_;
  void* comm_ = nullptr;    // ncclComm_t
  void* stream_ = nullptr;  // cudaStream_t
  bool own_stream_ = false;
  std::atomic<bool> aborted_{false};
  std::string abort_reason_;  // guarded by the NCCL host mutex
  bool in_group_ = false;
  std::vector<P2P> group_;
};

// A CommunicatorFactory (transport/factory.h) of NcclTransports with
// `options` (its cancel is replaced by the one passed to create). Without
// NCCL both functions return UNIMPLEMENTED.
CommunicatorFactory MakeNcclCommunicatorFactory(
    const NcclTransportOptions& options);

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_NCCL_NCCL_TRANSPORT_H_
