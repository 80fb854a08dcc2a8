// Copyright regserve authors.
//
// The gRPC server's transport credentials from the --tls_* files: plaintext,
// TLS, or mutual TLS, optionally re-reading the files so that a renewed
// certificate is taken up without a restart.
//
//   TlsFiles files;
//   files.cert = "server.pem";
//   files.key = "server.key";
//   REGSERVE_ASSIGN_OR_RETURN(ServerTransport transport,
//                             MakeServerTransport(files));
//   builder.AddListeningPort(address, transport.credentials, &port);
//
// The files are read and checked here, before the server starts: gRPC would
// otherwise start and then fail every handshake.
//
// Thread safety: pure functions apart from reading the files (and the
// warning WarnIfOthersCanRead prints).
#ifndef REGSERVE_SERVER_TLS_H_
#define REGSERVE_SERVER_TLS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"

namespace regserve {

// Paths from --tls_cert, --tls_key and --tls_client_ca; all empty means
// plaintext.
struct TlsFiles {
  std::string cert;       // PEM chain, the server's own certificate first
  std::string key;        // PEM private key of the first certificate
  std::string client_ca;  // PEM CAs; non-empty requires client certificates
  // How often gRPC re-reads the files; 0: read once, at start.
  absl::Duration reload_interval = absl::Minutes(1);

  bool enabled() const { return !cert.empty(); }
};

struct ServerTransport {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // For the start-up line: "plaintext", "TLS", "mutual TLS (...)", ...
  std::string description;
};

// InvalidArgument for a bad combination (cert without key, client CA
// without TLS), a file that cannot be read or holds no PEM block, or a key
// that does not belong to the certificate; each message names the flag.
// Warns (stderr) when the key file is readable by other users.
absl::StatusOr<ServerTransport> MakeServerTransport(const TlsFiles& files);

// OK if `cert_pem` starts with a certificate whose public key belongs to the
// unencrypted private key in `key_pem`; InvalidArgument naming --tls_cert or
// --tls_key otherwise. Leaves no error on OpenSSL's error queue.
absl::Status CheckKeyMatchesCertificate(const std::string& cert_pem,
                                        const std::string& key_pem);

// Secrets (keys, token files) should not be readable by other users: prints
// a warning naming --`flag` to stderr when `path` is. Silent when it cannot
// stat the file.
void WarnIfOthersCanRead(const char* flag, const std::string& path);

}  // namespace regserve

#endif  // REGSERVE_SERVER_TLS_H_
