#include "server/step_collector.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/log.h"

namespace dcpmerge {

StepCollector::StepCollector(ConfigStore* config, Group* group,
                             ComputeBackend* backend, Stats* stats,
                             Options options)
    : config_(config),
      group_(group),
      backend_(backend),
      stats_(stats),
      options_(options) {}

StepCollector::~StepCollector() { Stop(); }

void StepCollector::Start() {
  if (started_) return;
  started_ = true;
  merge_thread_ = std::thread([this] { MergeLoop(); });
  sweep_thread_ = std::thread([this] { SweepLoop(); });
}

void StepCollector::Stop() {
  const absl::Status reason = absl::UnavailableError("server shutting down");
  std::vector<Notification> notes;
  {
    absl::MutexLock lock(&mu_);
    refuse_ = reason;
    while (!pending_.empty()) FailLocked(pending_.begin()->first, reason, &notes);
    stop_ = true;
  }
  Deliver(notes);
  if (merge_thread_.joinable()) merge_thread_.join();
  if (sweep_thread_.joinable()) sweep_thread_.join();
  {
    // Merges running on the threads that completed their steps.
    absl::MutexLock lock(&mu_);
    auto merged = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return merging_ == 0; };
    mu_.Await(absl::Condition(&merged));
  }
  // Steps that were ready but never merged (stop raced the merge thread).
  std::deque<Pending> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(ready_);
    for (const Pending& p : left) pending_bytes_ -= p.bytes;
  }
  for (Pending& p : left) {
    for (Waiter& w : p.waiters) {
      notes.emplace_back(std::move(w.done), ErrorResult(reason, p.first, p.config.get()));
    }
  }
  Deliver(notes);
}

std::shared_ptr<StepResult> StepCollector::ErrorResult(
    const absl::Status& status, const v1::MergeHeader& header,
    const ConfigSnapshot* config) {
  auto r = std::make_shared<StepResult>();
  r->status = status;
  r->step = header.step();
  r->layer = header.layer();
  r->num_tokens = header.num_tokens();
  r->config_version = config != nullptr ? config->version : 0;
  return r;
}

void StepCollector::Deliver(std::vector<Notification>& notes) {
  for (auto& [done, result] : notes) {
    if (!result->status.ok()) stats_->RecordErrorResponse(result->status.code());
    if (done) done(std::move(result));
  }
  notes.clear();
}

void StepCollector::RememberLocked(uint64_t step, const absl::Status& status) {
  if (finished_.emplace(step, status).second) finished_order_.push_back(step);
  while (finished_order_.size() > options_.finished_memory) {
    finished_.erase(finished_order_.front());
    finished_order_.pop_front();
  }
}

const char* StepCollector::LimitName(Limit l) {
  switch (l) {
    case kMaxPendingSteps: return "max_pending_steps";
    case kMaxPendingStepsPerRank: return "max_pending_steps_per_rank";
    case kMaxPendingBytes: return "max_pending_bytes";
    default: return "unknown";
  }
}

absl::Duration StepCollector::StallWindow() const {
  return options_.stall_window > absl::ZeroDuration() ? options_.stall_window : options_.step_timeout;
}

size_t StepCollector::PerRankQuota(int32_t num_parts) const {
  if (options_.max_pending_steps_per_rank > 0) return options_.max_pending_steps_per_rank;
  return std::max<size_t>(1, options_.max_pending_steps / static_cast<size_t>(std::max(1, num_parts)));
}

void StepCollector::ReleaseWaitingLocked(const Pending& p) {
  for (size_t r = 0; r < p.have.size() && r < waiting_by_rank_.size(); ++r) {
    if (p.have[r]) --waiting_by_rank_[r];
  }
}

bool StepCollector::RefusedLocked(Limit limit) {
  ++refusals_[limit];
  last_stall_ = absl::Now();
  if (stalled_) return false;
  stalled_ = true;
  return true;
}

bool StepCollector::OldestOnlyFromLocked(int32_t rank, uint64_t* step) const {
  bool found = false;
  absl::Time oldest = absl::InfiniteFuture();
  for (const auto& [id, p] : pending_) {
    if (p.received == 1 && rank < static_cast<int32_t>(p.have.size()) && p.have[rank] &&
        p.first_arrival < oldest) {
      oldest = p.first_arrival;
      *step = id;
      found = true;
    }
  }
  return found;
}

