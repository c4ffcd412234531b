#include "capi/json.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "capi/status.h"
#include "google/protobuf/util/json_util.h"

namespace dcpmerge::capi {

absl::Status ToJson(const google::protobuf::Message& m, char** json) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  std::string text;
  const auto st = google::protobuf::util::MessageToJsonString(m, &text, o);
  if (!st.ok()) return absl::InternalError(absl::StrCat("JSON: ", std::string(st.message())));
  *json = CopyOut(text);
  if (*json == nullptr) return absl::ResourceExhaustedError("out of memory");
  return absl::OkStatus();
}

absl::Status FromJson(absl::string_view json, google::protobuf::Message* m) {
  const auto st = google::protobuf::util::JsonStringToMessage(std::string(json), m);
  if (!st.ok()) return absl::InvalidArgumentError(std::string(st.message()));
  return absl::OkStatus();
}

}  // namespace dcpmerge::capi
