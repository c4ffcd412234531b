#include "server/grpc_data_plane.h"

#include <deque>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/log.h"
#include "server/grpc_response.h"

namespace dcpmerge {

// One stream: the queue of results to write and its writer thread.
class GrpcDataPlane::Connection {
 public:
  Connection(grpc::ServerContext* context,
             grpc::ServerReaderWriter<v1::MergeResponse, v1::MergeRequest>* stream,
             Stats* stats)
      : context_(context), stream_(stream), stats_(stats) {
    writer_ = std::thread([this] { WriteLoop(); });
  }

  int32_t rank() const { return rank_.load(); }
  void Bind(int32_t rank) { rank_.store(rank); }

  // A part was submitted: one more result to write.
  void Expect() {
    absl::MutexLock lock(&mu_);
    ++outstanding_;
  }
  void Push(std::shared_ptr<const StepResult> r) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(r));
  }
  // Reads are over: write what is outstanding, then end the writer.
  void FinishAndJoin() {
    {
      absl::MutexLock lock(&mu_);
      reads_done_ = true;
    }
    writer_.join();
  }
  // Server stopping: write what is queued, then cancel the stream so the
  // handler's Read returns.
  void Shutdown() {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }

 private:
  void WriteLoop() {
    v1::MergeResponse resp;
    bool broken = false;
    while (true) {
      std::shared_ptr<const StepResult> r;
      {
        absl::MutexLock lock(&mu_);
        auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !queue_.empty() || (reads_done_ && outstanding_ == 0) ||
                 (shutdown_ && !cancelled_);
        };
        mu_.Await(absl::Condition(&wake));
        if (queue_.empty()) {
          if (reads_done_ && outstanding_ == 0) return;
          // Shutting down with nothing left to write: unblock the reader.
          cancelled_ = true;
          context_->TryCancel();
          continue;
        }
        r = std::move(queue_.front());
        queue_.pop_front();
      }
      if (!broken) {
        const absl::Time t0 = absl::Now();
        FillResponse(*r, rank_.load(), &resp);
        const uint64_t bytes = resp.output().size() + resp.lse().size() + resp.scales_size() * 4;
        broken = !stream_->Write(resp);
        stats_->RecordLatency(Phase::kSend, absl::Now() - t0);
        if (!broken) stats_->AddBytesOut(bytes);
      }
      absl::MutexLock lock(&mu_);
      --outstanding_;
    }
  }

  grpc::ServerContext* const context_;
  grpc::ServerReaderWriter<v1::MergeResponse, v1::MergeRequest>* const stream_;
  Stats* const stats_;
  std::atomic<int32_t> rank_{-1};
  absl::Mutex mu_;
  std::deque<std::shared_ptr<const StepResult>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;
};

GrpcDataPlane::GrpcDataPlane(StepCollector* collector, Group* group, Stats* stats)
    : collector_(collector), group_(group), stats_(stats) {}

grpc::Status GrpcDataPlane::MergeStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::MergeResponse, v1::MergeRequest>* stream) {
  if (stopping_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
  }
  auto conn = std::make_shared<Connection>(context, stream, stats_);
  {
    absl::MutexLock lock(&mu_);
    connections_.insert(conn);
  }
  uint64_t session = 0;
  v1::MergeRequest req;
  while (stream->Read(&req)) {
    stats_->AddBytesIn(req.partial_out().size() + req.lse().size());
    StepPart part;
    part.header = req.header();
    part.partial_out = std::move(*req.mutable_partial_out());
    part.lse = std::move(*req.mutable_lse());
    conn->Expect();
    StepDone done = [conn](std::shared_ptr<const StepResult> r) { conn->Push(std::move(r)); };
    if (conn->rank() < 0) {
      // Bind on the first part from a live member; until then parts go to
      // the collector unbound (it answers why they are refused).
      if (group_->CheckSession(part.header.rank(), part.header.session_id()).ok()) {
        conn->Bind(part.header.rank());
        session = part.header.session_id();
      }
    } else if (part.header.rank() != conn->rank() || part.header.session_id() != session) {
      auto r = std::make_shared<StepResult>();
      r->status = absl::InvalidArgumentError(absl::StrCat(
          part.header.rank() != conn->rank() ? "header.rank: " : "header.session_id: ",
          "this stream is bound to rank ", conn->rank(), " session ", session,
          "; open one stream per rank and session"));
      r->step = part.header.step();
      r->layer = part.header.layer();
      stats_->RecordErrorResponse(r->status.code());
      done(std::move(r));
      continue;
    }
    collector_->Submit(std::move(part), std::move(done));
  }
  const bool stopping = stopping_.load();
  if (context->IsCancelled() && !stopping && conn->rank() >= 0) {
    // The rank vanished mid-stream: drop it now so its group's steps fail
    // fast with UNAVAILABLE.
    group_->MarkLost(conn->rank(), session, "data stream broken (peer cancelled or died)");
  }
  conn->FinishAndJoin();
  {
    absl::MutexLock lock(&mu_);
    connections_.erase(conn);
  }
  if (stopping) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
  return grpc::Status::OK;
}

void GrpcDataPlane::Stop() {
  stopping_.store(true);
  absl::MutexLock lock(&mu_);
  for (const auto& c : connections_) c->Shutdown();
}

}  // namespace dcpmerge
