// Copyright regserve authors.
#include "server/registration_service.h"

#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/convert.h"
#include "server/status_util.h"

namespace regserve {
namespace {

constexpr absl::Duration kPollPeriod = absl::Milliseconds(500);

// Reads the TransformParameters files of a finished job (worker thread only:
// this is disk I/O). Files that cannot be read are skipped; the paths are
// still in the result.
std::vector<TransformFileText> ReadTransformFiles(const JobInfo& info) {
  std::vector<TransformFileText> files;
  for (const std::string& file : info.transform_files) {
    std::string path = file;
    if (!path.empty() && path[0] != '/' && !info.transform_dir.empty()) {
      path = absl::StrCat(info.transform_dir, "/", file);
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) continue;
    std::ostringstream text;
    text << in.rdbuf();
    const size_t slash = path.find_last_of('/');
    files.emplace_back(
        slash == std::string::npos ? path : path.substr(slash + 1), text.str());
  }
  return files;
}

TileContext TileContextOf(const JobInfo& info, int64_t default_tile_size) {
  TileContext ctx;
  if (info.state == JobState::kCompleted && info.output.width > 0) {
    ctx.image_width = info.output.width;
    ctx.image_height = info.output.height;
  } else if (info.has_plan) {
    ctx.image_width = info.plan.output_width;
    ctx.image_height = info.plan.output_height;
  }
  ctx.tile_size = info.tiles.edge() > 0 ? info.tiles.edge() : default_tile_size;
  ctx.tile_count = info.tiles.count();
  if (ctx.tile_count == 0 && ctx.tile_size > 0 && ctx.image_width > 0) {
    ctx.tile_count = ((ctx.image_width + ctx.tile_size - 1) / ctx.tile_size) *
                     ((ctx.image_height + ctx.tile_size - 1) / ctx.tile_size);
  }
  return ctx;
}

// What the event pump needs from a streaming reactor.
class EventSink {
 public:
  virtual ~EventSink() = default;
  // Sends one message and waits until gRPC is done with it. False when the
  // client has gone away.
  virtual bool Write(const v1::JobEvent& event) = 0;
  virtual bool cancelled() = 0;
};

// Follows `stream` to the terminal event, sending each event to `sink`.
// Sends the job's Accepted event first when the job already has a plan (so a
// re-attaching client learns the output size), and never twice. Returns the
// status the RPC ends with.
grpc::Status PumpEvents(JobManager* manager, const std::string& job_id,
                        const std::string& principal, EventStream* stream,
                        EventSink* sink, JobObserver* observer) {
  // The "stream" stage of this call, for `observer`: from the first tile
  // sent to the terminal event (completed) or the end of the call.
  bool streaming = false;
  bool stream_completed = false;
  absl::Time stream_start;
  auto end_stream = [&] {
    if (observer != nullptr && streaming) {
      observer->OnStreamEnded(
          stream_completed, absl::ToDoubleSeconds(absl::Now() - stream_start));
    }
    streaming = false;
  };
  struct StreamCloser {
    std::function<void()> fn;
    ~StreamCloser() { fn(); }
  } closer{end_stream};
  const int64_t default_tile = manager->options().stream_tile_size;
  bool accepted_sent = false;
  TileContext tiles;
  {
    absl::StatusOr<JobInfo> info = manager->GetJob(job_id, principal);
    if (!info.ok()) return ToGrpcStatus(info.status());
    tiles = TileContextOf(*info, default_tile);
    if (info->has_plan) {
      JobEvent accepted;
      accepted.kind = JobEvent::Kind::kAccepted;
      accepted.job_id = job_id;
      accepted.info = *info;
      v1::JobEvent out;
      EventToProto(accepted, tiles, {}, &out);
      if (!sink->Write(out)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
      accepted_sent = true;
    }
  }
  v1::JobEvent out;
  JobEvent event;
  while (true) {
    const absl::Status next = stream->Next(&event, absl::Now() + kPollPeriod);
    if (absl::IsDeadlineExceeded(next)) {
      if (sink->cancelled()) break;
      continue;
    }
    if (absl::IsCancelled(next)) break;  // closed: the client went away
    if (absl::IsOutOfRange(next)) return grpc::Status::OK;
    if (!next.ok()) return ToGrpcStatus(next);

    std::vector<TransformFileText> files;
    if (observer != nullptr) {
      if (event.kind == JobEvent::Kind::kTile) {
        if (!streaming) {
          streaming = true;
          stream_start = absl::Now();
          observer->OnStreamStarted();
        }
        observer->OnBytesSent(event.data.size());
      } else if (event.kind == JobEvent::Kind::kCompleted) {
        stream_completed = true;
        end_stream();
      }
    }
    switch (event.kind) {
      case JobEvent::Kind::kAccepted:
        tiles = TileContextOf(event.info, default_tile);
        if (accepted_sent) continue;
        accepted_sent = true;
        break;
      case JobEvent::Kind::kTile:
        if (tiles.image_width == 0 || tiles.tile_count == 0) {
          absl::StatusOr<JobInfo> info = manager->GetJob(job_id, principal);
          if (info.ok()) tiles = TileContextOf(*info, default_tile);
        }
        break;
      case JobEvent::Kind::kCompleted:
        files = ReadTransformFiles(event.info);
        break;
      default:
        break;
    }
    EventToProto(event, tiles, files, &out);
    if (!sink->Write(out)) break;
    if (event.kind == JobEvent::Kind::kCompleted) return grpc::Status::OK;
    if (event.kind == JobEvent::Kind::kFailed) {
      absl::Status why = event.info.failure;
      if (why.ok()) why = absl::UnknownError("job failed without a reason");
      return ToGrpcStatus(why);
    }
  }
  return grpc::Status(grpc::StatusCode::CANCELLED,
                      "the client went away; the job goes on (use Watch)");
}

// The write, cancel and clean-up plumbing shared by the streaming reactors:
// one message in flight at a time, written from the call's own thread, which
// waits for OnWriteDone; OnCancel closes the attached event stream. `Base`
// is the gRPC reactor (bidi or server-write) the call uses.
template <typename Base>
class StreamingReactor : public Base, public EventSink {
 public:
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_pending_ = false;
    write_ok_ = ok;
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (stream_ != nullptr) stream_->Close();
  }
  void OnDone() override { delete this; }

  bool Write(const v1::JobEvent& event) override {
    {
      absl::MutexLock lock(&mu_);
      write_pending_ = true;
    }
    // Not under mu_: gRPC may run OnWriteDone on this thread.
    this->StartWrite(&event);
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](bool* pending) { return !*pending; }, &write_pending_));
    return write_ok_;
  }
  bool cancelled() override {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

 protected:
  absl::Mutex mu_;
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool write_ok_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<EventStream> owned_stream_ ABSL_GUARDED_BY(mu_);
  EventStream* stream_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// Bidirectional Submit call. See the class comment of RegistrationService.
class SubmitReactor final
    : public StreamingReactor<
          grpc::ServerBidiReactor<v1::SubmitRequest, v1::JobEvent>> {
 public:
  SubmitReactor(RegistrationService* service,
                grpc::CallbackServerContext* context)
      : service_(service),
        context_(context),
        principal_(service->Authenticate(*context)) {
    const absl::Status spawned = service_->SpawnCallThread([this] { Run(); });
    if (!spawned.ok()) End(ToGrpcStatus(spawned));
  }

  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    read_pending_ = false;
    read_ok_ = ok;
  }

 private:
  // Reads the next message; false at the end of the stream, on
  // cancellation, and when none came within upload_idle_timeout (then the
  // call is cancelled and idle() is true).
  bool Read() {
    request_.Clear();
    {
      absl::MutexLock lock(&mu_);
      read_pending_ = true;
    }
    StartRead(&request_);  // not under mu_, as in Write
    const absl::Condition done(
        +[](bool* pending) { return !*pending; }, &read_pending_);
    bool timed_out = false;
    {
      absl::MutexLock lock(&mu_);
      timed_out =
          !mu_.AwaitWithTimeout(done, service_->options().upload_idle_timeout);
      if (timed_out) idle_ = true;
    }
    // Not under mu_: gRPC may run OnCancel/OnReadDone on this thread.
    if (timed_out) context_->TryCancel();  // the read then ends with ok=false
    absl::MutexLock lock(&mu_);
    mu_.Await(done);
    return read_ok_;
  }
  bool idle() {
    absl::MutexLock lock(&mu_);
    return idle_;
  }
  absl::Status IdleError() const {
    return absl::DeadlineExceededError(absl::StrCat(
        "no message from the client for ",
        absl::FormatDuration(service_->options().upload_idle_timeout),
        " (--upload_idle_timeout); the upload was abandoned: submit again"));
  }

  // The last thing the worker does: nothing may touch `this` afterwards.
  void End(const grpc::Status& status) { Finish(status); }

  void Fail(const std::string& job_id, const absl::Status& why) {
    if (!job_id.empty()) {
      v1::JobEvent event;
      event.set_job_id(job_id);
      FailureToProto(why, event.mutable_failed());
      Write(event);
    }
    End(ToGrpcStatus(why));
  }

  void Run() {
    if (!principal_.ok()) {
      End(ToGrpcStatus(principal_.status()));
      return;
    }
    const std::string& principal = *principal_;
    JobManager* manager = service_->manager();
    JobObserver* observer = service_->observer();
    observer->OnSubmitted();
    if (!service_->accepting()) {
      observer->OnRejected(absl::UnavailableError("shutting down"));
      End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                       "the server is shutting down; submit again later"));
      return;
    }
    if (!Read()) {
      observer->OnRejected(absl::InvalidArgumentError("no spec"));
      if (idle()) {
        End(ToGrpcStatus(IdleError()));
        return;
      }
      End(cancelled() ? grpc::Status(grpc::StatusCode::CANCELLED,
                                     "the client cancelled the call")
                      : grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                     "the request stream ended before a "
                                     "JobSpec: send SubmitRequest.spec first"));
      return;
    }
    if (!request_.has_spec()) {
      observer->OnRejected(absl::InvalidArgumentError("no spec"));
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "the first SubmitRequest must carry the JobSpec "
                       "(spec), before any chunk"));
      return;
    }
    absl::StatusOr<JobSpec> spec =
        SpecFromProto(request_.spec(), manager->options());
    if (!spec.ok()) {
      observer->OnRejected(spec.status());
      End(ToGrpcStatus(spec.status()));
      return;
    }
    absl::StatusOr<std::string> created = manager->CreateJob(*spec, principal);
    if (!created.ok()) {
      observer->OnRejected(created.status());
      End(ToGrpcStatus(created.status()));
      return;
    }
    const std::string job_id = *created;

    // Open the stream before the upload ends so no event is missed.
    absl::StatusOr<std::unique_ptr<EventStream>> stream =
        manager->OpenEventStream(job_id, principal, /*from_tile=*/0);
    if (!stream.ok()) {
      if (spec->fixed.path.empty() || spec->moving.path.empty()) {
        manager->AbortUpload(job_id, stream.status());
      }
      End(ToGrpcStatus(stream.status()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      owned_stream_ = std::move(*stream);
      stream_ = owned_stream_.get();
      if (cancelled_) stream_->Close();
    }

    if (spec->fixed.path.empty() || spec->moving.path.empty()) {
      const absl::Status uploaded = Upload(job_id);
      if (!uploaded.ok()) {
        Fail(job_id, uploaded);
        return;
      }
    }
    End(PumpEvents(manager, job_id, principal, stream_, this,
                   service_->observer()));
  }

  // Receives chunks until the client half-closes, then finishes the upload.
  // On any error the upload is aborted (the job fails, its inputs go).
  absl::Status Upload(const std::string& job_id) {
    JobManager* manager = service_->manager();
    uint64_t received[2] = {0, 0};
    absl::Status status;
    while (status.ok()) {
      if (!Read()) {
        if (idle()) {
          status = IdleError();
          break;
        }
        if (cancelled()) {
          status = absl::CancelledError(
              "the client disconnected during the upload; submit again");
          break;
        }
        status = manager->FinishUpload(job_id);
        // FinishUpload fails the job itself on error.
        return status;
      }
      if (request_.has_spec()) {
        status = absl::InvalidArgumentError(
            "a second JobSpec arrived: send the spec once, as the first "
            "message, then only chunks");
        break;
      }
      if (!request_.has_chunk()) {
        status = absl::InvalidArgumentError(
            "an empty SubmitRequest arrived: set spec or chunk");
        break;
      }
      const v1::ImageChunk& chunk = request_.chunk();
      absl::StatusOr<ImageRole> role = RoleFromProto(chunk.role());
      if (!role.ok()) {
        status = role.status();
        break;
      }
      uint64_t& done = received[static_cast<int>(*role)];
      if (chunk.offset() != done) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "chunk.offset is ", chunk.offset(), " but ", done, " bytes of the ",
            *role == ImageRole::kFixed ? "fixed" : "moving",
            " image came before it: send the chunks of each image in order"));
        break;
      }
      const auto* bytes = reinterpret_cast<const uint8_t*>(chunk.data().data());
      status = manager->AppendUpload(
          job_id, *role, absl::MakeConstSpan(bytes, chunk.data().size()));
      done += chunk.data().size();
      if (status.ok())
        service_->observer()->OnBytesReceived(chunk.data().size());
    }
    manager->AbortUpload(job_id, status);
    return status;
  }

  RegistrationService* const service_;
  grpc::CallbackServerContext* const context_;
  const absl::StatusOr<std::string> principal_;
  v1::SubmitRequest request_;  // the read buffer; touched by one read at a time

  bool idle_ ABSL_GUARDED_BY(mu_) = false;
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool read_ok_ ABSL_GUARDED_BY(mu_) = false;
};

