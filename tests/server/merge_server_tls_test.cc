// TLS and mutual TLS on the rank listener, with certificates made by the
// openssl CLI at test time (a throwaway CA, server and client certificates).
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/rank_client.h"
#include "gtest/gtest.h"
#include "base/log.h"
#include "server/merge_server.h"
#include "tests/server/test_config.h"

namespace dcpmerge {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = absl::StrCat(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp", "/tls");
    const std::string d = dir_;
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string script = absl::StrCat(
        "set -e; mkdir -p ", d, "; cd ", d, ";",
        "openssl req -x509 ", key, " -keyout ca.key -out ca.pem -days 1 -subj /CN=dcpmerge-test-ca;",
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext;",
        "openssl req ", key, " -keyout server.key -out server.csr -subj /CN=localhost;",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 "
        "-extfile san.ext;",
        "openssl req ", key, " -keyout client.key -out client.csr -subj /CN=rank;",
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1;");
    ok_ = std::system(absl::StrCat("(", script, ") >/dev/null 2>&1").c_str()) == 0;
  }
  void SetUp() override {
    if (!ok_) GTEST_SKIP() << "openssl could not make test certificates";
    SetLogQuiet(true);
    MergeServerOptions o;
    o.rank_address = "127.0.0.1:0";
    o.admin_address = "127.0.0.1:0";
    o.backend = "cpu";
    o.initial_config = testing::SmallConfig(1);
    o.tls_cert_file = dir_ + "/server.pem";
    o.tls_key_file = dir_ + "/server.key";
    o.tls_client_ca_file = dir_ + "/ca.pem";
    auto s = MergeServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  RankClientOptions Options() {
    RankClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", server_->rank_port());
    o.rank = 0;
    o.num_parts = 1;
    o.rpc_timeout = absl::Seconds(2);
    o.use_tls = true;
    o.tls_root_ca_file = dir_ + "/ca.pem";
    o.tls_client_cert_file = dir_ + "/client.pem";
    o.tls_client_key_file = dir_ + "/client.key";
    return o;
  }

  static std::string dir_;
  static bool ok_;
  std::unique_ptr<MergeServer> server_;
};
std::string TlsTest::dir_;
bool TlsTest::ok_ = false;

TEST_F(TlsTest, MutualTlsJoinsAndMerges) {
  auto c = RankClient::Connect(Options());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Join().ok());
  std::string out(4 * 2 * 64 * 2, '\0');
  std::vector<float> lse(4 * 2, 0.0f);
  auto r = (*c)->Merge(0, 0, 4, out.data(), out.size(), lse.data(), lse.size());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output.size(), 4u * 2 * 64);
}

TEST_F(TlsTest, ClientWithoutCertificateIsRefused) {
  RankClientOptions o = Options();
  o.tls_client_cert_file.clear();
  o.tls_client_key_file.clear();
  auto c = RankClient::Connect(o);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*c)->Join().ok());
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  RankClientOptions o = Options();
  o.use_tls = false;
  auto c = RankClient::Connect(o);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*c)->Join().ok());
}

TEST(TlsOptionsTest, HalfConfiguredTlsIsAnError) {
  MergeServerOptions o;
  o.rank_address = "127.0.0.1:0";
  o.admin_address = "127.0.0.1:0";
  o.backend = "cpu";
  o.tls_cert_file = "/nonexistent.pem";
  auto s = MergeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("tls_"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace dcpmerge
