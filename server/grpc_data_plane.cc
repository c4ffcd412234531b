#include "server/grpc_data_plane.h"

#include <deque>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/grpc_status.h"
#include "base/log.h"
#include "server/auth_guard.h"
#include "server/grpc_response.h"

namespace dcpmerge {

// What the collector's callbacks hold: the stream, until it is done. A
// result delivered after the stream ended is dropped.
struct GrpcDataPlane::StreamState {
  absl::Mutex mu;
  Reactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
};

// One MergeStream. Every reactor operation (StartRead, StartWrite, Finish,
// TryCancel) is issued under mu_ and never after Finish, so none races
// OnDone; gRPC runs no reaction of a bidi stream inline, so holding mu_
// while issuing them cannot deadlock.
class GrpcDataPlane::Reactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Reactor(GrpcDataPlane* plane, grpc::CallbackServerContext* context, int32_t token_rank)
      : plane_(plane), context_(context), token_rank_(token_rank), state_(std::make_shared<StreamState>()) {
    absl::MutexLock lock(&state_->mu);
    state_->reactor = this;
    last_activity_ = absl::Now();
  }

  // Accepted: start reading.
  void Start() {
    absl::MutexLock lock(&mu_);
    StartRead(&in_);
  }

  // Refused at open: ends with `status` at once.
  void Refuse(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    refused_ = true;
    FinishLocked(std::move(status));
  }
  bool refused() const {
    absl::MutexLock lock(&mu_);
    return refused_;
  }
  // The rank the stream's token names (JoinSecretCheck::kAnyRank: none).
  int32_t token_rank() const { return token_rank_; }

  // The peer reset the stream (RST_STREAM, a broken connection, a deadline)
  // or gRPC cancelled it (memory pressure): the rank bound to it is lost
  // now, whatever the reads saw, so its group's steps fail fast naming it.
  void OnCancel() override { MarkBoundRankLost("data stream reset (peer cancelled, connection lost or gRPC reset it)"); }

