// CUDA streams in the client's headers without the CUDA headers, and the
// ordering between a caller's stream and a communicator's (RankDevice).
#ifndef DCPMERGE_CLIENT_CUDA_STREAM_H_
#define DCPMERGE_CLIENT_CUDA_STREAM_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// cudaStream_t is `CUstream_st*` (CUDA's driver_types.h): declaring the
// struct lets headers take a cudaStream_t, which converts to and from
// CudaStream implicitly, in builds with and without CUDA.
struct CUstream_st;

namespace dcpmerge {

using CudaStream = CUstream_st*;

// Orders work between two streams of one device with CUDA events. Built
// from cuda_stream_cuda.cc with CUDA and cuda_stream_none.cc without, where
// Create returns UNIMPLEMENTED (no communicator has a CUDA stream there).
class StreamJoin {
 public:
  static absl::StatusOr<std::unique_ptr<StreamJoin>> Create(int cuda_device);
  ~StreamJoin();
  StreamJoin(const StreamJoin&) = delete;
  StreamJoin& operator=(const StreamJoin&) = delete;

  // `communicator` waits for the work enqueued so far on `caller`.
  absl::Status Fork(CudaStream caller, CudaStream communicator);
  // `caller` waits for the work enqueued so far on `communicator`.
  absl::Status Rejoin(CudaStream communicator, CudaStream caller);

 private:
  StreamJoin() = default;
  void* in_ = nullptr;   // cudaEvent_t: caller -> communicator
  void* out_ = nullptr;  // and back
};

}  // namespace dcpmerge

#endif  // DCPMERGE_CLIENT_CUDA_STREAM_H_
