#include "server/stats.h"

#include <algorithm>

#include "absl/status/status.h"
#include "base/percentile.h"

namespace dcpmerge {

void LatencyWindow::Add(double us) {
  samples_[next_] = us;
  next_ = (next_ + 1) % samples_.size();
  count_ = std::min(count_ + 1, samples_.size());
}

LatencySummary LatencyWindow::Summary() const {
  LatencySummary s;
  s.count = count_;
  if (count_ == 0) return s;
  std::vector<double> v(samples_.begin(), samples_.begin() + count_);
  std::sort(v.begin(), v.end());
  s.p50_us = PercentileOfSorted(v, 0.50);
  s.p90_us = PercentileOfSorted(v, 0.90);
  s.p99_us = PercentileOfSorted(v, 0.99);
  s.max_us = v.back();
  return s;
}

void Stats::RecordLatency(Phase phase, absl::Duration d) {
  const double us = absl::ToDoubleMicroseconds(d);
  {
    absl::MutexLock lock(&mu_);
    phases_[static_cast<int>(phase)].Add(us);
  }
  if (LatencyObserver* o = observer_.load(std::memory_order_acquire)) o->ObserveLatency(phase, us);
}

void Stats::RecordDeviceTimes(absl::Duration copy_in, absl::Duration kernel, absl::Duration copy_out) {
  absl::MutexLock lock(&mu_);
  device_copy_in_.Add(absl::ToDoubleMicroseconds(copy_in));
  device_kernel_.Add(absl::ToDoubleMicroseconds(kernel));
  device_copy_out_.Add(absl::ToDoubleMicroseconds(copy_out));
}

void Stats::AddBytesIn(uint64_t n) {
  absl::MutexLock lock(&mu_);
  bytes_in_ += n;
}

void Stats::AddBytesOut(uint64_t n) {
  absl::MutexLock lock(&mu_);
  bytes_out_ += n;
}

void Stats::AddSaturated(uint64_t n) {
  absl::MutexLock lock(&mu_);
  saturated_ += n;
}

void Stats::RecordStep(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (status.ok()) {
    ++steps_ok_;
  } else {
    ++steps_failed_;
  }
}

void Stats::RecordErrorResponse(absl::StatusCode code) {
  absl::MutexLock lock(&mu_);
  ++errors_[absl::StatusCodeToString(code)];
}

StatsSnapshot Stats::Snapshot() const {
  absl::MutexLock lock(&mu_);
  StatsSnapshot r;
  r.steps_ok = steps_ok_;
  r.steps_failed = steps_failed_;
  r.bytes_in = bytes_in_;
  r.bytes_out = bytes_out_;
  r.fp8_saturated = saturated_;
  for (int i = 0; i < kNumPhases; ++i) r.phases[i] = phases_[i].Summary();
  r.device_copy_in = device_copy_in_.Summary();
  r.device_kernel = device_kernel_.Summary();
  r.device_copy_out = device_copy_out_.Summary();
  r.errors_by_code = errors_;
  return r;
}

}  // namespace dcpmerge
