// Membership of the DCP group: who joined as which rank, their sessions and
// heartbeat deadlines, and whether the group is complete (all N ranks).
//
// Thread-safe. Callbacks (on_lost, on_change) run on the calling thread or
// the watchdog thread, never with the group's lock held.
#ifndef DCPMERGE_SERVER_GROUP_H_
#define DCPMERGE_SERVER_GROUP_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/config_store.h"

namespace dcpmerge {

struct MemberInfo {
  int32_t rank = -1;
  std::string host;
  std::string device;
  int64_t pid = 0;
  uint64_t session_id = 0;
  absl::Time last_heartbeat;
};

// Longest JoinRequest.host / .device accepted (INVALID_ARGUMENT beyond).
inline constexpr size_t kMaxMemberStringBytes = 256;

struct JoinInfo {
  int32_t rank = -1;
  int32_t num_parts = 0;
  std::string host;
  std::string device;
  int64_t pid = 0;
  uint64_t expected_config_hash = 0;
  bool replace_existing = false;
};

// Why a membership ended (the reason label of dcpmerge_rank_leaves_total
// and dcpmerge_rank_drops_total).
enum class MemberEnd {
  kLeft = 0,              // the rank called Leave
  kReconfigured,          // a Configure changed the shape (Reset)
  kHeartbeatTimeout,      // no heartbeat within the timeout
  kStreamBroken,          // its data stream broke (MarkLost, gRPC plane)
  kReplaced,              // a new member took the rank over (replace_existing)
  kCommunicatorAborted,   // the NCCL communicator was given up (MarkLost, NCCL plane)
};
inline constexpr int kNumMemberEnds = 6;
// "requested", "reconfigured", "heartbeat_timeout", "stream_broken",
// "replaced", "communicator_aborted".
const char* MemberEndName(MemberEnd end);
// kLeft and kReconfigured end a membership in order (leaves); the others
// lose a member (drops).
inline bool IsOrderlyEnd(MemberEnd end) { return end == MemberEnd::kLeft || end == MemberEnd::kReconfigured; }

// Membership events since the group was made.
struct MembershipCounts {
  uint64_t joins = 0;
  std::array<uint64_t, kNumMemberEnds> ends{};  // indexed by MemberEnd
};

class Group {
 public:
  // Called when a member is dropped (left, heartbeat missed, stream lost,
  // replaced): the reason is an UNAVAILABLE status naming the rank.
  using LostFn = std::function<void(int32_t rank, const absl::Status& reason)>;
  // Called after any membership change.
  using ChangeFn = std::function<void()>;

  explicit Group(absl::Duration heartbeat_timeout);
  ~Group();  // stops the watchdog

  void SetCallbacks(LostFn on_lost, ChangeFn on_change);
  // Starts the heartbeat watchdog thread (checks every timeout/8, >= 5 ms).
  void StartWatchdog();
  void StopWatchdog();

  // Joins against the given configuration. Returns the new session id: 64
  // random bits (getrandom), never 0, never another member's.
  absl::StatusOr<uint64_t> Join(const JoinInfo& info, const ConfigSnapshot& config);
  absl::Status Leave(int32_t rank, uint64_t session_id);
  absl::Status Heartbeat(int32_t rank, uint64_t session_id);
  // OK when `session_id` is the live session of `rank`. FAILED_PRECONDITION
  // when the rank never joined, UNAVAILABLE when the session has ended.
  absl::Status CheckSession(int32_t rank, uint64_t session_id) const;
  // Drops a member whose session is `session_id` (no-op when it is not the
  // live one): used when its data stream breaks (or, with
  // kCommunicatorAborted, when the NCCL plane gives its communicator up).
  void MarkLost(int32_t rank, uint64_t session_id, absl::string_view why,
                MemberEnd end = MemberEnd::kStreamBroken);
  // Drops every member (configuration changed shape); world size becomes n.
  void Reset(int32_t num_parts, absl::string_view why);
  // Drops members silent for longer than the heartbeat timeout.
  void ExpireStale(absl::Time now);

  bool Complete() const;
  std::vector<int32_t> MissingRanks() const;
  std::vector<MemberInfo> Members() const;
  absl::Duration heartbeat_timeout() const { return heartbeat_timeout_; }
  MembershipCounts Counts() const;

 private:
  struct Slot {
    bool joined = false;
    MemberInfo info;
  };
  // Drops slot `rank` (lock held); appends the notification to `lost`.
  void DropLocked(int32_t rank, absl::Status reason,
                  std::vector<std::pair<int32_t, absl::Status>>* lost, MemberEnd end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify(const std::vector<std::pair<int32_t, absl::Status>>& lost, bool changed);
  void WatchdogLoop();

  const absl::Duration heartbeat_timeout_;
  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  LostFn on_lost_;
  ChangeFn on_change_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
  MembershipCounts counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_GROUP_H_
