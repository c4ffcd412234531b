#include "server/device_memory.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#if defined(DCPMERGE_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace dcpmerge {

#if defined(DCPMERGE_WITH_CUDA)

absl::StatusOr<DeviceIdentity> ReadDeviceIdentity(int device) {
  cudaDeviceProp p{};
  if (const cudaError_t err = cudaGetDeviceProperties(&p, device); err != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaGetDeviceProperties(", device, "): ", cudaGetErrorString(err)));
  }
  DeviceIdentity id;
  id.name = p.name;
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p.uuid.bytes);
  id.uuid = absl::StrFormat("GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                            u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  return id;
}

absl::StatusOr<DeviceMemoryUse> ReadDeviceMemoryUse(int device) {
  if (const cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(err)));
  }
  size_t free_bytes = 0, total_bytes = 0;
  if (const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes); err != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaMemGetInfo: ", cudaGetErrorString(err)));
  }
  DeviceMemoryUse m;
  m.total_bytes = total_bytes;
  m.used_bytes = total_bytes >= free_bytes ? total_bytes - free_bytes : 0;
  return m;
}

#else

absl::StatusOr<DeviceIdentity> ReadDeviceIdentity(int) {
  return absl::UnavailableError("built without CUDA");
}

absl::StatusOr<DeviceMemoryUse> ReadDeviceMemoryUse(int) {
  return absl::UnavailableError("built without CUDA");
}

#endif

}  // namespace dcpmerge
