#include "transport/fake_transport.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dcpmerge {
namespace transport {

namespace {

constexpr absl::Duration kPollSlice = absl::Milliseconds(20);

absl::StatusOr<Buffer> AllocateAligned(size_t bytes) {
  const size_t alignment = 256;  // like cudaMalloc's
  const size_t rounded = ((bytes == 0 ? 1 : bytes) + alignment - 1) /
                         alignment * alignment;
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("fake transport: cannot allocate ", bytes, " bytes"));
  }
  return Buffer(p, bytes, [](void* q) { std::free(q); });
}

}  // namespace

// ------------------------------------------------------------- FakeWorld ---

std::shared_ptr<FakeWorld> FakeWorld::Create(int num_parties) {
  return std::shared_ptr<FakeWorld>(new FakeWorld(num_parties));
}

FakeWorld::FakeWorld(int num_parties)
    : num_parties_(num_parties),
      parties_(static_cast<size_t>(num_parties)),
      sends_(static_cast<size_t>(num_parties * num_parties)),
      recvs_(static_cast<size_t>(num_parties * num_parties)) {}

FakeWorld::~FakeWorld() = default;

absl::StatusOr<std::unique_ptr<FakeTransport>> FakeWorld::Connect(int rank) {
  if (rank < 0 || rank >= num_parties_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", rank, " is outside 0..", num_parties_ - 1));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (parties_[static_cast<size_t>(rank)].connected) {
      return absl::AlreadyExistsError(
          absl::StrCat("rank ", rank, " is already connected"));
    }
    parties_[static_cast<size_t>(rank)].connected = true;
  }
  return std::unique_ptr<FakeTransport>(
      new FakeTransport(shared_from_this(), rank));
}

void FakeWorld::Kill(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  parties_[static_cast<size_t>(rank)].killed = true;
  cv_.notify_all();
}

int FakeWorld::UnmatchedTransfers() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& q : sends_) n += q.size();
  for (const auto& q : recvs_) n += q.size();
  return static_cast<int>(n);
}

bool FakeWorld::Idle(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  return parties_[static_cast<size_t>(rank)].queue.empty();
}

absl::Status FakeWorld::UsableLocked(int rank) const {
  const Party& p = parties_[static_cast<size_t>(rank)];
  if (p.aborted) {
    return absl::UnavailableError(
        absl::StrCat("communicator aborted on rank ", rank, ": ",
                     p.abort_reason));
  }
  if (!p.error.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "communicator failed on rank ", rank, ": ", p.error.message()));
  }
  return absl::OkStatus();
}

void FakeWorld::EnqueueLocked(int rank, std::unique_ptr<Item> item) {
  parties_[static_cast<size_t>(rank)].queue.push_back(std::move(item));
  cv_.notify_all();
}

bool FakeWorld::RunnableLocked(int rank) const {
  const Party& p = parties_[static_cast<size_t>(rank)];
  if (p.queue.empty()) return false;
  // A killed party does nothing until it is aborted (or its error drops it).
  return p.aborted || !p.error.ok() || !p.killed;
}

void FakeWorld::MatchLocked(int src, int dst) {
  if (parties_[static_cast<size_t>(src)].killed ||
      parties_[static_cast<size_t>(dst)].killed) {
    return;
  }
  auto& sends = Sends(src, dst);
  auto& recvs = Recvs(src, dst);
  bool changed = false;
  while (!sends.empty() && !recvs.empty()) {
    P2POp* s = sends.front();
    P2POp* r = recvs.front();
    sends.pop_front();
    recvs.pop_front();
    if (s->bytes != r->bytes) {
      const absl::Status mismatch = absl::InternalError(absl::StrCat(
          "size mismatch: rank ", src, " sent ", s->bytes, " bytes, rank ",
          dst, " posted a receive of ", r->bytes));
      s->status = mismatch;
      r->status = mismatch;
    } else {
      std::memcpy(r->data, s->data, s->bytes);
    }
    s->done = true;
    r->done = true;
    changed = true;
  }
  if (changed) cv_.notify_all();
}

void FakeWorld::WithdrawLocked(int rank) {
  auto mine = [rank](const P2POp* op) { return op->owner == rank; };
  for (auto& q : sends_) q.erase(std::remove_if(q.begin(), q.end(), mine), q.end());
  for (auto& q : recvs_) q.erase(std::remove_if(q.begin(), q.end(), mine), q.end());
}

void FakeWorld::AbortLocked(int rank, absl::string_view reason) {
  Party& p = parties_[static_cast<size_t>(rank)];
  if (p.aborted) return;
  p.aborted = true;
  p.abort_reason = std::string(reason);
  WithdrawLocked(rank);
  cv_.notify_all();
}

