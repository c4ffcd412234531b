/* dcpmerge's C ABI: what the Python package (python/dcpmerge, through
 * ctypes) and any other language binding call. One shared library,
 * libdcpmerge_c.so, built by Bazel (//capi:libdcpmerge_c.so), exports these
 * functions and nothing else; the C++ types behind them stay inside.
 *
 * Why a C ABI: a C function taking raw pointers, sizes and a stream handle
 * does not depend on the caller's Python or PyTorch version, so one build
 * serves every interpreter and every PyTorch (docs/python.md).
 *
 * Conventions
 *   - Every function that can fail returns a status code: 0 is OK, anything
 *     else a google.rpc / absl code (3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED,
 *     9 FAILED_PRECONDITION, 12 UNIMPLEMENTED, 14 UNAVAILABLE, ...). The
 *     message of the calling thread's last failure is
 *     dcpmerge_last_error_message() (valid until that thread's next call).
 *   - Structs passed in start with `struct_size` = sizeof(the struct) as the
 *     caller compiled it: a mismatch is INVALID_ARGUMENT, never a misread.
 *   - Handles (dcpmerge_client, ...) are opaque; close/free each exactly once.
 *   - Strings returned through `char**` are NUL-terminated, allocated here,
 *     and released with dcpmerge_free().
 *   - Thread-safety: as the C++ classes behind them (client/rank_client.h,
 *     client/rank_device.h); the merge functions are thread-safe.
 *
 * Enum values (plain ints, the same numbers as kernels/merge_contract.h):
 *   dtype        0 fp32, 1 fp16, 2 bf16
 *   lse_base     0 e, 1 two
 *   lse_layout   0 [H,T] heads_tokens (vLLM), 1 [T,H] tokens_heads (FlashInfer)
 *   output_mode  0 fp8_per_tensor, 1 fp8_per_token, 2 fp8_per_group,
 *                3 passthrough
 */
#ifndef DCPMERGE_CAPI_DCPMERGE_C_H_
#define DCPMERGE_CAPI_DCPMERGE_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DCPMERGE_C_ABI_VERSION 1

/* ------------------------------------------------------------ library --- */

/* DCPMERGE_C_ABI_VERSION of the library (bindings check it at load). */
int32_t dcpmerge_abi_version(void);
/* base/version.h's kVersion, e.g. "0.2.0"; static storage. */
const char* dcpmerge_version(void);
/* The build commit (12 hex digits, "-dirty"), or "unknown"; static storage. */
const char* dcpmerge_build_commit(void);
/* Message of this thread's last failed call ("" when none). */
const char* dcpmerge_last_error_message(void);
/* Releases a string or buffer this library returned. NULL is fine. */
void dcpmerge_free(void* p);

/* 1 when the library contains the CUDA kernel (built with nvcc), else 0. */
int32_t dcpmerge_built_with_cuda(void);
/* Whether the GPU path can run here: OK with *device_count >= 1; otherwise
 * the reason: UNIMPLEMENTED (built without CUDA) or UNAVAILABLE (no driver,
 * no device: the CUDA runtime's error). Touches no device memory. */
int32_t dcpmerge_cuda_device_count(int32_t* device_count);

/* -------------------------------------------------------------- merge --- */

/* One N-way merge (kernels/merge_contract.h, MergeArgs): every pointer is a
 * device pointer for dcpmerge_merge_gpu and a host pointer for
 * dcpmerge_merge_cpu. Capacities are bytes. */
typedef struct dcpmerge_merge_args {
  uint64_t struct_size;
  int32_t num_parts;   /* N, 1..64 */
  int32_t num_heads;   /* H */
  int64_t num_tokens;  /* T (0: nothing to do) */
  int32_t head_size;   /* D */
  int32_t input_dtype;
  int32_t lse_base;
  int32_t lse_layout;
  int32_t output_mode;
  int32_t group_size;          /* fp8_per_group: 64 or 128 */
  int32_t power_of_two_scales; /* dynamic modes: 0 or 1 */
  int32_t enable_pdl;          /* dcpmerge_merge_gpu: 0 or 1, see below */
  const void* const* partial_out;  /* N pointers, [T,H,D] each, strides below */
  const float* const* partial_lse; /* N pointers, T*H floats each */
  uint64_t partial_out_bytes;      /* capacity of every partial_out[i] */
  uint64_t partial_lse_bytes;      /* capacity of every partial_lse[i] */
  int64_t token_stride;            /* elements between tokens */
  int64_t head_stride;             /* elements between heads */
  const float* static_scale;       /* fp8_per_tensor: 1 float, read at run time */
  void* out;                       /* contiguous [T,H,D] */
  uint64_t out_bytes;
  float* out_scales;               /* dynamic modes */
  uint64_t out_scales_bytes;
  float* out_lse;                  /* optional (NULL: not written) */
  uint64_t out_lse_bytes;
} dcpmerge_merge_args;

