// Copyright regserve authors.
#include "server/tls.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "openssl/err.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::StatusOr<ServerTransport>& t) {
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(t.status().message());
}

TEST(MakeServerTransportTest, PlaintextWithoutFiles) {
  absl::StatusOr<ServerTransport> t = MakeServerTransport(TlsFiles{});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->description, "plaintext");
  EXPECT_NE(t->credentials, nullptr);
}

TEST(MakeServerTransportTest, RefusesBadCombinations) {
  TlsFiles cert_only;
  cert_only.cert = "/server.pem";
  EXPECT_THAT(Message(MakeServerTransport(cert_only)),
              HasSubstr("--tls_cert and --tls_key go together"));
  TlsFiles ca_only;
  ca_only.client_ca = "/ca.pem";
  EXPECT_THAT(Message(MakeServerTransport(ca_only)),
              HasSubstr("--tls_client_ca needs --tls_cert and --tls_key"));
}

TEST(MakeServerTransportTest, NamesTheFlagOfAnUnreadableFile) {
  char dir[] = "/tmp/regserve_tls_test_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string not_pem = std::string(dir) + "/server.pem";
  std::ofstream(not_pem) << "not a certificate\n";
  TlsFiles files;
  files.cert = std::string(dir) + "/missing.pem";
  files.key = std::string(dir) + "/missing.key";
  EXPECT_THAT(Message(MakeServerTransport(files)),
              HasSubstr("--tls_cert: cannot read"));
  files.cert = not_pem;
  EXPECT_THAT(Message(MakeServerTransport(files)),
              HasSubstr("--tls_cert: \"" + not_pem + "\" holds no PEM block"));
  unlink(not_pem.c_str());
  rmdir(dir);
}

TEST(CheckKeyMatchesCertificateTest, NamesTheFlagAndLeavesNoOpenSslError) {
  const absl::Status s = CheckKeyMatchesCertificate(
      "-----BEGIN CERTIFICATE-----\nbroken\n", "-----BEGIN PRIVATE KEY-----");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--tls_cert"));
  EXPECT_EQ(ERR_peek_error(), 0u);
}

}  // namespace
}  // namespace regserve
