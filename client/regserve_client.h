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
// Submit sends the spec, uploads the local files in chunks (fixed, then
// moving), half-closes, and hands every event to the callback until the
// call ends; the returned status is the call's (OK after `completed`, the
// job's error after `failed`). Returning false from the callback cancels the
// call (the job itself goes on on the server; use Watch to follow it again).
//
// Thread safety: a RegistrationClient may be used from several threads at
// once; each call is independent. A call's callbacks run on the calling
// thread.
#ifndef REGSERVE_CLIENT_REGSERVE_CLIENT_H_
#define REGSERVE_CLIENT_REGSERVE_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "regserve/v1/regserve.grpc.pb.h"

namespace regserve {

namespace v1 = ::regserve::v1;

class RegistrationClient {
 public:
  struct Options {
    std::string address = "127.0.0.1:50051";
    // Sent as metadata "regserve-principal" when not empty.
    std::string principal;
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
                      grpc::ClientContext* context = nullptr);

  // Follows a job from `from_tile`; events as for Submit.
  grpc::Status Watch(const std::string& job_id, int64_t from_tile,
                     const EventCallback& on_event,
                     grpc::ClientContext* context = nullptr);

  grpc::Status Cancel(const std::string& job_id, v1::CancelResponse* response);
  grpc::Status GetJob(const std::string& job_id, v1::JobStatus* response);
  grpc::Status ListJobs(v1::ListJobsResponse* response);
  grpc::Status GetServerInfo(v1::ServerInfo* response);

  // grpc.health.v1.Health/Check for `service` ("" = the whole server).
  // *serving is true when the answer is SERVING.
  grpc::Status CheckHealth(const std::string& service, bool* serving);

  // Waits until the channel is connected or `timeout` passes.
  bool WaitForConnected(absl::Duration timeout);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  v1::Registration::Stub* stub() { return stub_.get(); }

  // A channel with regserve's message size limits.
  static std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

 private:
  void Prepare(grpc::ClientContext* context) const;

  const Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Registration::Stub> stub_;
};

// The name of a stage for humans: "upload", "registration", ...
const char* StageLabel(v1::Stage stage);

}  // namespace regserve

#endif  // REGSERVE_CLIENT_REGSERVE_CLIENT_H_
