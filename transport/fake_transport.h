// An in-process Transport over host memory, with NCCL's matching semantics
// (transport.h), for protocol tests without GPUs: N rank threads and a server
// thread each hold a FakeTransport of one FakeWorld.
//
// Each party has a worker thread that runs its queue in order, as a CUDA
// stream would. A group registers all its sends/receives at once and
// completes when every one of them has been matched (a send waits for its
// receive, as in NCCL). Matching pairs the oldest unmatched send from A to B
// with the oldest unmatched receive on B from A and copies the bytes; pairs
// of different sizes fail both parties' communicators (real NCCL would
// corrupt or hang; failing loudly is the more useful fake).
//
// Failure injection:
// - Kill(rank): that party freezes as a crashed process would: nothing it
//   enqueued or enqueues progresses and nothing of its is matched, so peers
//   waiting on it time out.
// - Abort(reason) on a party, as on a real communicator: its pending work is
//   dropped and its unmatched operations withdrawn; peers are not told.
#ifndef DCPMERGE_TRANSPORT_FAKE_TRANSPORT_H_
#define DCPMERGE_TRANSPORT_FAKE_TRANSPORT_H_

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transport/transport.h"

namespace dcpmerge {
namespace transport {

class FakeTransport;

class FakeWorld : public std::enable_shared_from_this<FakeWorld> {
 public:
  static std::shared_ptr<FakeWorld> Create(int num_parties);

  // The party of `rank`; each rank may be connected once.
  absl::StatusOr<std::unique_ptr<FakeTransport>> Connect(int rank);

  // Freezes `rank` (see above). Aborting it afterwards still cleans it up.
  void Kill(int rank);

  int num_parties() const { return num_parties_; }

  // Sends and receives posted but not yet matched, over all parties. 0 once
  // every party has drained its queue means nothing was left unmatched.
  int UnmatchedTransfers();

  // Whether `rank`'s queue is empty (all its work completed or dropped).
  bool Idle(int rank);

  FakeWorld(const FakeWorld&) = delete;
  FakeWorld& operator=(const FakeWorld&) = delete;
  ~FakeWorld();

 private:
  friend class FakeTransport;

  struct P2POp {
    bool is_send = false;
    int owner = 0;
    int peer = 0;
    void* data = nullptr;  // const for sends
    size_t bytes = 0;
    bool done = false;
    absl::Status status;
  };
  enum class ItemKind { kGroup, kCopy, kCopy2D, kFill };
  struct Item {
    ItemKind kind = ItemKind::kGroup;
    std::vector<P2POp> ops;  // kGroup
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;  // kCopy, kFill; width for kCopy2D
    size_t dpitch = 0, spitch = 0, rows = 0;
    uint8_t value = 0;
  };
  struct Party {
    bool connected = false;
    bool killed = false;
    bool aborted = false;
    bool shutdown = false;
    std::string abort_reason;
    absl::Status error;  // first asynchronous failure
    std::deque<std::unique_ptr<Item>> queue;
  };

  explicit FakeWorld(int num_parties);

  // All below with mu_ held.
  absl::Status UsableLocked(int rank) const;
  void EnqueueLocked(int rank, std::unique_ptr<Item> item);
  void MatchLocked(int src, int dst);
  void WithdrawLocked(int rank);
  void AbortLocked(int rank, absl::string_view reason);
  bool RunnableLocked(int rank) const;

  void WorkerLoop(int rank);
  absl::Status WaitFor(int rank, absl::Time deadline);
  void Disconnect(int rank);

  std::deque<P2POp*>& Sends(int src, int dst) {
    return sends_[static_cast<size_t>(src * num_parties_ + dst)];
  }
  std::deque<P2POp*>& Recvs(int src, int dst) {
    return recvs_[static_cast<size_t>(src * num_parties_ + dst)];
  }

  const int num_parties_;
  std::mutex mu_;
  std::condition_variable cv_;  // any state change
  std::vector<Party> parties_;
  std::vector<std::deque<P2POp*>> sends_;  // [src * W + dst], oldest first
  std::vector<std::deque<P2POp*>> recvs_;  // [src * W + dst], posted by dst
};

class FakeTransport final : public Transport {
 public:
  ~FakeTransport() override;

  int rank() const override { return rank_; }
  int num_parties() const override { return world_->num_parties(); }

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
  bool aborted() const override;
  void* native_queue() const override { return nullptr; }

 private:
  friend class FakeWorld;
  FakeTransport(std::shared_ptr<FakeWorld> world, int rank);

  absl::Status AddP2P(bool is_send, void* data, size_t bytes, int peer);

  std::shared_ptr<FakeWorld> world_;
  const int rank_;
  bool in_group_ = false;
  std::unique_ptr<FakeWorld::Item> group_;  // being built (owner thread only)
  std::thread worker_;
};

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_FAKE_TRANSPORT_H_