void FakeWorld::WorkerLoop(int rank) {
  std::unique_lock<std::mutex> lock(mu_);
  Party& p = parties_[static_cast<size_t>(rank)];
  while (true) {
    cv_.wait(lock, [&] { return p.shutdown || RunnableLocked(rank); });
    if (p.shutdown) {
      p.queue.clear();
      cv_.notify_all();
      return;
    }
    Item* item = p.queue.front().get();
    if (p.aborted || !p.error.ok()) {  // dropped, as a failed stream's work
      p.queue.pop_front();
      cv_.notify_all();
      continue;
    }
    if (item->kind == ItemKind::kGroup) {
      for (P2POp& op : item->ops) {
        if (op.is_send) {
          Sends(rank, op.peer).push_back(&op);
        } else {
          Recvs(op.peer, rank).push_back(&op);
        }
      }
      for (P2POp& op : item->ops) {
        if (op.is_send) {
          MatchLocked(rank, op.peer);
        } else {
          MatchLocked(op.peer, rank);
        }
      }
      auto all_done = [item] {
        for (const P2POp& op : item->ops) {
          if (!op.done) return false;
        }
        return true;
      };
      cv_.wait(lock, [&] { return p.shutdown || p.aborted || all_done(); });
      if (!all_done()) {
        WithdrawLocked(rank);
      } else {
        for (const P2POp& op : item->ops) {
          if (!op.status.ok() && p.error.ok()) p.error = op.status;
        }
      }
    } else {
      // Memory work on this party's own buffers: no lock needed.
      lock.unlock();
      switch (item->kind) {
        case ItemKind::kCopy:
          std::memmove(item->dst, item->src, item->bytes);
          break;
        case ItemKind::kCopy2D:
          for (size_t row = 0; row < item->rows; ++row) {
            std::memmove(static_cast<char*>(item->dst) + row * item->dpitch,
                         static_cast<const char*>(item->src) +
                             row * item->spitch,
                         item->bytes);
          }
          break;
        case ItemKind::kFill:
          std::memset(item->dst, item->value, item->bytes);
          break;
        case ItemKind::kGroup:
          break;
      }
      lock.lock();
    }
    p.queue.pop_front();
    cv_.notify_all();
  }
}

absl::Status FakeWorld::WaitFor(int rank, absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  const Party& p = parties_[static_cast<size_t>(rank)];
  while (true) {
    absl::Status usable = UsableLocked(rank);
    if (!usable.ok()) return usable;
    if (p.queue.empty()) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "rank ", rank, ": ", p.queue.size(),
          " queued operation(s) still pending at the deadline"));
    }
    const absl::Duration slice = std::min(deadline - now, kPollSlice);
    cv_.wait_for(lock, absl::ToChronoNanoseconds(slice));
  }
}

void FakeWorld::Disconnect(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  Party& p = parties_[static_cast<size_t>(rank)];
  if (!p.queue.empty()) AbortLocked(rank, "transport destroyed with pending work");
  p.shutdown = true;
  cv_.notify_all();
}

// --------------------------------------------------------- FakeTransport ---

FakeTransport::FakeTransport(std::shared_ptr<FakeWorld> world, int rank)
    : world_(std::move(world)), rank_(rank) {
  FakeWorld* w = world_.get();
  worker_ = std::thread([w, rank] { w->WorkerLoop(rank); });
}

FakeTransport::~FakeTransport() {
  world_->Disconnect(rank_);
  worker_.join();
}

absl::StatusOr<Buffer> FakeTransport::AllocateDevice(size_t bytes) {
  return AllocateAligned(bytes);
}

absl::StatusOr<Buffer> FakeTransport::AllocateHost(size_t bytes) {
  return AllocateAligned(bytes);
}

absl::Status FakeTransport::GroupStart() {
  if (in_group_) {
    return absl::FailedPreconditionError("GroupStart: groups do not nest");
  }
  {
    std::lock_guard<std::mutex> lock(world_->mu_);
    absl::Status usable = world_->UsableLocked(rank_);
    if (!usable.ok()) return usable;
  }
  in_group_ = true;
  group_ = std::make_unique<FakeWorld::Item>();
  group_->kind = FakeWorld::ItemKind::kGroup;
  return absl::OkStatus();
}

absl::Status FakeTransport::GroupEnd() {
  if (!in_group_) {
    return absl::FailedPreconditionError("GroupEnd without GroupStart");
  }
  in_group_ = false;
  std::unique_ptr<FakeWorld::Item> item = std::move(group_);
  std::lock_guard<std::mutex> lock(world_->mu_);
  absl::Status usable = world_->UsableLocked(rank_);
  if (!usable.ok()) return usable;
  if (!item->ops.empty()) world_->EnqueueLocked(rank_, std::move(item));
  return absl::OkStatus();
}

