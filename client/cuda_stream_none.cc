// StreamJoin without CUDA: no communicator has a CUDA stream in such a
// build (the NCCL transport is a stub), so nothing is ever joined.
#include "client/cuda_stream.h"

namespace dcpmerge {

absl::StatusOr<std::unique_ptr<StreamJoin>> StreamJoin::Create(int) {
  return absl::UnimplementedError("CUDA streams: this build has no CUDA");
}

StreamJoin::~StreamJoin() = default;

absl::Status StreamJoin::Fork(CudaStream, CudaStream) {
  return absl::UnimplementedError("CUDA streams: this build has no CUDA");
}

absl::Status StreamJoin::Rejoin(CudaStream, CudaStream) {
  return absl::UnimplementedError("CUDA streams: this build has no CUDA");
}

}  // namespace dcpmerge
