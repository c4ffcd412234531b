// How a party joins a communicator of the data plane: the unique id the
// server makes for every (re-)formation, and the call each party (the N DCP
// ranks and the server) makes with it. Production: NcclTransport
// (nccl/nccl_transport.h, MakeNcclCommunicatorFactory); tests: FakeHub
// (fake_hub.h), an in-process stand-in with NCCL's bootstrap behaviour.
// The server's data plane (server/nccl_data_plane.h) and the rank's device path
// (client/rank_device.h) take one, so both run unchanged over either.
#ifndef DCPMERGE_TRANSPORT_FACTORY_H_
#define DCPMERGE_TRANSPORT_FACTORY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/transport.h"

namespace dcpmerge {
namespace transport {

struct CommunicatorFactory {
  // A fresh unique id (opaque bytes; 128 for NCCL).
  std::function<absl::StatusOr<std::string>()> new_unique_id;
  // Joins communicator `unique_id` as `rank` of `num_parties`. Blocks until
  // every party joined (OK), `deadline` passed (DEADLINE_EXCEEDED) or
  // `*cancel` (may be null) became true (CANCELLED); a half-made
  // communicator is aborted on failure. Thread-safe.
  std::function<absl::StatusOr<std::unique_ptr<Transport>>(
      const std::string& unique_id, int num_parties, int rank,
      absl::Time deadline, const std::atomic<bool>* cancel)>
      create;

  explicit operator bool() const { return new_unique_id && create; }
};

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_FACTORY_H_
