#include "server/group.h"

#include <sys/random.h>

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/log.h"

namespace dcpmerge {

namespace {

// 64 bits from the kernel's CSPRNG: one session id does not reveal another
// (they used to be consecutive), and ids of an earlier server process are
// never mistaken for live ones.
uint64_t RandomSessionId() {
  uint64_t v = 0;
  while (v == 0) {
    if (getrandom(&v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v))) {
      std::random_device rd;  // /dev/urandom
      v = (static_cast<uint64_t>(rd()) << 32) | rd();
    }
  }
  return v;
}

}  // namespace

Group::Group(absl::Duration heartbeat_timeout)
    : heartbeat_timeout_(heartbeat_timeout) {}

Group::~Group() { StopWatchdog(); }

void Group::SetCallbacks(LostFn on_lost, ChangeFn on_change) {
  on_lost_ = std::move(on_lost);
  on_change_ = std::move(on_change);
}

void Group::StartWatchdog() {
  if (watchdog_.joinable()) return;
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

void Group::StopWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
}

void Group::WatchdogLoop() {
  const absl::Duration period =
      std::max(absl::Milliseconds(5), heartbeat_timeout_ / 8);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), period)) return;
    }
    ExpireStale(absl::Now());
  }
}

void Group::DropLocked(int32_t rank, absl::Status reason,
                       std::vector<std::pair<int32_t, absl::Status>>* lost, MemberEnd end) {
  Slot& slot = slots_[rank];
  if (!slot.joined) return;
  ++counts_.ends[static_cast<int>(end)];
  slot.joined = false;
  LogInfo("rank %d (session %u, host %s) dropped: %s", rank, slot.info.session_id,
          EscapeForLog(slot.info.host), EscapeForLog(reason.message(), 512));
  lost->emplace_back(rank, std::move(reason));
}

void Group::Notify(const std::vector<std::pair<int32_t, absl::Status>>& lost,
                   bool changed) {
  if (on_lost_) {
    for (const auto& [rank, reason] : lost) on_lost_(rank, reason);
  }
  if ((changed || !lost.empty()) && on_change_) on_change_();
}

absl::StatusOr<uint64_t> Group::Join(const JoinInfo& info,
                                     const ConfigSnapshot& config) {
  if (!config.configured) {
    return absl::FailedPreconditionError(
        "server not configured: Configure it through the admin service or "
        "start it with --world_size and the shape flags");
  }
  const int32_t n = config.spec.num_parts;
  if (info.num_parts != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world_size: rank sent ", info.num_parts, ", server group has ", n));
  }
  if (info.rank < 0 || info.rank >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank: ", info.rank, " is not in 0..", n - 1));
  }
  for (const auto& [field, value] : {std::pair<const char*, const std::string*>{"host", &info.host},
                                     std::pair<const char*, const std::string*>{"device", &info.device}}) {
    if (value->size() > kMaxMemberStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", value->size(), " bytes, at most ",
                                                     kMaxMemberStringBytes));
    }
  }
  if (info.expected_config_hash != 0 && info.expected_config_hash != config.hash) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected_config_hash: rank expects ", info.expected_config_hash,
        ", server config (version ", config.version, ") has ", config.hash));
  }
  std::vector<std::pair<int32_t, absl::Status>> lost;
  uint64_t session;
  {
    absl::MutexLock lock(&mu_);
    if (static_cast<int32_t>(slots_.size()) != n) slots_.assign(n, Slot{});
    Slot& slot = slots_[info.rank];
    if (slot.joined) {
      if (!info.replace_existing) {
        return absl::AlreadyExistsError(absl::StrCat(
            "rank: ", info.rank, " is held by a live member (host ",
            EscapeForLog(slot.info.host), ", pid ", slot.info.pid,
            "); set replace_existing to take it over"));
      }
      DropLocked(info.rank,
                 absl::UnavailableError(absl::StrCat("rank ", info.rank,
                                                     " replaced by a new member")),
                 &lost, MemberEnd::kReplaced);
    }
    do {
      session = RandomSessionId();
    } while (std::any_of(slots_.begin(), slots_.end(),
                         [session](const Slot& s) { return s.info.session_id == session; }));
    slot.joined = true;
    slot.info.rank = info.rank;
    slot.info.host = info.host;
    slot.info.device = info.device;
    slot.info.pid = info.pid;
    slot.info.session_id = session;
    slot.info.last_heartbeat = absl::Now();
    ++counts_.joins;
  }
  LogInfo("rank %d joined (session %u, host %s, device %s, pid %d)", info.rank,
          session, EscapeForLog(info.host), EscapeForLog(info.device), info.pid);
  Notify(lost, true);
  return session;
}