  void OnReadDone(bool ok) override {
    // A message that does not parse ends the reads, as it did when gRPC
    // parsed it for a typed method.
    if (ok && !grpc::SerializationTraits<v1::MergeRequest>::Deserialize(&in_, &req_).ok()) ok = false;
    if (!ok) {
      {
        absl::MutexLock lock(&mu_);
        reads_done_ = true;
        AdvanceLocked();
      }
      // A half-close is the rank's orderly end of the stream; anything else
      // ends its membership now (OnCancel may come later or not at all).
      if (context_->IsCancelled()) MarkBoundRankLost("data stream broken (peer cancelled or died)");
      return;
    }
    plane_->stats_->AddBytesIn(req_.partial_out().size() + req_.lse().size());
    StepPart part;
    part.header = req_.header();
    part.partial_out = std::move(*req_.mutable_partial_out());
    part.lse = std::move(*req_.mutable_lse());
    req_.Clear();
    int32_t rank;
    uint64_t session;
    {
      absl::MutexLock lock(&mu_);
      ++outstanding_;
      last_activity_ = absl::Now();
      rank = rank_;
      session = session_;
    }
    std::shared_ptr<StreamState> state = state_;
    StepDone done = [state](std::shared_ptr<const StepResult> r) {
      absl::MutexLock lock(&state->mu);
      if (state->reactor != nullptr) state->reactor->Push(std::move(r));
    };
    bool submit = true;
    if (absl::Status st = CheckTokenRank(token_rank_, part.header.rank()); !st.ok()) {
      // A token acts for its own rank only: refused, never bound.
      auto r = std::make_shared<StepResult>();
      r->status = std::move(st);
      r->step = part.header.step();
      r->layer = part.header.layer();
      plane_->stats_->RecordErrorResponse(r->status.code());
      done(std::move(r));
      submit = false;
    } else if (rank < 0) {
      // Bind on the first part from a live member; until then parts go to
      // the collector unbound (it answers why they are refused).
      if (plane_->group_->CheckSession(part.header.rank(), part.header.session_id()).ok()) {
        absl::MutexLock lock(&mu_);
        rank_ = part.header.rank();
        session_ = part.header.session_id();
      }
    } else if (part.header.rank() != rank || part.header.session_id() != session) {
      auto r = std::make_shared<StepResult>();
      r->status = absl::InvalidArgumentError(absl::StrCat(
          part.header.rank() != rank ? "header.rank: " : "header.session_id: ", "this stream is bound to rank ",
          rank, " session ", session, "; open one stream per rank and session"));
      r->step = part.header.step();
      r->layer = part.header.layer();
      plane_->stats_->RecordErrorResponse(r->status.code());
      done(std::move(r));
      submit = false;
    }
    if (submit) plane_->collector_->Submit(std::move(part), std::move(done));
    absl::MutexLock lock(&mu_);
    if (finish_requested_) return;
    if (queue_.size() >= plane_->options_.max_response_queue) {
      read_paused_ = true;  // resumes when the rank has taken some of its answers
      plane_->paused_reads_.fetch_add(1);
    } else {
      StartRead(&in_);
    }
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      plane_->stats_->RecordLatency(Phase::kSend, absl::Now() - write_started_);
      if (ok) {
        plane_->stats_->AddBytesOut(write_bytes_);
      } else {
        broken_ = true;
      }
      AdvanceLocked();
    }
    if (!ok) MarkBoundRankLost("an answer could not be written (stream broken)");
  }

  void OnDone() override {
    plane_->Unregister(this);
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

  // A step's result for this stream (under state_->mu). The queue is
  // bounded: a full one pauses reading this stream (no new parts, so no new
  // answers beyond those owed), and a rank that does not take its answers
  // is dropped by the housekeeping thread (write timeout).
  void Push(std::shared_ptr<const StepResult> r) {
    absl::MutexLock lock(&mu_);
    --outstanding_;
    if (finish_requested_ || broken_) {
      AdvanceLocked();
      return;
    }
    queue_.push_back(std::move(r));
    AdvanceLocked();
  }

  // Ends the bound rank's session (not under mu_: the group's callbacks
  // reach every stream). Not while the server stops: that is no fault.
  void MarkBoundRankLost(absl::string_view why) {
    int32_t rank;
    uint64_t session;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_ || rank_ < 0) return;
      rank = rank_;
      session = session_;
    }
    plane_->group_->MarkLost(rank, session, why);
  }

  // Server stopping: read what the rank had already sent (until its reads
  // go quiet, within the drain), answer all of it, then end UNAVAILABLE.
  void Stop() {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    stop_began_ = absl::Now();
    AdvanceLocked();
  }
  // Stop did not finish in time: cancel.
  void ForceEnd() {
    absl::MutexLock lock(&mu_);
    if (!finish_requested_) FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down"));
    context_->TryCancel();
  }

  // The housekeeping thread (plane's lock held): stuck writes, drops to
  // carry out, idle and orphaned streams, stopping streams whose reads
  // have settled. Appends a member to drop to *drop.
  void Housekeep(absl::Time now, bool idle_checks, std::vector<std::pair<int32_t, uint64_t>>* drop) {
    absl::MutexLock lock(&mu_);
    if (stopping_) AdvanceLocked();
    if (finish_requested_ && now >= cancel_at_) {
      context_->TryCancel();
      cancel_at_ = absl::InfiniteFuture();
    }
    if (!finish_requested_ && writing_ && now - write_started_ > plane_->options_.write_timeout) {
      // The rank does not read its responses: fail and drop it rather than
      // buffer for it forever. Its session ends (from this thread's caller,
      // not under any stream's lock), the queue is freed, and the stuck
      // write is cancelled soon if the peer never takes it.
      plane_->dropped_unread_.fetch_add(1);
      LogWarning("rank %d (session %u): a response not read for %s, %u more queued; dropping the rank", rank_,
                 session_, absl::FormatDuration(now - write_started_), queue_.size());
      FinishLocked(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("max_response_queue: rank ", rank_, " did not read its responses for ",
                       absl::FormatDuration(plane_->options_.write_timeout), " (--max_response_queue=",
                       plane_->options_.max_response_queue, " answers queue, then reading stops); dropped, join again")));
      cancel_at_ = now + absl::Seconds(1);
      if (rank_ >= 0) drop->emplace_back(rank_, session_);
    }
    if (!idle_checks || finish_requested_ || refused_) return;
    const bool idle = outstanding_ == 0 && queue_.empty() && !writing_;
    if (!idle) return;
    const absl::Duration timeout = plane_->options_.bind_timeout;
    if (rank_ < 0 && now - last_activity_ > timeout) {
      plane_->closed_idle_.fetch_add(1);
      FinishLocked(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                absl::StrCat("stream sent no part of a live session for ",
                                             absl::FormatDuration(timeout), "; closed (join first)")));
    } else if (rank_ >= 0 && !plane_->group_->CheckSession(rank_, session_).ok()) {
      plane_->closed_idle_.fetch_add(1);
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                absl::StrCat("session ", session_, " of rank ", rank_, " has ended; join again")));
    }
  }

  size_t queue_depth() const {
    absl::MutexLock lock(&mu_);
    return queue_.size();
  }

 private:
  // Stopping: parts a rank wrote before the signal may still be in flight.
  // They have arrived once no read has completed for kStopReadQuiet, or,
  // for a rank that keeps writing, after kStopReadDrain.
  bool ReadsSettledLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    constexpr absl::Duration kStopReadQuiet = absl::Milliseconds(50);
    constexpr absl::Duration kStopReadDrain = absl::Milliseconds(250);
    return now - std::max(last_activity_, stop_began_) >= kStopReadQuiet || now - stop_began_ >= kStopReadDrain;
  }

  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_requested_) return;
    finish_requested_ = true;
    queue_.clear();
    Finish(std::move(status));
  }

  // Writes the next result, or ends the stream when everything is answered
  // and the reads are over (or the server is stopping).
  void AdvanceLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_requested_) return;
    if (broken_) queue_.clear();
    if (read_paused_ && queue_.size() < plane_->options_.max_response_queue / 2 + 1) {
      read_paused_ = false;
      StartRead(&in_);
    }
    if (!writing_ && !queue_.empty()) {
      std::shared_ptr<const StepResult> r = std::move(queue_.front());
      queue_.pop_front();
      write_started_ = absl::Now();
      out_ = SerializeResponse(std::move(r), rank_, &write_bytes_);
      writing_ = true;
      StartWrite(&out_);
      return;
    }
    if (writing_ || outstanding_ > 0 || !queue_.empty()) return;
    if (stopping_ && (reads_done_ || ReadsSettledLocked(absl::Now()))) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down"));
    } else if (reads_done_ && !stopping_) {
      FinishLocked(grpc::Status::OK);
    }
  }

  GrpcDataPlane* const plane_;
  grpc::CallbackServerContext* const context_;
  const int32_t token_rank_;
  const std::shared_ptr<StreamState> state_;
  grpc::ByteBuffer in_;   // the one outstanding read
  v1::MergeRequest req_;  // in_, parsed

  mutable absl::Mutex mu_;
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);  // the one outstanding write
  std::deque<std::shared_ptr<const StepResult>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // parts read, not yet answered
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time stop_began_ ABSL_GUARDED_BY(mu_);
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool refused_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time cancel_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time write_started_ ABSL_GUARDED_BY(mu_);
  uint64_t write_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t rank_ ABSL_GUARDED_BY(mu_) = -1;
  uint64_t session_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_activity_ ABSL_GUARDED_BY(mu_);
};

