#include "server/metrics/metrics_exporter.h"

#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <utility>

#include "CivetServer.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/version.h"
#include "civetweb.h"
#include "common/names.h"
#include "prometheus/text_serializer.h"
#include "server/metrics/process_metrics.h"

namespace dcpmerge::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const std::string& name, const std::string& help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

ClientMetric Value(MetricType type, double v, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  return m;
}

MetricFamily Single(const std::string& name, const std::string& help, MetricType type, double v) {
  MetricFamily f = Family(name, help, type);
  f.metric.push_back(Value(type, v));
  return f;
}

std::string DataPlaneName(v1::DataPlane p) {
  const absl::string_view name = NameOf(kDataPlaneNames, p);
  return name.empty() ? "unspecified" : std::string(name);
}

// Limits and security (docs/server.md, "Limits and security"; listed in
// docs/operations.md, "Metrics").
void AppendLimitFamilies(const LimitsState& l, std::vector<MetricFamily>* out) {
  if (!l.present) return;
  MetricFamily limit = Family("dcpmerge_limit", "Each limit in force, by its flag name (bytes, counts, layers)",
                              MetricType::Gauge);
  for (const auto& [name, v] : l.limits) limit.metric.push_back(Value(MetricType::Gauge, v, {{"limit", name}}));
  out->push_back(std::move(limit));
  MetricFamily usage = Family("dcpmerge_limit_usage",
                              "What is used now: pending_steps, pending_bytes, scale_layers, streams, "
                              "response_queue_deepest",
                              MetricType::Gauge);
  for (const auto& [name, v] : l.usage) usage.metric.push_back(Value(MetricType::Gauge, v, {{"usage", name}}));
  out->push_back(std::move(usage));
  MetricFamily refusals = Family("dcpmerge_limit_refusals_total",
                                 "Parts, streams or ranks refused or dropped by a limit, by its flag name",
                                 MetricType::Counter);
  for (const auto& [name, n] : l.refusals) {
    refusals.metric.push_back(Value(MetricType::Counter, static_cast<double>(n), {{"limit", name}}));
  }
  out->push_back(std::move(refusals));
  out->push_back(Single("dcpmerge_group_stalled",
                        "1 while a limit refused a part or dropped a rank within the step timeout (readiness is "
                        "NOT_SERVING meanwhile)",
                        MetricType::Gauge, l.stalled ? 1.0 : 0.0));
  MetricFamily auth = Family("dcpmerge_auth_failures_total",
                             "Calls refused for a missing or wrong credential (each answer slowed), by listener",
                             MetricType::Counter);
  auth.metric.push_back(Value(MetricType::Counter, static_cast<double>(l.admin_auth_failures), {{"listener", "admin"}}));
  auth.metric.push_back(Value(MetricType::Counter, static_cast<double>(l.join_auth_failures), {{"listener", "rank"}}));
  out->push_back(std::move(auth));
  out->push_back(Single("dcpmerge_heap_free_bytes", "Freed heap memory the process keeps for reuse",
                        MetricType::Gauge, static_cast<double>(l.heap_free_bytes)));
  out->push_back(Single("dcpmerge_heap_trims_total", "Times the kept heap exceeded --heap_retain_bytes and was returned",
                        MetricType::Counter, static_cast<double>(l.heap_trims)));
  out->push_back(Single("dcpmerge_state_restored", "1 when the configuration and scales came from --state_file",
                        MetricType::Gauge, l.state_restored ? 1.0 : 0.0));
}

}  // namespace

// ------------------------------------------------------------ histograms ---
void LatencyHistograms::Observe(int phase, double us) {
  if (phase < 0 || phase >= static_cast<int>(phases_.size())) return;
  if (!(us > 0.0)) us = 0.0;  // negative and NaN
  PerPhase& p = phases_[phase];
  size_t b = 0;
  while (b < kBoundsUs.size() && us > kBoundsUs[b]) ++b;  // le semantics
  p.buckets[b].fetch_add(1, std::memory_order_relaxed);
  const double ns = us * 1000.0;
  p.sum_ns.fetch_add(ns >= 1.8e19 ? std::numeric_limits<uint64_t>::max() / 2 : static_cast<uint64_t>(ns + 0.5),
                     std::memory_order_relaxed);
}

