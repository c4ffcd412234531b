// RankClient: the rank side of dcpmerge: the control plane (Join, Leave,
// heartbeats) and the gRPC data plane (Merge on host buffers).
//
//   RankClientOptions o;
//   o.target = "merge-server:50051";  o.rank = 2;  o.num_parts = 4;
//   auto client = RankClient::Connect(o);          // channel only
//   (*client)->Join();                             // + heartbeat thread
//   (*client)->WaitForGroupReady(absl::Seconds(30));
//   auto r = (*client)->Merge(step, layer, T, out_bytes, lse_floats);
//   // r->output: FP8 E4M3 codes [T, head_count, D]; value = decode * scale
//
// Thread-safety: every method is thread-safe. Merge may be called from
// several threads at once for different steps (they share one stream); a
// step id may be in flight only once per client. Deadlines: Join, Leave and
// Heartbeat use rpc_timeout; Merge uses merge_timeout (default: the server's
// step timeout + rpc_timeout) and returns DEADLINE_EXCEEDED after it.
//
// Groups on the NCCL data plane (join_info().data_plane() ==
// DATA_PLANE_NCCL) merge device buffers through a RankDevice
// (client/rank_device.h) bound to this client's session; the class is the
// same in every build.
//
// Credentials: a group whose server has a join secret needs this rank's
// token on every call (options.join_secret: the rank token from
// `dcpmergectl rank-token`, or the group secret, from which the client
// derives it; LoadJoinSecret in common/join_secret.h reads either from a
// file or $DCPMERGE_JOIN_SECRET). Without it, Join fails UNAUTHENTICATED;
// with a wrong one, or another rank's token, PERMISSION_DENIED.
#ifndef DCPMERGE_CLIENT_RANK_CLIENT_H_
#define DCPMERGE_CLIENT_RANK_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dcpmerge/v1/control.grpc.pb.h"
#include "dcpmerge/v1/data.grpc.pb.h"
#include "grpcpp/channel.h"

namespace dcpmerge {

struct RankClientOptions {
  std::string target;  // rank listener, "host:port"
  int32_t rank = 0;
  int32_t num_parts = 0;              // N: ranks in the group (JoinRequest.world_size)
  std::string device = "cpu";         // reported at Join
  uint64_t expected_config_hash = 0;  // 0: accept the server's config
  bool replace_existing = false;      // take over a live slot (restart)
  // TLS: root CA to verify the server; cert+key for mTLS.
  bool use_tls = false;
  std::string tls_root_ca_file;
  std::string tls_client_cert_file;
  std::string tls_client_key_file;
  std::string tls_server_name_override;  // tests only
  absl::Duration rpc_timeout = absl::Seconds(5);
  absl::Duration merge_timeout = absl::ZeroDuration();  // 0: see above
  bool heartbeat = true;  // run the heartbeat thread after Join
  // This rank's token, or the group's join secret to derive it from
  // (docs/server.md, "Limits and security"); empty: none.
  std::string join_secret;
};

struct MergeResult {
  uint64_t step = 0;
  int32_t layer = 0;
  int64_t num_tokens = 0;
  uint64_t config_version = 0;  // config the step ran with
  int32_t head_begin = 0;       // heads [head_begin, head_begin+head_count)
  int32_t head_count = 0;
  std::vector<float> scales;  // per tensor: 1; per token: T; per group: T*hc*(D/G)
  std::string output;         // [T,head_count,D] FP8 codes or input dtype
  std::string lse;            // fp32, only when the config has return_lse
};

class RankClient {
 public:
  static absl::StatusOr<std::unique_ptr<RankClient>> Connect(RankClientOptions options);
  ~RankClient();  // stops the heartbeat, closes the stream, Leave()s

  // Joins the group (and starts the heartbeat thread).
  absl::Status Join();
  // Polls until every rank joined; DEADLINE_EXCEEDED naming missing ranks.
  absl::Status WaitForGroupReady(absl::Duration timeout);
  // Sends this rank's part of `step` and waits for the merged result.
  // partial_out: [T,H,D] in the configured dtype; lse: T*H floats in the
  // configured layout. Errors: the server's status for the step
  // (INVALID_ARGUMENT naming the field, UNAVAILABLE when a peer is lost, ...).
  absl::StatusOr<MergeResult> Merge(uint64_t step, int32_t layer, int64_t num_tokens,
                                    const void* partial_out, size_t partial_out_bytes,
                                    const float* lse, size_t lse_count);
  absl::Status Leave();

  // Valid after a successful Join.
  v1::JoinResponse join_info() const;
  // The current session's JoinResponse; nullopt when not joined.
  std::optional<v1::JoinResponse> current_session() const;
  // From the latest heartbeat (0 / false before the first).
  uint64_t last_config_version() const;
  absl::Status last_heartbeat_status() const;
  const RankClientOptions& options() const { return options_; }

  // What a component bound to this client's session (a RankDevice) learns
  // of it. Called on the thread that causes the event, never with the
  // client's own lock held; SetSessionObserver(nullptr) waits for a call in
  // progress.
  class SessionObserver {
   public:
    enum class End {
      kRejoin,  // Join() is about to replace the session
      kLeave,   // Leave() ended it
      kClose,   // the client is being destroyed: forget it
    };
    virtual ~SessionObserver() = default;
    virtual void SessionEnding(End end) = 0;
    // Join() made a new session.
    virtual void SessionStarted(const v1::JoinResponse& join) = 0;
    // Every heartbeat's outcome (the heartbeat thread).
    virtual void HeartbeatDone(const absl::Status& status, const v1::HeartbeatResponse& response) = 0;
  };
  // At most one observer: FAILED_PRECONDITION when another is set. nullptr
  // removes the current one.
  absl::Status SetSessionObserver(SessionObserver* observer);

 private:
  struct Waiter {
    bool done = false;
    absl::StatusOr<MergeResult> result = absl::UnknownError("pending");
  };
  struct Stream;

  explicit RankClient(RankClientOptions options, std::shared_ptr<grpc::Channel> channel);
  void HeartbeatLoop();
  void StopHeartbeat();
  absl::Status EnsureStream() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReadLoop(Stream* s);
  void CloseStream();
  void NotifyEnding(SessionObserver::End end);

  const RankClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::RankControl::Stub> control_;
  std::unique_ptr<v1::MergeData::Stub> data_;

  mutable absl::Mutex mu_;
  v1::JoinResponse join_ ABSL_GUARDED_BY(mu_);
  bool joined_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t config_version_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status heartbeat_status_ ABSL_GUARDED_BY(mu_);
  bool stop_heartbeat_ ABSL_GUARDED_BY(mu_) = false;
  std::thread heartbeat_;
  std::shared_ptr<Stream> stream_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  absl::Mutex write_mu_;  // one Write at a time

  // Held while an observer call runs; never taken under mu_.
  absl::Mutex observer_mu_;
  SessionObserver* observer_ ABSL_GUARDED_BY(observer_mu_) = nullptr;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_CLIENT_RANK_CLIENT_H_
