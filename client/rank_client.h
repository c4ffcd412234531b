// RankClient: the rank side of dcpmerge over gRPC (host buffers).
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
// Device path (NCCL data plane; only in builds with CUDA + NCCL, where
// DCPMERGE_WITH_NCCL is defined): after Join on a group whose
// join_info().data_plane() is DATA_PLANE_NCCL,
//
//   (*client)->ConnectDevice();          // forms the NCCL communicator of
//                                        // N ranks + server (blocks until
//                                        // all joined, nccl_init_timeout)
//   auto t = (*client)->MergeOnDevice(step, stream);   // enqueue only
//   ... stream work that consumes step.out ...
//   cudaStreamSynchronize(stream);       // or any later sync point
//   absl::Status st = (*client)->CheckResponse(*t);    // the server's status
//
// MergeOnDevice enqueues the header and payload sends and the response
// receives on the communicator's stream (joined to `stream` with CUDA events
// when they differ) and never synchronises with the host, so it may be
// captured in a CUDA graph in fixed-shape mode (join_info().
// nccl_fixed_shape(); replay with RewriteDeviceStep). The server answers
// every step with exactly the sizes the rank declared; on error the payload
// is poisoned (0xFF, NaN in every output format), so check the status
// before trusting the output. If the server gives the communicator up (a
// peer died, a step timed out), the heartbeat thread aborts this rank's
// communicator (the stream work then ends instead of waiting forever),
// CheckResponse returns UNAVAILABLE, and the caller must Join() and
// ConnectDevice() again (the server hands out a fresh unique id).
// Device calls (ConnectDevice, MergeOnDevice, CheckResponse, WaitDevice,
// RewriteDeviceStep) are serialised by a mutex, but NCCL needs every rank
// to enqueue steps in the same order: issue them from one thread per rank.
#ifndef DCPMERGE_CLIENT_RANK_CLIENT_H_
#define DCPMERGE_CLIENT_RANK_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
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

#if defined(DCPMERGE_WITH_NCCL)
#include <cuda_runtime.h>

#include <atomic>

#include "transport/factory.h"
#include "transport/rank_protocol.h"
#endif

namespace dcpmerge {

struct RankClientOptions {
  std::string target;  // rank listener, "host:port"
  int32_t rank = 0;
  int32_t num_parts = 0;
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
#if defined(DCPMERGE_WITH_NCCL)
  // Device path (NCCL data plane).
  int cuda_device = 0;  // this rank's GPU (NCCL: one party per GPU)
  // The stream the communicator enqueues on. The model's stream: no events
  // per step. Null: a stream of the communicator's own, joined to the
  // caller's stream with CUDA events in every MergeOnDevice.
  cudaStream_t nccl_stream = nullptr;
  absl::Duration nccl_init_timeout = absl::Seconds(60);
  int nccl_slots = 4;  // steps enqueued before the oldest must be checked
  // Unset: NCCL (transport::MakeNcclCommunicatorFactory). Tests inject
  // transport::FakeHub (host memory; pass a null stream to MergeOnDevice).
  transport::CommunicatorFactory nccl_factory;
#endif
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

#if defined(DCPMERGE_WITH_NCCL)
// One rank's step on the device path. Device memory (the transport's
// memory), packed layouts as in Merge(); buffers of 0 bytes may be null.
// Sizes: RankClient::DeviceSizes(num_tokens).
struct DeviceMergeStep {
  uint64_t step = 0;
  int32_t layer = 0;
  int64_t num_tokens = 0;
  const void* partial_out = nullptr;  // [T,H,D] input dtype
  const float* lse = nullptr;         // T*H fp32, configured layout
  void* out = nullptr;                // [T,head_count,D] FP8 codes / input dtype
  float* out_scales = nullptr;        // dynamic FP8 modes: per token [T], per group [T,hc,D/G]
  float* out_lse = nullptr;           // return_lse: T*head_count fp32
};

// A step enqueued by MergeOnDevice.
struct DeviceTicket {
  uint64_t communicator = 0;  // which ConnectDevice it was enqueued on
  transport::StepTicket ticket;
};

// What the server answered (valid when CheckResponse returns OK).
struct DeviceStepInfo {
  uint64_t step = 0;
  int32_t layer = 0;
  int64_t num_tokens = 0;
  uint64_t config_version = 0;
  int32_t head_begin = 0;
  int32_t head_count = 0;
  uint32_t scale_count = 0;  // dynamic modes: fp32 scales in out_scales
  float static_scale = 0;    // per-tensor mode: the layer's scale used
};
#endif

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

#if defined(DCPMERGE_WITH_NCCL)
  // Device path (see the top of this file). ConnectDevice: FAILED_
  // PRECONDITION when not joined or the group uses the gRPC data plane;
  // DEADLINE_EXCEEDED / UNAVAILABLE / CANCELLED when the communicator did
  // not form (Join again: the server has made a fresh id by then).
  absl::Status ConnectDevice();
  // Byte sizes of this rank's buffers for a step of num_tokens.
  absl::StatusOr<transport::PayloadSizes> DeviceSizes(int64_t num_tokens) const;
  // Enqueues the step; no host synchronisation. INVALID_ARGUMENT (nothing
  // enqueued; the server still waits for this rank's step) for a bad
  // num_tokens or a null buffer; UNAVAILABLE once the communicator was
  // aborted. A non-null `stream` with the in-process fake transport is
  // INVALID_ARGUMENT.
  absl::StatusOr<DeviceTicket> MergeOnDevice(const DeviceMergeStep& step, cudaStream_t stream);
  // Once the step's stream work completed: the server's status for it.
  absl::Status CheckResponse(const DeviceTicket& ticket, DeviceStepInfo* info = nullptr);
  // Waits for the communicator's stream (host sync, up to `timeout`; on
  // expiry the communicator is aborted), then CheckResponse.
  absl::Status WaitDevice(const DeviceTicket& ticket, absl::Duration timeout,
                          DeviceStepInfo* info = nullptr);
  // CUDA-graph replay of a captured fixed-shape step: new step/layer ids
  // into the host slot the captured header copy reads. The previous replay
  // must have completed.
  absl::Status RewriteDeviceStep(DeviceTicket* ticket, uint64_t step, int32_t layer);
#endif

  // Valid after a successful Join.
  v1::JoinResponse join_info() const;
  // From the latest heartbeat (0 / false before the first).
  uint64_t last_config_version() const;
  absl::Status last_heartbeat_status() const;

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

#if defined(DCPMERGE_WITH_NCCL)
  struct Device;
  // Aborts the device communicator (heartbeat thread, Join, destructor).
  void AbortDevice(const std::string& why);
  absl::Status DeviceGone(const Device& d) const;
  // The communicator `ticket` was enqueued on, or UNAVAILABLE when it is gone.
  absl::StatusOr<std::shared_ptr<Device>> DeviceOf(const DeviceTicket& ticket)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(device_mu_);
  absl::Mutex device_mu_;  // serialises device calls; taken before mu_
  std::shared_ptr<Device> device_ ABSL_GUARDED_BY(mu_);
  uint64_t device_serial_ ABSL_GUARDED_BY(mu_) = 0;
  bool session_ended_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> device_cancel_{false};  // cancels ConnectDevice's init
#endif
};

}  // namespace dcpmerge

#endif  // DCPMERGE_CLIENT_RANK_CLIENT_H_
