// The open-file limit and the watch on listeners that stopped accepting
// (server/listener_watch.h), on real sockets.
#include "server/listener_watch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

TEST(ParseAcceptBacklogsTest, ListeningSocketsOnly) {
  const std::string text =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
      "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n"
      "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000009 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n"
      "   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n"
      "   3: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000002 "
      "00:00000000 00000000 0 0 4 1 0 100 0 0 10 0\n"
      "garbage line\n";
  const std::map<int, uint64_t> b = ParseAcceptBacklogs(text);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b.at(8080), 5u);  // v4 and v6 listeners of one port add up
  EXPECT_EQ(b.at(80), 0u);
}

TEST(RaiseOpenFileLimitTest, SoftReachesHard) {
  auto lim = RaiseOpenFileLimit();
  ASSERT_TRUE(lim.ok()) << lim.status();
  EXPECT_EQ(lim->soft, lim->hard);
  EXPECT_LE(lim->soft_before, lim->soft);
}

// A bound, listening socket on loopback; connections to it complete in the
// kernel whether or not anyone accepts them.
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(fd, 16);
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Listener() { close(fd); }
};

int ConnectTo(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

ListenerWatch::Options Fast() {
  ListenerWatch::Options o;
  o.period = absl::Milliseconds(20);
  o.stall_after = absl::Milliseconds(300);
  return o;
}

TEST(ListenerWatchTest, ReportsAListenerThatDoesNotAccept) {
  Listener dead;
  absl::Notification stalled;
  std::string which;
  absl::Duration waited;
  ListenerWatch watch({{"dead", dead.port}}, Fast(), [&](const std::string& name, absl::Duration w) {
    which = name;
    waited = w;
    stalled.Notify();
  });
  const int c = ConnectTo(dead.port);
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(stalled.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(which, "dead");
  EXPECT_GE(waited, absl::Milliseconds(300));
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(250));
  close(c);
}

TEST(ListenerWatchTest, QuietForAListenerThatAccepts) {
  Listener live;
  std::atomic<int> reports{0};
  std::atomic<bool> stop{false};
  std::thread acceptor([&] {
    for (int i = 0; i < 50 && !stop.load(); ++i) {
      const int fd = accept(live.fd, nullptr, nullptr);
      if (fd >= 0) close(fd);
    }
  });
  {
    ListenerWatch watch({{"live", live.port}}, Fast(), [&](const std::string&, absl::Duration) { ++reports; });
    for (int i = 0; i < 20; ++i) {
      close(ConnectTo(live.port));
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  stop = true;
  close(ConnectTo(live.port));  // wakes the acceptor
  acceptor.join();
  EXPECT_EQ(reports.load(), 0);
}

}  // namespace
}  // namespace dcpmerge
