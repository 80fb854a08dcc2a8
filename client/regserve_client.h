// Copyright regserve authors.
//
// RegistrationClient: a small synchronous client library for the
// regserve.v1.Registration service, used by regctl and the end-to-end tests.
//
//   RegistrationClient client({.address = "127.0.0.1:50051"});
//   v1::JobSpec spec;
//   spec.set_transform(v1::TRANSFORM_KIND_RIGID);
//   grpc::Status s = client.Submit(spec, {.fixed_path = "f.png",
//                                         .moving_path = "m.png"},
//                                  [&](const v1::JobEvent& e) { ...; return
//                                  true; });
//
// Submit sends the spec, waits for the server's first event, `created`
// (whose job_id is the job's), uploads the local files in chunks (fixed,
// then moving), half-closes, and hands every event to the callback until
// the call ends; the returned status is the call's (OK after `completed`,
// the job's error after `failed`). So the caller has the job id before the
// first byte is sent and can Cancel(job_id) a long upload (from a callback
// or another thread), and a refused spec costs no upload. Events keep
// arriving during the upload (upload `progress`). A server that sends no
// `created` (older than it) gets the upload after 10 s anyway. Returning
// false from the event callback cancels the call: during the upload that
// cancels the job too; after it the job goes on on the server (use Watch to
// follow it again).
//
// Security: with Options::tls.enabled the channel speaks TLS (give the CA
// that signed the server's certificate, or rely on the system's roots; add
// a client certificate and key for servers that require mutual TLS). With
// Options::token every call carries "authorization: Bearer <token>".
//
//   RegistrationClient::Options o;
//   o.address = "regserve.example.org:50051";
//   o.token = std::getenv("REGSERVE_TOKEN");
//   absl::Status s = LoadTlsFiles("ca.pem", "", "", &o.tls);  // enables TLS
//
// Thread safety: a RegistrationClient may be used from several threads at
// once; each call is independent. A call's callbacks (events and upload
// progress) run on the calling thread, one at a time.
#ifndef REGSERVE_CLIENT_REGSERVE_CLIENT_H_
#define REGSERVE_CLIENT_REGSERVE_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "regserve/v1/regserve.grpc.pb.h"

namespace regserve {

// How a call's tiles come: their encoding (UNSPECIFIED = RAW), and for
// Submit whether they come at all. (Outside the class: GCC refuses a default
// argument of a nested struct with member initializers.)
struct TileStreamOptions {
  v1::TileEncoding encoding = v1::TILE_ENCODING_UNSPECIFIED;
  bool omit_tiles = false;
};

class RegistrationClient {
 public:
  struct TlsOptions {
    bool enabled = false;
    // PEM CA certificates the server's certificate must chain to; empty:
    // the system's trusted roots.
    std::string root_certs_pem;
    // PEM client certificate chain and its key, for mutual TLS (both or
    // neither).
    std::string cert_chain_pem;
    std::string private_key_pem;
    // The name the server's certificate must carry; empty: the host part
    // of the address.
    std::string server_name;
  };

  struct Options {
    std::string address = "127.0.0.1:50051";
    // Bearer token sent as "authorization: Bearer <token>" when not empty.
    std::string token;
    TlsOptions tls;
    // Upload chunk size.
    size_t chunk_bytes = 1 << 20;
    // Per-call deadline; InfiniteDuration = none.
    absl::Duration timeout = absl::InfiniteDuration();
  };

  // Where Submit's images come from. A local path is uploaded; leaving it
  // empty keeps whatever ImageSource the spec already has (a server path).
  struct Inputs {
    std::string fixed_path;
    std::string moving_path;
  };

  using TileOptions = TileStreamOptions;

  // Called after each chunk: role, bytes sent of that image, its size.
  using UploadCallback =
      std::function<void(v1::ImageRole role, uint64_t sent, uint64_t total)>;
  // Return false to stop following the call (cancels the RPC, not the job).
  using EventCallback = std::function<bool(const v1::JobEvent& event)>;

  explicit RegistrationClient(Options options);
  // Shares an existing channel (tests).
  RegistrationClient(Options options, std::shared_ptr<grpc::Channel> channel);

  // See the header comment. Local files that cannot be read give
  // INVALID_ARGUMENT before anything is sent. `context` (may be null) lets
  // the caller cancel from another thread with TryCancel.
  grpc::Status Submit(v1::JobSpec spec, const Inputs& inputs,
                      const EventCallback& on_event,
                      const UploadCallback& on_upload = nullptr,
                      grpc::ClientContext* context = nullptr,
                      const TileOptions& tiles = {});

  // Follows a job from `from_tile`; events as for Submit (tiles.omit_tiles
  // does not apply).
  grpc::Status Watch(const std::string& job_id, int64_t from_tile,
                     const EventCallback& on_event,
                     grpc::ClientContext* context = nullptr,
                     const TileOptions& tiles = {});

  grpc::Status Cancel(const std::string& job_id, v1::CancelResponse* response);
  grpc::Status GetJob(const std::string& job_id, v1::JobStatus* response);
  // Every job of the caller, newest first: fetches all pages (1000 a call)
  // into one response, whose next_page_token is empty.
  grpc::Status ListJobs(v1::ListJobsResponse* response);
  grpc::Status GetServerInfo(v1::ServerInfo* response);

  // grpc.health.v1.Health/Check for `service` ("" = the whole server).
  // *serving is true when the answer is SERVING.
  grpc::Status CheckHealth(const std::string& service, bool* serving);

  // Waits until the channel is connected or `timeout` passes.
  bool WaitForConnected(absl::Duration timeout);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  v1::Registration::Stub* stub() { return stub_.get(); }

  // A channel with regserve's message size limits and `options`'s transport
  // security (address and tls).
  static std::shared_ptr<grpc::Channel> MakeChannel(const Options& options);
  // A plaintext channel to `address`.
  static std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

 private:
  void Prepare(grpc::ClientContext* context) const;

  const Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Registration::Stub> stub_;
};

// Reads PEM files into *tls and sets tls->enabled: `ca_path` (may be empty:
// system roots), and `cert_path` with `key_path` (both or neither: the client
// certificate for mutual TLS). InvalidArgument naming the file that cannot be
// read or holds no PEM block.
absl::Status LoadTlsFiles(const std::string& ca_path,
                          const std::string& cert_path,
                          const std::string& key_path,
                          RegistrationClient::TlsOptions* tls);

// The name of a stage for humans: "upload", "registration", ...
const char* StageLabel(v1::Stage stage);

}  // namespace regserve

#endif  // REGSERVE_CLIENT_REGSERVE_CLIENT_H_
