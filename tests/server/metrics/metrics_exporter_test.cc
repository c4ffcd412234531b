// MetricsExporter: bucket semantics, families built from a server state,
// and the real HTTP endpoint (GET over a loopback socket).
#include "server/metrics/metrics_exporter.h"

#include <sys/socket.h>

#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
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

TEST(LatencyHistogramsTest, BucketsAreCumulativeWithLeBounds) {
  LatencyHistograms h;
  h.Observe(1, 10.0);   // merge: exactly on the 10 us bound -> le=1e-05
  h.Observe(1, 10.5);   // -> le=2.5e-05
  h.Observe(1, 2e7);    // 20 s -> only +Inf
  h.Observe(1, -3.0);   // clamped to 0 -> le=1e-05
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
  EXPECT_DOUBLE_EQ(b[0].upper_bound, 10e-6);
  EXPECT_EQ(b[0].cumulative_count, 2u);
  EXPECT_EQ(b[1].cumulative_count, 3u);
  EXPECT_EQ(b[b.size() - 2].cumulative_count, 3u);
  EXPECT_TRUE(std::isinf(b.back().upper_bound));
  EXPECT_EQ(b.back().cumulative_count, 4u);
  EXPECT_EQ(merge.histogram.sample_count, 4u);
  EXPECT_NEAR(merge.histogram.sample_sum, (10.0 + 10.5 + 2e7) / 1e6, 1e-9);
  for (int p : {0, 2, 3}) EXPECT_EQ(f.metric[p].histogram.sample_count, 0u) << p;
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

  exporter->reset();  // listener closed
  EXPECT_EQ(HttpGet(port, "/metrics").status, -1);
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
