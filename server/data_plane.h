// A data plane moves step parts from the ranks to the merge and results
// back. Implementations: GrpcDataPlane (MergeData streams into the
// StepCollector) and NcclDataPlane (nccl_data_plane.h: one NCCL
// communicator of N+1 parties driven by transport/server_protocol, merging
// through the compute backend directly).
#ifndef DCPMERGE_SERVER_DATA_PLANE_H_
#define DCPMERGE_SERVER_DATA_PLANE_H_

#include <string>

#include "absl/status/status.h"
#include "dcpmerge/v1/config.pb.h"
#include "dcpmerge/v1/data.pb.h"
#include "server/step_collector.h"

namespace dcpmerge {

class DataPlane {
 public:
  virtual ~DataPlane() = default;
  virtual v1::DataPlane kind() const = 0;
  // True while the plane can carry steps (part of readiness).
  virtual bool Up() const = 0;
  // NCCL bootstrap and state for JoinResponse / HeartbeatResponse (empty
  // for gRPC).
  struct NcclBootstrap {
    std::string unique_id;
    uint64_t generation = 0;    // bumped with every fresh unique id
    std::string last_error;     // why the last communicator was aborted
    int64_t fixed_tokens = -1;  // >= 0: fixed-shape mode
  };
  virtual NcclBootstrap NcclInfo() const { return {}; }
  std::string NcclUniqueId() const { return NcclInfo().unique_id; }
  // A member was dropped (Group's on_lost): an NCCL plane aborts its
  // communicator and re-forms.
  virtual void OnMemberLost(int32_t /*rank*/, const absl::Status& /*reason*/) {}
  // NCCL communicator state for the metrics: "unused" (not an NCCL plane),
  // "uninitialized", "initializing", "ready" or "aborted".
  virtual std::string NcclState() const { return "unused"; }
  // Flushes responses already produced, then closes every connection with
  // UNAVAILABLE "server shutting down". Called after the collector stopped.
  virtual void Stop() = 0;
};

// The response a rank gets for a step result: its head slice (or all heads)
// of the output, scales and LSE. Shared by every data plane.
void FillResponse(const StepResult& result, int32_t rank, v1::MergeResponse* out);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_DATA_PLANE_H_
