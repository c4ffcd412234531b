// dcpmergectl's flags (defined in flags.cc). Global flags apply to every
// command; the others belong to the commands listed in cli.cc.
#ifndef DCPMERGE_TOOLS_DCPMERGECTL_FLAGS_H_
#define DCPMERGE_TOOLS_DCPMERGECTL_FLAGS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/flags/declare.h"

// Global.
ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, token_file);
ABSL_DECLARE_FLAG(std::string, tls_ca_file);
ABSL_DECLARE_FLAG(std::string, tls_cert_file);
ABSL_DECLARE_FLAG(std::string, tls_key_file);
ABSL_DECLARE_FLAG(std::string, tls_server_name);
ABSL_DECLARE_FLAG(int64_t, deadline_ms);
// Output (get-config, stats, rank-token).
ABSL_DECLARE_FLAG(std::string, output);
ABSL_DECLARE_FLAG(bool, json);
// configure, rank-token.
ABSL_DECLARE_FLAG(std::optional<int32_t>, world_size);
// configure.
ABSL_DECLARE_FLAG(std::optional<int32_t>, num_heads);
ABSL_DECLARE_FLAG(std::optional<int32_t>, head_size);
ABSL_DECLARE_FLAG(std::optional<int64_t>, max_tokens);
ABSL_DECLARE_FLAG(std::optional<std::string>, input_dtype);
ABSL_DECLARE_FLAG(std::optional<std::string>, lse_base);
ABSL_DECLARE_FLAG(std::optional<std::string>, lse_layout);
ABSL_DECLARE_FLAG(std::optional<std::string>, output_mode);
ABSL_DECLARE_FLAG(std::optional<int32_t>, group_size);
ABSL_DECLARE_FLAG(std::optional<bool>, power_of_two_scales);
ABSL_DECLARE_FLAG(std::optional<std::string>, return_mode);
ABSL_DECLARE_FLAG(std::optional<bool>, return_lse);
// configure, set-scales.
ABSL_DECLARE_FLAG(std::optional<float>, default_scale);
// set-scales.
ABSL_DECLARE_FLAG(std::string, file);
ABSL_DECLARE_FLAG(bool, replace);
// drain.
ABSL_DECLARE_FLAG(int64_t, drain_timeout_ms);
// health.
ABSL_DECLARE_FLAG(bool, ready);
// check-join, rank-token.
ABSL_DECLARE_FLAG(std::string, join_secret_file);
ABSL_DECLARE_FLAG(std::optional<int32_t>, rank);

#endif  // DCPMERGE_TOOLS_DCPMERGECTL_FLAGS_H_
