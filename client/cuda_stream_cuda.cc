// StreamJoin with CUDA events (builds with CUDA).
#include <cuda_runtime.h>

#include "client/cuda_stream.h"

namespace dcpmerge {

absl::StatusOr<std::unique_ptr<StreamJoin>> StreamJoin::Create(int cuda_device) {
  std::unique_ptr<StreamJoin> j(new StreamJoin());
  cudaEvent_t in = nullptr, out = nullptr;
  if (cudaSetDevice(cuda_device) != cudaSuccess ||
      cudaEventCreateWithFlags(&in, cudaEventDisableTiming) != cudaSuccess ||
      cudaEventCreateWithFlags(&out, cudaEventDisableTiming) != cudaSuccess) {
    if (in != nullptr) cudaEventDestroy(in);
    return absl::InternalError("cudaEventCreateWithFlags failed");
  }
  j->in_ = in;
  j->out_ = out;
  return j;
}

StreamJoin::~StreamJoin() {
  if (in_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(in_));
  if (out_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(out_));
}

absl::Status StreamJoin::Fork(CudaStream caller, CudaStream communicator) {
  cudaEvent_t e = static_cast<cudaEvent_t>(in_);
  if (cudaEventRecord(e, caller) != cudaSuccess || cudaStreamWaitEvent(communicator, e, 0) != cudaSuccess) {
    return absl::InternalError("joining the caller's stream to the communicator's failed");
  }
  return absl::OkStatus();
}

absl::Status StreamJoin::Rejoin(CudaStream communicator, CudaStream caller) {
  cudaEvent_t e = static_cast<cudaEvent_t>(out_);
  if (cudaEventRecord(e, communicator) != cudaSuccess || cudaStreamWaitEvent(caller, e, 0) != cudaSuccess) {
    return absl::InternalError("joining the communicator's stream back to the caller's failed");
  }
  return absl::OkStatus();
}

}  // namespace dcpmerge