MetricFamily LatencyHistograms::Collect() const {
  MetricFamily f = Family("dcpmerge_step_phase_duration_seconds",
                          "Step latency per phase: receive = first part to last part, "
                          "merge = last part in to results ready, "
                          "send = one response handed to the transport, total = first part to results ready",
                          MetricType::Histogram);
  for (size_t i = 0; i < phases_.size(); ++i) {
    const PerPhase& p = phases_[i];
    ClientMetric m;
    m.label = {{"phase", kPhaseNames[i]}};
    // Counts are read bucket by bucket while steps may be recorded; the
    // total is the sum of what was read, so +Inf always equals _count.
    uint64_t cumulative = 0;
    for (size_t b = 0; b < p.buckets.size(); ++b) {
      cumulative += p.buckets[b].load(std::memory_order_relaxed);
      ClientMetric::Bucket bucket;
      bucket.cumulative_count = cumulative;
      bucket.upper_bound =
          b < kBoundsUs.size() ? kBoundsUs[b] / 1e6 : std::numeric_limits<double>::infinity();
      m.histogram.bucket.push_back(bucket);
    }
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = static_cast<double>(p.sum_ns.load(std::memory_order_relaxed)) / 1e9;
    f.metric.push_back(std::move(m));
  }
  return f;
}

