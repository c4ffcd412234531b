// The gRPC data plane's answer to one rank for a step's result: the rank's
// heads of the output (all of them, or its slice by base/head_slice.h, the
// rule the NCCL protocol also cuts by), its scales and LSE, the config
// version, or the step's error. The NCCL plane answers through
// transport/server_protocol instead.
#ifndef DCPMERGE_SERVER_GRPC_RESPONSE_H_
#define DCPMERGE_SERVER_GRPC_RESPONSE_H_

#include <cstdint>
#include <memory>

#include "grpcpp/support/byte_buffer.h"
#include "server/step_collector.h"

namespace dcpmerge {

// The answer, serialized as gRPC writes it. A rank that gets the whole
// output (full return) gets it without a copy: its `output` field is
// a slice of the step's one output buffer, which the slice keeps alive
// until the transport has sent it, so N ranks cost no N copies. A head
// slice is copied (it is not contiguous) and serialized with the rest.
// *payload_bytes: output, scales and LSE bytes (Stats' bytes out).
grpc::ByteBuffer SerializeResponse(std::shared_ptr<const StepResult> result, int32_t rank, uint64_t* payload_bytes);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_GRPC_RESPONSE_H_
