#include "server/metrics/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace dcpmerge::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily One(const std::string& name, const std::string& help, MetricType type, double v) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  ClientMetric m;
  if (type == MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  f.metric.push_back(std::move(m));
  return f;
}

bool ReadWhole(const char* path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

absl::StatusOr<ProcessStats> ParseProcStat(absl::string_view stat, double ticks_per_second, uint64_t page_size,
                                           double boot_time_seconds) {
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // the fields start after the last ')'.
  const size_t close = stat.rfind(')');
  if (close == absl::string_view::npos || ticks_per_second <= 0) {
    return absl::InvalidArgumentError("proc stat: no ')' after the command name");
  }
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::StripAsciiWhitespace(stat.substr(close + 1)), ' ', absl::SkipEmpty());
  // f[0] is field 3 (state); field k (proc(5), 1-based) is f[k - 3].
  auto field = [&f](int k, uint64_t* v) { return k - 3 < static_cast<int>(f.size()) && absl::SimpleAtoi(f[k - 3], v); };
  uint64_t utime, stime, threads, start_ticks, vsize, rss;
  if (!field(14, &utime) || !field(15, &stime) || !field(20, &threads) || !field(22, &start_ticks) ||
      !field(23, &vsize) || !field(24, &rss)) {
    return absl::InvalidArgumentError("proc stat: fields 14-24 missing or not numbers");
  }
  ProcessStats s;
  s.cpu_seconds = static_cast<double>(utime + stime) / ticks_per_second;
  s.threads = threads;
  s.start_time_seconds = boot_time_seconds + static_cast<double>(start_ticks) / ticks_per_second;
  s.virtual_bytes = vsize;
  s.resident_bytes = rss * page_size;
  return s;
}

absl::StatusOr<ProcessStats> ReadProcessStats() {
#if defined(__linux__)
  std::string stat, sys;
  if (!ReadWhole("/proc/self/stat", &stat) || !ReadWhole("/proc/stat", &sys)) {
    return absl::UnavailableError("cannot read /proc/self/stat or /proc/stat");
  }
  double boot = 0;
  for (absl::string_view line : absl::StrSplit(sys, '\n')) {
    if (absl::ConsumePrefix(&line, "btime ")) {
      if (!absl::SimpleAtod(line, &boot)) return absl::UnavailableError("/proc/stat: btime is not a number");
      break;
    }
  }
  const long ticks = sysconf(_SC_CLK_TCK);
  const long page = sysconf(_SC_PAGESIZE);
  absl::StatusOr<ProcessStats> s =
      ParseProcStat(stat, ticks > 0 ? static_cast<double>(ticks) : 100.0, page > 0 ? page : 4096, boot);
  if (!s.ok()) return s;
  if (DIR* d = opendir("/proc/self/fd"); d != nullptr) {
    int64_t n = 0;
    const int own = dirfd(d);
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      int fd;
      if (absl::SimpleAtoi(e->d_name, &fd) && fd == own) continue;  // the listing's own descriptor
      ++n;
    }
    closedir(d);
    s->open_fds = n;
  }
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    s->max_fds = static_cast<int64_t>(lim.rlim_cur);
  }
  return s;
#else
  return absl::UnavailableError("process metrics need Linux /proc");
#endif
}

std::vector<MetricFamily> ProcessFamilies(const ProcessStats& s) {
  std::vector<MetricFamily> out;
  out.push_back(One("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                    MetricType::Counter, s.cpu_seconds));
  out.push_back(One("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
                    static_cast<double>(s.resident_bytes)));
  out.push_back(One("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
                    static_cast<double>(s.virtual_bytes)));
  if (s.open_fds >= 0) {
    out.push_back(One("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
                      static_cast<double>(s.open_fds)));
  }
  if (s.max_fds >= 0) {
    out.push_back(One("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
                      static_cast<double>(s.max_fds)));
  }
  out.push_back(One("process_threads", "Number of OS threads in the process.", MetricType::Gauge,
                    static_cast<double>(s.threads)));
  out.push_back(One("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                    MetricType::Gauge, s.start_time_seconds));
  return out;
}

}  // namespace dcpmerge::metrics