void StepCollector::FailLocked(uint64_t step, const absl::Status& status,
                               std::vector<Notification>* out) {
  auto it = pending_.find(step);
  if (it == pending_.end()) return;
  Pending& p = it->second;
  ReleaseWaitingLocked(p);
  pending_bytes_ -= p.bytes;
  for (Waiter& w : p.waiters) {
    out->emplace_back(std::move(w.done), ErrorResult(status, p.first, p.config.get()));
  }
  stats_->RecordStep(status);
  RememberLocked(step, status);
  pending_.erase(it);
}

absl::Status StepCollector::CheckPart(const StepPart& part,
                                      const Pending& p) const {
  const GroupSpec& spec = p.config->spec;
  const v1::MergeHeader& h = part.header;
  const int32_t rank = h.rank();
  if (h.num_tokens() < 0 || h.num_tokens() > spec.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.num_tokens: rank ", rank, " sent ", h.num_tokens(),
        ", must be in 0..max_tokens (", spec.max_tokens, ")"));
  }
  if (h.layer() < 0 || h.layer() >= p.config->max_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.layer: rank ", rank, " sent ", h.layer(), ", must be in 0..", p.config->max_layers - 1,
        " (the server's --max_layers is ", p.config->max_layers, ")"));
  }
  const int64_t want_out = spec.PartialOutBytes(h.num_tokens());
  if (static_cast<int64_t>(part.partial_out.size()) != want_out) {
    return absl::InvalidArgumentError(absl::StrCat(
        "partial_out: rank ", rank, " sent ", part.partial_out.size(),
        " bytes, expected ", want_out, " (num_tokens ", h.num_tokens(),
        " x num_heads ", spec.num_heads, " x head_size ", spec.head_size,
        " x ", DTypeName(spec.merge.input_dtype), ")"));
  }
  const int64_t want_lse = spec.LseBytes(h.num_tokens());
  if (static_cast<int64_t>(part.lse.size()) != want_lse) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lse: rank ", rank, " sent ", part.lse.size(), " bytes, expected ",
        want_lse, " (num_tokens ", h.num_tokens(), " x num_heads ",
        spec.num_heads, " x 4)"));
  }
  if (p.received > 0) {
    if (p.have[rank]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header.rank: rank ", rank, " sent step ", p.step, " twice"));
    }
    if (h.num_tokens() != p.first.num_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header.num_tokens: rank ", rank, " sent ", h.num_tokens(), ", rank ",
          p.first.rank(), " sent ", p.first.num_tokens(), " for step ", p.step));
    }
    if (h.layer() != p.first.layer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header.layer: rank ", rank, " sent ", h.layer(), ", rank ",
          p.first.rank(), " sent ", p.first.layer(), " for step ", p.step));
    }
  }
  return absl::OkStatus();
}

