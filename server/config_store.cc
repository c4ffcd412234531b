#include "server/config_store.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace dcpmerge {

float ConfigSnapshot::ScaleForLayer(int32_t layer) const {
  auto it = layer_scales.find(layer);
  return it == layer_scales.end() ? default_scale : it->second;
}

ConfigStore::ConfigStore() : current_(std::make_shared<const ConfigSnapshot>()) {}

std::shared_ptr<const ConfigSnapshot> ConfigStore::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

std::shared_ptr<const ConfigSnapshot> ConfigStore::Publish(
    const std::function<void(ConfigSnapshot*)>& change, float default_scale) {
  absl::MutexLock lock(&mu_);
  auto next = std::make_shared<ConfigSnapshot>(*current_);
  next->version = current_->version + 1;
  change(next.get());
  if (default_scale != 0.0f) next->default_scale = default_scale;
  current_ = std::move(next);
  return current_;
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> ConfigStore::Configure(
    const v1::GroupConfig& config, float default_scale) {
  absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(config);
  if (!spec.ok()) return spec.status();
  if (default_scale != 0.0f) {
    absl::Status st = ValidateScale(default_scale, "default_scale");
    if (!st.ok()) return st;
  }
  return Publish(
      [&spec](ConfigSnapshot* next) {
        next->configured = true;
        next->spec = *spec;
        next->hash = GroupSpecHash(*spec);
      },
      default_scale);
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> ConfigStore::SetScales(
    const std::map<int32_t, float>& layer_scales, bool replace,
    float default_scale) {
  for (const auto& [layer, scale] : layer_scales) {
    absl::Status st = ValidateScale(scale, absl::StrCat("layer_scales[", layer, "]"));
    if (!st.ok()) return st;
  }
  if (default_scale != 0.0f) {
    absl::Status st = ValidateScale(default_scale, "default_scale");
    if (!st.ok()) return st;
  }
  return Publish(
      [&](ConfigSnapshot* next) {
        if (replace) next->layer_scales.clear();
        for (const auto& [layer, scale] : layer_scales) next->layer_scales[layer] = scale;
      },
      default_scale);
}

}  // namespace dcpmerge
