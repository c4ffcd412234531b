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
// Besides the server's families: dcpmerge_build_info, the process_* series
// read from /proc/self (Linux), and the exporter's own scrape counters.
//
// Metric names are listed in docs/operations.md ("Metrics").
#ifndef DCPMERGE_SERVER_METRICS_METRICS_EXPORTER_H_
#define DCPMERGE_SERVER_METRICS_METRICS_EXPORTER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "dcpmerge/v1/admin.pb.h"
#include "prometheus/metric_family.h"

class CivetServer;

namespace dcpmerge::metrics {

// Label values of the step phases (LatencyHistograms::Observe's index; the
// server maps its own phases onto them).
inline constexpr std::array<const char*, 4> kPhaseNames = {"receive", "merge", "send", "total"};

// States of the NCCL communicator exported as dcpmerge_nccl_communicator_state
// (one series per state, 1 for the current one). "unused": the group runs
// the gRPC data plane.
inline constexpr std::array<const char*, 5> kNcclStates = {"unused", "uninitialized", "initializing", "ready",
                                                           "aborted"};

// Rank membership events since the server started, by reason (label
// values; the server lists every reason it has, zeros included, so each
// series exists from the first scrape).
struct RankEvents {
  uint64_t joins = 0;
  std::map<std::string, uint64_t> leaves;  // the group ended the membership in order
  std::map<std::string, uint64_t> drops;   // the member was lost
};

// The CUDA device the server merges on (CUDA backend only).
struct DeviceState {
  int device = 0;            // CUDA device index, as the server sees it
  std::string name;          // e.g. "NVIDIA H200"
  std::string uuid;          // "GPU-..." (as nvidia-smi and DCGM print it), or ""
  uint64_t used_bytes = 0;   // total - free (cudaMemGetInfo): the whole device
  uint64_t total_bytes = 0;
};

// Cumulative latency histograms, one per phase, fixed buckets. Observe is
// thread-safe and lock-free. The server feeds it from its Stats.
class LatencyHistograms {
 public:
  // Upper bounds in microseconds (+Inf is implicit): 1 us .. 10 s, 1-2.5-5
  // per decade (a GPU merge takes 1-6 us).
  static constexpr std::array<double, 22> kBoundsUs = {
      1,     2.5,    5,      10,     25,     50,      100,     250,     500,     1000,    2500,
      5000,  10000,  25000,  50000,  100000, 250000,  500000,  1000000, 2500000, 5000000, 10000000};

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
  RankEvents rank_events;
  std::optional<DeviceState> device;  // absent: CPU backend (no device series)
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
  class Handler;
  MetricsExporter() = default;

  // The HTTP server (civetweb) and the handler of GET /metrics: the
  // server's families, the process families and the exporter's own.
  // (prometheus::Exposer's handler is not used: its scrape-latency summary
  // printed "Nan" quantiles while it had no sample in its window.)
  std::unique_ptr<Handler> handler_;
  std::unique_ptr<CivetServer> server_;
  int port_ = 0;
};

}  // namespace dcpmerge::metrics

#endif  // DCPMERGE_SERVER_METRICS_METRICS_EXPORTER_H_
