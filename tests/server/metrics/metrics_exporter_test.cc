// MetricsExporter: bucket semantics, families built from a server state,
// and the real HTTP endpoint (GET over a loopback socket).
#include "server/metrics/metrics_exporter.h"

#include <sys/socket.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "base/version.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/process_metrics.h"
#include "tests/server/metrics/http_get.h"

namespace dcpmerge::metrics {
namespace {

using ::dcpmerge::testing::Exposition;
using ::dcpmerge::testing::HttpGet;
using ::dcpmerge::testing::ParseExposition;
using ::testing::HasSubstr;

const prometheus::MetricFamily* Find(const std::vector<prometheus::MetricFamily>& fs, const std::string& name) {
  for (const auto& f : fs) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// Index of the bucket whose upper bound is `le_seconds`.
size_t BucketIndex(double le_seconds) {
  for (size_t i = 0; i < LatencyHistograms::kBoundsUs.size(); ++i) {
    if (std::abs(LatencyHistograms::kBoundsUs[i] / 1e6 - le_seconds) < 1e-12) return i;
  }
  ADD_FAILURE() << "no bucket le=" << le_seconds;
  return 0;
}

TEST(LatencyHistogramsTest, BucketsAreCumulativeWithLeBounds) {
  LatencyHistograms h;
  h.Observe(1, 10.0);   // merge: exactly on the 10 us bound -> le=1e-05
  h.Observe(1, 10.5);   // -> le=2.5e-05
  h.Observe(1, 2e7);    // 20 s -> only +Inf
  h.Observe(1, -3.0);   // clamped to 0 -> le=1e-06
  h.Observe(7, 1.0);    // unknown phase: ignored
  h.Observe(-1, 1.0);
  const prometheus::MetricFamily f = h.Collect();
  EXPECT_EQ(f.name, "dcpmerge_step_phase_duration_seconds");
  EXPECT_EQ(f.type, prometheus::MetricType::Histogram);
  ASSERT_EQ(f.metric.size(), 4u);
  const auto& merge = f.metric[1];
  ASSERT_EQ(merge.label.size(), 1u);
  EXPECT_EQ(merge.label[0].value, "merge");
  const auto& b = merge.histogram.bucket;
  ASSERT_EQ(b.size(), LatencyHistograms::kBoundsUs.size() + 1);
  EXPECT_DOUBLE_EQ(b[0].upper_bound, 1e-6);
  EXPECT_EQ(b[0].cumulative_count, 1u);                   // the clamped one
  EXPECT_EQ(b[BucketIndex(5e-6)].cumulative_count, 1u);
  EXPECT_EQ(b[BucketIndex(10e-6)].cumulative_count, 2u);
  EXPECT_EQ(b[BucketIndex(25e-6)].cumulative_count, 3u);
  EXPECT_EQ(b[b.size() - 2].cumulative_count, 3u);
  EXPECT_TRUE(std::isinf(b.back().upper_bound));
  EXPECT_EQ(b.back().cumulative_count, 4u);
  EXPECT_EQ(merge.histogram.sample_count, 4u);
  EXPECT_NEAR(merge.histogram.sample_sum, (10.0 + 10.5 + 2e7) / 1e6, 1e-9);
  for (int p : {0, 2, 3}) EXPECT_EQ(f.metric[p].histogram.sample_count, 0u) << p;
}

// The bounds run from 1 us to 10 s, increasing, in 1-2.5-5 steps.
TEST(LatencyHistogramsTest, BoundsSpanOneMicrosecondToTenSeconds) {
  const auto& b = LatencyHistograms::kBoundsUs;
  EXPECT_EQ(b.front(), 1.0);
  EXPECT_EQ(b.back(), 10e6);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_GT(b[i], b[i - 1]) << i;
  // At least three bounds below 10 us, where a GPU merge lands (1-6 us).
  EXPECT_GE(std::count_if(b.begin(), b.end(), [](double us) { return us < 10; }), 3);
}

// GPU merges take 1-6 us: each lands in its own sub-10 us bucket, not in a
// catch-all first bucket.
TEST(LatencyHistogramsTest, SubTenMicrosecondObservationsLandInTheirBuckets) {
  LatencyHistograms h;
  h.Observe(1, 0.8);  // le=1e-06
  h.Observe(1, 1.7);  // le=2.5e-06
  h.Observe(1, 3.0);  // le=5e-06
  h.Observe(1, 4.9);  // le=5e-06
  h.Observe(1, 6.0);  // le=1e-05
  const prometheus::MetricFamily f = h.Collect();
  const auto& b = f.metric[1].histogram.bucket;
  EXPECT_EQ(b[BucketIndex(1e-6)].cumulative_count, 1u);
  EXPECT_EQ(b[BucketIndex(2.5e-6)].cumulative_count, 2u);
  EXPECT_EQ(b[BucketIndex(5e-6)].cumulative_count, 4u);
  EXPECT_EQ(b[BucketIndex(10e-6)].cumulative_count, 5u);
  EXPECT_EQ(b.back().cumulative_count, 5u);
}

ServerState SampleState() {
  ServerState s;
  s.stats.set_steps_ok(12);
  s.stats.set_steps_failed(3);
  s.stats.set_bytes_in(4096);
  s.stats.set_bytes_out(1024);
  s.stats.set_fp8_saturated(5);
  s.stats.set_steps_in_flight(2);
  (*s.stats.mutable_errors_by_code())["UNAVAILABLE"] = 6;
  (*s.stats.mutable_errors_by_code())["INVALID_ARGUMENT"] = 2;
  s.config.set_configured(true);
  s.config.mutable_config()->set_world_size(4);
  s.config.set_config_version(7);
  s.config.set_group_ready(true);
  s.config.set_backend("cpu");
  s.config.set_data_plane(v1::DATA_PLANE_GRPC);
  s.config.set_default_scale(0.5f);
  (*s.config.mutable_layer_scales())[3] = 0.25f;
  (*s.config.mutable_layer_scales())[11] = 0.125f;
  for (int r = 0; r < 3; ++r) {
    v1::Member* m = s.config.add_members();
    m->set_rank(r);
    m->set_last_heartbeat_age_ms(1500);
  }
  return s;
}

TEST(BuildFamiliesTest, ValuesComeFromTheState) {
  const auto fs = BuildFamilies(SampleState(), nullptr);
  EXPECT_EQ(Find(fs, "dcpmerge_step_phase_duration_seconds"), nullptr);
  const auto* steps = Find(fs, "dcpmerge_steps_total");
  ASSERT_NE(steps, nullptr);
  EXPECT_EQ(steps->type, prometheus::MetricType::Counter);
  ASSERT_EQ(steps->metric.size(), 2u);
  EXPECT_EQ(steps->metric[0].counter.value, 12);
  EXPECT_EQ(steps->metric[1].counter.value, 3);
  const auto* ranks = Find(fs, "dcpmerge_ranks_connected");
  ASSERT_NE(ranks, nullptr);
  EXPECT_EQ(ranks->metric[0].gauge.value, 3);
  const auto* scale = Find(fs, "dcpmerge_fp8_scale");
  ASSERT_NE(scale, nullptr);
  ASSERT_EQ(scale->metric.size(), 2u);
  EXPECT_EQ(scale->metric[0].label[0].value, "3");
  EXPECT_FLOAT_EQ(scale->metric[0].gauge.value, 0.25f);
  EXPECT_EQ(scale->metric[1].label[0].value, "11");
  const auto* nccl = Find(fs, "dcpmerge_nccl_communicator_state");
  ASSERT_NE(nccl, nullptr);
  double sum = 0;
  for (const auto& m : nccl->metric) {
    sum += m.gauge.value;
    if (m.label[0].value == "unused") {
      EXPECT_EQ(m.gauge.value, 1);
    }
  }
  EXPECT_EQ(sum, 1);
}

TEST(BuildFamiliesTest, BuildInfoNamesVersionCommitBackendAndPlane) {
  ServerState st = SampleState();
  st.config.set_backend("cuda");
  st.config.set_data_plane(v1::DATA_PLANE_NCCL);
  const auto fs = BuildFamilies(st, nullptr);
  const auto* info = Find(fs, "dcpmerge_build_info");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->type, prometheus::MetricType::Gauge);
  ASSERT_EQ(info->metric.size(), 1u);
  EXPECT_EQ(info->metric[0].gauge.value, 1);
  std::map<std::string, std::string> labels;
  for (const auto& l : info->metric[0].label) labels[l.name] = l.value;
  EXPECT_EQ(labels, (std::map<std::string, std::string>{{"version", kVersion},
                                                        {"commit", std::string(BuildCommit())},
                                                        {"backend", "cuda"},
                                                        {"data_plane", "nccl"}}));
}

TEST(BuildFamiliesTest, RankEventCountersByReason) {
  ServerState st = SampleState();
  st.rank_events.joins = 9;
  st.rank_events.leaves = {{"requested", 4}, {"reconfigured", 2}};
  st.rank_events.drops = {{"heartbeat_timeout", 1}, {"stream_broken", 0}};
  const auto fs = BuildFamilies(st, nullptr);
  const auto* joins = Find(fs, "dcpmerge_rank_joins_total");
  ASSERT_NE(joins, nullptr);
  EXPECT_EQ(joins->type, prometheus::MetricType::Counter);
  EXPECT_EQ(joins->metric[0].counter.value, 9);
  const auto* leaves = Find(fs, "dcpmerge_rank_leaves_total");
  ASSERT_NE(leaves, nullptr);
  EXPECT_EQ(leaves->type, prometheus::MetricType::Counter);
  ASSERT_EQ(leaves->metric.size(), 2u);
  EXPECT_EQ(leaves->metric[0].label[0].name, "reason");
  EXPECT_EQ(leaves->metric[0].label[0].value, "reconfigured");  // sorted
  EXPECT_EQ(leaves->metric[0].counter.value, 2);
  const auto* drops = Find(fs, "dcpmerge_rank_drops_total");
  ASSERT_NE(drops, nullptr);
  ASSERT_EQ(drops->metric.size(), 2u);
  EXPECT_EQ(drops->metric[1].label[0].value, "stream_broken");
  EXPECT_EQ(drops->metric[1].counter.value, 0);  // zero series are kept
}

TEST(BuildFamiliesTest, DeviceSeriesOnlyWithADevice) {
  ServerState st = SampleState();
  auto fs = BuildFamilies(st, nullptr);
  EXPECT_EQ(Find(fs, "dcpmerge_device_info"), nullptr);
  EXPECT_EQ(Find(fs, "dcpmerge_device_memory_used_bytes"), nullptr);
  EXPECT_EQ(Find(fs, "dcpmerge_device_memory_total_bytes"), nullptr);
  DeviceState d;
  d.device = 2;
  d.name = "NVIDIA H200";
  d.uuid = "GPU-01234567-89ab-cdef-0123-456789abcdef";
  d.used_bytes = 3ull << 30;
  d.total_bytes = 141ull << 30;
  st.device = d;
  fs = BuildFamilies(st, nullptr);
  const auto* info = Find(fs, "dcpmerge_device_info");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->metric[0].label.size(), 3u);
  EXPECT_EQ(info->metric[0].label[0].value, "2");
  const auto* used = Find(fs, "dcpmerge_device_memory_used_bytes");
  ASSERT_NE(used, nullptr);
  EXPECT_EQ(used->type, prometheus::MetricType::Gauge);
  EXPECT_EQ(used->metric[0].label[0].name, "device");
  EXPECT_EQ(used->metric[0].label[0].value, "2");
  EXPECT_EQ(used->metric[0].gauge.value, static_cast<double>(3ull << 30));
  const auto* total = Find(fs, "dcpmerge_device_memory_total_bytes");
  ASSERT_NE(total, nullptr);
  EXPECT_EQ(total->metric[0].gauge.value, static_cast<double>(141ull << 30));
}

TEST(ProcessMetricsTest, ParsesProcStatWithAnOddCommandName) {
  // proc(5) fields 1-24 (then more); the command name holds ") (" and spaces.
  const std::string stat =
      "4242 (we ird) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
      "250 150 0 0 20 0 17 0 123400 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n";
  auto s = ParseProcStat(stat, 100.0, 4096, 1.7e9);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->cpu_seconds, 4.0);  // (250 + 150) / 100
  EXPECT_EQ(s->threads, 17u);
  EXPECT_DOUBLE_EQ(s->start_time_seconds, 1.7e9 + 1234.0);
  EXPECT_EQ(s->virtual_bytes, 987654321u);
  EXPECT_EQ(s->resident_bytes, 2048u * 4096u);
  EXPECT_EQ(ParseProcStat("4242 (x S 1", 100.0, 4096, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseProcStat("4242 (x) S 1 2 3", 100.0, 4096, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProcessMetricsTest, ReadsThisProcess) {
  auto s = ReadProcessStats();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GT(s->resident_bytes, 0u);
  EXPECT_GE(s->virtual_bytes, s->resident_bytes);
  EXPECT_GE(s->threads, 1u);
  EXPECT_GE(s->cpu_seconds, 0.0);
  EXPECT_GE(s->open_fds, 3);  // stdin, stdout, stderr at least
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  EXPECT_LE(s->start_time_seconds, now + 1);
  EXPECT_GT(s->start_time_seconds, now - 3600) << "the test started within the hour";
  const auto fs = ProcessFamilies(*s);
  const auto* cpu = Find(fs, "process_cpu_seconds_total");
  ASSERT_NE(cpu, nullptr);
  EXPECT_EQ(cpu->type, prometheus::MetricType::Counter);
  for (const char* g : {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
                        "process_threads", "process_start_time_seconds"}) {
    const auto* f = Find(fs, g);
    ASSERT_NE(f, nullptr) << g;
    EXPECT_EQ(f->type, prometheus::MetricType::Gauge) << g;
  }
}

// A source whose state the test changes between scrapes.
struct MutableSource {
  absl::Mutex mu;
  ServerState state;
  ServerState Get() {
    absl::MutexLock l(&mu);
    return state;
  }
};

TEST(MetricsExporterTest, ServesTextExpositionThatFollowsTheState) {
  MutableSource src;
  src.state = SampleState();
  LatencyHistograms hist;
  auto exporter = MetricsExporter::Start("127.0.0.1:0", [&src] { return src.Get(); }, &hist);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  const int port = (*exporter)->port();
  ASSERT_GT(port, 0);

  auto r = HttpGet(port, "/metrics");
  ASSERT_EQ(r.status, 200) << r.body;
  Exposition e = ParseExposition(r.body);
  EXPECT_EQ(e.types["dcpmerge_steps_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_payload_bytes_total"], "counter");
  EXPECT_EQ(e.types["dcpmerge_step_phase_duration_seconds"], "histogram");
  EXPECT_EQ(e.types["dcpmerge_ranks_connected"], "gauge");
  EXPECT_EQ(e.types["dcpmerge_server_info"], "gauge");
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"ok\"}"), 12);
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"failed\"}"), 3);
  EXPECT_EQ(e.Get("dcpmerge_payload_bytes_total{direction=\"in\"}"), 4096);
  EXPECT_EQ(e.Get("dcpmerge_payload_bytes_total{direction=\"out\"}"), 1024);
  EXPECT_EQ(e.Get("dcpmerge_step_errors_total{code=\"UNAVAILABLE\"}"), 6);
  EXPECT_EQ(e.Get("dcpmerge_step_errors_total{code=\"INVALID_ARGUMENT\"}"), 2);
  EXPECT_EQ(e.Get("dcpmerge_fp8_saturated_total"), 5);
  EXPECT_EQ(e.Get("dcpmerge_ranks_connected"), 3);
  EXPECT_EQ(e.Get("dcpmerge_world_size"), 4);
  EXPECT_EQ(e.Get("dcpmerge_group_ready"), 1);
  EXPECT_EQ(e.Get("dcpmerge_config_version"), 7);
  EXPECT_EQ(e.Get("dcpmerge_fp8_scale{layer=\"3\"}"), 0.25);
  EXPECT_EQ(e.Get("dcpmerge_fp8_default_scale"), 0.5);
  EXPECT_EQ(e.Get("dcpmerge_rank_heartbeat_age_seconds{rank=\"2\"}"), 1.5);
  EXPECT_EQ(e.Get("dcpmerge_server_info{backend=\"cpu\",data_plane=\"grpc\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_nccl_communicator_state{state=\"unused\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_nccl_communicator_state{state=\"aborted\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_count{phase=\"total\"}"), 0);

  // The next scrape reflects new state and new observations.
  {
    absl::MutexLock l(&src.mu);
    src.state.stats.set_steps_ok(40);
    src.state.config.set_group_ready(false);
    src.state.config.clear_members();
    src.state.nccl_state = "aborted";
  }
  hist.Observe(3, 120.0);
  hist.Observe(3, 900.0);
  r = HttpGet(port, "/metrics");
  ASSERT_EQ(r.status, 200);
  e = ParseExposition(r.body);
  EXPECT_EQ(e.Get("dcpmerge_steps_total{result=\"ok\"}"), 40);
  EXPECT_EQ(e.Get("dcpmerge_group_ready"), 0);
  EXPECT_EQ(e.Get("dcpmerge_ranks_connected"), 0);
  EXPECT_FALSE(e.Has("dcpmerge_rank_heartbeat_age_seconds{rank=\"2\"}"));
  EXPECT_EQ(e.Get("dcpmerge_nccl_communicator_state{state=\"aborted\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_nccl_communicator_state{state=\"unused\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_count{phase=\"total\"}"), 2);
  EXPECT_NEAR(e.Get("dcpmerge_step_phase_duration_seconds_sum{phase=\"total\"}"), 1020e-6, 1e-9);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_bucket{phase=\"total\",le=\"0.0001\"}"), 0);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_bucket{phase=\"total\",le=\"0.00025\"}"), 1);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_bucket{phase=\"total\",le=\"0.001\"}"), 2);
  EXPECT_EQ(e.Get("dcpmerge_step_phase_duration_seconds_bucket{phase=\"total\",le=\"+Inf\"}"), 2);

  EXPECT_EQ(HttpGet(port, "/nothing-here").status, 404);

  // The process series and the exporter's own, with their types.
  EXPECT_EQ(e.types["process_cpu_seconds_total"], "counter");
  EXPECT_EQ(e.types["process_resident_memory_bytes"], "gauge");
  EXPECT_EQ(e.types["process_open_fds"], "gauge");
  EXPECT_EQ(e.types["process_threads"], "gauge");
  EXPECT_EQ(e.types["process_start_time_seconds"], "gauge");
  EXPECT_GT(e.Get("process_resident_memory_bytes"), 0);
  EXPECT_EQ(e.types["exposer_scrapes_total"], "counter");
  EXPECT_EQ(e.types["exposer_request_latencies"], "summary");
  EXPECT_EQ(e.Get("exposer_scrapes_total"), 1) << "the second scrape counts the first";
  EXPECT_EQ(e.types["dcpmerge_build_info"], "gauge");

  exporter->reset();  // listener closed
  EXPECT_EQ(HttpGet(port, "/metrics").status, -1);
}