// Server-streaming Watch call.
class WatchReactor final
    : public StreamingReactor<grpc::ServerWriteReactor<v1::JobEvent>> {
 public:
  WatchReactor(RegistrationService* service,
               grpc::CallbackServerContext* context,
               const v1::WatchRequest* request)
      : service_(service),
        principal_(service->Authenticate(*context)),
        job_id_(request->job_id()),
        from_tile_(request->from_tile()) {
    const absl::Status spawned = service_->SpawnCallThread([this] { Run(); });
    if (!spawned.ok()) Finish(ToGrpcStatus(spawned));
  }

 private:
  void Run() {
    if (!principal_.ok()) {
      Finish(ToGrpcStatus(principal_.status()));
      return;
    }
    JobManager* manager = service_->manager();
    if (from_tile_ < 0) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "from_tile must be >= 0"));
      return;
    }
    absl::StatusOr<std::unique_ptr<EventStream>> stream =
        manager->OpenEventStream(job_id_, *principal_, from_tile_);
    if (!stream.ok()) {
      Finish(ToGrpcStatus(stream.status()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      owned_stream_ = std::move(*stream);
      stream_ = owned_stream_.get();
      if (cancelled_) stream_->Close();
    }
    Finish(PumpEvents(manager, job_id_, *principal_, stream_, this,
                      service_->observer()));
  }

  RegistrationService* const service_;
  const absl::StatusOr<std::string> principal_;
  const std::string job_id_;
  const int64_t from_tile_;
};

}  // namespace

