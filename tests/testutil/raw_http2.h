// A raw HTTP/2 client for tests that must send what no gRPC client sends:
// a gRPC length prefix that does not match the bytes that follow (a 2 GiB
// prefix followed by nothing), streams that are opened and never used.
// Loopback only; every read has a deadline. Plaintext (h2c) only.
//
// Response headers are decoded with HPACK's static and dynamic tables;
// Huffman-coded strings (gRPC does not use them for grpc-status and
// grpc-message) come back as "<huffman>".
#ifndef DCPMERGE_TESTS_TESTUTIL_RAW_HTTP2_H_
#define DCPMERGE_TESTS_TESTUTIL_RAW_HTTP2_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dcpmerge::testing {

class RawHttp2 {
 public:
  enum FrameType : uint8_t { kData = 0, kHeaders = 1, kRst = 3, kSettings = 4, kPing = 6, kGoaway = 7,
                             kWindowUpdate = 8, kContinuation = 9 };

  // What became of one stream.
  struct StreamEnd {
    bool ended = false;       // trailers (END_STREAM) arrived
    bool reset = false;       // RST_STREAM arrived
    uint32_t rst_code = 0;
    bool goaway = false;      // the connection got GOAWAY
    bool closed = false;      // the connection closed
    int grpc_status = -1;     // from the trailers
    std::string grpc_message;
    std::string Describe() const {
      return absl::StrCat("ended=", ended, " reset=", reset, " rst_code=", rst_code, " goaway=", goaway,
                          " closed=", closed, " grpc-status=", grpc_status, " grpc-message='", grpc_message, "'");
    }
  };

  RawHttp2() = default;
  ~RawHttp2() { Close(); }
  RawHttp2(const RawHttp2&) = delete;
  RawHttp2& operator=(const RawHttp2&) = delete;

  // Connects to 127.0.0.1:port and sends the client preface and SETTINGS.
  bool Connect(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return false;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return false;
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    port_ = port;
    return SendRaw("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") && SendFrame(kSettings, 0, 0, "");
  }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // Closes with a TCP reset (SO_LINGER 0): the peer vanishing mid-stream.
  void Reset() {
    if (fd_ >= 0) {
      const linger abort_on_close{1, 0};
      setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
    }
    Close();
  }

  // Opens stream `id` (odd, increasing): a gRPC POST to `path` with extra
  // headers (e.g. {"authorization", "Bearer x"}).
  bool OpenStream(uint32_t id, const std::string& path,
                  const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    std::string block;
    auto lit = [&block](const std::string& name, const std::string& value) {
      block.push_back(0);  // literal without indexing, new name
      AppendString(&block, name);
      AppendString(&block, value);
    };
    lit(":method", "POST");
    lit(":scheme", "http");
    lit(":path", path);
    lit(":authority", absl::StrCat("127.0.0.1:", port_));
    lit("content-type", "application/grpc");
    lit("te", "trailers");
    for (const auto& [k, v] : extra) lit(k, v);
    return SendFrame(kHeaders, 0x4 /*END_HEADERS*/, id, block);
  }

  // DATA frames of at most 16 KiB; the last one with END_STREAM if asked.
  bool SendData(uint32_t id, const std::string& bytes, bool end_stream = false) {
    size_t off = 0;
    do {
      const size_t n = std::min<size_t>(16384, bytes.size() - off);
      const bool last = off + n == bytes.size();
      if (!SendFrame(kData, last && end_stream ? 0x1 : 0, id, bytes.substr(off, n))) return false;
      conn_window_ -= static_cast<int64_t>(n);
      stream_sent_[id] += static_cast<int64_t>(n);
      off += n;
    } while (off < bytes.size());
    return true;
  }

  // Sends up to `bytes` on stream `id` as a well-behaved peer would: never
  // beyond the flow-control windows the server has granted, reading its
  // WINDOW_UPDATEs meanwhile. Stops when the stream or connection ends or
  // no window opens for `stall`; returns the bytes sent.
  uint64_t SendWithinWindow(uint32_t id, uint64_t bytes, absl::Duration stall) {
    const std::string chunk(16384, 'x');
    uint64_t sent = 0;
    while (sent < bytes && !closed_ && !goaway_) {
      if (ends_.count(id) && (ends_[id].reset || ends_[id].ended)) break;
      const int64_t window = std::min(conn_window_, StreamWindow(id));
      if (window <= 0) {
        const absl::Time deadline = absl::Now() + stall;
        while (std::min(conn_window_, StreamWindow(id)) <= 0 && absl::Now() < deadline && !closed_) {
          ReadFrame(deadline);
        }
        if (std::min(conn_window_, StreamWindow(id)) <= 0) break;
        continue;
      }
      const size_t n = static_cast<size_t>(std::min<uint64_t>({chunk.size(), static_cast<uint64_t>(window), bytes - sent}));
      if (!SendFrame(kData, 0, id, chunk.substr(0, n))) break;
      conn_window_ -= static_cast<int64_t>(n);
      stream_sent_[id] += static_cast<int64_t>(n);
      sent += n;
    }
    return sent;
  }