GrpcDataPlane::GrpcDataPlane(StepCollector* collector, Group* group, Stats* stats)
    : GrpcDataPlane(collector, group, stats, Options{}, nullptr) {}

GrpcDataPlane::GrpcDataPlane(StepCollector* collector, Group* group, Stats* stats, Options options, AuthFn auth)
    : collector_(collector), group_(group), stats_(stats), options_(options), auth_(std::move(auth)) {
  housekeeping_ = std::thread([this] { HousekeepingLoop(); });
}

GrpcDataPlane::~GrpcDataPlane() {
  Stop();
  {
    absl::MutexLock lock(&mu_);
    stop_housekeeping_ = true;
  }
  if (housekeeping_.joinable()) housekeeping_.join();
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* GrpcDataPlane::MergeStream(
    grpc::CallbackServerContext* context) {
  grpc::Status refuse;
  int32_t token_rank = JoinSecretCheck::kAnyRank;
  if (stopping_.load()) {
    refuse = grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
  } else if (auth_) {
    absl::StatusOr<int32_t> rank = auth_(*context);
    if (rank.ok()) {
      token_rank = *rank;
    } else {
      refuse = ToGrpcStatus(rank.status());
    }
  }
  auto* r = new Reactor(this, context, token_rank);
  {
    absl::MutexLock lock(&mu_);
    if (refuse.ok()) {
      size_t open = 0, of_rank = 0;
      for (Reactor* s : streams_) {
        if (s->refused()) continue;
        ++open;
        of_rank += token_rank != JoinSecretCheck::kAnyRank && s->token_rank() == token_rank;
      }
      if (open >= options_.max_streams) {
        refused_max_streams_.fetch_add(1);
        refuse = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              absl::StrCat("max_streams: ", open, " MergeData streams are open on this listener "
                                           "(--max_streams=", options_.max_streams, ")"));
      } else if (of_rank >= kMaxStreamsPerRank) {
        // One rank's token cannot take the listener's streams from the others.
        refused_max_streams_.fetch_add(1);
        refuse = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              absl::StrCat("max_streams: rank ", token_rank, " already has ", of_rank,
                                           " MergeData streams open (at most ", kMaxStreamsPerRank, " per rank)"));
      }
    }
    streams_.insert(r);
  }
  if (refuse.ok()) {
    r->Start();
  } else {
    r->Refuse(std::move(refuse));
  }
  return r;
}