absl::StatusOr<std::string> RegistrationService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  if (options_.tokens == nullptr) return std::string();
  const auto& md = context.client_metadata();
  const auto range = md.equal_range("authorization");
  if (range.first == range.second) {
    return absl::UnauthenticatedError(
        "this server requires a bearer token: send metadata "
        "'authorization: Bearer <token>' (regctl: set REGSERVE_TOKEN or give "
        "--token_file)");
  }
  if (std::next(range.first) != range.second) {
    return absl::UnauthenticatedError(
        "more than one 'authorization' metadata entry: send exactly one");
  }
  const absl::string_view value(range.first->second.data(),
                                range.first->second.size());
  absl::StatusOr<std::string> principal = options_.tokens->Authenticate(value);
  if (!principal.ok() && principal.status().message() == "invalid token") {
    return absl::UnauthenticatedError(
        "invalid bearer token: this server does not accept it (check "
        "REGSERVE_TOKEN or --token_file, or ask the operator for a token)");
  }
  return principal;
}

RegistrationService::RegistrationService(JobManager* manager,
                                         ResourceScheduler* scheduler,
                                         HardwareProbe* probe, Options options)
    : manager_(manager),
      scheduler_(scheduler),
      probe_(probe),
      options_(std::move(options)),
      observer_(options_.observer != nullptr ? options_.observer
                                             : &null_observer_) {
  const int n = options_.unary_threads > 0 ? options_.unary_threads : 1;
  for (int i = 0; i < n; ++i) {
    unary_threads_.emplace_back([this] { UnaryWorker(); });
  }
}

