// Protobuf messages as JSON for the C ABI (proto3 JSON mapping, proto field
// names, every field printed), in a string released by dcpmerge_free, and
// the JSON it accepts (Configure's group config).
#ifndef DCPMERGE_CAPI_JSON_H_
#define DCPMERGE_CAPI_JSON_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace dcpmerge::capi {

absl::Status ToJson(const google::protobuf::Message& m, char** json);

// Parses proto3 JSON (either field name, no unknown fields) into `m`;
// INVALID_ARGUMENT with the parser's message otherwise.
absl::Status FromJson(absl::string_view json, google::protobuf::Message* m);

}  // namespace dcpmerge::capi

#endif  // DCPMERGE_CAPI_JSON_H_
