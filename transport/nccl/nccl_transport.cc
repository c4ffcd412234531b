#include "transport/nccl/nccl_transport.h"

#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#if defined(DCPMERGE_WITH_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace dcpmerge {
namespace transport {

#if defined(DCPMERGE_WITH_NCCL)

namespace {

// Every NCCL host call of the process goes through this mutex.
std::mutex& NcclHostMutex() {
  static std::mutex* mu = new std::mutex;
  return *mu;
}

ncclComm_t Comm(void* comm) { return static_cast<ncclComm_t>(comm); }
cudaStream_t Stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Makes `device` current for a scope and restores the caller's device: any
// thread (Abort's included) may use a transport without side effects.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

std::string NcclText(ncclResult_t r, void* comm) {
  std::string text = ncclGetErrorString(r);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(Comm(comm));
    if (last != nullptr && last[0] != '\0') absl::StrAppend(&text, " (", last, ")");
  }
  return text;
}

absl::Status CudaError(absl::string_view what, cudaError_t e) {
  return absl::UnavailableError(
      absl::StrCat(what, " failed: ", cudaGetErrorString(e)));
}

}  // namespace

bool NcclTransportAvailable() { return true; }

absl::StatusOr<std::string> NcclTransport::NewUniqueId() {
  ncclUniqueId id;
  ncclResult_t r;
  {
    std::lock_guard<std::mutex> lock(NcclHostMutex());
    r = ncclGetUniqueId(&id);
  }
  if (r != ncclSuccess) {
    return absl::UnavailableError(
        absl::StrCat("ncclGetUniqueId failed: ", NcclText(r, nullptr)));
  }
  return std::string(id.internal, sizeof(id.internal));
}

NcclTransport::NcclTransport(int num_parties, int rank,
                             const NcclTransportOptions& options)
    : num_parties_(num_parties), rank_(rank), options_(options) {}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(
    absl::string_view unique_id, int num_parties, int rank,
    const NcclTransportOptions& options, absl::Time init_deadline) {
  if (unique_id.size() != sizeof(ncclUniqueId)) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL unique id has ", unique_id.size(),
                     " bytes, expected ", sizeof(ncclUniqueId)));
  }
  if (num_parties < 1 || rank < 0 || rank >= num_parties) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", rank, " of ", num_parties, " parties is impossible"));
  }
  std::unique_ptr<NcclTransport> t(
      new NcclTransport(num_parties, rank, options));
  DeviceGuard guard(options.device);
  cudaError_t e = cudaSetDevice(options.device);
  if (e != cudaSuccess) return CudaError("cudaSetDevice", e);
  if (options.stream != nullptr) {
    t->stream_ = options.stream;
  } else {
    cudaStream_t stream = nullptr;
    e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) return CudaError("cudaStreamCreateWithFlags", e);
    t->stream_ = stream;
    t->own_stream_ = true;
  }

  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // no host call may hang on a peer
  ncclComm_t comm = nullptr;
  ncclResult_t r;
  {
    std::lock_guard<std::mutex> lock(NcclHostMutex());
    r = ncclCommInitRankConfig(&comm, num_parties, id, rank, &config);
  }
  t->comm_ = comm;
  if (r != ncclSuccess && r != ncclInProgress) {
    const std::string why =
        absl::StrCat("ncclCommInitRankConfig failed: ", NcclText(r, comm));
    t->Abort(why);
    return absl::UnavailableError(why);
  }
  while (true) {
    ncclResult_t state = ncclInProgress;
    {
      std::lock_guard<std::mutex> lock(NcclHostMutex());
      r = ncclCommGetAsyncError(comm, &state);
    }
    if (r != ncclSuccess) state = r;
    if (state == ncclSuccess) break;
    if (state != ncclInProgress) {
      const std::string why = absl::StrCat("NCCL communicator init failed: ",
                                           NcclText(state, comm));
      t->Abort(why);
      return absl::UnavailableError(why);
    }
    if (options.cancel != nullptr && options.cancel->load()) {
      const std::string why = absl::StrCat(
          "NCCL communicator init (rank ", rank, " of ", num_parties,
          ") cancelled");
      t->Abort(why);
      return absl::CancelledError(why);
    }
    if (absl::Now() >= init_deadline) {
      const std::string why = absl::StrCat(
          "NCCL communicator init (rank ", rank, " of ", num_parties,
          ") did not complete by its deadline");
      t->Abort(why);
      return absl::DeadlineExceededError(why);
    }
    absl::SleepFor(options.poll_interval);
  }
  return t;
}

