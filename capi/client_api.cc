// The rank side in the C ABI: RankClient (control plane, gRPC data plane)
// and RankDevice (NCCL data plane), as handles.
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "capi/dcpmerge_c.h"
#include "capi/json.h"
#include "capi/status.h"
#include "client/rank_client.h"
#include "client/rank_device.h"

struct dcpmerge_client {
  std::unique_ptr<dcpmerge::RankClient> client;
};
struct dcpmerge_result {
  dcpmerge::MergeResult result;
};
struct dcpmerge_device {
  std::unique_ptr<dcpmerge::RankDevice> device;
};
struct dcpmerge_ticket {
  dcpmerge::DeviceTicket ticket;
};

namespace dcpmerge::capi {
namespace {

absl::Status CheckClient(const dcpmerge_client* c) {
  if (c == nullptr || c->client == nullptr) return absl::InvalidArgumentError("client: null handle");
  return absl::OkStatus();
}

absl::Status CheckDevice(const dcpmerge_device* d) {
  if (d == nullptr || d->device == nullptr) return absl::InvalidArgumentError("device: null handle");
  return absl::OkStatus();
}

absl::Status Connect(const dcpmerge_client_options* c, dcpmerge_client** out) {
  if (absl::Status s = NotNull(out, "client"); !s.ok()) return s;
  *out = nullptr;
  if (absl::Status s = NotNull(c, "options"); !s.ok()) return s;
  if (absl::Status s = CheckStructSize(c->struct_size, sizeof(*c), "dcpmerge_client_options"); !s.ok()) return s;
  RankClientOptions o;
  o.target = Str(c->target);
  o.rank = c->rank;
  o.num_parts = c->num_parts;
  if (c->device != nullptr) o.device = c->device;
  o.expected_config_hash = c->expected_config_hash;
  o.replace_existing = c->replace_existing != 0;
  o.use_tls = c->use_tls != 0;
  o.tls_root_ca_file = Str(c->tls_root_ca_file);
  o.tls_client_cert_file = Str(c->tls_client_cert_file);
  o.tls_client_key_file = Str(c->tls_client_key_file);
  o.tls_server_name_override = Str(c->tls_server_name_override);
  if (c->rpc_timeout_ms > 0) o.rpc_timeout = absl::Milliseconds(c->rpc_timeout_ms);
  if (c->merge_timeout_ms > 0) o.merge_timeout = absl::Milliseconds(c->merge_timeout_ms);
  o.heartbeat = c->heartbeat != 0;
  o.join_secret = Str(c->join_secret);
  if (!o.use_tls && (!o.tls_root_ca_file.empty() || !o.tls_client_cert_file.empty())) {
    return absl::InvalidArgumentError("tls_root_ca_file / tls_client_cert_file given without use_tls");
  }
  if (o.tls_client_cert_file.empty() != o.tls_client_key_file.empty()) {
    return absl::InvalidArgumentError("tls_client_cert_file and tls_client_key_file: give both or neither");
  }
  absl::StatusOr<std::unique_ptr<RankClient>> client = RankClient::Connect(std::move(o));
  if (!client.ok()) return client.status();
  *out = new dcpmerge_client{std::move(*client)};
  return absl::OkStatus();
}

absl::Status Merge(dcpmerge_client* c, uint64_t step, int32_t layer, int64_t num_tokens, const void* partial_out,
                   uint64_t partial_out_bytes, const float* lse, uint64_t lse_count, dcpmerge_result** result) {
  if (absl::Status s = NotNull(result, "result"); !s.ok()) return s;
  *result = nullptr;
  if (absl::Status s = CheckClient(c); !s.ok()) return s;
  if (partial_out == nullptr && partial_out_bytes != 0) return NotNull(partial_out, "partial_out");
  if (lse == nullptr && lse_count != 0) return NotNull(lse, "lse");
  absl::StatusOr<MergeResult> r =
      c->client->Merge(step, layer, num_tokens, partial_out, partial_out_bytes, lse, lse_count);
  if (!r.ok()) return r.status();
  *result = new dcpmerge_result{std::move(*r)};
  return absl::OkStatus();
}

void FillInfo(const DeviceStepInfo& i, dcpmerge_step_info* info) {
  info->step = i.step;
  info->layer = i.layer;
  info->head_begin = i.head_begin;
  info->num_tokens = i.num_tokens;
  info->config_version = i.config_version;
  info->head_count = i.head_count;
  info->scale_count = i.scale_count;
  info->static_scale = i.static_scale;
}

absl::Status CheckInfo(const dcpmerge_step_info* info) {
  if (info == nullptr) return absl::OkStatus();
  return CheckStructSize(info->struct_size, sizeof(*info), "dcpmerge_step_info");
}

}  // namespace
}  // namespace dcpmerge::capi

