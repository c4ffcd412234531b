// The standard process_* series of Prometheus client libraries, read from
// /proc/self at scrape time (Linux only; elsewhere there are none):
//   process_cpu_seconds_total       counter  user + system CPU time, seconds
//   process_resident_memory_bytes   gauge    resident set size
//   process_virtual_memory_bytes    gauge    virtual memory size
//   process_open_fds                gauge    open file descriptors
//   process_max_fds                 gauge    RLIMIT_NOFILE (soft)
//   process_threads                 gauge    OS threads
//   process_start_time_seconds      gauge    start time, Unix epoch seconds
#ifndef DCPMERGE_SERVER_METRICS_PROCESS_METRICS_H_
#define DCPMERGE_SERVER_METRICS_PROCESS_METRICS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prometheus/metric_family.h"

namespace dcpmerge::metrics {

struct ProcessStats {
  double cpu_seconds = 0;
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
  uint64_t threads = 0;
  double start_time_seconds = 0;  // Unix time
  int64_t open_fds = -1;          // -1: unknown
  int64_t max_fds = -1;           // -1: unknown or unlimited
};

// The fields of a /proc/<pid>/stat line (proc(5)) that ProcessStats holds,
// with the clock tick rate, the page size and the boot time (/proc/stat
// "btime") to convert them. INVALID_ARGUMENT for a malformed line.
absl::StatusOr<ProcessStats> ParseProcStat(absl::string_view stat, double ticks_per_second, uint64_t page_size,
                                           double boot_time_seconds);

// This process, now. UNAVAILABLE where /proc cannot be read (not Linux).
absl::StatusOr<ProcessStats> ReadProcessStats();

// The families of `stats` (names above).
std::vector<prometheus::MetricFamily> ProcessFamilies(const ProcessStats& stats);

}  // namespace dcpmerge::metrics

#endif  // DCPMERGE_SERVER_METRICS_PROCESS_METRICS_H_
