// The server's state file (server/state_file.h) as ReadStateFile reads it at
// start: a file on a volume that a crash, a full disk or a person may have
// damaged. What it accepts is then restored (ConfigStore::Restore) and
// written back, as the next change would.
//
// Input: the file's bytes.
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/group_spec.h"
#include "server/config_store.h"
#include "server/state_file.h"
#include "tests/fuzz/fuzz_check.h"

namespace dcpmerge {
namespace {

// The input as a file (in memory: /proc/self/fd of a memfd) and a scratch
// directory for writing it back.
class Files {
 public:
  Files() {
    fd_ = memfd_create("state", 0);
    FUZZ_CHECK(fd_ >= 0, "memfd_create");
    input_ = absl::StrCat("/proc/self/fd/", fd_);
    const char* tmp = getenv("TMPDIR");
    std::string dir = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/state_fuzz.XXXXXX");
    FUZZ_CHECK(mkdtemp(dir.data()) != nullptr, dir);
    dir_ = dir;
    output_ = dir_ + "/state";
  }
  ~Files() {
    unlink(output_.c_str());
    rmdir(dir_.c_str());
  }

  const std::string& Input(const uint8_t* data, size_t size) {
    FUZZ_CHECK(ftruncate(fd_, 0) == 0 && pwrite(fd_, data, size, 0) == static_cast<ssize_t>(size), "memfd write");
    return input_;
  }
  const std::string& output() const { return output_; }

 private:
  int fd_ = -1;
  std::string input_, dir_, output_;
};

// Floats as the file keeps them: NaN reads back as NaN.
bool SameFloat(float a, float b) { return a == b ? std::signbit(a) == std::signbit(b) : std::isnan(a) && std::isnan(b); }

std::string Describe(const ConfigSnapshot& s) {
  return absl::StrCat("configured ", s.configured, " version ", s.version, " hash ", s.hash, " scales ",
                      s.layer_scales.size(), " default ", s.default_scale);
}

void CheckSame(const ConfigSnapshot& a, const ConfigSnapshot& b) {
  bool same = a.configured == b.configured && a.version == b.version && a.hash == b.hash &&
              SameFloat(a.default_scale, b.default_scale) && a.layer_scales.size() == b.layer_scales.size();
  if (a.configured && b.configured) {
    same = same && GroupSpecToProto(a.spec).SerializeAsString() == GroupSpecToProto(b.spec).SerializeAsString();
  }
  for (auto i = a.layer_scales.begin(), j = b.layer_scales.begin(); same && i != a.layer_scales.end(); ++i, ++j) {
    same = i->first == j->first && SameFloat(i->second, j->second);
  }
  FUZZ_CHECK(same, absl::StrCat("read ", Describe(a), ", wrote it and read back ", Describe(b)));
}

void FuzzOne(Files& files, const uint8_t* data, size_t size) {
  const absl::StatusOr<std::optional<ConfigSnapshot>> read = ReadStateFile(files.Input(data, size));
  if (!read.ok()) {
    // Never a silent default: a file that is there but wrong is DATA_LOSS.
    FUZZ_CHECK(absl::IsDataLoss(read.status()), read.status().ToString());
    return;
  }
  FUZZ_CHECK(read->has_value(), "the file exists: nullopt means missing");
  const ConfigSnapshot& state = **read;
  if (state.configured) {
    FUZZ_CHECK(state.hash == GroupSpecHash(state.spec), Describe(state));
    FUZZ_CHECK(GroupSpecFromProto(GroupSpecToProto(state.spec)).ok(), "the spec read does not validate");
  }
  // What start does with it next: either refused or the current snapshot.
  ConfigStore store;
  if (store.Restore(state).ok()) CheckSame(state, *store.Current());
  const absl::Status written = WriteStateFile(files.output(), state, /*sync=*/false);
  FUZZ_CHECK(written.ok(), written.ToString());
  const absl::StatusOr<std::optional<ConfigSnapshot>> back = ReadStateFile(files.output());
  FUZZ_CHECK(back.ok() && back->has_value(), back.ok() ? "missing" : back.status().ToString());
  CheckSame(state, **back);
}

}  // namespace
}  // namespace dcpmerge

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static dcpmerge::Files files;  // the scratch directory goes at exit
  dcpmerge::FuzzOne(files, data, size);
  return 0;
}