// prometheus-cpp's own handler served exposer_request_latencies quantiles
// as "Nan" while its window held no scrape (always on the first one). No
// scrape may carry a NaN, in any spelling, and no summary quantile.
TEST(MetricsExporterTest, NoNanInAnyScrape) {
  LatencyHistograms hist;
  ServerState st = SampleState();
  st.device = DeviceState{};
  auto exporter = MetricsExporter::Start("127.0.0.1:0", [&st] { return st; }, &hist);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  for (int i = 0; i < 3; ++i) {
    const auto r = HttpGet((*exporter)->port(), "/metrics");
    ASSERT_EQ(r.status, 200);
    EXPECT_THAT(r.body, HasSubstr("exposer_request_latencies_count"));
    for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
      if (line.empty() || line[0] == '#') continue;
      EXPECT_FALSE(absl::StrContains(absl::AsciiStrToLower(line), "nan")) << "scrape " << i << ": " << line;
      EXPECT_FALSE(absl::StrContains(line, "quantile=")) << line;
      // Every sample line ends in a number.
      double v;
      const std::string value(line.substr(line.rfind(' ') + 1));
      EXPECT_TRUE(value == "+Inf" || absl::SimpleAtod(value, &v)) << line;
    }
  }
}

// Prometheus asks for gzip; the answer is gzip and inflates to the plain one.
TEST(MetricsExporterTest, GzipWhenAccepted) {
  auto exporter = MetricsExporter::Start("127.0.0.1:0", [] { return SampleState(); }, nullptr);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  const auto r = HttpGet((*exporter)->port(), "/metrics", "Accept-Encoding: gzip\r\n");
  ASSERT_EQ(r.status, 200);
  EXPECT_THAT(r.headers, HasSubstr("Content-Encoding: gzip"));
  EXPECT_THAT(r.headers, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  z_stream zs{};
  ASSERT_EQ(inflateInit2(&zs, 16 + MAX_WBITS), Z_OK);
  std::string text(1 << 20, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(r.body.data()));
  zs.avail_in = static_cast<uInt>(r.body.size());
  zs.next_out = reinterpret_cast<Bytef*>(text.data());
  zs.avail_out = static_cast<uInt>(text.size());
  EXPECT_EQ(inflate(&zs, Z_FINISH), Z_STREAM_END);
  text.resize(zs.total_out);
  inflateEnd(&zs);
  EXPECT_EQ(ParseExposition(text).Get("dcpmerge_steps_total{result=\"ok\"}"), 12);
  const auto plain = HttpGet((*exporter)->port(), "/metrics");
  EXPECT_THAT(plain.headers, ::testing::Not(HasSubstr("Content-Encoding")));
}

TEST(MetricsExporterTest, RejectsBadAddressesAndBusyPorts) {
  auto src = [] { return ServerState(); };
  auto bad = MetricsExporter::Start("no-port", src, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("metrics_address"));
  EXPECT_EQ(MetricsExporter::Start("127.0.0.1:70000", src, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);

  auto first = MetricsExporter::Start("127.0.0.1:0", src, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = MetricsExporter::Start(absl::StrCat("127.0.0.1:", (*first)->port()), src, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

}  // namespace
}  // namespace dcpmerge::metrics