void GrpcDataPlane::Unregister(Reactor* r) {
  absl::MutexLock lock(&mu_);
  streams_.erase(r);
}

GrpcDataPlane::Counters GrpcDataPlane::counters() const {
  Counters c;
  absl::MutexLock lock(&mu_);
  for (Reactor* r : streams_) {
    if (r->refused()) continue;
    ++c.streams;
    c.deepest_queue = std::max(c.deepest_queue, r->queue_depth());
  }
  c.refused_max_streams = refused_max_streams_.load();
  c.dropped_unread = dropped_unread_.load();
  c.paused_reads = paused_reads_.load();
  c.closed_idle = closed_idle_.load();
  return c;
}

void GrpcDataPlane::HousekeepingLoop() {
  const absl::Duration period = absl::Milliseconds(20);
  const absl::Duration idle_period =
      std::clamp(options_.bind_timeout / 4, absl::Milliseconds(20), absl::Milliseconds(500));
  absl::Time next_idle = absl::Now();
  while (true) {
    std::vector<std::pair<int32_t, uint64_t>> drop;
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_housekeeping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), period)) return;
      const absl::Time now = absl::Now();
      const bool idle_checks = now >= next_idle && !stopping_.load();
      if (idle_checks) next_idle = now + idle_period;
      for (Reactor* r : streams_) r->Housekeep(now, idle_checks, &drop);
    }
    for (const auto& [rank, session] : drop) {
      group_->MarkLost(rank, session,
                       absl::StrCat("its responses were not read for ", absl::FormatDuration(options_.write_timeout),
                                    " (--max_response_queue=", options_.max_response_queue, ")"));
      collector_->NoteStall();
    }
  }
}

void GrpcDataPlane::Stop() {
  stopping_.store(true);  // a second call waits again (bounded)
  {
    absl::MutexLock lock(&mu_);
    for (Reactor* r : streams_) r->Stop();
  }
  const absl::Time deadline = absl::Now() + options_.stop_flush_timeout;
  auto all_done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return streams_.empty(); };
  absl::MutexLock lock(&mu_);
  if (mu_.AwaitWithDeadline(absl::Condition(&all_done), deadline)) return;
  LogWarning("%u stream(s) still writing %s after shutdown began; cancelling them", streams_.size(),
             absl::FormatDuration(options_.stop_flush_timeout));
  for (Reactor* r : streams_) r->ForceEnd();
  mu_.AwaitWithTimeout(absl::Condition(&all_done), absl::Seconds(1));
}

}  // namespace dcpmerge