/* Enqueues the fused merge + quantization on `stream` (a cudaStream_t; NULL:
 * the legacy default stream) of CUDA device `device`. The caller's current
 * device is restored before returning. No host synchronisation, no
 * allocation: safe inside CUDA graph capture. INVALID_ARGUMENT naming the
 * field for arguments the kernel cannot run (MergeOnGpu's validation);
 * UNIMPLEMENTED without CUDA.
 * args->enable_pdl = 1: programmatic dependent launch (sm_90 and later,
 * ignored before): the merge may start while the kernel before it on the
 * stream finishes and waits for its writes before reading. It pays when
 * that kernel triggers its dependents early (griddepcontrol
 * .launch_dependents) and costs about 0.2 us a launch when it does not
 * (docs/benchmarks.md); 0 (the default) launches plainly. The other
 * functions taking dcpmerge_merge_args check it (0 or 1) and ignore it. */
int32_t dcpmerge_merge_gpu(const dcpmerge_merge_args* args, int32_t device, void* stream);

/* Benchmarks only: calls MergeOnGpu (validation + launch, what a C++ caller
 * pays per merge) `iterations` times on `stream` and reports the host time
 * those calls took in *host_seconds (no synchronisation). The per-call
 * overhead a binding adds is its own per-call time minus this. */
int32_t dcpmerge_merge_gpu_repeat(const dcpmerge_merge_args* args, int32_t device, void* stream,
                                  int32_t iterations, double* host_seconds);

/* For tokens t in [first_token, T): writes part 0 as it is, in the output
 * format of args->output_mode, which must be fp8_per_tensor (codes of
 * part0 / scale, rounded as the contract rounds) or passthrough (a copy);
 * out_lse (when given) takes part 0's LSE. Tokens below first_token are
 * left alone. The one-part "merge" of tokens without prefix context in
 * merge_attn_states (docs/python.md). Same stream rules as above. */
int32_t dcpmerge_copy_part_gpu(const dcpmerge_merge_args* args, int64_t first_token, int32_t device,
                               void* stream);

/* The CPU reference (kernels/merge_reference.h: MergeOnCpu) on host memory;
 * static_scale is a host pointer here. num_threads 0: all cores. */
int32_t dcpmerge_merge_cpu(const dcpmerge_merge_args* args, int32_t num_threads);

/* -------------------------------------------------------- rank client --- */

typedef struct dcpmerge_client dcpmerge_client;

/* client/rank_client.h's RankClientOptions. NULL strings mean "". */
typedef struct dcpmerge_client_options {
  uint64_t struct_size;
  const char* target; /* rank listener, "host:port" */
  int32_t rank;
  int32_t num_parts;
  const char* device; /* reported at Join; NULL: "cpu" */
  uint64_t expected_config_hash;
  int32_t replace_existing;
  int32_t use_tls;
  const char* tls_root_ca_file;
  const char* tls_client_cert_file;
  const char* tls_client_key_file;
  const char* tls_server_name_override;
  int64_t rpc_timeout_ms;   /* <= 0: 5000 */
  int64_t merge_timeout_ms; /* <= 0: the server's step timeout + rpc timeout */
  int32_t heartbeat;        /* run the heartbeat thread after Join */
  int32_t reserved0;
  const char* join_secret;  /* per-group join secret; NULL or "": none */
} dcpmerge_client_options;

/* Opens the channel (no RPC yet). INVALID_ARGUMENT for bad options. */
int32_t dcpmerge_client_connect(const dcpmerge_client_options* options, dcpmerge_client** client);
/* Destroys the client: stops heartbeats, closes the stream, Leave()s. */
void dcpmerge_client_close(dcpmerge_client* client);
int32_t dcpmerge_client_join(dcpmerge_client* client);
int32_t dcpmerge_client_wait_ready(dcpmerge_client* client, int64_t timeout_ms);
int32_t dcpmerge_client_leave(dcpmerge_client* client);
/* The current session's JoinResponse as JSON (proto3 JSON mapping, field
 * names as in control.proto); FAILED_PRECONDITION when not joined. */
int32_t dcpmerge_client_session_json(dcpmerge_client* client, char** json);
/* Status of the latest heartbeat (OK before the first) and the config
 * version it reported. */
int32_t dcpmerge_client_heartbeat_status(dcpmerge_client* client, uint64_t* config_version);

typedef struct dcpmerge_result dcpmerge_result;

/* Views into a result; valid until dcpmerge_result_free. */
typedef struct dcpmerge_result_view {
  uint64_t struct_size;
  uint64_t step;
  int32_t layer;
  int32_t head_begin;
  int64_t num_tokens;
  uint64_t config_version;
  int32_t head_count;
  int32_t reserved0;
  const void* output; /* [T, head_count, D]: FP8 codes or the input dtype */
  uint64_t output_bytes;
  const float* scales;
  uint64_t scale_count;
  const float* lse; /* fp32, when the config has return_lse */
  uint64_t lse_bytes;
} dcpmerge_result_view;

/* Merges this rank's part of `step` over the gRPC data plane (host memory)
 * and waits for the result. On OK *result holds it. */
