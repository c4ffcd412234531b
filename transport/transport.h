// The peer-to-peer operations the data-plane protocol needs, with NCCL's
// semantics, so the protocol (server_protocol.h, rank_protocol.h) runs
// unchanged over real NCCL (nccl/nccl_transport.h) and over an in-process
// fake (fake_transport.h) that tests use without GPUs.
//
// Semantics every implementation keeps:
// - One Transport is one party (rank) of one communicator of num_parties
//   parties. A communicator is never repaired: after Abort (or an error) every
//   call fails with UNAVAILABLE and the parties re-form a new one.
// - Work is enqueued on one ordered queue (a CUDA stream for NCCL) and the
//   enqueueing calls return at once; Wait() blocks for completion.
// - Send(peer) is matched by the peer's Recv(this rank) in the order both
//   sides issue them, and a matched pair must have exactly the same size. A
//   send does not complete until its receive is posted (and vice versa):
//   whoever waits on an operation the other side never posts waits forever,
//   which is why Wait takes a deadline.
// - Operations between GroupStart and GroupEnd progress concurrently; the
//   group completes when all of them have. Outside a group each Send/Recv
//   is a group of its own. Groups do not nest.
// - A transfer of 0 bytes is not issued at all (both sides skip it).
// - Memory handed to Send/Recv/Copy* must come from AllocateDevice (device
//   memory for NCCL) or, for Copy*, AllocateHost; it must stay alive until
//   the work that uses it has completed or the transport is aborted.
// - A Transport is used from one thread at a time, except Abort(), which any
//   thread may call at any time (it interrupts a Wait in progress).
#ifndef DCPMERGE_TRANSPORT_TRANSPORT_H_
#define DCPMERGE_TRANSPORT_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dcpmerge {
namespace transport {

// An owned allocation from a Transport (move-only).
class Buffer {
 public:
  using Deleter = std::function<void(void*)>;

  Buffer() = default;
  Buffer(void* data, size_t bytes, Deleter deleter)
      : data_(data), bytes_(bytes), deleter_(std::move(deleter)) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      deleter_ = std::move(other.deleter_);
      other.deleter_ = nullptr;
    }
    return *this;
  }
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  // Pointer `offset` bytes in.
  void* at(size_t offset) const { return static_cast<char*>(data_) + offset; }

  void Reset() {
    if (data_ != nullptr && deleter_) deleter_(data_);
    data_ = nullptr;
    bytes_ = 0;
    deleter_ = nullptr;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Deleter deleter_;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int num_parties() const = 0;

  // Memory Send/Recv may use (device memory for NCCL). Zero-initialised is
  // not promised. A request of 0 bytes yields a small valid allocation.
  virtual absl::StatusOr<Buffer> AllocateDevice(size_t bytes) = 0;
  // Host memory the queue can copy from/to asynchronously (pinned for CUDA);
  // the host may read it after a Wait that covers the copy.
  virtual absl::StatusOr<Buffer> AllocateHost(size_t bytes) = 0;

  virtual absl::Status GroupStart() = 0;
  virtual absl::Status GroupEnd() = 0;
  virtual absl::Status Send(const void* data, size_t bytes, int peer) = 0;
  virtual absl::Status Recv(void* data, size_t bytes, int peer) = 0;

  // Local, queue-ordered copies and fills (cudaMemcpy*Async/cudaMemsetAsync
  // for NCCL): any mix of host (AllocateHost) and device memory.
  virtual absl::Status Copy(void* dst, const void* src, size_t bytes) = 0;
  // rows x width bytes from src (rows spitch apart) to dst (dpitch apart).
  virtual absl::Status Copy2D(void* dst, size_t dpitch, const void* src,
                              size_t spitch, size_t width, size_t rows) = 0;
  virtual absl::Status Fill(void* dst, uint8_t value, size_t bytes) = 0;

  // Blocks until everything enqueued so far has completed (OK), the deadline
  // passes (DEADLINE_EXCEEDED; the work stays pending, the caller decides to
  // Abort), or the communicator failed or was aborted (UNAVAILABLE).
  virtual absl::Status Wait(absl::Time deadline) = 0;

  // Aborts the communicator: pending work is cancelled locally, all later
  // calls fail with UNAVAILABLE. Peers are not told (they time out, or learn
  // it over the control plane). Idempotent, thread-safe.
  virtual void Abort(absl::string_view reason) = 0;
  virtual bool aborted() const = 0;

  // The implementation's queue handle, for work the caller enqueues between
  // transfers (the merge kernel): a cudaStream_t for NCCL, nullptr for the
  // fake (whose memory is host memory: run such work on the host after Wait).
  virtual void* native_queue() const = 0;
};

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_TRANSPORT_H_
