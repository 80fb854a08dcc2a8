// Copyright regserve authors.
#include "server/tls.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/common/status_macros.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "openssl/bio.h"
#include "openssl/err.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace regserve {
namespace {

// The contents of the PEM file named by --`flag`.
absl::StatusOr<std::string> ReadPemFile(const char* flag,
                                        const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": cannot read \"", path, "\": ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, ": \"", path, "\" holds no PEM block (-----BEGIN ...)"));
  }
  return text.str();
}

// Credentials that re-read the files every `reload`. gRPC takes up a new key
// and certificate only when they match; connections made before keep the
// credentials they were made with.
std::shared_ptr<grpc::ServerCredentials> WatchedCredentials(
    const TlsFiles& files, grpc_ssl_client_certificate_request_type request,
    unsigned int seconds) {
  using grpc::experimental::FileWatcherCertificateProvider;
  auto provider = files.client_ca.empty()
                      ? std::make_shared<FileWatcherCertificateProvider>(
                            files.key, files.cert, seconds)
                      : std::make_shared<FileWatcherCertificateProvider>(
                            files.key, files.cert, files.client_ca, seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!files.client_ca.empty()) options.watch_root_certs();
  options.set_cert_request_type(request);
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace

absl::Status CheckKeyMatchesCertificate(const std::string& cert_pem,
                                        const std::string& key_pem) {
  // OpenSSL queues an error per failed parse; leave none for gRPC to find.
  struct ClearErrors {
    ~ClearErrors() { ERR_clear_error(); }
  } clear_errors;
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())),
      &BIO_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())),
      &BIO_free);
  if (cert_bio == nullptr || key_bio == nullptr) {
    return absl::ResourceExhaustedError("out of memory reading TLS files");
  }
  std::unique_ptr<X509, decltype(&X509_free)> x509(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (x509 == nullptr) {
    return absl::InvalidArgumentError(
        "--tls_cert holds no PEM certificate (\"-----BEGIN "
        "CERTIFICATE-----\")");
  }
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr),
      &EVP_PKEY_free);
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(
        "--tls_key holds no unencrypted PEM private key");
  }
  if (X509_check_private_key(x509.get(), pkey.get()) != 1) {
    return absl::InvalidArgumentError(
        "--tls_key does not match the certificate in --tls_cert (the first "
        "certificate of the chain must be the server's own)");
  }
  return absl::OkStatus();
}

void WarnIfOthersCanRead(const char* flag, const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && (st.st_mode & S_IROTH) != 0) {
    std::fprintf(stderr,
                 "regserved: warning: --%s file \"%s\" is readable by every "
                 "user; chmod o-r it\n",
                 flag, path.c_str());
  }
}

absl::StatusOr<ServerTransport> MakeServerTransport(const TlsFiles& files) {
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together: give both to turn TLS on");
  }
  if (!files.enabled()) {
    if (!files.client_ca.empty()) {
      return absl::InvalidArgumentError(
          "--tls_client_ca needs --tls_cert and --tls_key (mutual TLS is "
          "TLS)");
    }
    return ServerTransport{grpc::InsecureServerCredentials(), "plaintext"};
  }
  REGSERVE_ASSIGN_OR_RETURN(const std::string cert_pem,
                            ReadPemFile("tls_cert", files.cert));
  REGSERVE_ASSIGN_OR_RETURN(const std::string key_pem,
                            ReadPemFile("tls_key", files.key));
  WarnIfOthersCanRead("tls_key", files.key);
  REGSERVE_RETURN_IF_ERROR(CheckKeyMatchesCertificate(cert_pem, key_pem));
  std::string ca_pem;
  if (!files.client_ca.empty()) {
    REGSERVE_ASSIGN_OR_RETURN(ca_pem,
                              ReadPemFile("tls_client_ca", files.client_ca));
  }
  const bool mutual = !files.client_ca.empty();
  const grpc_ssl_client_certificate_request_type request =
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  ServerTransport transport;
  transport.description =
      mutual ? "mutual TLS (client certificates required)" : "TLS";
  if (files.reload_interval > absl::ZeroDuration()) {
    const unsigned int seconds = static_cast<unsigned int>(
        std::max<int64_t>(1, absl::ToInt64Seconds(files.reload_interval)));
    absl::StrAppend(&transport.description, ", files re-read every ",
                    absl::FormatDuration(absl::Seconds(seconds)));
    transport.credentials = WatchedCredentials(files, request, seconds);
    return transport;
  }
  grpc::SslServerCredentialsOptions ssl(request);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  pair.cert_chain = cert_pem;
  pair.private_key = key_pem;
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  ssl.pem_root_certs = ca_pem;
  transport.credentials = grpc::SslServerCredentials(ssl);
  return transport;
}

}  // namespace regserve