int32_t dcpmerge_client_merge(dcpmerge_client* client, uint64_t step, int32_t layer, int64_t num_tokens,
                              const void* partial_out, uint64_t partial_out_bytes, const float* lse,
                              uint64_t lse_count, dcpmerge_result** result);
int32_t dcpmerge_result_view_of(const dcpmerge_result* result, dcpmerge_result_view* view);
void dcpmerge_result_free(dcpmerge_result* result);

/* ---------------------------------------------- rank device (NCCL plane) */

typedef struct dcpmerge_device dcpmerge_device;
typedef struct dcpmerge_ticket dcpmerge_ticket;

/* client/rank_device.h: bound to `client`'s session. NCCL itself is loaded
 * on first use (libnccl.so.2: already loaded, the default search path, or
 * DCPMERGE_NCCL_LIBRARY); without it Connect fails with UNAVAILABLE saying
 * so. */
int32_t dcpmerge_device_create(dcpmerge_client* client, int32_t cuda_device, int64_t init_timeout_ms,
                               dcpmerge_device** device);
/* Destroy before the client. Aborts the communicator. */
void dcpmerge_device_close(dcpmerge_device* device);
/* Forms the communicator (blocks until all N+1 parties joined). */
int32_t dcpmerge_device_connect(dcpmerge_device* device);
/* Byte sizes of this rank's buffers for a step of num_tokens:
 * sizes[0..4] = partial_out, partial_lse, out, out_scales, out_lse. */
int32_t dcpmerge_device_sizes(dcpmerge_device* device, int64_t num_tokens, uint64_t sizes[5]);
/* Enqueues a step on `stream` (device memory, packed layouts; 0-byte
 * buffers may be NULL); no host synchronisation. On OK *ticket is set. */
int32_t dcpmerge_device_merge(dcpmerge_device* device, uint64_t step, int32_t layer, int64_t num_tokens,
                              uint64_t expect_config_version, const void* partial_out,
                              const float* partial_lse, void* out, float* out_scales, float* out_lse,
                              void* stream, dcpmerge_ticket** ticket);

typedef struct dcpmerge_step_info {
  uint64_t struct_size;
  uint64_t step;
  int32_t layer;
  int32_t head_begin;
  int64_t num_tokens;
  uint64_t config_version;
  int32_t head_count;
  uint32_t scale_count;
  float static_scale;
  int32_t reserved0;
} dcpmerge_step_info;

/* Waits for the step's stream work (host sync, up to timeout_ms), then the
 * server's status for it; *info (optional) filled on OK. */
int32_t dcpmerge_device_wait(dcpmerge_device* device, const dcpmerge_ticket* ticket, int64_t timeout_ms,
                             dcpmerge_step_info* info);
/* The server's status once the stream work completed (no wait). */
int32_t dcpmerge_device_check(dcpmerge_device* device, const dcpmerge_ticket* ticket, dcpmerge_step_info* info);
void dcpmerge_ticket_free(dcpmerge_ticket* ticket);

/* -------------------------------------------------------------- admin --- */

typedef struct dcpmerge_admin dcpmerge_admin;

typedef struct dcpmerge_admin_options {
  uint64_t struct_size;
  const char* target;     /* admin listener, "host:port" */
  const char* token;      /* bearer token; used when token_file is empty */
  const char* token_file; /* re-read before every call (follows rotation) */
  const char* tls_ca_file;
  const char* tls_cert_file;
  const char* tls_key_file;
  const char* tls_server_name;
  int64_t deadline_ms; /* per call; <= 0: 10000 */
} dcpmerge_admin_options;

/* Opens the channel (does not wait for a connection). */
int32_t dcpmerge_admin_open(const dcpmerge_admin_options* options, dcpmerge_admin** admin);
void dcpmerge_admin_close(dcpmerge_admin* admin);
/* GetConfig / GetStats answers as JSON (proto3 JSON mapping, proto field
 * names, every field printed). */
int32_t dcpmerge_admin_get_config_json(dcpmerge_admin* admin, char** json);
int32_t dcpmerge_admin_get_stats_json(dcpmerge_admin* admin, char** json);
/* SetScales: n (layer, scale) pairs; replace: clear unlisted layers;
 * default_scale 0 keeps the current one. */
int32_t dcpmerge_admin_set_scales(dcpmerge_admin* admin, const int32_t* layers, const float* scales, uint64_t n,
                                  int32_t replace, float default_scale, uint64_t* config_version);
/* Configure with a GroupConfig given as JSON (proto3 JSON mapping). */
int32_t dcpmerge_admin_configure_json(dcpmerge_admin* admin, const char* group_config_json, float default_scale,
                                      uint64_t* config_version, uint64_t* config_hash);
/* Drain: timeout_ms 0 = the server's default wait. */
int32_t dcpmerge_admin_drain(dcpmerge_admin* admin, int64_t timeout_ms, int32_t* drained,
                             uint64_t* steps_in_flight);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* DCPMERGE_CAPI_DCPMERGE_C_H_ */
