#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dcpmerge {
namespace {
std::atomic<bool> g_quiet{false};
}  // namespace

void SetLogQuiet(bool quiet) { g_quiet.store(quiet); }

void LogLine(LogLevel level, absl::string_view message) {
  if (level == LogLevel::kInfo && g_quiet.load()) return;
  const char tag = level == LogLevel::kInfo      ? 'I'
                   : level == LogLevel::kWarning ? 'W'
                                                 : 'E';
  std::string line = absl::StrCat(
      std::string(1, tag),
      absl::FormatTime("%m%d %H:%M:%E6S", absl::Now(), absl::LocalTimeZone()),
      " dcpmerge] ", message, "\n");
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(2, line.data() + off, line.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
}

}  // namespace dcpmerge
