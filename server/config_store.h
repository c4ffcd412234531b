// Versioned group configuration + static FP8 scale table.
//
// Every change (Configure, SetScales) makes a new immutable ConfigSnapshot
// with a higher version and swaps it in atomically. A step takes the current
// snapshot when its first part arrives and uses it to the end, so a change
// applies exactly at a step boundary and a step reports the version it used.
//
// Limits (Options): layer ids are 0..max_layers-1 on every API (SetScales'
// keys, MergeData's header.layer, the NCCL header's layer id), so the scale
// table never holds more than max_layers entries; a configuration whose part
// or step would exceed the server's message or pending-bytes limits is
// refused at Configure, naming config.max_tokens and the limit.
//
// Persistence: with a persist function set, every new snapshot is handed to
// it before it is published; when it fails, nothing changes and the caller
// gets its error. Writers are serialised; readers (Current) never wait for a
// writer's persistence.
#ifndef DCPMERGE_SERVER_CONFIG_STORE_H_
#define DCPMERGE_SERVER_CONFIG_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/group_spec.h"
#include "dcpmerge/v1/config.pb.h"

namespace dcpmerge {

// Default of --max_layers: layer ids 0..4095.
inline constexpr int32_t kDefaultMaxLayers = 4096;

struct ConfigSnapshot {
  uint64_t version = 0;  // 0: never configured
  bool configured = false;
  GroupSpec spec;
  uint64_t hash = 0;
  std::map<int32_t, float> layer_scales;
  float default_scale = 1.0f;
  int32_t max_layers = kDefaultMaxLayers;  // layer ids 0..max_layers-1

  // The static FP8 scale of a layer (its table entry, else the default).
  float ScaleForLayer(int32_t layer) const;
  // OK when 0 <= layer < max_layers; INVALID_ARGUMENT naming `field` else.
  absl::Status CheckLayer(int64_t layer, absl::string_view field) const;
};

class ConfigStore {
 public:
  struct Options {
    int32_t max_layers = kDefaultMaxLayers;
    // One part (partial_out + lse at max_tokens, plus headroom) must fit in
    // this many bytes (the rank listener's message limit); 0: no check.
    int64_t max_part_bytes = 0;
    // One step's N parts together must fit (the pending-bytes cap); 0: no check.
    int64_t max_step_bytes = 0;
    // Two messages per rank in flight (N x 2 x (part + headroom)) must fit
    // in the rank listener's buffer quota; 0: no check.
    int64_t max_buffered_bytes = 0;
    int64_t message_headroom = 0;
  };
  using PersistFn = std::function<absl::Status(const ConfigSnapshot&)>;

  ConfigStore();
  explicit ConfigStore(Options options);

  const Options& options() const { return options_; }
  // Start-up only, before any change: the limits (they may depend on the
  // configuration restored or given at start).
  void SetOptions(Options options);

  // Called with every new snapshot before it is published (see above).
  // Set before the first change.
  void SetPersist(PersistFn persist);

  // The current snapshot; never null. Cheap (one shared_ptr copy).
  std::shared_ptr<const ConfigSnapshot> Current() const;

  // Replaces the configuration (new version). default_scale 0 keeps the
  // current default. Keeps the scale table.
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> Configure(
      const v1::GroupConfig& config, float default_scale);

  // Merges (replace=false) or replaces the scale table (new version).
  // Every layer and scale is checked first; nothing changes on error.
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> SetScales(
      const std::map<int32_t, float>& layer_scales, bool replace,
      float default_scale);

  // Start-up only: makes `state` (a restored state file) the current
  // snapshot, version included, so later versions continue from it. Checks
  // it as Configure and SetScales would (shape, limits, layers, scales);
  // nothing changes on error. The persist function is not called.
  absl::Status Restore(const ConfigSnapshot& state);

  // What the shape implies against the limits (Options): OK or
  // INVALID_ARGUMENT naming config.max_tokens and the limit.
  absl::Status CheckShapeLimits(const GroupSpec& spec) const;

 private:
  // The next version: a copy of the current snapshot, changed by `change`,
  // with default_scale set unless 0; persisted, then published.
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> Publish(
      const std::function<void(ConfigSnapshot*)>& change, float default_scale);

  Options options_;  // set before any change; read-only after
  absl::Mutex write_mu_;  // serialises writers (and their persistence)
  PersistFn persist_ ABSL_GUARDED_BY(write_mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<const ConfigSnapshot> current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_CONFIG_STORE_H_
