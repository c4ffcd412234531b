#include "tools/dcpmergectl/flags.h"

#include "absl/flags/flag.h"

// Global flags.
ABSL_FLAG(std::string, server, "127.0.0.1:50052",
          "Admin listener of the server, host:port (health also works on the rank listener)");
ABSL_FLAG(std::string, token_file, "",
          "File holding the admin bearer token (else env DCPMERGE_ADMIN_TOKEN; never a flag value)");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA that signed the server certificate (enables TLS; any --tls_* flag does)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM client private key (mutual TLS)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Expected server name in its certificate when it differs from the --server host");
ABSL_FLAG(int64_t, deadline_ms, 5000,
          "Deadline for connecting and for each call (drain adds its wait to it)");
// Command flags.
ABSL_FLAG(std::string, output, "table",
          "get-config, stats, rank-token: table (text) | json (get-config, stats: the protobuf JSON mapping); -o json "
          "is the same");
ABSL_FLAG(bool, json, false, "get-config, stats, rank-token: the same as --output=json");
ABSL_FLAG(std::optional<int32_t>, world_size, std::nullopt,
          "configure: DCP ranks N (1..64); rank-token: issue the tokens of ranks 0..N-1");
ABSL_FLAG(std::optional<int32_t>, num_heads, std::nullopt, "configure: heads H");
ABSL_FLAG(std::optional<int32_t>, head_size, std::nullopt, "configure: head size D");
ABSL_FLAG(std::optional<int64_t>, max_tokens, std::nullopt, "configure: largest tokens per step T");
ABSL_FLAG(std::optional<std::string>, input_dtype, std::nullopt, "configure: bf16 | fp16 | fp32");
ABSL_FLAG(std::optional<std::string>, lse_base, std::nullopt, "configure: e | 2");
ABSL_FLAG(std::optional<std::string>, lse_layout, std::nullopt, "configure: heads_tokens | tokens_heads");
ABSL_FLAG(std::optional<std::string>, output_mode, std::nullopt,
          "configure: fp8_per_tensor | fp8_per_token | fp8_per_group | passthrough");
ABSL_FLAG(std::optional<int32_t>, group_size, std::nullopt, "configure: fp8_per_group group size, 64 | 128");
ABSL_FLAG(std::optional<bool>, power_of_two_scales, std::nullopt,
          "configure: round dynamic scales up to powers of two");
ABSL_FLAG(std::optional<std::string>, return_mode, std::nullopt, "configure: full | head_slice");
ABSL_FLAG(std::optional<bool>, return_lse, std::nullopt, "configure: also return the merged LSE");
ABSL_FLAG(std::optional<float>, default_scale, std::nullopt,
          "configure, set-scales: static FP8 scale for layers without their own (finite, > 0)");
ABSL_FLAG(std::string, file, "", "set-scales: JSON file {\"<layer>\": <scale>, ...}");
ABSL_FLAG(bool, replace, false, "set-scales: remove layers not in the file (they fall back to the default)");
ABSL_FLAG(int64_t, drain_timeout_ms, 0, "drain: how long the server waits for steps in flight (0: its --drain_timeout_ms)");
ABSL_FLAG(bool, ready, false, "health: also require merge readiness (exit 4 when not ready)");
ABSL_FLAG(std::string, join_secret_file, "",
          "check-join: file holding the group's join secret or a rank token; rank-token: the group's join secret "
          "(else env DCPMERGE_JOIN_SECRET; never a flag value)");
ABSL_FLAG(std::optional<int32_t>, rank, std::nullopt,
          "rank-token: the rank to issue a token for (0..63); check-join: the rank to ask as (default: the "
          "token's rank, else 0)");
