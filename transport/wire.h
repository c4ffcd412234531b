// The data plane's wire format: two fixed-size headers that travel as raw
// bytes (NCCL moves bytes; nothing here is serialised field by field).
//
// Per merge step, between DCP rank r (0..N-1) and the server (rank N):
//
//   rank r -> server : StepHeader (96 B), partial_out (partial_out_bytes),
//                      partial_lse (partial_lse_bytes)
//   server -> rank r : ResponseHeader (256 B), out (out_bytes),
//                      out_scales (out_scale_bytes), out_lse (out_lse_bytes)
//
// in that order, each buffer one send matched by one receive of exactly the
// same size. A buffer of 0 bytes is not transferred at all (both sides skip
// it; both know the size). The StepHeader declares the sizes of all five
// payload buffers, the two the rank sends and the three it will receive, so
// the server can always match every send and receive of a rank, also for a
// step it rejects (it then drains what the rank sends and answers with a
// poisoned payload of the declared sizes; see server_protocol.h).
//
// Byte order: the host's, which is little-endian on every platform the
// project supports (x86-64, aarch64); a static_assert below refuses others.
// All integer fields are naturally aligned; there is no implicit padding
// (the offsets are asserted below). Reserved fields are sent as 0 and not
// read by version 1.
//
// StepHeader, 96 bytes:
//   off size field
//     0   4  magic              kStepMagic, bytes "DCPS"
//     4   2  version            kWireVersion
//     6   2  header_bytes       sizeof(StepHeader) = 96
//     8   8  step_id            caller-chosen, echoed in the response
//    16   4  layer_id           selects the per-layer scale
//    20   4  rank               the sender's rank in the communicator
//    24   8  num_tokens         T of this step, 0 <= T <= max_tokens
//    32   8  config_version     version the rank expects; 0 = any
//    40   8  partial_out_bytes  rank sends: T*H*D*input elem (packed [T,H,D])
//    48   8  partial_lse_bytes  rank sends: T*H*4
//    56   8  out_bytes          rank receives: output codes / values
//    64   8  out_scale_bytes    rank receives: fp32 dynamic scales
//    72   8  out_lse_bytes      rank receives: fp32 merged LSE
//    80   4  flags              0 in version 1
//    84   4  reserved0
//    88   8  reserved1
//
// ResponseHeader, 256 bytes:
//   off size field
//     0   4  magic              kResponseMagic, bytes "DCPR"
//     4   2  version            kWireVersion
//     6   2  header_bytes       sizeof(ResponseHeader) = 256
//     8   8  step_id            the step id this rank sent
//    16   4  layer_id           the layer id this rank sent
//    20   4  status_code        gRPC numeric code (absl::StatusCode): 0 = OK
//    24   8  config_version     the configuration version the step used
//    32   8  num_tokens         T the server merged (the rank's value if
//                               the step was rejected)
//    40   8  out_bytes          bytes of each payload buffer that follows,
//    48   8  out_scale_bytes    always equal to what the rank declared
//    56   8  out_lse_bytes
//    64   4  scale_count        fp32 scales in out_scales (dynamic modes)
//    68   4  static_scale       fp32 per-tensor scale used (0 if none)
//    72   4  head_begin         first head of the returned slice
//    76   4  head_count         heads returned (H in full mode)
//    80 176  message            NUL-terminated, truncated; empty when OK
//
// When status_code != 0 every payload byte is 0xFF ("poisoned": NaN as FP8
// E4M3, bf16, fp16 and fp32), so output consumed without checking the
// status is visibly wrong rather than plausibly stale.
#ifndef DCPMERGE_TRANSPORT_WIRE_H_
#define DCPMERGE_TRANSPORT_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dcpmerge {
namespace transport {

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dcpmerge's wire format is little-endian; this host is not"
#endif

// "DCPS" and "DCPR" read as little-endian uint32.
inline constexpr uint32_t kStepMagic = 0x53504344u;
inline constexpr uint32_t kResponseMagic = 0x52504344u;
inline constexpr uint16_t kWireVersion = 1;
inline constexpr size_t kResponseMessageBytes = 176;
// The poison byte of rejected responses (see above).
inline constexpr uint8_t kPoisonByte = 0xFF;

struct StepHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t header_bytes;
  uint64_t step_id;
  int32_t layer_id;
  int32_t rank;
  int64_t num_tokens;
  uint64_t config_version;
  uint64_t partial_out_bytes;
  uint64_t partial_lse_bytes;
  uint64_t out_bytes;
  uint64_t out_scale_bytes;
  uint64_t out_lse_bytes;
  uint32_t flags;
  uint32_t reserved0;
  uint64_t reserved1;
};