absl::Status Group::Leave(int32_t rank, uint64_t session_id) {
  std::vector<std::pair<int32_t, absl::Status>> lost;
  {
    absl::MutexLock lock(&mu_);
    if (rank < 0 || rank >= static_cast<int32_t>(slots_.size())) {
      return absl::InvalidArgumentError(absl::StrCat("rank: ", rank, " is not a member"));
    }
    Slot& slot = slots_[rank];
    if (!slot.joined || slot.info.session_id != session_id) {
      return absl::FailedPreconditionError(
          absl::StrCat("session_id: ", session_id, " is not the live session of rank ", rank));
    }
    DropLocked(rank, absl::UnavailableError(absl::StrCat("rank ", rank, " left the group")),
               &lost, MemberEnd::kLeft);
  }
  Notify(lost, true);
  return absl::OkStatus();
}

absl::Status Group::Heartbeat(int32_t rank, uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  if (rank < 0 || rank >= static_cast<int32_t>(slots_.size())) {
    return absl::FailedPreconditionError(absl::StrCat("rank: ", rank, " has not joined"));
  }
  Slot& slot = slots_[rank];
  if (!slot.joined || slot.info.session_id != session_id) {
    return absl::UnavailableError(absl::StrCat(
        "session_id: ", session_id, " of rank ", rank, " has ended; join again"));
  }
  slot.info.last_heartbeat = absl::Now();
  return absl::OkStatus();
}

absl::Status Group::CheckSession(int32_t rank, uint64_t session_id) const {
  absl::MutexLock lock(&mu_);
  if (rank < 0 || rank >= static_cast<int32_t>(slots_.size())) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " has not joined"));
  }
  const Slot& slot = slots_[rank];
  if (!slot.joined && slot.info.session_id == 0) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " has not joined"));
  }
  if (!slot.joined || slot.info.session_id != session_id) {
    return absl::UnavailableError(absl::StrCat(
        "header.session_id: ", session_id, " is not the live session of rank ",
        rank, "; join again"));
  }
  return absl::OkStatus();
}

void Group::MarkLost(int32_t rank, uint64_t session_id, absl::string_view why, MemberEnd end) {
  std::vector<std::pair<int32_t, absl::Status>> lost;
  {
    absl::MutexLock lock(&mu_);
    if (rank < 0 || rank >= static_cast<int32_t>(slots_.size())) return;
    Slot& slot = slots_[rank];
    if (!slot.joined || slot.info.session_id != session_id) return;
    DropLocked(rank, absl::UnavailableError(absl::StrCat("rank ", rank, " lost: ", why)),
               &lost, end);
  }
  Notify(lost, true);
}

void Group::Reset(int32_t num_parts, absl::string_view why) {
  std::vector<std::pair<int32_t, absl::Status>> lost;
  {
    absl::MutexLock lock(&mu_);
    for (int32_t r = 0; r < static_cast<int32_t>(slots_.size()); ++r) {
      DropLocked(r, absl::UnavailableError(absl::StrCat("rank ", r, " dropped: ", why)), &lost,
                 MemberEnd::kReconfigured);
    }
    slots_.assign(num_parts, Slot{});
  }
  Notify(lost, true);
}

void Group::ExpireStale(absl::Time now) {
  std::vector<std::pair<int32_t, absl::Status>> lost;
  {
    absl::MutexLock lock(&mu_);
    for (int32_t r = 0; r < static_cast<int32_t>(slots_.size()); ++r) {
      const Slot& slot = slots_[r];
      if (slot.joined && now - slot.info.last_heartbeat > heartbeat_timeout_) {
        DropLocked(r,
                   absl::UnavailableError(absl::StrCat(
                       "rank ", r, " lost: no heartbeat for ",
                       absl::FormatDuration(now - slot.info.last_heartbeat),
                       " (timeout ", absl::FormatDuration(heartbeat_timeout_), ")")),
                   &lost, MemberEnd::kHeartbeatTimeout);
      }
    }
  }
  if (!lost.empty()) Notify(lost, true);
}

bool Group::Complete() const {
  absl::MutexLock lock(&mu_);
  if (slots_.empty()) return false;
  for (const Slot& s : slots_) {
    if (!s.joined) return false;
  }
  return true;
}

std::vector<int32_t> Group::MissingRanks() const {
  absl::MutexLock lock(&mu_);
  std::vector<int32_t> out;
  for (int32_t r = 0; r < static_cast<int32_t>(slots_.size()); ++r) {
    if (!slots_[r].joined) out.push_back(r);
  }
  return out;
}

std::vector<MemberInfo> Group::Members() const {
  absl::MutexLock lock(&mu_);
  std::vector<MemberInfo> out;
  for (const Slot& s : slots_) {
    if (s.joined) out.push_back(s.info);
  }
  return out;
}

const char* MemberEndName(MemberEnd end) {
  switch (end) {
    case MemberEnd::kLeft:
      return "requested";
    case MemberEnd::kReconfigured:
      return "reconfigured";
    case MemberEnd::kHeartbeatTimeout:
      return "heartbeat_timeout";
    case MemberEnd::kStreamBroken:
      return "stream_broken";
    case MemberEnd::kReplaced:
      return "replaced";
    case MemberEnd::kCommunicatorAborted:
      return "communicator_aborted";
  }
  return "unknown";
}

MembershipCounts Group::Counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

}  // namespace dcpmerge
