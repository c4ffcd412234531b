#include "transport/fake_hub.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dcpmerge {
namespace transport {

std::shared_ptr<FakeHub> FakeHub::Create() {
  return std::shared_ptr<FakeHub>(new FakeHub());
}

CommunicatorFactory FakeHub::Factory() {
  std::shared_ptr<FakeHub> self = shared_from_this();
  CommunicatorFactory f;
  f.new_unique_id = [self]() -> absl::StatusOr<std::string> {
    absl::MutexLock lock(&self->mu_);
    return absl::StrCat("fake-nccl-unique-id-", ++self->ids_made_);
  };
  f.create = [self](const std::string& id, int num_parties, int rank,
                    absl::Time deadline, const std::atomic<bool>* cancel) {
    return self->Join(id, num_parties, rank, deadline, cancel);
  };
  return f;
}

absl::StatusOr<std::unique_ptr<Transport>> FakeHub::Join(
    const std::string& id, int num_parties, int rank, absl::Time deadline,
    const std::atomic<bool>* cancel) {
  if (num_parties < 1 || rank < 0 || rank >= num_parties) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", rank, " of ", num_parties, " parties is impossible"));
  }
  absl::MutexLock lock(&mu_);
  Formation& f = formations_[id];
  if (f.num_parties == 0) f.num_parties = num_parties;
  if (f.num_parties != num_parties) {
    return absl::InvalidArgumentError(
        absl::StrCat("communicator ", id, " has ", f.num_parties, " parties",
                     ", rank ", rank, " asked for ", num_parties));
  }
  if (f.formed || !f.failed.empty() || f.arrived.count(rank) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "communicator ", id, ": rank ", rank,
        " cannot join (already formed, failed or joined); use a fresh id"));
  }
  f.arrived.insert(rank);
  cv_.SignalAll();
  while (true) {
    if (!f.failed.empty()) {
      return absl::UnavailableError(
          absl::StrCat("communicator ", id, " init failed: ", f.failed));
    }
    if (static_cast<int>(f.arrived.size()) == f.num_parties) {
      if (!f.formed) {
        f.formed = true;
        f.world = FakeWorld::Create(f.num_parties);
        ++formed_;
      }
      absl::StatusOr<std::unique_ptr<FakeTransport>> t = f.world->Connect(rank);
      if (!t.ok()) return t.status();
      return std::unique_ptr<Transport>(std::move(*t));
    }
    std::string why;
    if (cancel != nullptr && cancel->load()) {
      why = absl::StrCat("rank ", rank, " cancelled its init");
    } else if (absl::Now() >= deadline) {
      why = absl::StrCat("rank ", rank, " reached its init deadline with ",
                         f.arrived.size(), " of ", f.num_parties,
                         " parties joined");
    }
    if (!why.empty()) {
      f.failed = why;
      cv_.SignalAll();
      const bool cancelled = cancel != nullptr && cancel->load();
      return cancelled ? absl::CancelledError(why)
                       : absl::DeadlineExceededError(why);
    }
    cv_.WaitWithTimeout(&mu_, absl::Milliseconds(5));
  }
}

std::shared_ptr<FakeWorld> FakeHub::World(const std::string& unique_id) {
  absl::MutexLock lock(&mu_);
  auto it = formations_.find(unique_id);
  return it == formations_.end() ? nullptr : it->second.world;
}

int FakeHub::ids_made() const {
  absl::MutexLock lock(&mu_);
  return ids_made_;
}

int FakeHub::formed() const {
  absl::MutexLock lock(&mu_);
  return formed_;
}

}  // namespace transport
}  // namespace dcpmerge