NcclTransport::~NcclTransport() {
  DeviceGuard guard(options_.device);
  if (!aborted_.load() && comm_ != nullptr) {
    // Clean shutdown only if idle and healthy; anything else is aborted.
    bool clean = false;
    {
      std::lock_guard<std::mutex> lock(NcclHostMutex());
      ncclResult_t state = ncclInProgress;
      const bool healthy =
          ncclCommGetAsyncError(Comm(comm_), &state) == ncclSuccess &&
          state == ncclSuccess;
      const bool idle = cudaStreamQuery(Stream(stream_)) == cudaSuccess;
      if (healthy && idle && !in_group_) {
        const ncclResult_t f = ncclCommFinalize(Comm(comm_));
        clean = f == ncclSuccess || f == ncclInProgress;
      }
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (clean) {
      ncclResult_t state = ncclInProgress;
      {
        std::lock_guard<std::mutex> lock(NcclHostMutex());
        if (ncclCommGetAsyncError(Comm(comm_), &state) != ncclSuccess) {
          state = ncclInternalError;
        }
      }
      if (state == ncclSuccess) break;
      if (state != ncclInProgress || absl::Now() >= deadline) clean = false;
      if (clean) absl::SleepFor(options_.poll_interval);
    }
    if (clean) {
      std::lock_guard<std::mutex> lock(NcclHostMutex());
      ncclCommDestroy(Comm(comm_));
      comm_ = nullptr;
    } else {
      Abort("transport destroyed while busy or failed");
    }
  }
  if (own_stream_ && stream_ != nullptr) {
    cudaStreamDestroy(Stream(stream_));
  }
}

std::string NcclTransport::abort_reason() const {
  std::lock_guard<std::mutex> lock(NcclHostMutex());
  return abort_reason_;
}

void NcclTransport::Abort(absl::string_view reason) {
  std::lock_guard<std::mutex> lock(NcclHostMutex());
  if (aborted_.load()) return;
  aborted_.store(true);
  abort_reason_ = std::string(reason);
  if (comm_ != nullptr) {
    DeviceGuard guard(options_.device);
    ncclCommAbort(Comm(comm_));
    comm_ = nullptr;
  }
}

absl::Status NcclTransport::Usable() const {
  if (aborted_.load()) {
    return absl::UnavailableError(
        absl::StrCat("NCCL communicator aborted (rank ", rank_, ")"));
  }
  return absl::OkStatus();
}

absl::Status NcclTransport::CheckPeer(int peer, size_t bytes,
                                      const void* data) const {
  if (peer < 0 || peer >= num_parties_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "peer ", peer, " is outside 0..", num_parties_ - 1));
  }
  if (bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError("null buffer");
  }
  return absl::OkStatus();
}

absl::StatusOr<Buffer> NcclTransport::AllocateDevice(size_t bytes) {
  DeviceGuard guard(options_.device);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cudaMalloc(", bytes, ") failed: ", cudaGetErrorString(e)));
  }
  const int device = options_.device;
  return Buffer(p, bytes, [device](void* q) {
    DeviceGuard g(device);
    cudaFree(q);
  });
}

absl::StatusOr<Buffer> NcclTransport::AllocateHost(size_t bytes) {
  DeviceGuard guard(options_.device);
  void* p = nullptr;
  cudaError_t e = cudaMallocHost(&p, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cudaMallocHost(", bytes, ") failed: ", cudaGetErrorString(e)));
  }
  return Buffer(p, bytes, [](void* q) { cudaFreeHost(q); });
}

absl::Status NcclTransport::GroupStart() {
  if (in_group_) {
    return absl::FailedPreconditionError("GroupStart: groups do not nest");
  }
  absl::Status s = Usable();
  if (!s.ok()) return s;
  in_group_ = true;
  group_.clear();
  return absl::OkStatus();
}

absl::Status NcclTransport::GroupEnd() {
  if (!in_group_) {
    return absl::FailedPreconditionError("GroupEnd without GroupStart");
  }
  in_group_ = false;
  std::vector<P2P> ops;
  ops.swap(group_);
  if (ops.empty()) return Usable();
  return Issue(ops);
}

