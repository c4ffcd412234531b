// Versioned group configuration + static FP8 scale table.
//
// Every change (Configure, SetScales) makes a new immutable ConfigSnapshot
// with a higher version and swaps it in atomically. A step takes the current
// snapshot when its first part arrives and uses it to the end, so a change
// applies exactly at a step boundary and a step reports the version it used.
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

struct ConfigSnapshot {
  uint64_t version = 0;  // 0: never configured
  bool configured = false;
  GroupSpec spec;
  uint64_t hash = 0;
  std::map<int32_t, float> layer_scales;
  float default_scale = 1.0f;

  // The static FP8 scale of a layer (its table entry, else the default).
  float ScaleForLayer(int32_t layer) const;
};

class ConfigStore {
 public:
  ConfigStore();

  // The current snapshot; never null. Cheap (one shared_ptr copy).
  std::shared_ptr<const ConfigSnapshot> Current() const;

  // Replaces the configuration (new version). default_scale 0 keeps the
  // current default. Keeps the scale table.
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> Configure(
      const v1::GroupConfig& config, float default_scale);

  // Merges (replace=false) or replaces the scale table (new version).
  // Every scale is checked first; nothing changes on error.
  absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> SetScales(
      const std::map<int32_t, float>& layer_scales, bool replace,
      float default_scale);

 private:
  // The next version: a copy of the current snapshot, changed by `change`,
  // with default_scale set unless 0.
  std::shared_ptr<const ConfigSnapshot> Publish(const std::function<void(ConfigSnapshot*)>& change,
                                                float default_scale);

  mutable absl::Mutex mu_;
  std::shared_ptr<const ConfigSnapshot> current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dcpmerge

#endif  // DCPMERGE_SERVER_CONFIG_STORE_H_
