#include "transport/wire.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace dcpmerge {
namespace transport {

StepHeader NewStepHeader() {
  StepHeader h;
  std::memset(&h, 0, sizeof(h));
  h.magic = kStepMagic;
  h.version = kWireVersion;
  h.header_bytes = static_cast<uint16_t>(sizeof(StepHeader));
  return h;
}

ResponseHeader NewResponseHeader() {
  ResponseHeader h;
  std::memset(&h, 0, sizeof(h));
  h.magic = kResponseMagic;
  h.version = kWireVersion;
  h.header_bytes = static_cast<uint16_t>(sizeof(ResponseHeader));
  return h;
}

namespace {

absl::Status CheckFraming(absl::string_view what, uint32_t magic,
                          uint32_t want_magic, uint16_t version,
                          uint16_t header_bytes, size_t want_bytes) {
  if (magic != want_magic) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " magic is 0x", absl::Hex(magic, absl::kZeroPad8),
        ", expected 0x", absl::Hex(want_magic, absl::kZeroPad8)));
  }
  if (version != kWireVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " wire version is ", version, ", this build speaks ",
        kWireVersion));
  }
  if (header_bytes != want_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " header_bytes is ", header_bytes, ", expected ", want_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckStepFraming(const StepHeader& header) {
  return CheckFraming("step header", header.magic, kStepMagic, header.version,
                      header.header_bytes, sizeof(StepHeader));
}

absl::Status CheckResponseFraming(const ResponseHeader& header) {
  return CheckFraming("response header", header.magic, kResponseMagic,
                      header.version, header.header_bytes,
                      sizeof(ResponseHeader));
}

void SetResponseStatus(const absl::Status& status, ResponseHeader* header) {
  header->status_code = static_cast<int32_t>(status.code());
  std::memset(header->message, 0, sizeof(header->message));
  const absl::string_view message = status.message();
  const size_t n = message.size() < sizeof(header->message) - 1
                       ? message.size()
                       : sizeof(header->message) - 1;
  if (n > 0) std::memcpy(header->message, message.data(), n);
}

absl::string_view ResponseMessage(const ResponseHeader& header) {
  size_t n = 0;
  while (n < sizeof(header.message) && header.message[n] != '\0') ++n;
  return absl::string_view(header.message, n);
}

absl::Status ResponseStatus(const ResponseHeader& header) {
  const int32_t code = header.status_code;
  if (code == 0) return absl::OkStatus();
  // gRPC's codes are 0..16 (UNAUTHENTICATED).
  if (code < 0 || code > 16) {
    return absl::InternalError(absl::StrCat(
        "response carries unknown status code ", code, ": ",
        ResponseMessage(header)));
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      ResponseMessage(header));
}

}  // namespace transport
}  // namespace dcpmerge
