// Prometheus metrics for the merge server, served over HTTP (text
// exposition format) on their own listener (--metrics_address).
//
// Two sources, both cheap for the hot path:
//  - pulled at scrape time: counters and gauges come from the state the
//    server already keeps (Admin.GetStats / Admin.GetConfig snapshots), so
//    nothing is recorded twice;
//  - pushed: step latency histograms per phase (LatencyHistograms::Observe,
//    a few relaxed atomic adds, no lock), because the server's own latency
//    windows keep percentiles of recent samples, not cumulative buckets.
//
// Metric names are listed in docs/operations.md ("Metrics").
#ifndef DCPMERGE_SERVER_METRICS_METRICS_EXPORTER_H_
#define DCPMERGE_SERVER_METRICS_METRICS_EXPORTER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "dcpmerge/v1/admin.pb.h"
#include "prometheus/metric_family.h"

namespace prometheus {
class Exposer;
}

namespace dcpmerge::metrics {

// Label values of the step phases (LatencyHistograms::Observe's index; the
// server maps its own phases onto them).
inline constexpr std::array<const char*, 4> kPhaseNames = {"receive", "merge", "send", "total"};

// States of the NCCL communicator exported as dcpmerge_nccl_communicator_state
// (one series per state, 1 for the current one). "unused": the group runs
// the gRPC data plane.
inline constexpr std::array<const char*, 5> kNcclStates = {"unused", "uninitialized", "initializing", "ready",
                                                           "aborted"};

// Cumulative latency histograms, one per phase, fixed buckets. Observe is
// thread-safe and lock-free. The server feeds it from its Stats.
class LatencyHistograms {
 public:
  // Upper bounds in microseconds (+Inf is implicit): 10 us .. 10 s.
  static constexpr std::array<double, 19> kBoundsUs = {
      10,     25,     50,     100,     250,     500,     1000,    2500,    5000,   10000,
      25000,  50000,  100000, 250000,  500000,  1000000, 2500000, 5000000, 10000000};

  // phase: index into kPhaseNames. Negative or NaN durations count as 0.
  void Observe(int phase, double us);

  // One prometheus histogram family (dcpmerge_step_phase_duration_seconds).
  prometheus::MetricFamily Collect() const;

 private:
  struct PerPhase {
    std::array<std::atomic<uint64_t>, kBoundsUs.size() + 1> buckets{};  // last: +Inf
    std::atomic<uint64_t> sum_ns{0};
  };
  std::array<PerPhase, kPhaseNames.size()> phases_;
};

// Limits and security (docs/server.md, "Limits and security"): each limit
// in force, what is used of it now, its refusals since start; the stall,
// authentication failures, the heap kept, whether state was restored.
struct LimitsState {
  bool present = false;  // no families when false
  std::vector<std::pair<std::string, double>> limits;
  std::vector<std::pair<std::string, double>> usage;
  std::vector<std::pair<std::string, uint64_t>> refusals;
  bool stalled = false;
  uint64_t admin_auth_failures = 0;
  uint64_t join_auth_failures = 0;
  uint64_t heap_free_bytes = 0;
  uint64_t heap_trims = 0;
  bool state_restored = false;
};

// What the exporter reads at every scrape.
struct ServerState {
  v1::GetStatsResponse stats;
  v1::GetConfigResponse config;
  std::string nccl_state = "unused";  // one of kNcclStates
  LimitsState limits;
};

// Every family of one scrape (without the HTTP part): used by the exporter
// and by tests. `histograms` may be null.
std::vector<prometheus::MetricFamily> BuildFamilies(const ServerState& state,
                                                    const LatencyHistograms* histograms);

class MetricsExporter {
 public:
  // Serves GET /metrics on `address` ("host:port"; port 0 picks one). The
  // source is called once per scrape from the HTTP thread; it and
  // `histograms` must outlive the exporter. Errors: INVALID_ARGUMENT for a
  // malformed address, UNAVAILABLE when it cannot listen.
  static absl::StatusOr<std::unique_ptr<MetricsExporter>> Start(const std::string& address,
                                                                std::function<ServerState()> source,
                                                                const LatencyHistograms* histograms);
  ~MetricsExporter();  // stops the HTTP listener; no scrape runs after it

  int port() const { return port_; }

 private:
  class Collector;
  MetricsExporter() = default;

  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace dcpmerge::metrics

#endif  // DCPMERGE_SERVER_METRICS_METRICS_EXPORTER_H_