void StepCollector::Submit(StepPart part, StepDone done) {
  const v1::MergeHeader header = part.header;
  // Set when the part is accepted: its step, to stage the part into.
  std::shared_ptr<StagingSlot> slot;
  uint64_t serial = 0;
  std::shared_ptr<const ConfigSnapshot> current = config_->Current();
  auto reject = [&](const absl::Status& st) {
    std::vector<Notification> notes;
    notes.emplace_back(std::move(done), ErrorResult(st, header, current.get()));
    Deliver(notes);
  };
  absl::Status refused;
  std::vector<Notification> refused_notes;
  {
    absl::MutexLock lock(&mu_);
    refused = refuse_;
    // Draining or shutting down: this step can never complete, so the ranks
    // that already sent it are answered now, not at the deadline.
    if (!refused.ok()) FailLocked(header.step(), refused, &refused_notes);
  }
  if (!refused.ok()) {
    Deliver(refused_notes);
    return reject(refused);
  }
  if (!current->configured) {
    return reject(absl::FailedPreconditionError("server not configured"));
  }
  const int32_t rank = header.rank();
  if (rank < 0 || rank >= current->spec.num_parts) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "header.rank: ", rank, " is not in 0..", current->spec.num_parts - 1)));
  }
  if (absl::Status st = group_->CheckSession(rank, header.session_id()); !st.ok()) {
    return reject(st);
  }
  if (!group_->Complete()) {
    return reject(absl::UnavailableError(absl::StrCat(
        "group not ready: rank(s) ", absl::StrJoin(group_->MissingRanks(), ","),
        " not joined")));
  }

  const int64_t part_bytes = static_cast<int64_t>(part.partial_out.size() + part.lse.size());
  std::vector<Notification> notes;
  bool stall_began = false;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t step = header.step();
    // Refuses this part: the step fails for every rank of it (remembered, so
    // the others' parts of it get the same status at once).
    auto refuse_part = [&](Limit limit, const absl::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      stall_began |= RefusedLocked(limit);
      auto it = pending_.find(step);
      if (it != pending_.end()) {
        it->second.waiters.push_back(Waiter{rank, std::move(done)});
        FailLocked(step, st, &notes);
      } else {
        RememberLocked(step, st);
        notes.emplace_back(std::move(done), ErrorResult(st, header, current.get()));
      }
    };
    if (auto f = finished_.find(step); f != finished_.end()) {
      absl::Status st = f->second.ok()
                            ? absl::InvalidArgumentError(absl::StrCat(
                                  "header.step: step ", step, " already completed"))
                            : f->second;
      notes.emplace_back(std::move(done), ErrorResult(st, header, current.get()));
    } else {
      auto it = pending_.find(step);
      const size_t quota = PerRankQuota(current->spec.num_parts);
      bool refused = false;
      if (it == pending_.end() && static_cast<size_t>(waiting_by_rank_[rank]) >= quota) {
        // This rank is too far ahead of the others: its own oldest step that
        // nobody else has joined is given up, else this part is refused.
        const std::string why = absl::StrCat(
            "rank ", rank, " already has ", waiting_by_rank_[rank],
            " steps waiting for the other ranks (--max_pending_steps_per_rank=", quota, ")");
        uint64_t victim = 0;
        if (OldestOnlyFromLocked(rank, &victim)) {
          stall_began |= RefusedLocked(kMaxPendingStepsPerRank);
          FailLocked(victim,
                     absl::ResourceExhaustedError(absl::StrCat(
                         "header.step: step ", victim, " given up: ", why, "; the oldest step only it sent goes")),
                     &notes);
        } else {
          refuse_part(kMaxPendingStepsPerRank, absl::ResourceExhaustedError(absl::StrCat("header.step: ", why)));
          refused = true;
        }
      }
      if (!refused && it == pending_.end() && pending_.size() >= options_.max_pending_steps) {
        refuse_part(kMaxPendingSteps,
                    absl::ResourceExhaustedError(absl::StrCat(
                        "too many steps in flight (", pending_.size(), ", --max_pending_steps=",
                        options_.max_pending_steps, "); ranks are out of step or the server is overloaded")));
        refused = true;
      }
      if (!refused && options_.max_pending_bytes > 0 && pending_bytes_ + part_bytes > options_.max_pending_bytes) {
        refuse_part(kMaxPendingBytes,
                    absl::ResourceExhaustedError(absl::StrCat(
                        "max_pending_bytes: rank ", rank, "'s part of step ", step, " (", part_bytes,
                        " bytes) would make ", pending_bytes_ + part_bytes, " bytes held, over --max_pending_bytes=",
                        options_.max_pending_bytes)));
        refused = true;
      }
      if (!refused) {
        if (it == pending_.end()) {
          Pending p;
          p.step = step;
          p.serial = ++serials_;
          p.config = current;
          p.first = header;
          p.staging = std::make_shared<StagingSlot>();
          p.staging->num_parts = current->spec.num_parts;
          p.parts.resize(current->spec.num_parts);
          p.have.assign(current->spec.num_parts, false);
          p.first_arrival = absl::Now();
          p.deadline = p.first_arrival + options_.step_timeout;
          it = pending_.emplace(step, std::move(p)).first;
        }
        Pending& p = it->second;
        absl::Status st = rank < static_cast<int32_t>(p.have.size())
                              ? CheckPart(part, p)
                              : absl::InvalidArgumentError(absl::StrCat(
                                    "header.rank: ", rank, " is outside the step's group"));
        p.waiters.push_back(Waiter{rank, std::move(done)});
        if (!st.ok()) {
          FailLocked(step, st, &notes);
        } else {
          p.have[rank] = true;
          ++waiting_by_rank_[rank];
          p.bytes += part_bytes;
          pending_bytes_ += part_bytes;
          p.last_arrival = absl::Now();
          if (p.received++ == 0) {
            // Sizes from the first part that passed CheckPart (the others agree).
            p.staging->out_bytes = p.config->spec.PartialOutBytes(header.num_tokens());
            p.staging->lse_bytes = p.config->spec.LseBytes(header.num_tokens());
          }
          slot = p.staging;
          serial = p.serial;
        }
      }
    }
  }
  Deliver(notes);
  if (stall_began && on_stall_change_) on_stall_change_();
  if (slot != nullptr) {
    // Outside the lock: a device backend copies the part now, while the
    // other parts are still on the wire.
    const absl::Status staged = Stage(*slot, rank, part);
    Staged(header.step(), serial, rank, std::move(part), staged);
  }
}

