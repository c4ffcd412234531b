// The CUDA device the server merges on, for the metrics
// (dcpmerge_device_info, dcpmerge_device_memory_*_bytes). Without CUDA in
// the build every call answers UNAVAILABLE.
#ifndef DCPMERGE_SERVER_DEVICE_MEMORY_H_
#define DCPMERGE_SERVER_DEVICE_MEMORY_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace dcpmerge {

struct DeviceIdentity {
  std::string name;  // cudaDeviceProp::name
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
};

struct DeviceMemoryUse {
  uint64_t used_bytes = 0;   // total - free: the whole device, every process on it
  uint64_t total_bytes = 0;
};

// Name and UUID of `device` (cudaGetDeviceProperties; call once, it is slow).
absl::StatusOr<DeviceIdentity> ReadDeviceIdentity(int device);

// cudaMemGetInfo on `device`, from any thread (it makes `device` current
// on the calling thread first).
absl::StatusOr<DeviceMemoryUse> ReadDeviceMemoryUse(int device);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_DEVICE_MEMORY_H_