absl::Status FakeTransport::AddP2P(bool is_send, void* data, size_t bytes,
                                   int peer) {
  if (peer < 0 || peer >= world_->num_parties()) {
    return absl::InvalidArgumentError(absl::StrCat(
        is_send ? "Send" : "Recv", ": peer ", peer, " is outside 0..",
        world_->num_parties() - 1));
  }
  if (bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(is_send ? "Send" : "Recv", ": null buffer"));
  }
  FakeWorld::P2POp op;
  op.is_send = is_send;
  op.owner = rank_;
  op.peer = peer;
  op.data = data;
  op.bytes = bytes;
  if (in_group_) {
    if (bytes > 0) group_->ops.push_back(op);
    return absl::OkStatus();
  }
  std::lock_guard<std::mutex> lock(world_->mu_);
  absl::Status usable = world_->UsableLocked(rank_);
  if (!usable.ok()) return usable;
  if (bytes == 0) return absl::OkStatus();
  auto item = std::make_unique<FakeWorld::Item>();
  item->kind = FakeWorld::ItemKind::kGroup;
  item->ops.push_back(op);
  world_->EnqueueLocked(rank_, std::move(item));
  return absl::OkStatus();
}

absl::Status FakeTransport::Send(const void* data, size_t bytes, int peer) {
  return AddP2P(true, const_cast<void*>(data), bytes, peer);
}

absl::Status FakeTransport::Recv(void* data, size_t bytes, int peer) {
  return AddP2P(false, data, bytes, peer);
}

absl::Status FakeTransport::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes > 0 && (dst == nullptr || src == nullptr)) {
    return absl::InvalidArgumentError("Copy: null buffer");
  }
  std::lock_guard<std::mutex> lock(world_->mu_);
  absl::Status usable = world_->UsableLocked(rank_);
  if (!usable.ok() || bytes == 0) return usable;
  auto item = std::make_unique<FakeWorld::Item>();
  item->kind = FakeWorld::ItemKind::kCopy;
  item->dst = dst;
  item->src = src;
  item->bytes = bytes;
  world_->EnqueueLocked(rank_, std::move(item));
  return absl::OkStatus();
}

absl::Status FakeTransport::Copy2D(void* dst, size_t dpitch, const void* src,
                                   size_t spitch, size_t width, size_t rows) {
  if (width > dpitch || width > spitch) {
    return absl::InvalidArgumentError("Copy2D: width exceeds a pitch");
  }
  if (width > 0 && rows > 0 && (dst == nullptr || src == nullptr)) {
    return absl::InvalidArgumentError("Copy2D: null buffer");
  }
  std::lock_guard<std::mutex> lock(world_->mu_);
  absl::Status usable = world_->UsableLocked(rank_);
  if (!usable.ok() || width == 0 || rows == 0) return usable;
  auto item = std::make_unique<FakeWorld::Item>();
  item->kind = FakeWorld::ItemKind::kCopy2D;
  item->dst = dst;
  item->src = src;
  item->bytes = width;
  item->dpitch = dpitch;
  item->spitch = spitch;
  item->rows = rows;
  world_->EnqueueLocked(rank_, std::move(item));
  return absl::OkStatus();
}

absl::Status FakeTransport::Fill(void* dst, uint8_t value, size_t bytes) {
  if (bytes > 0 && dst == nullptr) {
    return absl::InvalidArgumentError("Fill: null buffer");
  }
  std::lock_guard<std::mutex> lock(world_->mu_);
  absl::Status usable = world_->UsableLocked(rank_);
  if (!usable.ok() || bytes == 0) return usable;
  auto item = std::make_unique<FakeWorld::Item>();
  item->kind = FakeWorld::ItemKind::kFill;
  item->dst = dst;
  item->value = value;
  item->bytes = bytes;
  world_->EnqueueLocked(rank_, std::move(item));
  return absl::OkStatus();
}

absl::Status FakeTransport::Wait(absl::Time deadline) {
  if (in_group_) {
    return absl::FailedPreconditionError("Wait inside a group");
  }
  return world_->WaitFor(rank_, deadline);
}

void FakeTransport::Abort(absl::string_view reason) {
  std::lock_guard<std::mutex> lock(world_->mu_);
  world_->AbortLocked(rank_, reason);
}

bool FakeTransport::aborted() const {
  std::lock_guard<std::mutex> lock(world_->mu_);
  return world_->parties_[static_cast<size_t>(rank_)].aborted;
}

}  // namespace transport
}  // namespace dcpmerge
