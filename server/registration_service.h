// Copyright regserve authors.
//
// RegistrationService: the gRPC endpoint of regserve.v1.Registration, a thin
// layer over JobManager (jobs), ResourceScheduler (reservations) and
// HardwareProbe (GetServerInfo). Each handler converts the request, calls the
// core and converts the result; errors go through ToGrpcStatus.
//
//   RegistrationService service(manager.get(), &scheduler, probe.get(), {});
//   grpc::ServerBuilder builder;
//   builder.RegisterService(&service);
//   server = builder.BuildAndStart();
//   server->GetHealthCheckService()->SetServingStatus(
//       RegistrationService::kServiceName, true);
//   ... on SIGTERM: service.StopAccepting(); manager->Shutdown();
//   server->Shutdown(deadline); service.WaitForCalls();
//
// Threading (gRPC callback API): reactor callbacks only record what
// happened and wake a worker; they never block. The blocking work runs on
// two small pools that this class owns:
//   - unary calls (Cancel, GetJob, ListJobs, GetServerInfo) on
//     Options::unary_threads threads;
//   - streaming calls (Submit, Watch) on Options::stream_threads "stream
//     pump" threads, whatever the number of open streams. A pump thread
//     takes the next stream that is ready (a chunk arrived, its last write
//     finished, or its event poll is due), does one bounded step — processes
//     one upload chunk (disk I/O), or asks the job's EventStream for the next
//     event with a short deadline and starts writing it — and moves on to the
//     next ready stream. A stream with nothing to send is polled again after
//     a back-off of 1 to 50 ms (a thread with no other stream ready waits on
//     one stream's Next instead, for prompt delivery). Each stream has at
//     most one message in flight: a slow client holds back its own stream
//     only, never a pump thread, and events keep their order.
//
// Authentication: with Options::tokens set, every call must carry metadata
// "authorization: Bearer <token>" naming a token of the TokenStore; the
// call's principal is the token's. Calls without a valid token end with
// UNAUTHENTICATED before anything else happens. Without tokens every caller
// is the anonymous principal "". Jobs belong to the principal that submitted
// them: Watch, Cancel, GetJob and ListJobs only see the caller's own jobs
// (others' are NOT_FOUND). No client-supplied principal metadata is trusted.
// Health checks and reflection are separate services and need no token.
//
// Client behaviour: Submit sends `created` (the job id) as soon as the job
// exists, then upload progress. A client that disconnects or cancels during
// the upload has its job cancelled (JobManager::AbortUpload with a Cancelled
// status); one that disconnects later only stops its own stream: the job
// keeps running and can be watched again. A read that ends before the
// declared bytes arrived is taken as a disconnection when the cancellation
// follows within a short grace period (gRPC may report the two in either
// order), otherwise as a truncated upload (INVALID_ARGUMENT).
//
// Ownership: the core objects are not owned and must outlive the service.
// Thread safety: all public methods are thread-safe. The destructor stops
// the pools; shut the grpc::Server down first.
#ifndef REGSERVE_SERVER_REGISTRATION_SERVICE_H_
#define REGSERVE_SERVER_REGISTRATION_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/auth/token_store.h"
#include "core/hardware/hardware.h"
#include "core/jobs/job_manager.h"
#include "core/scheduler/scheduler.h"
#include "regserve/v1/regserve.grpc.pb.h"

namespace regserve {

// Transport-level hooks for the daemon's metrics (job stages and outcomes
// are reported by core/jobs through JobLifecycleObserver, for every job).
// Called from gRPC's threads and the service's own; implementations must be
// thread-safe and quick.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // A Submit call arrived / was refused before a job existed.
  virtual void OnSubmitted() {}
  virtual void OnRejected(const absl::Status& why) { (void)why; }
  // Upload payload bytes received, result tile bytes sent.
  virtual void OnBytesReceived(uint64_t bytes) { (void)bytes; }
  virtual void OnBytesSent(uint64_t bytes) { (void)bytes; }
  // A Submit or Watch call started / stopped streaming result tiles
  // (paired); `seconds` and `completed` describe the finished stream.
  virtual void OnStreamStarted() {}
  virtual void OnStreamEnded(bool completed, double seconds) {
    (void)completed, (void)seconds;
  }
};