absl::Status StepCollector::Stage(StagingSlot& slot, int32_t rank, const StepPart& part) {
  ComputeBackend::Staging* staging;
  {
    absl::MutexLock lock(&slot.mu);
    if (!slot.begun) {
      slot.begun = true;
      absl::StatusOr<std::unique_ptr<ComputeBackend::Staging>> s =
          backend_->BeginStep(slot.num_parts, slot.out_bytes, slot.lse_bytes);
      if (s.ok()) {
        slot.staging = std::move(*s);
      } else {
        slot.status = s.status();
      }
    }
    if (!slot.status.ok()) return slot.status;
    staging = slot.staging.get();
  }
  return backend_->StagePart(staging, rank, part.partial_out.data(), part.lse.data());
}

void StepCollector::Staged(uint64_t step, uint64_t serial, int32_t rank, StepPart part, const absl::Status& staged) {
  std::vector<Notification> notes;
  std::optional<Pending> merge_here;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(step);
    // Gone (failed meanwhile, or a newer step of the same id): its waiters
    // have their answer.
    if (it == pending_.end() || it->second.serial != serial) return;
    Pending& p = it->second;
    if (!staged.ok()) {
      FailLocked(step,
                 absl::Status(staged.code(), absl::StrCat("staging rank ", rank, "'s part: ", staged.message())),
                 &notes);
    } else {
      p.parts[rank] = std::move(part);
      if (++p.staged == static_cast<int>(p.have.size())) {
        RememberLocked(step, absl::OkStatus());
        ReleaseWaitingLocked(p);  // nobody waits any more; its bytes stay until merged
        MergeShape shape;
        shape.num_parts = p.staging->num_parts;
        shape.num_tokens = p.first.num_tokens();
        shape.num_heads = p.config->spec.num_heads;
        shape.head_size = p.config->spec.head_size;
        if (backend_->MergesInline(shape)) {
          ++merging_;
          merge_here = std::move(p);
        } else {
          ready_.push_back(std::move(p));
        }
        pending_.erase(it);
      }
    }
  }
  Deliver(notes);
  if (!merge_here) return;
  // A short merge runs here, on the thread that brought the last part:
  // no hand-off to the merge thread.
  RunMerge(*merge_here);
  absl::MutexLock lock(&mu_);
  --merging_;
  pending_bytes_ -= merge_here->bytes;
}

void StepCollector::FailPending(const absl::Status& reason) {
  std::vector<Notification> notes;
  {
    absl::MutexLock lock(&mu_);
    while (!pending_.empty()) {
      const uint64_t step = pending_.begin()->first;
      FailLocked(step,
                 absl::Status(reason.code(), absl::StrCat("step ", step, " aborted: ",
                                                          reason.message())),
                 &notes);
    }
  }
  Deliver(notes);
}

void StepCollector::StopAccepting(const absl::Status& reason) {
  absl::MutexLock lock(&mu_);
  refuse_ = reason;
}

void StepCollector::Resume() {
  absl::MutexLock lock(&mu_);
  if (!stop_) refuse_ = absl::OkStatus();
}

void StepCollector::ForgetFinished() {
  absl::MutexLock lock(&mu_);
  finished_.clear();
  finished_order_.clear();
}

int64_t StepCollector::PendingBytes() const {
  absl::MutexLock lock(&mu_);
  return pending_bytes_;
}

std::array<uint64_t, StepCollector::kNumLimits> StepCollector::LimitRefusals() const {
  absl::MutexLock lock(&mu_);
  return refusals_;
}

bool StepCollector::Stalled() const {
  absl::MutexLock lock(&mu_);
  return absl::Now() - last_stall_ < StallWindow();
}

void StepCollector::NoteStall() {
  bool began;
  {
    absl::MutexLock lock(&mu_);
    last_stall_ = absl::Now();
    began = !stalled_;
    stalled_ = true;
  }
  if (began && on_stall_change_) on_stall_change_();
}

void StepCollector::SetStallCallback(std::function<void()> on_change) { on_stall_change_ = std::move(on_change); }

size_t StepCollector::InFlight() const {
  absl::MutexLock lock(&mu_);
  return pending_.size() + ready_.size() + merging_;
}

bool StepCollector::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return pending_.empty() && ready_.empty() && merging_ == 0;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void StepCollector::MergeLoop() {
  while (true) {
    Pending p;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !ready_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (ready_.empty()) return;  // stopping, nothing left
      p = std::move(ready_.front());
      ready_.pop_front();
      ++merging_;
    }
    RunMerge(p);
    absl::MutexLock lock(&mu_);
    --merging_;
    pending_bytes_ -= p.bytes;
  }
}

