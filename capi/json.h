// Protobuf messages as JSON for the C ABI (proto3 JSON mapping, proto field
// names, every field printed), in a string released by dcpmerge_free.
#ifndef DCPMERGE_CAPI_JSON_H_
#define DCPMERGE_CAPI_JSON_H_

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace dcpmerge::capi {

absl::Status ToJson(const google::protobuf::Message& m, char** json);

}  // namespace dcpmerge::capi

#endif  // DCPMERGE_CAPI_JSON_H_
