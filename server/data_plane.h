// A data plane moves step parts from the ranks into the StepCollector and
// results back. Implementations: GrpcDataPlane (MergeData streams, here) and
// an NCCL plane (later: fixed-size header, then payload, per
// docs/DESIGN "Data plane over NCCL"; it submits the same StepPart and
// answers every rank with FillResponse's header + payload, poisoned on error).
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
  // NCCL bootstrap for JoinResponse (empty for gRPC).
  virtual std::string NcclUniqueId() const { return {}; }
  // Flushes responses already produced, then closes every connection with
  // UNAVAILABLE "server shutting down". Called after the collector stopped.
  virtual void Stop() = 0;
};

// The response a rank gets for a step result: its head slice (or all heads)
// of the output, scales and LSE. Shared by every data plane.
void FillResponse(const StepResult& result, int32_t rank, v1::MergeResponse* out);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_DATA_PLANE_H_
