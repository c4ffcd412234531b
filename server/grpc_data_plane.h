// The data plane over gRPC: one MergeData.MergeStream per rank.
//
// Threads: the gRPC handler thread of a stream reads requests and submits
// them to the StepCollector; a writer thread per stream writes the responses
// in the order results arrive. The stream's first request binds it to a rank
// and session; a stream that breaks (peer cancelled, process died) drops
// that member at once, which fails its group's pending steps with
// UNAVAILABLE instead of letting them wait for the step deadline.
#ifndef DCPMERGE_SERVER_GRPC_DATA_PLANE_H_
#define DCPMERGE_SERVER_GRPC_DATA_PLANE_H_

#include <atomic>
#include <memory>
#include <set>

#include "absl/synchronization/mutex.h"
#include "dcpmerge/v1/data.grpc.pb.h"
#include "server/data_plane.h"
#include "server/group.h"
#include "server/stats.h"
#include "server/step_collector.h"

namespace dcpmerge {

class GrpcDataPlane final : public v1::MergeData::Service, public DataPlane {
 public:
  GrpcDataPlane(StepCollector* collector, Group* group, Stats* stats);

  grpc::Status MergeStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::MergeResponse, v1::MergeRequest>* stream) override;

  v1::DataPlane kind() const override { return v1::DATA_PLANE_GRPC; }
  bool Up() const override { return !stopping_.load(); }
  void Stop() override;

  class Connection;

 private:
  StepCollector* const collector_;
  Group* const group_;
  Stats* const stats_;
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  std::set<std::shared_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_GRPC_DATA_PLANE_H_
