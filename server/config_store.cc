#include "server/config_store.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace dcpmerge {

float ConfigSnapshot::ScaleForLayer(int32_t layer) const {
  auto it = layer_scales.find(layer);
  return it == layer_scales.end() ? default_scale : it->second;
}

absl::Status ConfigSnapshot::CheckLayer(int64_t layer, absl::string_view field) const {
  if (layer < 0 || layer >= max_layers) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": layer ", layer, " is not in 0..", max_layers - 1,
                                                   " (the server's --max_layers is ", max_layers, ")"));
  }
  return absl::OkStatus();
}

ConfigStore::ConfigStore() : ConfigStore(Options{}) {}

ConfigStore::ConfigStore(Options options) : options_(options) {
  auto first = std::make_shared<ConfigSnapshot>();
  first->max_layers = options_.max_layers;
  current_ = std::move(first);
}

void ConfigStore::SetOptions(Options options) {
  absl::MutexLock write(&write_mu_);
  options_ = options;
  auto next = std::make_shared<ConfigSnapshot>(*Current());
  next->max_layers = options_.max_layers;
  absl::MutexLock lock(&mu_);
  current_ = std::move(next);
}

void ConfigStore::SetPersist(PersistFn persist) {
  absl::MutexLock lock(&write_mu_);
  persist_ = std::move(persist);
}

std::shared_ptr<const ConfigSnapshot> ConfigStore::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> ConfigStore::Publish(
    const std::function<void(ConfigSnapshot*)>& change, float default_scale) {
  absl::MutexLock write(&write_mu_);
  auto next = std::make_shared<ConfigSnapshot>(*Current());
  next->version += 1;
  change(next.get());
  if (default_scale != 0.0f) next->default_scale = default_scale;
  if (persist_) {
    if (absl::Status st = persist_(*next); !st.ok()) return st;
  }
  absl::MutexLock lock(&mu_);
  current_ = std::move(next);
  return current_;
}

absl::Status ConfigStore::CheckShapeLimits(const GroupSpec& spec) const {
  const int64_t part = spec.PartialOutBytes(spec.max_tokens) + spec.LseBytes(spec.max_tokens);
  if (options_.max_part_bytes > 0 && part > options_.max_part_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.max_tokens: one part of ", spec.max_tokens, " tokens is ", part,
        " bytes (partial_out + lse), over the rank listener's message limit of ", options_.max_part_bytes,
        " bytes (--max_message_bytes, fixed when the server started)"));
  }
  if (options_.max_step_bytes > 0 && part * spec.num_parts > options_.max_step_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.max_tokens: one step's ", spec.num_parts, " parts are ", part * spec.num_parts,
        " bytes, over --max_pending_bytes (", options_.max_step_bytes, ")"));
  }
  const int64_t in_flight = 2 * int64_t{spec.num_parts} * (part + options_.message_headroom);
  if (options_.max_buffered_bytes > 0 && in_flight > options_.max_buffered_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.max_tokens: two messages per rank in flight are ", in_flight,
        " bytes, over the rank listener's buffer quota of ", options_.max_buffered_bytes,
        " bytes (--max_buffered_bytes, fixed when the server started)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ConfigSnapshot>> ConfigStore::Configure(
    const v1::GroupConfig& config, float default_scale) {
  absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(config);
  if (!spec.ok()) return spec.status();
  if (absl::Status st = CheckShapeLimits(*spec); !st.ok()) return st;
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
  const std::shared_ptr<const ConfigSnapshot> limits = Current();  // max_layers never changes
  for (const auto& [layer, scale] : layer_scales) {
    const std::string field = absl::StrCat("layer_scales[", layer, "]");
    if (absl::Status st = limits->CheckLayer(layer, field); !st.ok()) return st;
    absl::Status st = ValidateScale(scale, field);
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

absl::Status ConfigStore::Restore(const ConfigSnapshot& state) {
  auto next = std::make_shared<ConfigSnapshot>(state);
  next->max_layers = options_.max_layers;
  if (next->configured) {
    if (absl::Status st = CheckShapeLimits(next->spec); !st.ok()) return st;
    next->hash = GroupSpecHash(next->spec);
  }
  for (const auto& [layer, scale] : next->layer_scales) {
    const std::string field = absl::StrCat("layer_scales[", layer, "]");
    if (absl::Status st = next->CheckLayer(layer, field); !st.ok()) return st;
    if (absl::Status st = ValidateScale(scale, field); !st.ok()) return st;
  }
  if (absl::Status st = ValidateScale(next->default_scale, "default_scale"); !st.ok()) return st;
  absl::MutexLock write(&write_mu_);
  absl::MutexLock lock(&mu_);
  current_ = std::move(next);
  return absl::OkStatus();
}

}  // namespace dcpmerge
