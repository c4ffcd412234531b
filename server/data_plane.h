// A data plane moves step parts from the ranks to the merge and results
// back. Implementations: GrpcDataPlane (grpc_data_plane.h: MergeData
// streams into the StepCollector) and NcclDataPlane (nccl_data_plane.h: one
// NCCL communicator of N+1 parties driven by transport/server_protocol,
// merging through the compute backend directly). What is specific to one
// plane (the NCCL bootstrap a rank needs, a communicator's state) stays in
// that plane and reaches the control plane through the hooks below.
#ifndef DCPMERGE_SERVER_DATA_PLANE_H_
#define DCPMERGE_SERVER_DATA_PLANE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/group_spec.h"
#include "dcpmerge/v1/config.pb.h"
#include "dcpmerge/v1/control.pb.h"

namespace dcpmerge {

class DataPlane {
 public:
  virtual ~DataPlane() = default;
  virtual v1::DataPlane kind() const = 0;
  // True while the plane can carry steps (part of readiness).
  virtual bool Up() const = 0;
  // What a rank needs to use this plane, added to its JoinResponse (called
  // after the Group admitted the rank, for the group's `spec`) and to every
  // HeartbeatResponse. The gRPC plane adds nothing.
  virtual void AddToJoinResponse(const GroupSpec& /*spec*/, v1::JoinResponse* /*response*/) const {}
  virtual void AddToHeartbeatResponse(v1::HeartbeatResponse* /*response*/) const {}
  // A member was dropped (Group's on_lost).
  virtual void OnMemberLost(int32_t /*rank*/, const absl::Status& /*reason*/) {}
  // The state of the plane's communicator for the metrics
  // (dcpmerge_nccl_communicator_state): "unused" for a plane without one.
  virtual std::string CommunicatorState() const { return "unused"; }
  // Flushes responses already produced, then closes every connection with
  // UNAVAILABLE "server shutting down". Called after the collector stopped.
  virtual void Stop() = 0;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_DATA_PLANE_H_