using dcpmerge::capi::CheckClient;
using dcpmerge::capi::CheckDevice;
using dcpmerge::capi::Report;

extern "C" {

int32_t dcpmerge_client_connect(const dcpmerge_client_options* options, dcpmerge_client** client) {
  return Report(dcpmerge::capi::Connect(options, client));
}

void dcpmerge_client_close(dcpmerge_client* client) { delete client; }

int32_t dcpmerge_client_join(dcpmerge_client* client) {
  if (absl::Status s = CheckClient(client); !s.ok()) return Report(s);
  return Report(client->client->Join());
}

int32_t dcpmerge_client_wait_ready(dcpmerge_client* client, int64_t timeout_ms) {
  if (absl::Status s = CheckClient(client); !s.ok()) return Report(s);
  return Report(client->client->WaitForGroupReady(absl::Milliseconds(timeout_ms)));
}

int32_t dcpmerge_client_leave(dcpmerge_client* client) {
  if (absl::Status s = CheckClient(client); !s.ok()) return Report(s);
  return Report(client->client->Leave());
}

int32_t dcpmerge_client_session_json(dcpmerge_client* client, char** json) {
  if (absl::Status s = CheckClient(client); !s.ok()) return Report(s);
  if (json == nullptr) return Report(absl::InvalidArgumentError("json: null pointer"));
  *json = nullptr;
  std::optional<dcpmerge::v1::JoinResponse> session = client->client->current_session();
  if (!session.has_value()) return Report(absl::FailedPreconditionError("not joined: call join() first"));
  return Report(dcpmerge::capi::ToJson(*session, json));
}

int32_t dcpmerge_client_heartbeat_status(dcpmerge_client* client, uint64_t* config_version) {
  if (absl::Status s = CheckClient(client); !s.ok()) return Report(s);
  if (config_version != nullptr) *config_version = client->client->last_config_version();
  return Report(client->client->last_heartbeat_status());
}

int32_t dcpmerge_client_merge(dcpmerge_client* client, uint64_t step, int32_t layer, int64_t num_tokens,
                              const void* partial_out, uint64_t partial_out_bytes, const float* lse,
                              uint64_t lse_count, dcpmerge_result** result) {
  return Report(dcpmerge::capi::Merge(client, step, layer, num_tokens, partial_out, partial_out_bytes, lse,
                                      lse_count, result));
}

int32_t dcpmerge_result_view_of(const dcpmerge_result* result, dcpmerge_result_view* view) {
  if (result == nullptr) return Report(absl::InvalidArgumentError("result: null handle"));
  if (view == nullptr) return Report(absl::InvalidArgumentError("view: null pointer"));
  if (absl::Status s = dcpmerge::capi::CheckStructSize(view->struct_size, sizeof(*view), "dcpmerge_result_view");
      !s.ok())
    return Report(s);
  const dcpmerge::MergeResult& r = result->result;
  view->step = r.step;
  view->layer = r.layer;
  view->head_begin = r.head_begin;
  view->num_tokens = r.num_tokens;
  view->config_version = r.config_version;
  view->head_count = r.head_count;
  view->output = r.output.data();
  view->output_bytes = r.output.size();
  view->scales = r.scales.data();
  view->scale_count = r.scales.size();
  view->lse = reinterpret_cast<const float*>(r.lse.data());
  view->lse_bytes = r.lse.size();
  return Report(absl::OkStatus());
}

void dcpmerge_result_free(dcpmerge_result* result) { delete result; }

int32_t dcpmerge_device_create(dcpmerge_client* client, int32_t cuda_device, int64_t init_timeout_ms,
                               dcpmerge_device** device) {
  if (device == nullptr) return Report(absl::InvalidArgumentError("device: null pointer"));
  *device = nullptr;
  if (absl::Status s = CheckClient(client); !s.ok()) return Report(s);
  dcpmerge::RankDeviceOptions o;
  o.cuda_device = cuda_device;
  if (init_timeout_ms > 0) o.init_timeout = absl::Milliseconds(init_timeout_ms);
  auto d = dcpmerge::RankDevice::Create(client->client.get(), std::move(o));
  if (!d.ok()) return Report(d.status());
  *device = new dcpmerge_device{std::move(*d)};
  return Report(absl::OkStatus());
}

void dcpmerge_device_close(dcpmerge_device* device) { delete device; }

int32_t dcpmerge_device_connect(dcpmerge_device* device) {
  if (absl::Status s = CheckDevice(device); !s.ok()) return Report(s);
  return Report(device->device->Connect());
}

int32_t dcpmerge_device_sizes(dcpmerge_device* device, int64_t num_tokens, uint64_t sizes[5]) {
  if (absl::Status s = CheckDevice(device); !s.ok()) return Report(s);
  if (sizes == nullptr) return Report(absl::InvalidArgumentError("sizes: null pointer"));
  auto s = device->device->Sizes(num_tokens);
  if (!s.ok()) return Report(s.status());
  sizes[0] = s->partial_out;
  sizes[1] = s->partial_lse;
  sizes[2] = s->out;
  sizes[3] = s->out_scales;
  sizes[4] = s->out_lse;
  return Report(absl::OkStatus());
}

int32_t dcpmerge_device_merge(dcpmerge_device* device, uint64_t step, int32_t layer, int64_t num_tokens,
                              uint64_t expect_config_version, const void* partial_out,
                              const float* partial_lse, void* out, float* out_scales, float* out_lse,
                              void* stream, dcpmerge_ticket** ticket) {
  if (ticket == nullptr) return Report(absl::InvalidArgumentError("ticket: null pointer"));
  *ticket = nullptr;
  if (absl::Status s = CheckDevice(device); !s.ok()) return Report(s);
  dcpmerge::transport::RankStep st;
  st.step_id = step;
  st.layer_id = layer;
  st.num_tokens = num_tokens;
  st.expect_config_version = expect_config_version;
  st.partial_out = partial_out;
  st.partial_lse = partial_lse;
  st.out = out;
  st.out_scales = out_scales;
  st.out_lse = out_lse;
  auto t = device->device->Merge(st, static_cast<dcpmerge::CudaStream>(stream));
  if (!t.ok()) return Report(t.status());
  *ticket = new dcpmerge_ticket{*t};
  return Report(absl::OkStatus());
}

int32_t dcpmerge_device_wait(dcpmerge_device* device, const dcpmerge_ticket* ticket, int64_t timeout_ms,
                             dcpmerge_step_info* info) {
  if (absl::Status s = CheckDevice(device); !s.ok()) return Report(s);
  if (ticket == nullptr) return Report(absl::InvalidArgumentError("ticket: null handle"));
  if (absl::Status s = dcpmerge::capi::CheckInfo(info); !s.ok()) return Report(s);
  dcpmerge::DeviceStepInfo i;
  absl::Status s = device->device->Wait(ticket->ticket, absl::Milliseconds(timeout_ms), &i);
  if (s.ok() && info != nullptr) dcpmerge::capi::FillInfo(i, info);
  return Report(s);
}

int32_t dcpmerge_device_check(dcpmerge_device* device, const dcpmerge_ticket* ticket, dcpmerge_step_info* info) {
  if (absl::Status s = CheckDevice(device); !s.ok()) return Report(s);
  if (ticket == nullptr) return Report(absl::InvalidArgumentError("ticket: null handle"));
  if (absl::Status s = dcpmerge::capi::CheckInfo(info); !s.ok()) return Report(s);
  dcpmerge::DeviceStepInfo i;
  absl::Status s = device->device->CheckResponse(ticket->ticket, &i);
  if (s.ok() && info != nullptr) dcpmerge::capi::FillInfo(i, info);
  return Report(s);
}

void dcpmerge_ticket_free(dcpmerge_ticket* ticket) { delete ticket; }

}  // extern "C"
