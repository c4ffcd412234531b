// The server's durable state: the group configuration, the scale table, the
// default scale and the config version, written atomically on every change
// (write a temporary file, fsync, rename over the old one, fsync the
// directory) and read back at start, so a restart keeps the scales and the
// versions continue (docs/server.md, "Limits and security").
//
// Format: one header line "dcpmerge-state 1 <fnv1a64 of the body, 16 hex>
// <body bytes>", then the body: Admin.GetConfigResponse's JSON mapping with
// configured, config, config_version, config_hash, layer_scales and
// default_scale. A file that does not match its header, does not parse, or
// holds an invalid configuration or scale is corrupt: reading it is an
// error naming the file and what is wrong, never a silent default.
#ifndef DCPMERGE_SERVER_STATE_FILE_H_
#define DCPMERGE_SERVER_STATE_FILE_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/config_store.h"

namespace dcpmerge {

// Writes `state` to `path` atomically (a temporary file renamed over it:
// a reader or a restart sees the old or the new state, never a mix).
// sync: fsync the file before the rename and the directory after it, so the
// change also survives a power loss or kernel crash; without, it survives
// the process (the page cache outlives it) but not the machine. UNAVAILABLE
// naming state_file and the reason when it cannot (the file keeps its
// previous content).
absl::Status WriteStateFile(const std::string& path, const ConfigSnapshot& state, bool sync = true);

// nullopt: `path` does not exist. DATA_LOSS "state_file <path>: ..." when it
// exists but is unreadable or corrupt. The snapshot's fields are checked by
// ConfigStore::Restore, not here (the spec's syntax is: GroupSpecFromProto).
absl::StatusOr<std::optional<ConfigSnapshot>> ReadStateFile(const std::string& path);

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_STATE_FILE_H_