  // A gRPC message prefix: not compressed, big-endian length.
  static std::string GrpcPrefix(uint32_t length) {
    std::string p(5, '\0');
    p[1] = static_cast<char>(length >> 24);
    p[2] = static_cast<char>(length >> 16);
    p[3] = static_cast<char>(length >> 8);
    p[4] = static_cast<char>(length);
    return p;
  }

  // Reads (acknowledging SETTINGS and PINGs) until stream `id` ends, is
  // reset, or the connection goes away, or `timeout` passes.
  StreamEnd WaitStreamEnd(uint32_t id, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      auto it = ends_.find(id);
      if (it != ends_.end() && (it->second.ended || it->second.reset)) return it->second;
      if (goaway_ || closed_) {
        StreamEnd e = it != ends_.end() ? it->second : StreamEnd{};
        e.goaway = goaway_;
        e.closed = closed_;
        return e;
      }
      if (!ReadFrame(deadline)) {
        StreamEnd e = ends_.count(id) ? ends_[id] : StreamEnd{};
        e.closed = closed_;
        e.goaway = goaway_;
        return e;
      }
    }
  }

  // Reads whatever arrives for `d` (acks, window updates); false when the
  // connection closed.
  bool Pump(absl::Duration d) {
    const absl::Time deadline = absl::Now() + d;
    while (absl::Now() < deadline && !closed_) ReadFrame(deadline);
    return !closed_;
  }

  bool closed() const { return closed_; }

 private:
  static void AppendInt(std::string* out, uint64_t v, int prefix_bits, uint8_t first_byte_flags) {
    const uint64_t max = (1u << prefix_bits) - 1;
    if (v < max) {
      out->push_back(static_cast<char>(first_byte_flags | v));
      return;
    }
    out->push_back(static_cast<char>(first_byte_flags | max));
    v -= max;
    while (v >= 128) {
      out->push_back(static_cast<char>((v % 128) + 128));
      v /= 128;
    }
    out->push_back(static_cast<char>(v));
  }
  static void AppendString(std::string* out, const std::string& s) {
    AppendInt(out, s.size(), 7, 0);
    out->append(s);
  }

  bool SendRaw(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  bool SendFrame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
    std::string f(9, '\0');
    f[0] = static_cast<char>(payload.size() >> 16);
    f[1] = static_cast<char>(payload.size() >> 8);
    f[2] = static_cast<char>(payload.size());
    f[3] = static_cast<char>(type);
    f[4] = static_cast<char>(flags);
    f[5] = static_cast<char>((stream >> 24) & 0x7F);
    f[6] = static_cast<char>(stream >> 16);
    f[7] = static_cast<char>(stream >> 8);
    f[8] = static_cast<char>(stream);
    return SendRaw(f + payload);
  }

  // Fills buf_ to at least n bytes before the deadline.
  bool Need(size_t n, absl::Time deadline) {
    while (buf_.size() < n) {
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
      if (r < 0) return false;
      if (r == 0) continue;
      char tmp[65536];
      const ssize_t got = recv(fd_, tmp, sizeof(tmp), 0);
      if (got <= 0) {
        closed_ = true;
        return false;
      }
      buf_.append(tmp, static_cast<size_t>(got));
    }
    return true;
  }

  bool ReadFrame(absl::Time deadline) {
    if (!Need(9, deadline)) return false;
    const size_t len = (static_cast<uint8_t>(buf_[0]) << 16) | (static_cast<uint8_t>(buf_[1]) << 8) |
                       static_cast<uint8_t>(buf_[2]);
    if (!Need(9 + len, deadline)) return false;
    const uint8_t type = static_cast<uint8_t>(buf_[3]);
    const uint8_t flags = static_cast<uint8_t>(buf_[4]);
    const uint32_t stream = ((static_cast<uint8_t>(buf_[5]) & 0x7F) << 24) | (static_cast<uint8_t>(buf_[6]) << 16) |
                            (static_cast<uint8_t>(buf_[7]) << 8) | static_cast<uint8_t>(buf_[8]);
    const std::string payload = buf_.substr(9, len);
    buf_.erase(0, 9 + len);
    switch (type) {
      case kSettings:
        for (size_t i = 0; i + 6 <= payload.size(); i += 6) {
          if (payload[i] == 0 && payload[i + 1] == 0x4) {  // SETTINGS_INITIAL_WINDOW_SIZE
            initial_window_ = (static_cast<uint8_t>(payload[i + 2]) << 24) |
                              (static_cast<uint8_t>(payload[i + 3]) << 16) |
                              (static_cast<uint8_t>(payload[i + 4]) << 8) | static_cast<uint8_t>(payload[i + 5]);
          }
        }
        if (!(flags & 0x1)) SendFrame(kSettings, 0x1, 0, "");
        break;
      case kPing:
        if (!(flags & 0x1)) SendFrame(kPing, 0x1, 0, payload);
        break;
      case kGoaway:
        goaway_ = true;
        break;
      case kWindowUpdate:
        if (payload.size() >= 4) {
          const int64_t inc = ((static_cast<uint8_t>(payload[0]) & 0x7F) << 24) |
                              (static_cast<uint8_t>(payload[1]) << 16) | (static_cast<uint8_t>(payload[2]) << 8) |
                              static_cast<uint8_t>(payload[3]);
          (stream == 0 ? conn_window_ : stream_granted_[stream]) += inc;
        }
        break;
      case kRst:
        ends_[stream].reset = true;
        if (payload.size() >= 4) {
          ends_[stream].rst_code = (static_cast<uint8_t>(payload[0]) << 24) | (static_cast<uint8_t>(payload[1]) << 16) |
                                   (static_cast<uint8_t>(payload[2]) << 8) | static_cast<uint8_t>(payload[3]);
        }
        break;
      case kHeaders:
      case kContinuation: {
        std::string block = payload;
        if (type == kHeaders) {
          size_t skip = 0, pad = 0;
          if (flags & 0x8) pad = static_cast<uint8_t>(block[skip++]);
          if (flags & 0x20) skip += 5;
          block = block.substr(skip, block.size() - skip - pad);
          header_stream_ = stream;
          header_end_stream_ = flags & 0x1;
          header_block_.clear();
        }
        header_block_ += block;
        if (flags & 0x4) {  // END_HEADERS
          StreamEnd& e = ends_[header_stream_];
          for (const auto& [k, v] : DecodeBlock(header_block_)) {
            if (k == "grpc-status") e.grpc_status = std::atoi(v.c_str());
            if (k == "grpc-message") e.grpc_message = PercentDecode(v);
          }
          if (header_end_stream_) e.ended = true;
        }
        break;
      }
      default:
        if (type == kData && (flags & 0x1)) ends_[stream].ended = true;
        break;
    }
    return true;
  }

  static std::string PercentDecode(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '%' && i + 2 < s.size()) {
        out.push_back(static_cast<char>(std::strtol(s.substr(i + 1, 2).c_str(), nullptr, 16)));
        i += 2;
      } else {
        out.push_back(s[i]);
      }
    }
    return out;
  }

  // HPACK (RFC 7541) without Huffman decoding.
  static bool ReadInt(const std::string& b, size_t* pos, int prefix_bits, uint64_t* v) {
    if (*pos >= b.size()) return false;
    const uint64_t max = (1u << prefix_bits) - 1;
    *v = static_cast<uint8_t>(b[(*pos)++]) & max;
    if (*v < max) return true;
    int shift = 0;
    while (*pos < b.size()) {
      const uint8_t c = static_cast<uint8_t>(b[(*pos)++]);
      *v += static_cast<uint64_t>(c & 0x7F) << shift;
      shift += 7;
      if (!(c & 0x80)) return true;
    }
    return false;
  }
  static bool ReadString(const std::string& b, size_t* pos, std::string* s) {
    if (*pos >= b.size()) return false;
    const bool huffman = static_cast<uint8_t>(b[*pos]) & 0x80;
    uint64_t len;
    if (!ReadInt(b, pos, 7, &len) || *pos + len > b.size()) return false;
    *s = huffman ? "<huffman>" : b.substr(*pos, len);
    *pos += len;
    return true;
  }
  std::pair<std::string, std::string> Entry(uint64_t index) const {
    static const char* kStatic[][2] = {
        {":authority", ""}, {":method", "GET"}, {":method", "POST"}, {":path", "/"}, {":path", "/index.html"},
        {":scheme", "http"}, {":scheme", "https"}, {":status", "200"}, {":status", "204"}, {":status", "206"},
        {":status", "304"}, {":status", "400"}, {":status", "404"}, {":status", "500"}, {"accept-charset", ""},
        {"accept-encoding", "gzip, deflate"}, {"accept-language", ""}, {"accept-ranges", ""}, {"accept", ""},
        {"access-control-allow-origin", ""}, {"age", ""}, {"allow", ""}, {"authorization", ""},
        {"cache-control", ""}, {"content-disposition", ""}, {"content-encoding", ""}, {"content-language", ""},
        {"content-length", ""}, {"content-location", ""}, {"content-range", ""}, {"content-type", ""},
        {"cookie", ""}, {"date", ""}, {"etag", ""}, {"expect", ""}, {"expires", ""}, {"from", ""}, {"host", ""},
        {"if-match", ""}, {"if-modified-since", ""}, {"if-none-match", ""}, {"if-range", ""},
        {"if-unmodified-since", ""}, {"last-modified", ""}, {"link", ""}, {"location", ""}, {"max-forwards", ""},
        {"proxy-authenticate", ""}, {"proxy-authorization", ""}, {"range", ""}, {"referer", ""}, {"refresh", ""},
        {"retry-after", ""}, {"server", ""}, {"set-cookie", ""}, {"strict-transport-security", ""},
        {"transfer-encoding", ""}, {"user-agent", ""}, {"vary", ""}, {"via", ""}, {"www-authenticate", ""}};
    if (index >= 1 && index <= 61) return {kStatic[index - 1][0], kStatic[index - 1][1]};
    if (index >= 62 && index - 62 < dynamic_.size()) return dynamic_[index - 62];
    return {"<bad index>", ""};
  }
  void AddDynamic(std::pair<std::string, std::string> e) {
    dynamic_.push_front(std::move(e));
    Evict();
  }
  void Evict() {
    auto size = [this] {
      size_t s = 0;
      for (const auto& [k, v] : dynamic_) s += k.size() + v.size() + 32;
      return s;
    };
    while (!dynamic_.empty() && size() > dynamic_max_) dynamic_.pop_back();
  }
  std::vector<std::pair<std::string, std::string>> DecodeBlock(const std::string& b) {
    std::vector<std::pair<std::string, std::string>> out;
    size_t pos = 0;
    while (pos < b.size()) {
      const uint8_t c = static_cast<uint8_t>(b[pos]);
      uint64_t index;
      if (c & 0x80) {  // indexed
        if (!ReadInt(b, &pos, 7, &index)) break;
        out.push_back(Entry(index));
      } else if ((c & 0xE0) == 0x20) {  // table size update
        if (!ReadInt(b, &pos, 5, &index)) break;
        dynamic_max_ = index;
        Evict();
      } else {
        const bool incremental = (c & 0xC0) == 0x40;
        if (!ReadInt(b, &pos, incremental ? 6 : 4, &index)) break;
        std::pair<std::string, std::string> e;
        if (index == 0) {
          if (!ReadString(b, &pos, &e.first)) break;
        } else {
          e.first = Entry(index).first;
        }
        if (!ReadString(b, &pos, &e.second)) break;
        if (incremental) AddDynamic(e);
        out.push_back(std::move(e));
      }
    }
    return out;
  }

  int fd_ = -1;
  int port_ = 0;
  std::string buf_;
  bool closed_ = false;
  bool goaway_ = false;
  std::map<uint32_t, StreamEnd> ends_;
  // Flow control as the server grants it (RFC 9113 section 6.9).
  int64_t StreamWindow(uint32_t id) { return initial_window_ + stream_granted_[id] - stream_sent_[id]; }
  int64_t conn_window_ = 65535;
  int64_t initial_window_ = 65535;
  std::map<uint32_t, int64_t> stream_granted_;
  std::map<uint32_t, int64_t> stream_sent_;
  uint32_t header_stream_ = 0;
  bool header_end_stream_ = false;
  std::string header_block_;
  std::deque<std::pair<std::string, std::string>> dynamic_;
  size_t dynamic_max_ = 4096;
};

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_TESTUTIL_RAW_HTTP2_H_