RegistrationService::~RegistrationService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : unary_threads_) t.join();
  WaitForCalls();
}

void RegistrationService::StopAccepting() { accepting_.store(false); }

void RegistrationService::WaitForCalls() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &call_threads_));
}

absl::Status RegistrationService::SpawnCallThread(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (call_threads_ >= options_.max_streams) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the server has ", call_threads_,
          " streaming calls open, its limit (--max_streams); retry later"));
    }
    ++call_threads_;
  }
  try {
    std::thread([this, fn = std::move(fn)] {
      fn();
      absl::MutexLock lock(&mu_);
      --call_threads_;
    }).detach();
  } catch (const std::system_error& e) {
    absl::MutexLock lock(&mu_);
    --call_threads_;
    return absl::ResourceExhaustedError(
        absl::StrCat("the server cannot start a thread for this call (",
                     e.what(), "); retry later"));
  }
  return absl::OkStatus();
}

void RegistrationService::RunUnary(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  unary_queue_.push_back(std::move(fn));
}

void RegistrationService::UnaryWorker() {
  while (true) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RegistrationService* s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return s->stopping_ || !s->unary_queue_.empty();
          },
          this));
      if (unary_queue_.empty()) return;  // stopping and drained
      fn = std::move(unary_queue_.front());
      unary_queue_.pop_front();
    }
    fn();
  }
}

