// FakeHub: NCCL's bootstrap, in process, over FakeWorld (fake_transport.h).
//
// Factory() is a CommunicatorFactory (factory.h): new_unique_id makes a new
// id; create(id, num_parties, rank, deadline, cancel) blocks until all
// num_parties parties of `id` called it (then each gets its FakeTransport of
// one FakeWorld), the deadline passes (DEADLINE_EXCEEDED) or *cancel turns
// true (CANCELLED). As with NCCL, an id serves one formation: once any party
// gave up, the others fail too (UNAVAILABLE) and a rank joining an id twice
// is refused; re-forming needs a fresh id.
//
// Used by the server's NCCL data plane tests and the rank client's device
// path tests: the whole NCCL control flow (id in JoinResponse, formation of
// N+1 parties, steps, aborts, re-formation) without GPUs.
#ifndef DCPMERGE_TRANSPORT_FAKE_HUB_H_
#define DCPMERGE_TRANSPORT_FAKE_HUB_H_

#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transport/factory.h"
#include "transport/fake_transport.h"

namespace dcpmerge {
namespace transport {

class FakeHub : public std::enable_shared_from_this<FakeHub> {
 public:
  static std::shared_ptr<FakeHub> Create();

  // Holds a reference to the hub.
  CommunicatorFactory Factory();

  // The world of `unique_id` once formed (null before): failure injection
  // (FakeWorld::Kill) and checks (UnmatchedTransfers).
  std::shared_ptr<FakeWorld> World(const std::string& unique_id);
  // Ids handed out so far, and communicators fully formed.
  int ids_made() const;
  int formed() const;

 private:
  struct Formation {
    int num_parties = 0;
    std::set<int> arrived;
    bool formed = false;
    std::string failed;  // non-empty: a party gave up
    std::shared_ptr<FakeWorld> world;
  };
  FakeHub() = default;
  absl::StatusOr<std::unique_ptr<Transport>> Join(
      const std::string& unique_id, int num_parties, int rank,
      absl::Time deadline, const std::atomic<bool>* cancel);

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // arrivals and failures
  int ids_made_ ABSL_GUARDED_BY(mu_) = 0;
  int formed_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Formation> formations_ ABSL_GUARDED_BY(mu_);
};

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_FAKE_HUB_H_