// The stream pump's threads and queues (registration_service.cc).
class StreamPump;

class RegistrationService final
    : public ::regserve::v1::Registration::CallbackService {
 public:
  // The service's full gRPC name, "regserve.v1.Registration": the name a
  // health check asks about. The daemon marks it SERVING in its health
  // service once the server has started (see the example above).
  static constexpr const char* kServiceName =
      ::regserve::v1::Registration::service_full_name();

  struct Options {
    // Not owned; may be null. Must outlive the service.
    JobObserver* observer = nullptr;
    // Reported by GetServerInfo; should match the server's limit.
    int64_t max_message_bytes = 16 << 20;
    // Threads for unary calls.
    int unary_threads = 2;
    // Threads that pump every streaming call (Submit, Watch): upload chunk
    // writes and event delivery; see "Threading" above. regserved's
    // --stream_threads sets it. Values below 1 mean 1.
    int stream_threads = 8;
    // Reported as ServerInfo.version.
    std::string version;
    // Bearer tokens; null: no authentication (everyone is principal "").
    // Not owned; must outlive the service. Reloading it is safe at any time.
    const TokenStore* tokens = nullptr;
    // Streaming calls (Submit, Watch) open at once. One more is refused with
    // RESOURCE_EXHAUSTED. An open stream costs memory, not a thread.
    int max_streams = 1000;
    // A Submit call that sends no message for this long (before its spec,
    // or between upload chunks) is cancelled and its job failed, so that a
    // stalled client cannot hold a queue slot forever.
    absl::Duration upload_idle_timeout = absl::Minutes(5);
  };

  RegistrationService(JobManager* manager, ResourceScheduler* scheduler,
                      HardwareProbe* probe, Options options);
  ~RegistrationService() override;
  RegistrationService(const RegistrationService&) = delete;
  RegistrationService& operator=(const RegistrationService&) = delete;

  // New Submit calls fail with UNAVAILABLE from now on; running calls go on.
  void StopAccepting();
  // Waits until every streaming call has ended (after server Shutdown).
  void WaitForCalls();

  grpc::ServerBidiReactor<v1::SubmitRequest, v1::JobEvent>* Submit(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<v1::JobEvent>* Watch(
      grpc::CallbackServerContext* context,
      const v1::WatchRequest* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* context,
                                   const v1::CancelRequest* request,
                                   v1::CancelResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request,
                                   v1::JobStatus* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(
      grpc::CallbackServerContext* context,
      const v1::GetServerInfoRequest* request,
      v1::ServerInfo* response) override;

  // Internal, used by the reactors in registration_service.cc.
  JobManager* manager() const { return manager_; }
  JobObserver* observer() const { return observer_; }
  StreamPump* pump() const { return pump_.get(); }
  bool accepting() const { return accepting_.load(); }
  const Options& options() const { return options_; }
  // The caller's principal (see "Authentication" above), or UNAUTHENTICATED.
  absl::StatusOr<std::string> Authenticate(
      const grpc::CallbackServerContext& context) const;
  // Counts a new streaming call; RESOURCE_EXHAUSTED (and nothing counted)
  // when Options::max_streams are open. Each OK is paired with StreamEnded.
  absl::Status StreamStarted();
  void StreamEnded();

 private:
  // The unary calls' shared path: authenticates, then runs `body` with the
  // caller's principal on the unary pool and finishes the call with its
  // status (converted by ToGrpcStatus). `body` fills the response.
  grpc::ServerUnaryReactor* RunUnary(
      grpc::CallbackServerContext* context,
      std::function<absl::Status(const std::string& principal)> body);
  void UnaryWorker();

  JobManager* const manager_;
  ResourceScheduler* const scheduler_;
  HardwareProbe* const probe_;
  const Options options_;
  JobObserver null_observer_;  // used when options_.observer is null
  JobObserver* const observer_;
  std::atomic<bool> accepting_{true};

  absl::Mutex mu_;
  int open_streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::function<void()>> unary_queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> unary_threads_;
  std::unique_ptr<StreamPump> pump_;
};

}  // namespace regserve

#endif  // REGSERVE_SERVER_REGISTRATION_SERVICE_H_
