#include "base/version_flag.h"

#include <string>

#include "absl/flags/usage_config.h"
#include "base/version.h"

namespace dcpmerge {

void UseVersionFlag(absl::string_view program) {
  absl::FlagsUsageConfig usage;
  usage.version_string = [name = std::string(program)] { return VersionLine(name) + "\n"; };
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace dcpmerge