struct ResponseHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t header_bytes;
  uint64_t step_id;
  int32_t layer_id;
  int32_t status_code;
  uint64_t config_version;
  int64_t num_tokens;
  uint64_t out_bytes;
  uint64_t out_scale_bytes;
  uint64_t out_lse_bytes;
  uint32_t scale_count;
  float static_scale;
  int32_t head_begin;
  int32_t head_count;
  char message[kResponseMessageBytes];
};

static_assert(sizeof(StepHeader) == 96, "StepHeader is 96 bytes on the wire");
static_assert(sizeof(ResponseHeader) == 256,
              "ResponseHeader is 256 bytes on the wire");
static_assert(std::is_trivially_copyable<StepHeader>::value &&
                  std::is_standard_layout<StepHeader>::value,
              "StepHeader travels as raw bytes");
static_assert(std::is_trivially_copyable<ResponseHeader>::value &&
                  std::is_standard_layout<ResponseHeader>::value,
              "ResponseHeader travels as raw bytes");
static_assert(offsetof(StepHeader, step_id) == 8, "layout");
static_assert(offsetof(StepHeader, layer_id) == 16, "layout");
static_assert(offsetof(StepHeader, rank) == 20, "layout");
static_assert(offsetof(StepHeader, num_tokens) == 24, "layout");
static_assert(offsetof(StepHeader, config_version) == 32, "layout");
static_assert(offsetof(StepHeader, partial_out_bytes) == 40, "layout");
static_assert(offsetof(StepHeader, partial_lse_bytes) == 48, "layout");
static_assert(offsetof(StepHeader, out_bytes) == 56, "layout");
static_assert(offsetof(StepHeader, out_scale_bytes) == 64, "layout");
static_assert(offsetof(StepHeader, out_lse_bytes) == 72, "layout");
static_assert(offsetof(StepHeader, flags) == 80, "layout");
static_assert(offsetof(StepHeader, reserved1) == 88, "layout");
static_assert(offsetof(ResponseHeader, step_id) == 8, "layout");
static_assert(offsetof(ResponseHeader, layer_id) == 16, "layout");
static_assert(offsetof(ResponseHeader, status_code) == 20, "layout");
static_assert(offsetof(ResponseHeader, config_version) == 24, "layout");
static_assert(offsetof(ResponseHeader, num_tokens) == 32, "layout");
static_assert(offsetof(ResponseHeader, out_bytes) == 40, "layout");
static_assert(offsetof(ResponseHeader, out_scale_bytes) == 48, "layout");
static_assert(offsetof(ResponseHeader, out_lse_bytes) == 56, "layout");
static_assert(offsetof(ResponseHeader, scale_count) == 64, "layout");
static_assert(offsetof(ResponseHeader, static_scale) == 68, "layout");
static_assert(offsetof(ResponseHeader, head_begin) == 72, "layout");
static_assert(offsetof(ResponseHeader, head_count) == 76, "layout");
static_assert(offsetof(ResponseHeader, message) == 80, "layout");

// A zeroed header with magic, version and header_bytes set.
StepHeader NewStepHeader();
ResponseHeader NewResponseHeader();

// Framing: magic, version and header_bytes. A header that fails this cannot
// be trusted at all (its sizes included): a protocol violation.
absl::Status CheckStepFraming(const StepHeader& header);
absl::Status CheckResponseFraming(const ResponseHeader& header);

// Sets status_code and message (truncated to fit, always NUL-terminated).
void SetResponseStatus(const absl::Status& status, ResponseHeader* header);

// The status a response carries. A status_code outside gRPC's range reads
// as INTERNAL (a corrupted header must not read as OK).
absl::Status ResponseStatus(const ResponseHeader& header);

// The message as a view, stopping at the first NUL or the array's end.
absl::string_view ResponseMessage(const ResponseHeader& header);

}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TRANSPORT_WIRE_H_
