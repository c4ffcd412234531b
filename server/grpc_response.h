// The gRPC data plane's answer to one rank for a step's result: the rank's
// heads of the output (all of them, or its slice by base/head_slice.h, the
// rule the NCCL protocol also cuts by), its scales and LSE, the config
// version, or the step's error. The NCCL plane answers through
// transport/server_protocol instead.
#ifndef DCPMERGE_SERVER_GRPC_RESPONSE_H_
#define DCPMERGE_SERVER_GRPC_RESPONSE_H_

#include <cstdint>

#include "dcpmerge/v1/data.pb.h"
#include "server/step_collector.h"

namespace dcpmerge {

void FillResponse(const StepResult& result, int32_t rank, v1::MergeResponse* out);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_GRPC_RESPONSE_H_
