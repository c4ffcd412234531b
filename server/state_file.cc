#include "server/state_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "dcpmerge/v1/admin.pb.h"
#include "google/protobuf/util/json_util.h"

namespace dcpmerge {
namespace {

constexpr char kMagic[] = "dcpmerge-state";
constexpr int kFormat = 1;

uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

absl::Status Unavailable(const std::string& path, const std::string& what) {
  return absl::UnavailableError(absl::StrCat("state_file ", path, ": ", what, " (the change was not applied)"));
}

absl::Status Corrupt(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(
      "state_file ", path, ": ", what,
      "; refusing to start with default scales. Fix or move the file away (a fresh start then needs "
      "--state_missing=fresh)"));
}

std::string Errno() { return std::strerror(errno); }

bool WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

absl::Status WriteStateFile(const std::string& path, const ConfigSnapshot& state, bool sync) {
  v1::GetConfigResponse body;
  body.set_configured(state.configured);
  if (state.configured) *body.mutable_config() = GroupSpecToProto(state.spec);
  body.set_config_version(state.version);
  body.set_config_hash(state.hash);
  for (const auto& [layer, scale] : state.layer_scales) (*body.mutable_layer_scales())[layer] = scale;
  body.set_default_scale(state.default_scale);
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(body, &json, o).ok()) {
    return Unavailable(path, "cannot encode the state");
  }
  json.push_back('\n');
  const std::string text =
      absl::StrCat(kMagic, " ", kFormat, " ", absl::StrFormat("%016x", Fnv1a64(json)), " ", json.size(), "\n", json);

  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Unavailable(path, absl::StrCat("cannot create ", tmp, ": ", Errno()));
  const bool ok = WriteAll(fd, text) && (!sync || ::fsync(fd) == 0);
  const std::string err = ok ? "" : Errno();
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    return Unavailable(path, absl::StrCat("cannot write ", tmp, ": ", err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string e = Errno();
    ::unlink(tmp.c_str());
    return Unavailable(path, absl::StrCat("cannot rename ", tmp, " over it: ", e));
  }
  if (!sync) return absl::OkStatus();
  // The rename itself must survive a crash: sync the directory entry.
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ConfigSnapshot>> ReadStateFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<ConfigSnapshot>();
    return Corrupt(path, absl::StrCat("cannot open: ", Errno()));
  }
  std::string text;
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string e = Errno();
      ::close(fd);
      return Corrupt(path, absl::StrCat("cannot read: ", e));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > (64u << 20)) {
      ::close(fd);
      return Corrupt(path, "larger than 64 MiB");
    }
  }
  ::close(fd);
  const size_t nl = text.find('\n');
  if (nl == std::string::npos) return Corrupt(path, "no header line");
  const std::vector<std::string> header = absl::StrSplit(text.substr(0, nl), ' ');
  int format = 0;
  uint64_t want_hash = 0, want_len = 0;
  if (header.size() != 4 || header[0] != kMagic || !absl::SimpleAtoi(header[1], &format) ||
      !absl::SimpleHexAtoi(header[2], &want_hash) || !absl::SimpleAtoi(header[3], &want_len)) {
    return Corrupt(path, absl::StrCat("header is not '", kMagic, " <format> <fnv1a64> <bytes>'"));
  }
  if (format != kFormat) return Corrupt(path, absl::StrCat("format ", format, " is not ", kFormat));
  const std::string json = text.substr(nl + 1);
  if (json.size() != want_len) {
    return Corrupt(path, absl::StrCat("body is ", json.size(), " bytes, the header says ", want_len,
                                      " (truncated or appended to)"));
  }
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // a fuzzer cannot forge the checksum, only bodies behind it
  if (Fnv1a64(json) != want_hash) return Corrupt(path, "checksum mismatch (the body was changed or damaged)");
#endif
  v1::GetConfigResponse body;
  google::protobuf::util::JsonParseOptions po;
  po.ignore_unknown_fields = false;
  if (auto st = google::protobuf::util::JsonStringToMessage(json, &body, po); !st.ok()) {
    return Corrupt(path, absl::StrCat("body does not parse: ", st.ToString()));
  }
  ConfigSnapshot s;
  s.configured = body.configured();
  s.version = body.config_version();
  if (s.configured) {
    absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(body.config());
    if (!spec.ok()) return Corrupt(path, std::string(spec.status().message()));
    s.spec = *spec;
    s.hash = GroupSpecHash(s.spec);
    if (body.config_hash() != s.hash) return Corrupt(path, "config_hash does not match the config");
  }
  for (const auto& [layer, scale] : body.layer_scales()) s.layer_scales[layer] = scale;
  s.default_scale = body.default_scale();
  return std::optional<ConfigSnapshot>(std::move(s));
}

}  // namespace dcpmerge