absl::Status NcclTransport::Send(const void* data, size_t bytes, int peer) {
  absl::Status s = CheckPeer(peer, bytes, data);
  if (!s.ok()) return s;
  if (bytes == 0) return Usable();
  P2P op{true, const_cast<void*>(data), bytes, peer};
  if (in_group_) {
    group_.push_back(op);
    return absl::OkStatus();
  }
  return Issue({op});
}

absl::Status NcclTransport::Recv(void* data, size_t bytes, int peer) {
  absl::Status s = CheckPeer(peer, bytes, data);
  if (!s.ok()) return s;
  if (bytes == 0) return Usable();
  P2P op{false, data, bytes, peer};
  if (in_group_) {
    group_.push_back(op);
    return absl::OkStatus();
  }
  return Issue({op});
}

absl::Status NcclTransport::Issue(const std::vector<P2P>& ops) {
  DeviceGuard guard(options_.device);
  ncclResult_t end;
  std::string failure;
  {
    std::lock_guard<std::mutex> lock(NcclHostMutex());
    if (aborted_.load()) return Usable();
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) failure = absl::StrCat("ncclGroupStart: ", NcclText(r, comm_));
    for (const P2P& op : ops) {
      if (op.is_send) {
        r = ncclSend(op.data, op.bytes, ncclUint8, op.peer, Comm(comm_),
                     Stream(stream_));
      } else {
        r = ncclRecv(op.data, op.bytes, ncclUint8, op.peer, Comm(comm_),
                     Stream(stream_));
      }
      if (r != ncclSuccess && r != ncclInProgress && failure.empty()) {
        failure = absl::StrCat(op.is_send ? "ncclSend" : "ncclRecv", " to/from ",
                               op.peer, ": ", NcclText(r, comm_));
      }
    }
    end = ncclGroupEnd();
  }
  if (failure.empty() && end != ncclSuccess && end != ncclInProgress) {
    failure = absl::StrCat("ncclGroupEnd: ", NcclText(end, comm_));
  }
  // Non-blocking communicator: the enqueue may finish in the background
  // (lazy connection setup needs the peers); nothing else may be enqueued on
  // the stream before it has.
  const absl::Time deadline = absl::Now() + options_.enqueue_timeout;
  while (failure.empty() && end == ncclInProgress) {
    ncclResult_t state = ncclInProgress;
    {
      std::lock_guard<std::mutex> lock(NcclHostMutex());
      if (aborted_.load()) return Usable();
      ncclResult_t r = ncclCommGetAsyncError(Comm(comm_), &state);
      if (r != ncclSuccess) state = r;
    }
    if (state == ncclSuccess) break;
    if (state != ncclInProgress) {
      failure = absl::StrCat("NCCL enqueue: ", ncclGetErrorString(state));
    } else if (absl::Now() >= deadline) {
      failure = "NCCL enqueue did not complete within enqueue_timeout";
    } else {
      absl::SleepFor(options_.poll_interval);
    }
  }
  if (!failure.empty()) {
    Abort(failure);
    return absl::UnavailableError(failure);
  }
  return absl::OkStatus();
}

absl::Status NcclTransport::Copy(void* dst, const void* src, size_t bytes) {
  absl::Status s = Usable();
  if (!s.ok() || bytes == 0) return s;
  DeviceGuard guard(options_.device);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault,
                                  Stream(stream_));
  return e == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpyAsync", e);
}

absl::Status NcclTransport::Copy2D(void* dst, size_t dpitch, const void* src,
                                   size_t spitch, size_t width, size_t rows) {
  absl::Status s = Usable();
  if (!s.ok() || width == 0 || rows == 0) return s;
  DeviceGuard guard(options_.device);
  cudaError_t e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows,
                                    cudaMemcpyDefault, Stream(stream_));
  return e == cudaSuccess ? absl::OkStatus()
                          : CudaError("cudaMemcpy2DAsync", e);
}

absl::Status NcclTransport::Fill(void* dst, uint8_t value, size_t bytes) {
  absl::Status s = Usable();
  if (!s.ok() || bytes == 0) return s;
  DeviceGuard guard(options_.device);
  cudaError_t e = cudaMemsetAsync(dst, value, bytes, Stream(stream_));
  return e == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemsetAsync", e);
}

