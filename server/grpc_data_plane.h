// The data plane over gRPC: one MergeData.MergeStream per rank.
//
// Callback API (no thread per stream): each stream is a reactor. A read
// completes on gRPC's callback threads and is submitted to the
// StepCollector; results are queued per stream and written one at a time
// as the previous write completes. An idle stream costs no thread. The
// stream's first part from a live session binds it to that rank and
// session.
//
// Limits (Options), each refusal naming its flag:
//  - max_streams: streams open on the listener at once; beyond, a new
//    stream ends at once with RESOURCE_EXHAUSTED;
//  - max_response_queue: results waiting to be written to one stream. A
//    full queue pauses reading that stream (so no more answers are owed to
//    it); a response the rank has not taken after write_timeout means it
//    does not read: it is failed and dropped (its session ends, its group's
//    steps fail UNAVAILABLE, its stream ends RESOURCE_EXHAUSTED, the queue
//    is freed), never buffered for forever;
//  - bind_timeout: a stream that has sent nothing from a live session for
//    this long is ended (FAILED_PRECONDITION), and so is a bound stream
//    whose session has ended, once it has nothing left to answer;
//  - auth: a stream without a valid rank token (common/join_secret.h) ends
//    at once with UNAUTHENTICATED / PERMISSION_DENIED (server/auth_guard.h);
//    a stream's parts must be for its token's rank (else PERMISSION_DENIED
//    per part), and one rank may have kMaxStreamsPerRank streams open.
//
// Every end of a bound stream other than the rank's half-close (a reset by
// the peer or by gRPC, a broken connection, a failed write) drops that
// member at once (OnCancel), failing its group's steps with UNAVAILABLE
// naming the rank.
//
// Stop (server shutdown): each stream goes on reading what its rank had
// already sent (until no read completes for 50 ms, at most 250 ms), every
// part read is answered (the collector has stopped: UNAVAILABLE "server
// shutting down" for whatever it did not merge), the answers are written,
// then the stream ends with UNAVAILABLE "server shutting down". A stream
// whose peer does not read is cancelled after stop_flush_timeout.
#ifndef DCPMERGE_SERVER_GRPC_DATA_PLANE_H_
#define DCPMERGE_SERVER_GRPC_DATA_PLANE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/data.grpc.pb.h"
#include "server/data_plane.h"
#include "server/group.h"
#include "server/stats.h"
#include "server/step_collector.h"

namespace dcpmerge {

// The method is served raw (bytes in and out) so that an answer can point at
// the step's output instead of copying it (grpc_response.h); requests are
// parsed here as gRPC would.
class GrpcDataPlane final : public v1::MergeData::WithRawCallbackMethod_MergeStream<v1::MergeData::Service>,
                            public DataPlane {
 public:
  struct Options {
    size_t max_streams = 256;
    size_t max_response_queue = 32;
    absl::Duration bind_timeout = absl::Seconds(10);
    absl::Duration write_timeout = absl::Seconds(5);
    absl::Duration stop_flush_timeout = absl::Seconds(2);
  };
  // Checks a new stream's credential: the rank its token names
  // (JoinSecretCheck::kAnyRank: any), or the status to end it with at once.
  // Unset: no check.
  using AuthFn = std::function<absl::StatusOr<int32_t>(const grpc::CallbackServerContext& context)>;
  // Streams one rank's token may hold open (a reconnect overlaps the old
  // stream briefly).
  static constexpr size_t kMaxStreamsPerRank = 4;

  GrpcDataPlane(StepCollector* collector, Group* group, Stats* stats);
  GrpcDataPlane(StepCollector* collector, Group* group, Stats* stats, Options options, AuthFn auth);
  ~GrpcDataPlane() override;

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* MergeStream(
      grpc::CallbackServerContext* context) override;

  v1::DataPlane kind() const override { return v1::DATA_PLANE_GRPC; }
  bool Up() const override { return !stopping_.load(); }
  // Blocks until every stream has ended (at most stop_flush_timeout, then
  // the rest are cancelled). Idempotent.
  void Stop() override;

  struct Counters {
    size_t streams = 0;              // open now
    size_t deepest_queue = 0;        // the longest response queue now
    uint64_t refused_max_streams = 0;
    uint64_t dropped_unread = 0;     // ranks dropped for not reading
    uint64_t paused_reads = 0;       // times a full queue paused a stream's reads
    uint64_t closed_idle = 0;        // unbound or ended-session streams closed
  };
  Counters counters() const;
  const Options& options() const { return options_; }

  class Reactor;
  struct StreamState;

 private:
  void Unregister(Reactor* r);
  void HousekeepingLoop();

  StepCollector* const collector_;
  Group* const group_;
  Stats* const stats_;
  const Options options_;
  const AuthFn auth_;
  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mu_;
  std::set<Reactor*> streams_ ABSL_GUARDED_BY(mu_);
  bool stop_housekeeping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> refused_max_streams_{0};
  std::atomic<uint64_t> dropped_unread_{0};
  std::atomic<uint64_t> paused_reads_{0};
  std::atomic<uint64_t> closed_idle_{0};
  std::thread housekeeping_;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_GRPC_DATA_PLANE_H_
