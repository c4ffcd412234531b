#include "server/listener_watch.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace dcpmerge {

absl::StatusOr<OpenFileLimit> RaiseOpenFileLimit() {
  rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    return absl::InternalError(absl::StrCat("getrlimit(RLIMIT_NOFILE): ", std::strerror(errno)));
  }
  OpenFileLimit out;
  out.soft_before = lim.rlim_cur;
  out.hard = lim.rlim_max;
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
      return absl::InternalError(absl::StrCat("setrlimit(RLIMIT_NOFILE, ", lim.rlim_max, "): ", std::strerror(errno)));
    }
  }
  out.soft = lim.rlim_cur;
  return out;
}

std::map<int, uint64_t> ParseAcceptBacklogs(const std::string& text) {
  // "  sl  local_address rem_address   st tx_queue:rx_queue ...", addresses
  // as HEXADDR:HEXPORT, state 0A = LISTEN.
  std::map<int, uint64_t> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 5 || f[3] != "0A") continue;
    const size_t colon = f[1].rfind(':');
    const size_t queues = f[4].find(':');
    int port = 0;
    uint64_t backlog = 0;
    if (colon == absl::string_view::npos || queues == absl::string_view::npos ||
        !absl::SimpleHexAtoi(f[1].substr(colon + 1), &port) ||
        !absl::SimpleHexAtoi(f[4].substr(queues + 1), &backlog)) {
      continue;
    }
    out[port] += backlog;
  }
  return out;
}

ListenerWatch::ListenerWatch(std::map<std::string, int> ports, Options options,
                             std::function<void(const std::string&, absl::Duration)> on_stalled)
    : ports_(std::move(ports)), options_(options), on_stalled_(std::move(on_stalled)) {
  for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) fds_.push_back(fd);
  }
  thread_ = std::thread([this] { Loop(); });
}

ListenerWatch::~ListenerWatch() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
  for (int fd : fds_) close(fd);
}

std::string ListenerWatch::ReadAll() {
  std::string text;
  char buf[16384];
  for (int fd : fds_) {
    if (lseek(fd, 0, SEEK_SET) != 0) continue;
    for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

void ListenerWatch::Loop() {
  std::map<std::string, absl::Time> waiting_since;  // backlog non-empty since
  bool reported = false;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), options_.period)) return;
    }
    if (reported || fds_.empty()) continue;
    const std::map<int, uint64_t> backlogs = ParseAcceptBacklogs(ReadAll());
    const absl::Time now = absl::Now();
    for (const auto& [name, port] : ports_) {
      auto it = backlogs.find(port);
      if (it == backlogs.end() || it->second == 0) {
        waiting_since.erase(name);
        continue;
      }
      const absl::Time since = waiting_since.emplace(name, now).first->second;
      if (now - since >= options_.stall_after) {
        reported = true;
        on_stalled_(name, now - since);
        break;
      }
    }
  }
}

}  // namespace dcpmerge