grpc::ServerBidiReactor<v1::SubmitRequest, v1::JobEvent>*
RegistrationService::Submit(grpc::CallbackServerContext* context) {
  return new SubmitReactor(this, context);
}

grpc::ServerWriteReactor<v1::JobEvent>* RegistrationService::Watch(
    grpc::CallbackServerContext* context, const v1::WatchRequest* request) {
  return new WatchReactor(this, context, request);
}

grpc::ServerUnaryReactor* RegistrationService::Cancel(
    grpc::CallbackServerContext* context, const v1::CancelRequest* request,
    v1::CancelResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> caller = Authenticate(*context);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  const std::string principal = *std::move(caller);
  RunUnary([this, reactor, request, response, principal] {
    const absl::Status cancelled =
        manager_->Cancel(request->job_id(), principal);
    if (!cancelled.ok()) {
      reactor->Finish(ToGrpcStatus(cancelled));
      return;
    }
    absl::StatusOr<JobInfo> info =
        manager_->GetJob(request->job_id(), principal);
    if (info.ok()) response->set_state(JobStateToProto(info->state));
    reactor->Finish(ToGrpcStatus(info.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RegistrationService::GetJob(
    grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
    v1::JobStatus* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> caller = Authenticate(*context);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  const std::string principal = *std::move(caller);
  RunUnary([this, reactor, request, response, principal] {
    absl::StatusOr<JobInfo> info =
        manager_->GetJob(request->job_id(), principal);
    if (info.ok()) {
      JobInfoToProto(*info, ReadTransformFiles(*info), response);
    }
    reactor->Finish(ToGrpcStatus(info.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RegistrationService::ListJobs(
    grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> caller = Authenticate(*context);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  const std::string principal = *std::move(caller);
  RunUnary([this, reactor, request, response, principal] {
    absl::StatusOr<JobManager::JobPage> page = manager_->ListJobPage(
        principal, request->page_size(), request->page_token());
    if (!page.ok()) {
      reactor->Finish(ToGrpcStatus(page.status()));
      return;
    }
    for (const JobInfo& info : page->jobs) {
      JobInfoToProto(info, {}, response->add_jobs());
    }
    response->set_next_page_token(page->next_page_token);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* RegistrationService::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::StatusOr<std::string> caller = Authenticate(*context);
      !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  RunUnary([this, reactor, response] {
    absl::StatusOr<HardwareSnapshot> hw =
        probe_ != nullptr ? probe_->Probe()
                          : absl::StatusOr<HardwareSnapshot>(
                                absl::UnavailableError("no hardware probe"));
    ServerInfoToProto(hw, scheduler_->Stats(), scheduler_->config(),
                      manager_->GetStats(), manager_->options(),
                      options_.max_message_bytes, response);
    response->set_version(options_.version);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace regserve
