// Test helpers: a minimal HTTP/1.0 GET over a loopback socket and a parser
// for the Prometheus text exposition format (enough for the tests' checks).
#ifndef DCPMERGE_TESTS_SERVER_METRICS_HTTP_GET_H_
#define DCPMERGE_TESTS_SERVER_METRICS_HTTP_GET_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dcpmerge::testing {

struct HttpResponse {
  int status = -1;  // -1: no response (connect failed, timeout)
  std::string body;
  std::string headers;  // the status line and header lines, as received
};

// GET http://127.0.0.1:<port><path>; 5 s socket timeouts. `extra_headers`:
// more request header lines, each ending in "\r\n".
inline HttpResponse HttpGet(int port, const std::string& path, const std::string& extra_headers = "") {
  HttpResponse r;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return r;
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n", extra_headers, "\r\n");
  if (send(fd, req.data(), req.size(), 0) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return r;
  }
  std::string raw;
  char buf[16384];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  // "HTTP/1.x CODE ...\r\n headers \r\n\r\n body"
  const size_t sp = raw.find(' ');
  const size_t end = raw.find("\r\n\r\n");
  if (!absl::StartsWith(raw, "HTTP/") || sp == std::string::npos || end == std::string::npos) return r;
  if (!absl::SimpleAtoi(raw.substr(sp + 1, 3), &r.status)) r.status = -1;
  r.body = raw.substr(end + 4);
  r.headers = raw.substr(0, end);
  return r;
}

// Samples keyed by the series as written ("name{label=\"v\"}" or "name"),
// and "# TYPE" lines by family name.
struct Exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  bool Has(const std::string& series) const { return samples.count(series) > 0; }
  double Get(const std::string& series) const {
    auto it = samples.find(series);
    return it == samples.end() ? -1.0 : it->second;
  }
};

inline Exposition ParseExposition(const std::string& text) {
  Exposition e;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty()) continue;
    if (absl::StartsWith(line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line.substr(7), ' ');
      if (parts.size() == 2) e.types[parts[0]] = parts[1];
      continue;
    }
    if (line[0] == '#') continue;
    // The value follows the last space outside the label set.
    const size_t close = line.rfind('}');
    const size_t sp = line.find(' ', close == absl::string_view::npos ? 0 : close);
    if (sp == absl::string_view::npos) continue;
    const std::string series(line.substr(0, sp));
    std::string value(line.substr(sp + 1));
    if (const size_t ts = value.find(' '); ts != std::string::npos) value.resize(ts);  // timestamp
    double v = 0;
    if (value == "+Inf") {
      v = 1e308 * 10;
    } else if (!absl::SimpleAtod(value, &v)) {
      continue;
    }
    e.samples[series] = v;
  }
  return e;
}

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_SERVER_METRICS_HTTP_GET_H_
