// Listeners that survive descriptor pressure.
//
// gRPC 1.51 (Debian 12's) stops accepting on a listening socket for good
// when accept4() fails with EMFILE or ENFILE: the socket stays bound, the
// kernel keeps completing handshakes into its backlog, and nothing takes
// them off it again. A process out of descriptors therefore loses its
// listeners even after the pressure is gone. Two defences:
//
//  - RaiseOpenFileLimit: the soft RLIMIT_NOFILE up to the hard one at start
//    (container runtimes set soft limits as low as 1,024);
//  - ListenerWatch: a thread that reads the kernel's accept backlog of each
//    listening port (/proc/net/tcp and tcp6: for a socket in LISTEN its
//    rx_queue is the number of connections waiting for accept()) and calls
//    `on_stalled` once a port has had connections waiting for `stall_after`
//    without a pause. A live listener empties its backlog within
//    milliseconds. The /proc files are opened once and re-read from the
//    start, so the check itself needs no descriptor under pressure.
#ifndef DCPMERGE_SERVER_LISTENER_WATCH_H_
#define DCPMERGE_SERVER_LISTENER_WATCH_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dcpmerge {

struct OpenFileLimit {
  uint64_t soft_before = 0;
  uint64_t soft = 0;
  uint64_t hard = 0;
};
// Raises the soft open-file limit to the hard limit; returns both.
absl::StatusOr<OpenFileLimit> RaiseOpenFileLimit();

// Connections waiting for accept() on each listening TCP port in `text`
// (the format of /proc/net/tcp and /proc/net/tcp6); ports not listening
// are absent.
std::map<int, uint64_t> ParseAcceptBacklogs(const std::string& text);

class ListenerWatch {
 public:
  struct Options {
    absl::Duration period = absl::Milliseconds(250);
    absl::Duration stall_after = absl::Seconds(5);
  };
  // `ports`: name -> port ("rank", "admin", "health"). `on_stalled(name,
  // waited)` runs once, on the watch's thread.
  ListenerWatch(std::map<std::string, int> ports, Options options,
                std::function<void(const std::string& name, absl::Duration waited)> on_stalled);
  ~ListenerWatch();  // stops the thread

 private:
  void Loop();
  std::string ReadAll();

  const std::map<std::string, int> ports_;
  const Options options_;
  const std::function<void(const std::string&, absl::Duration)> on_stalled_;
  std::vector<int> fds_;  // /proc/net/tcp, /proc/net/tcp6 (those that opened)
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_LISTENER_WATCH_H_
