// The C ABI's JSON (capi/json.h): the group config a binding passes to
// dcpmerge_admin_configure_json, read by FromJson and then validated as the
// server validates a Configure (GroupSpecFromProto); and the JSON ToJson
// hands out, GetConfig's included (the scale table, read back by the Python
// package), which must read back as the message it came from.
//
// Input: JSON text, read as a GroupConfig and as a GetConfigResponse.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "capi/json.h"
#include "common/group_spec.h"
#include "dcpmerge/v1/admin.pb.h"
#include "dcpmerge/v1/config.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "tests/fuzz/fuzz_check.h"

namespace dcpmerge::capi {
namespace {

std::string Bytes(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);  // map order
  m.SerializeToCodedStream(&coded);
  return out;
}

std::string Json(const google::protobuf::Message& m) {
  char* json = nullptr;
  const absl::Status st = ToJson(m, &json);
  FUZZ_CHECK(st.ok(), st.ToString());
  std::string out(json);
  std::free(json);
  return out;
}

// What ToJson writes reads back (FromJson) as the same message. (Not as the
// same text: a map's keys come out in its hash order.)
template <typename Message>
void CheckRoundTrip(const Message& m) {
  const std::string json = Json(m);
  Message back;
  const absl::Status st = FromJson(json, &back);
  FUZZ_CHECK(st.ok() && Bytes(back) == Bytes(m), absl::StrCat(json, "\nreads back: ", st.ToString()));
}

void CheckGroupConfig(const v1::GroupConfig& config) {
  CheckRoundTrip(config);
  const absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(config);
  if (!spec.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(spec.status()), spec.status().ToString());
    return;
  }
  // Every allocation a configuration implies is bounded.
  FUZZ_CHECK(spec->PartialOutBytes(spec->max_tokens) <= kMaxPayloadBytes,
             absl::StrCat("max_tokens ", spec->max_tokens));
  const absl::StatusOr<GroupSpec> again = GroupSpecFromProto(GroupSpecToProto(*spec));
  FUZZ_CHECK(again.ok() && GroupSpecHash(*again) == GroupSpecHash(*spec), "the spec does not survive its proto");
}

void FuzzOne(absl::string_view text) {
  v1::GroupConfig config;
  if (FromJson(text, &config).ok()) CheckGroupConfig(config);
  v1::GetConfigResponse response;
  if (FromJson(text, &response).ok()) {
    CheckRoundTrip(response);
    CheckGroupConfig(response.config());
  }
}

}  // namespace
}  // namespace dcpmerge::capi

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dcpmerge::capi::FuzzOne(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