absl::Status NcclTransport::Wait(absl::Time deadline) {
  if (in_group_) return absl::FailedPreconditionError("Wait inside a group");
  while (true) {
    ncclResult_t state = ncclInProgress;
    cudaError_t q;
    {
      std::lock_guard<std::mutex> lock(NcclHostMutex());
      if (aborted_.load()) {
        return absl::UnavailableError(
            absl::StrCat("NCCL communicator aborted (rank ", rank_,
                         "): ", abort_reason_));
      }
      DeviceGuard guard(options_.device);
      ncclResult_t r = ncclCommGetAsyncError(Comm(comm_), &state);
      if (r != ncclSuccess) state = r;
      q = cudaStreamQuery(Stream(stream_));
    }
    if (state != ncclSuccess && state != ncclInProgress) {
      const std::string why =
          absl::StrCat("NCCL asynchronous error: ", ncclGetErrorString(state));
      Abort(why);
      return absl::UnavailableError(why);
    }
    if (q != cudaSuccess && q != cudaErrorNotReady) {
      const std::string why =
          absl::StrCat("CUDA stream error: ", cudaGetErrorString(q));
      Abort(why);
      return absl::UnavailableError(why);
    }
    if (q == cudaSuccess && state == ncclSuccess) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "NCCL work of rank ", rank_, " still pending at the deadline"));
    }
    absl::SleepFor(options_.poll_interval);
  }
}

#else  // !DCPMERGE_WITH_NCCL: the class exists, Create says why it cannot.

bool NcclTransportAvailable() { return false; }

namespace {
absl::Status NoNccl() {
  return absl::UnimplementedError(
      "built without CUDA/NCCL: the NCCL data plane is not available");
}
}  // namespace

absl::StatusOr<std::string> NcclTransport::NewUniqueId() { return NoNccl(); }

NcclTransport::NcclTransport(int num_parties, int rank,
                             const NcclTransportOptions& options)
    : num_parties_(num_parties), rank_(rank), options_(options) {}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(
    absl::string_view, int, int, const NcclTransportOptions&, absl::Time) {
  return NoNccl();
}

NcclTransport::~NcclTransport() = default;
std::string NcclTransport::abort_reason() const { return abort_reason_; }
void NcclTransport::Abort(absl::string_view reason) {
  aborted_.store(true);
  abort_reason_ = std::string(reason);
}
absl::Status NcclTransport::Usable() const { return NoNccl(); }
absl::Status NcclTransport::CheckPeer(int, size_t, const void*) const {
  return NoNccl();
}
absl::StatusOr<Buffer> NcclTransport::AllocateDevice(size_t) { return NoNccl(); }
absl::StatusOr<Buffer> NcclTransport::AllocateHost(size_t) { return NoNccl(); }
absl::Status NcclTransport::GroupStart() { return NoNccl(); }
absl::Status NcclTransport::GroupEnd() { return NoNccl(); }
absl::Status NcclTransport::Send(const void*, size_t, int) { return NoNccl(); }
absl::Status NcclTransport::Recv(void*, size_t, int) { return NoNccl(); }
absl::Status NcclTransport::Issue(const std::vector<P2P>&) { return NoNccl(); }
absl::Status NcclTransport::Copy(void*, const void*, size_t) { return NoNccl(); }
absl::Status NcclTransport::Copy2D(void*, size_t, const void*, size_t, size_t,
                                   size_t) {
  return NoNccl();
}
absl::Status NcclTransport::Fill(void*, uint8_t, size_t) { return NoNccl(); }
absl::Status NcclTransport::Wait(absl::Time) { return NoNccl(); }

#endif  // DCPMERGE_WITH_NCCL

CommunicatorFactory MakeNcclCommunicatorFactory(
    const NcclTransportOptions& options) {
  CommunicatorFactory f;
  f.new_unique_id = [] { return NcclTransport::NewUniqueId(); };
  f.create = [options](const std::string& unique_id, int num_parties, int rank,
                       absl::Time deadline, const std::atomic<bool>* cancel)
      -> absl::StatusOr<std::unique_ptr<Transport>> {
    NcclTransportOptions o = options;
    o.cancel = cancel;
    absl::StatusOr<std::unique_ptr<NcclTransport>> t =
        NcclTransport::Create(unique_id, num_parties, rank, o, deadline);
    if (!t.ok()) return t.status();
    return std::unique_ptr<Transport>(std::move(*t));
  };
  return f;
}

}  // namespace transport
}  // namespace dcpmerge