void StepCollector::RunMerge(Pending& p) {
  const GroupSpec& spec = p.config->spec;
  auto result = std::make_shared<StepResult>();
  result->step = p.step;
  result->layer = p.first.layer();
  result->num_tokens = p.first.num_tokens();
  result->config_version = p.config->version;
  result->config = p.config;

  MergeArgs args;
  args.shape.num_parts = spec.num_parts;
  args.shape.num_tokens = p.first.num_tokens();
  args.shape.num_heads = spec.num_heads;
  args.shape.head_size = spec.head_size;
  args.config = spec.merge;
  for (int i = 0; i < spec.num_parts; ++i) {
    args.partial_out[i] = p.parts[i].partial_out.data();
    args.partial_lse[i] = reinterpret_cast<const float*>(p.parts[i].lse.data());
  }
  args.partial_out_bytes = spec.PartialOutBytes(args.shape.num_tokens);
  args.partial_lse_bytes = spec.LseBytes(args.shape.num_tokens);
  args.token_stride = int64_t{spec.num_heads} * spec.head_size;
  args.head_stride = spec.head_size;
  float scale = p.config->ScaleForLayer(p.first.layer());
  const bool fp8 = spec.merge.output_mode != OutputMode::kPassthrough;
  if (spec.merge.output_mode == OutputMode::kFp8PerTensor) {
    args.static_scale = &scale;
    result->scales.assign(1, scale);
  } else if (fp8) {
    result->scales.resize(OutputScaleCount(args.shape, spec.merge));
    args.out_scales = {result->scales.data(), result->scales.size() * sizeof(float)};
  }
  result->output.resize(OutputBytes(args.shape, spec.merge));
  args.out = {result->output.data(), result->output.size()};
  if (spec.return_lse) {
    result->lse.resize(args.shape.num_tokens * spec.num_heads);
    args.out_lse = {result->lse.data(), result->lse.size() * sizeof(float)};
  }

  ComputeBackend::DeviceTimes times;
  absl::Status st;
  {
    absl::MutexLock lock(&p.staging->mu);  // staged by now: only to read it
    st = backend_->MergeStaged(args, p.staging->staging.get(), &times);
  }
  const absl::Time t1 = absl::Now();
  if (st.ok()) {
    stats_->RecordLatency(Phase::kReceive, p.last_arrival - p.first_arrival);
    // From the last part's arrival: its staging, any wait for the merge
    // thread, the merge.
    stats_->RecordLatency(Phase::kMerge, t1 - p.last_arrival);
    stats_->RecordLatency(Phase::kTotal, t1 - p.first_arrival);
    if (times.measured) stats_->RecordDeviceTimes(times.last_copy_in, times.kernel, times.copy_out);
    if (fp8) {
      const uint64_t sat = CountSaturatedFp8Codes(result->output.data(), result->output.size());
      if (sat > 0) stats_->AddSaturated(sat);
    }
  } else {
    LogWarning("step %u: merge failed: %s", p.step, st.ToString());
    result->status = absl::Status(st.code(), absl::StrCat("merge: ", st.message()));
    result->output.clear();
    result->scales.clear();
    result->lse.clear();
  }
  stats_->RecordStep(result->status);
  std::vector<Notification> notes;
  for (Waiter& w : p.waiters) notes.emplace_back(std::move(w.done), result);
  Deliver(notes);
}

void StepCollector::SweepLoop() {
  const absl::Duration period =
      std::clamp(options_.step_timeout / 20, absl::Milliseconds(2), absl::Milliseconds(50));
  while (true) {
    std::vector<Notification> notes;
    bool stall_ended = false;
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), period)) return;
      const absl::Time now = absl::Now();
      if (stalled_ && now - last_stall_ >= StallWindow()) {
        stalled_ = false;
        stall_ended = true;
      }
      std::vector<uint64_t> expired;
      for (const auto& [step, p] : pending_) {
        if (now >= p.deadline) expired.push_back(step);
      }
      for (uint64_t step : expired) {
        const Pending& p = pending_.at(step);
        std::vector<int32_t> missing;
        for (size_t r = 0; r < p.have.size(); ++r) {
          if (!p.have[r]) missing.push_back(static_cast<int32_t>(r));
        }
        FailLocked(step,
                   absl::UnavailableError(absl::StrCat(
                       "step ", step, " timed out after ",
                       absl::FormatDuration(options_.step_timeout),
                       " waiting for rank(s) ", absl::StrJoin(missing, ","))),
                   &notes);
      }
    }
    Deliver(notes);
    if (stall_ended && on_stall_change_) on_stall_change_();
  }
}

}  // namespace dcpmerge