// ------------------------------- build, membership, device; scrape aids ---
namespace {

// dcpmerge_build_info, the rank event counters and the device series.
void AppendBuildMembershipAndDevice(const ServerState& state, std::vector<MetricFamily>* out) {
  const v1::GetConfigResponse& c = state.config;
  MetricFamily build = Family("dcpmerge_build_info",
                              "Always 1; labels: release version, build commit, compute backend and data plane",
                              MetricType::Gauge);
  build.metric.push_back(Value(MetricType::Gauge, 1.0,
                               {{"version", kVersion},
                                {"commit", std::string(BuildCommit())},
                                {"backend", c.backend().empty() ? "unknown" : c.backend()},
                                {"data_plane", DataPlaneName(c.data_plane())}}));
  out->push_back(std::move(build));

  const RankEvents& ev = state.rank_events;
  out->push_back(Single("dcpmerge_rank_joins_total", "Ranks that joined the group (each successful Join)",
                        MetricType::Counter, static_cast<double>(ev.joins)));
  MetricFamily leaves = Family("dcpmerge_rank_leaves_total",
                               "Memberships the group ended in order, by reason: requested = the rank called "
                               "Leave, reconfigured = a Configure changed the shape",
                               MetricType::Counter);
  for (const auto& [reason, n] : ev.leaves) {
    leaves.metric.push_back(Value(MetricType::Counter, static_cast<double>(n), {{"reason", reason}}));
  }
  out->push_back(std::move(leaves));
  MetricFamily drops = Family("dcpmerge_rank_drops_total",
                              "Members lost, by reason: heartbeat_timeout, stream_broken (gRPC data stream), "
                              "replaced (another process took the rank over), communicator_aborted (NCCL)",
                              MetricType::Counter);
  for (const auto& [reason, n] : ev.drops) {
    drops.metric.push_back(Value(MetricType::Counter, static_cast<double>(n), {{"reason", reason}}));
  }
  out->push_back(std::move(drops));

  if (state.device.has_value()) {
    const DeviceState& d = *state.device;
    const std::string dev = absl::StrCat(d.device);
    MetricFamily info = Family("dcpmerge_device_info",
                               "Always 1; the CUDA device the server merges on: index, name and UUID",
                               MetricType::Gauge);
    info.metric.push_back(
        Value(MetricType::Gauge, 1.0, {{"device", dev}, {"name", d.name}, {"uuid", d.uuid}}));
    out->push_back(std::move(info));
    MetricFamily used = Family("dcpmerge_device_memory_used_bytes",
                               "Memory in use on the server's CUDA device (total - free, cudaMemGetInfo): the "
                               "whole device, so other processes on it count too",
                               MetricType::Gauge);
    used.metric.push_back(Value(MetricType::Gauge, static_cast<double>(d.used_bytes), {{"device", dev}}));
    out->push_back(std::move(used));
    MetricFamily total = Family("dcpmerge_device_memory_total_bytes", "Memory of the server's CUDA device",
                                MetricType::Gauge);
    total.metric.push_back(Value(MetricType::Gauge, static_cast<double>(d.total_bytes), {{"device", dev}}));
    out->push_back(std::move(total));
  }
}

// A sample that would print as "Nan" (prometheus-cpp's spelling, not the
// format's "NaN"). Nothing here produces one; a scrape drops such a sample
// rather than serve it.
bool HasNan(const ClientMetric& m, MetricType type) {
  switch (type) {
    case MetricType::Counter:
      return std::isnan(m.counter.value);
    case MetricType::Gauge:
      return std::isnan(m.gauge.value);
    case MetricType::Untyped:
      return std::isnan(m.untyped.value);
    case MetricType::Histogram:
      return std::isnan(m.histogram.sample_sum);
    case MetricType::Summary:
      if (std::isnan(m.summary.sample_sum)) return true;
      for (const auto& q : m.summary.quantile) {
        if (std::isnan(q.value)) return true;
      }
      return false;
    default:
      return false;
  }
}

void DropNan(std::vector<MetricFamily>* families) {
  for (MetricFamily& f : *families) {
    std::vector<ClientMetric> kept;
    kept.reserve(f.metric.size());
    for (ClientMetric& m : f.metric) {
      if (!HasNan(m, f.type)) kept.push_back(std::move(m));
    }
    f.metric = std::move(kept);
  }
}

// gzip (RFC 1952) of `in`; empty on failure.
std::string Gzip(const std::string& in) {
  z_stream zs{};
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return {};
  std::string out(deflateBound(&zs, in.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return rc == Z_STREAM_END ? out : std::string();
}

}  // namespace

// -------------------------------------------------------------- families ---
std::vector<MetricFamily> BuildFamilies(const ServerState& state, const LatencyHistograms* histograms) {
  const v1::GetStatsResponse& s = state.stats;
  const v1::GetConfigResponse& c = state.config;
  std::vector<MetricFamily> out;

  MetricFamily steps = Family("dcpmerge_steps_total", "Merge steps finished, by result", MetricType::Counter);
  steps.metric.push_back(Value(MetricType::Counter, static_cast<double>(s.steps_ok()), {{"result", "ok"}}));
  steps.metric.push_back(Value(MetricType::Counter, static_cast<double>(s.steps_failed()), {{"result", "failed"}}));
  out.push_back(std::move(steps));

  out.push_back(Single("dcpmerge_steps_in_flight", "Steps collecting parts or being merged", MetricType::Gauge,
                       static_cast<double>(s.steps_in_flight())));

  MetricFamily bytes = Family("dcpmerge_payload_bytes_total",
                              "Payload bytes: in = partial outputs + LSEs from the ranks, out = responses",
                              MetricType::Counter);
  bytes.metric.push_back(Value(MetricType::Counter, static_cast<double>(s.bytes_in()), {{"direction", "in"}}));
  bytes.metric.push_back(Value(MetricType::Counter, static_cast<double>(s.bytes_out()), {{"direction", "out"}}));
  out.push_back(std::move(bytes));

  if (histograms != nullptr) out.push_back(histograms->Collect());

  MetricFamily errors = Family("dcpmerge_step_errors_total",
                               "Failed step responses sent to ranks, by gRPC status code", MetricType::Counter);
  const std::map<std::string, uint64_t> by_code(s.errors_by_code().begin(), s.errors_by_code().end());
  for (const auto& [code, n] : by_code) {
    errors.metric.push_back(Value(MetricType::Counter, static_cast<double>(n), {{"code", code}}));
  }
  out.push_back(std::move(errors));

  out.push_back(Single("dcpmerge_fp8_saturated_total", "FP8 codes that saturated to +-448 in returned outputs",
                       MetricType::Counter, static_cast<double>(s.fp8_saturated())));

  out.push_back(Single("dcpmerge_ranks_connected", "DCP ranks currently joined", MetricType::Gauge,
                       static_cast<double>(c.members_size())));
  out.push_back(Single("dcpmerge_world_size", "Configured DCP ranks N (0: unconfigured)", MetricType::Gauge,
                       c.configured() ? static_cast<double>(c.config().world_size()) : 0.0));
  out.push_back(Single("dcpmerge_group_ready",
                       "1 when configured, every rank joined, the data plane is up and not draining",
                       MetricType::Gauge, c.group_ready() ? 1.0 : 0.0));
  out.push_back(Single("dcpmerge_configured", "1 once a configuration is set", MetricType::Gauge,
                       c.configured() ? 1.0 : 0.0));
  out.push_back(Single("dcpmerge_draining", "1 while drained (new steps fail UNAVAILABLE)", MetricType::Gauge,
                       c.draining() ? 1.0 : 0.0));
  out.push_back(Single("dcpmerge_config_version", "Current config version (bumped by Configure and SetScales)",
                       MetricType::Gauge, static_cast<double>(c.config_version())));

  MetricFamily scales = Family("dcpmerge_fp8_scale", "Static FP8 scale per layer (value = decode(code) * scale)",
                               MetricType::Gauge);
  const std::map<int32_t, float> layer_scales(c.layer_scales().begin(), c.layer_scales().end());
  for (const auto& [layer, scale] : layer_scales) {
    scales.metric.push_back(Value(MetricType::Gauge, scale, {{"layer", absl::StrCat(layer)}}));
  }
  out.push_back(std::move(scales));
  out.push_back(Single("dcpmerge_fp8_default_scale", "Static FP8 scale of layers without their own",
                       MetricType::Gauge, c.default_scale()));

  MetricFamily age = Family("dcpmerge_rank_heartbeat_age_seconds", "Time since each joined rank's last heartbeat",
                            MetricType::Gauge);
  for (const v1::Member& m : c.members()) {
    age.metric.push_back(Value(MetricType::Gauge, m.last_heartbeat_age_ms() / 1e3, {{"rank", absl::StrCat(m.rank())}}));
  }
  out.push_back(std::move(age));

  MetricFamily info = Family("dcpmerge_server_info", "Always 1; labels: compute backend and data plane in use",
                             MetricType::Gauge);
  info.metric.push_back(Value(MetricType::Gauge, 1.0,
                              {{"backend", c.backend().empty() ? "unknown" : c.backend()},
                               {"data_plane", DataPlaneName(c.data_plane())}}));
  out.push_back(std::move(info));
  AppendBuildMembershipAndDevice(state, &out);

  MetricFamily nccl = Family("dcpmerge_nccl_communicator_state",
                             "NCCL communicator state: 1 for the current state, 0 for the others",
                             MetricType::Gauge);
  for (const char* st : kNcclStates) {
    nccl.metric.push_back(Value(MetricType::Gauge, state.nccl_state == st ? 1.0 : 0.0, {{"state", st}}));
  }
  out.push_back(std::move(nccl));
  AppendLimitFamilies(state.limits, &out);
  return out;
}

// -------------------------------------------------------------- exporter ---
// GET /metrics: the server's families, the process families, then the
// exporter's own series under prometheus-cpp's names (so dashboards that
// used them keep working). exposer_request_latencies is a summary without
// quantiles (_count and _sum, microseconds): prometheus-cpp's quantiles over
// a 60 s window printed "Nan" whenever the window held no scrape, e.g. on
// the first scrape.
class MetricsExporter::Handler : public CivetHandler {
 public:
  Handler(std::function<ServerState()> source, const LatencyHistograms* histograms)
      : source_(std::move(source)), histograms_(histograms) {}

  bool handleGet(CivetServer*, mg_connection* conn) override {
    const auto start = std::chrono::steady_clock::now();
    std::vector<MetricFamily> families = BuildFamilies(source_(), histograms_);
    if (absl::StatusOr<ProcessStats> p = ReadProcessStats(); p.ok()) {
      for (MetricFamily& f : ProcessFamilies(*p)) families.push_back(std::move(f));
    }
    {
      absl::MutexLock lock(&mu_);
      families.push_back(Single("exposer_scrapes_total", "Number of times metrics were scraped",
                                MetricType::Counter, static_cast<double>(scrapes_)));
      families.push_back(Single("exposer_transferred_bytes_total", "Transferred bytes to metrics services",
                                MetricType::Counter, static_cast<double>(bytes_)));
      MetricFamily lat = Family("exposer_request_latencies",
                                "Latencies of serving scrape requests, in microseconds (count and sum only)",
                                MetricType::Summary);
      ClientMetric m;
      m.summary.sample_count = scrapes_;
      m.summary.sample_sum = latency_sum_us_;
      lat.metric.push_back(std::move(m));
      families.push_back(std::move(lat));
    }
    DropNan(&families);
    const std::string body = prometheus::TextSerializer().Serialize(families);

    const char* accept = mg_get_header(conn, "Accept-Encoding");
    const std::string gz = accept != nullptr && std::strstr(accept, "gzip") != nullptr ? Gzip(body) : "";
    const std::string& sent = gz.empty() ? body : gz;
    mg_printf(conn,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
              "%s"
              "Content-Length: %lu\r\n\r\n",
              gz.empty() ? "" : "Content-Encoding: gzip\r\n", static_cast<unsigned long>(sent.size()));
    mg_write(conn, sent.data(), sent.size());

    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    absl::MutexLock lock(&mu_);
    ++scrapes_;
    bytes_ += sent.size();
    latency_sum_us_ += us;
    return true;
  }

 private:
  std::function<ServerState()> source_;
  const LatencyHistograms* histograms_;
  absl::Mutex mu_;
  uint64_t scrapes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  double latency_sum_us_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::StatusOr<std::unique_ptr<MetricsExporter>> MetricsExporter::Start(const std::string& address,
                                                                        std::function<ServerState()> source,
                                                                        const LatencyHistograms* histograms) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_address: '", address, "' is not host:port (e.g. 0.0.0.0:9400)"));
  }
  std::unique_ptr<MetricsExporter> e(new MetricsExporter());
  e->handler_ = std::make_unique<Handler>(std::move(source), histograms);
  try {
    // One HTTP thread: scrapes are rare and each one takes a snapshot.
    e->server_ = std::make_unique<CivetServer>(
        std::vector<std::string>{"listening_ports", address, "num_threads", "1"});
  } catch (const std::exception& ex) {
    return absl::UnavailableError(absl::StrCat("metrics_address: cannot listen on ", address, ": ", ex.what()));
  }
  e->server_->addHandler("/metrics", e->handler_.get());
  const std::vector<int> ports = e->server_->getListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics_address: no listening port for ", address));
  }
  e->port_ = ports[0];
  return e;
}

MetricsExporter::~MetricsExporter() {
  // The HTTP server's threads stop here, before the handler goes away.
  server_.reset();
}

}  // namespace dcpmerge::metrics
