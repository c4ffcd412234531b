// Server statistics: step counts, bytes, latency percentiles per phase and
// errors by status code. Thread-safe; recording is a short critical section.
// Plain C++ (no API types): the server turns a snapshot into
// Admin.GetStats' answer (merge_server.cc), and the metrics exporter
// observes latencies through LatencyObserver.
#ifndef DCPMERGE_SERVER_STATS_H_
#define DCPMERGE_SERVER_STATS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dcpmerge {

enum class Phase { kReceive = 0, kMerge = 1, kSend = 2, kTotal = 3 };
inline constexpr int kNumPhases = 4;

struct LatencySummary {
  uint64_t count = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

struct StatsSnapshot {
  uint64_t steps_ok = 0;
  uint64_t steps_failed = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t fp8_saturated = 0;
  std::array<LatencySummary, kNumPhases> phases;  // indexed by Phase
  // The CUDA backend's device times per merged step (empty on CPU): the
  // copies and the kernel its merge phase is made of.
  LatencySummary device_copy_in;   // H2D of the step's last part
  LatencySummary device_kernel;
  LatencySummary device_copy_out;  // D2H of the outputs
  std::map<std::string, uint64_t> errors_by_code;  // "INVALID_ARGUMENT" -> n
};

// Percentiles over the most recent `window` samples.
class LatencyWindow {
 public:
  explicit LatencyWindow(size_t window = 8192) : samples_(window) {}
  void Add(double us);
  LatencySummary Summary() const;

 private:
  std::vector<double> samples_;
  size_t next_ = 0;
  size_t count_ = 0;
};

// Receives every latency sample as it is recorded (the Prometheus histograms
// of server/metrics). Called outside the Stats lock: must be thread-safe and
// cheap.
class LatencyObserver {
 public:
  virtual ~LatencyObserver() = default;
  virtual void ObserveLatency(Phase phase, double us) = 0;
};

class Stats {
 public:
  // Optional; set before steps run. The observer must outlive its use.
  void SetLatencyObserver(LatencyObserver* observer) {
    observer_.store(observer, std::memory_order_release);
  }
  void RecordLatency(Phase phase, absl::Duration d);
  void RecordDeviceTimes(absl::Duration copy_in, absl::Duration kernel, absl::Duration copy_out);
  void AddBytesIn(uint64_t n);
  void AddBytesOut(uint64_t n);
  void AddSaturated(uint64_t n);
  // One step finished (its merged result or its failure), once per step.
  void RecordStep(const absl::Status& status);
  // One error response sent to a rank, by code.
  void RecordErrorResponse(absl::StatusCode code);
  StatsSnapshot Snapshot() const;

 private:
  mutable absl::Mutex mu_;
  uint64_t steps_ok_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t steps_failed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_in_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_out_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t saturated_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::array<LatencyWindow, kNumPhases> phases_ ABSL_GUARDED_BY(mu_);
  LatencyWindow device_copy_in_ ABSL_GUARDED_BY(mu_);
  LatencyWindow device_kernel_ ABSL_GUARDED_BY(mu_);
  LatencyWindow device_copy_out_ ABSL_GUARDED_BY(mu_);
  std::atomic<LatencyObserver*> observer_{nullptr};
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_STATS_H_
