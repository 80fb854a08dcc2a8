// Copyright regserve authors.
#include "server/registration_service.h"

#include <algorithm>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/image/tile_wire_codec.h"
#include "server/convert.h"
#include "server/status_util.h"

namespace regserve {

// ---------------------------------------------------------------------------
// The stream pump: a fixed pool of threads that runs the steps of every open
// streaming call (see "Threading" in the header).

class StreamPump {
 public:
  // What a step asks for next.
  struct StepResult {
    enum Kind {
      // Nothing to do until a reactor callback wakes the task (Wake), or
      // `wake_at` passes.
      kWait,
      // The step polled its event stream and found nothing: run it again
      // after the back-off (or at `wake_at`, if sooner), or when woken.
      kPoll,
      // Run it again as soon as a thread is free.
      kAgain,
      // The call has ended; the pump forgets the task.
      kDone,
    };
    Kind kind = kWait;
    absl::Time wake_at = absl::InfiniteFuture();
  };

  // One streaming call. Step runs on a pump thread, never on two at once for
  // one task; the pump's mutex orders consecutive steps, so the state that
  // only Step touches needs no lock of its own.
  class Task {
   public:
    virtual ~Task() = default;
    // One bounded step. `wait` is how long it may block in
    // EventStream::Next: zero when other streams are waiting for a thread.
    virtual StepResult Step(absl::Duration wait) = 0;
  };

  // A stream with nothing to send is polled again after 1, 2, 4, ... ms, at
  // most the back-off cap: kPollsPerSecond spread over the open streams,
  // within [kMinBackoffCap, kMaxBackoffCap] (5 ms up to 20 streams, 250 ms
  // at 1,000), so that idle streams cost a bounded amount of CPU however
  // many are open. A thread that has no other stream to serve waits up to
  // kMaxWait in one stream's Next instead, so that a few streams get their
  // events at once.
  static constexpr int kPollsPerSecond = 4000;
  static constexpr absl::Duration kMinBackoffCap = absl::Milliseconds(5);
  static constexpr absl::Duration kMaxBackoffCap = absl::Milliseconds(250);
  static constexpr absl::Duration kMaxWait = absl::Milliseconds(50);
  // Polls fall due on multiples of kTick, so that one thread's wake-up
  // serves every stream due then (not one wake-up per stream).
  static constexpr int64_t kTickMicros = 5000;

  explicit StreamPump(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) {
      threads_.emplace_back([this] { Worker(); });
    }
  }
  ~StreamPump() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
    // Calls still registered (none once the server has shut down) are
    // dropped; their reactors own them too.
    std::unordered_map<Task*, Slot> left;
    absl::MutexLock lock(&mu_);
    left.swap(slots_);
  }
  StreamPump(const StreamPump&) = delete;
  StreamPump& operator=(const StreamPump&) = delete;

  // Registers `task` and schedules its first step.
  void Add(std::shared_ptr<Task> task) {
    Task* raw = task.get();
    absl::MutexLock lock(&mu_);
    Slot& slot = slots_[raw];
    slot.task = std::move(task);
    slot.state = State::kReady;
    ready_.push_back(raw);
  }

  // Schedules a step of `task` now (after the running one, if any). Called
  // from reactor callbacks; quick. A task no longer registered is ignored.
  void Wake(Task* task) {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(task);
    if (it == slots_.end()) return;
    Slot& slot = it->second;
    slot.idle_polls = 0;
    switch (slot.state) {
      case State::kTimed:
        timers_.erase({slot.due, task});
        [[fallthrough]];
      case State::kIdle:
        slot.state = State::kReady;
        ready_.push_back(task);
        break;
      case State::kRunning:
        slot.state = State::kRunningWoken;
        break;
      case State::kReady:
      case State::kRunningWoken:
        break;
    }
  }

 private:
  enum class State {
    kIdle,          // waiting for Wake
    kTimed,         // in timers_ (and waiting for Wake)
    kReady,         // in ready_
    kRunning,       // a thread runs its step
    kRunningWoken,  // ... and Wake came meanwhile: step again
  };
  struct Slot {
    std::shared_ptr<Task> task;
    State state = State::kIdle;
    absl::Time due;      // kTimed
    int idle_polls = 0;  // consecutive empty polls (the back-off)
  };

  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !ready_.empty();
  }

  void ScheduleLocked(Task* task, Slot& slot, absl::Time due)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (due == absl::InfiniteFuture()) {
      slot.state = State::kIdle;
      return;
    }
    slot.state = State::kTimed;
    slot.due = due;
    timers_.insert({due, task});
  }

  void Worker() {
    mu_.Lock();
    while (true) {
      const absl::Time now = absl::Now();
      while (!timers_.empty() && timers_.begin()->first <= now) {
        Task* due = timers_.begin()->second;
        timers_.erase(timers_.begin());
        slots_[due].state = State::kReady;
        ready_.push_back(due);
      }
      if (ready_.empty()) {
        if (stopping_) break;
        const absl::Time next =
            timers_.empty() ? absl::InfiniteFuture() : timers_.begin()->first;
        ++idle_threads_;
        mu_.AwaitWithDeadline(absl::Condition(this, &StreamPump::HasWork),
                              next);
        --idle_threads_;
        continue;
      }
      Task* task = ready_.front();
      ready_.pop_front();
      Slot& slot = slots_[task];
      slot.state = State::kRunning;
      std::shared_ptr<Task> keep = slot.task;
      // Block in Next only while another thread stays free for the streams
      // that become ready meanwhile.
      const absl::Duration wait =
          ready_.empty() && idle_threads_ > 0 ? kMaxWait : absl::ZeroDuration();
      mu_.Unlock();
      const StepResult result = task->Step(wait);
      mu_.Lock();
      auto it = slots_.find(task);
      if (result.kind == StepResult::kDone) {
        slots_.erase(it);
        mu_.Unlock();
        keep.reset();  // may destroy the call: not under mu_
        mu_.Lock();
        continue;
      }
      Slot& after = it->second;
      if (after.state == State::kRunningWoken ||
          result.kind == StepResult::kAgain) {
        after.idle_polls = 0;
        after.state = State::kReady;
        ready_.push_back(task);
      } else if (result.kind == StepResult::kPoll) {
        const absl::Duration cap =
            std::clamp(absl::Seconds(1) * static_cast<int64_t>(slots_.size()) /
                           kPollsPerSecond,
                       kMinBackoffCap, kMaxBackoffCap);
        const int shift = std::min(after.idle_polls++, 8);
        const absl::Duration backoff =
            std::min(cap, absl::Milliseconds(1 << shift));
        const int64_t due = absl::ToUnixMicros(absl::Now() + backoff);
        const absl::Time tick = absl::FromUnixMicros((due + kTickMicros - 1) /
                                                     kTickMicros * kTickMicros);
        ScheduleLocked(task, after, std::min(tick, result.wake_at));
      } else {
        after.idle_polls = 0;
        ScheduleLocked(task, after, result.wake_at);
      }
    }
    mu_.Unlock();
  }

  absl::Mutex mu_;
  std::unordered_map<Task*, Slot> slots_ ABSL_GUARDED_BY(mu_);
  std::deque<Task*> ready_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<absl::Time, Task*>> timers_ ABSL_GUARDED_BY(mu_);
  int idle_threads_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

namespace {

using StepResult = StreamPump::StepResult;

// A read that ends before the declared upload bytes arrived is a
// disconnection if the cancellation is reported within this time, else a
// truncated upload.
constexpr absl::Duration kDisconnectGrace = absl::Milliseconds(500);

StepResult Wait(absl::Time wake_at = absl::InfiniteFuture()) {
  return {StepResult::kWait, wake_at};
}
StepResult Poll(absl::Time wake_at = absl::InfiniteFuture()) {
  return {StepResult::kPoll, wake_at};
}
StepResult Again() { return {StepResult::kAgain, absl::InfiniteFuture()}; }
StepResult Done() { return {StepResult::kDone, absl::InfiniteFuture()}; }

grpc::Status ClientGone() {
  return grpc::Status(grpc::StatusCode::CANCELLED,
                      "the client went away; the job goes on (use Watch)");
}

// What a call's logic needs from its gRPC reactor. Valid until End or
// SendAndEnd; called from pump threads, never under a lock.
class CallOps {
 public:
  virtual ~CallOps() = default;
  virtual void Send(const v1::JobEvent* event) = 0;  // StartWrite
  virtual void SendAndEnd(const v1::JobEvent* event, grpc::Status status) = 0;
  virtual void End(grpc::Status status) = 0;  // Finish
  virtual void Receive(v1::SubmitRequest* request) { (void)request; }
  virtual void Abandon() = 0;  // cancels the call from the server side
};

// The logic shared by Submit and Watch: the write slot (one message in
// flight), cancellation, and the event loop that follows a job's
// EventStream to its terminal event.
class StreamCall : public StreamPump::Task {
 public:
  StreamCall(RegistrationService* service, std::string principal)
      : service_(service), principal_(std::move(principal)) {}

  // The reactor, before the first step.
  void Bind(CallOps* ops) { ops_ = ops; }

  // Reactor callbacks: any gRPC thread; they record and wake, nothing more.
  void OnWriteDone(bool ok) {
    {
      absl::MutexLock lock(&mu_);
      write_pending_ = false;
      if (!ok) write_failed_ = true;
    }
    service_->pump()->Wake(this);
  }
  void OnCancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (open_stream_ != nullptr) open_stream_->Close();
    }
    service_->pump()->Wake(this);
  }

 protected:
  struct Flags {
    bool write_pending = false;
    bool write_failed = false;
    bool cancelled = false;
  };
  Flags flags() {
    absl::MutexLock lock(&mu_);
    return {write_pending_, write_failed_, cancelled_};
  }

  // Attaches the job's event stream (closed at once if the call is already
  // cancelled).
  void SetStream(std::unique_ptr<EventStream> stream) {
    stream_ = std::move(stream);
    absl::MutexLock lock(&mu_);
    open_stream_ = stream_.get();
    if (cancelled_) open_stream_->Close();
  }

  // Starts writing `event` (the write slot must be free).
  void Send(v1::JobEvent event) {
    out_ = std::move(event);
    {
      absl::MutexLock lock(&mu_);
      write_pending_ = true;
    }
    ops_->Send(&out_);  // not under mu_: OnWriteDone may run inline
  }

  // The client cancelled or disconnected (the write slot is free). Ends the
  // call; the job goes on.
  virtual StepResult ClientWentAway() { return End(ClientGone()); }

  // Ends the call. Nothing may touch the reactor afterwards.
  StepResult End(const grpc::Status& status) {
    EndStreamStage();
    CallOps* ops = ops_;
    ops_ = nullptr;
    ops->End(status);
    return Done();
  }

  // One turn of the event loop, with the write slot free: waits up to
  // `wait` for the next event of stream_ and starts writing it, or ends the
  // call when the stream ends. The terminal event is written together with
  // the call's final status.
  StepResult PumpEvent(absl::Duration wait) {
    JobEvent event;
    const absl::Status next = stream_->Next(&event, absl::Now() + wait);
    // Nothing came. After a real wait (no other stream needed the thread),
    // wait again at once rather than back off: the stream stays responsive
    // while the pump has threads to spare.
    if (absl::IsDeadlineExceeded(next)) {
      return wait > absl::ZeroDuration() ? Again() : Poll();
    }
    // Closed by OnCancel: the client went away.
    if (absl::IsCancelled(next)) return ClientWentAway();
    // OutOfRange (from_tile beyond the plan's tiles), Unavailable (the
    // manager shuts down), DataLoss (a stored tile cannot be read), ...
    if (!next.ok()) return End(ToGrpcStatus(next));

    JobObserver* observer = service_->observer();
    std::vector<TransformFile> files;
    switch (event.kind) {
      case JobEvent::Kind::kAccepted:
        if (accepted_sent_) return Again();  // never twice
        accepted_sent_ = true;
        break;
      case JobEvent::Kind::kTile: {
        if (omit_tiles_) return Again();
        // Here, on the pump's thread: never in a reactor callback.
        const absl::Status encoded = EncodeTile(&event);
        if (!encoded.ok()) return End(ToGrpcStatus(encoded));
        if (!streaming_) {
          streaming_ = true;
          stream_start_ = absl::Now();
          observer->OnStreamStarted();
        }
        observer->OnBytesSent(event.data.size());
        break;
      }
      case JobEvent::Kind::kCompleted: {
        stream_completed_ = true;
        EndStreamStage();
        absl::StatusOr<std::vector<TransformFile>> read =
            service_->manager()->ReadTransformFiles(job_id_, principal_);
        if (!read.ok()) return End(ToGrpcStatus(read.status()));
        files = *std::move(read);
        break;
      }
      default:
        break;
    }
    v1::JobEvent out;
    EventToProto(event, files, &out);
    if (event.kind == JobEvent::Kind::kCompleted ||
        event.kind == JobEvent::Kind::kFailed) {
      absl::Status why = event.info.failure;
      if (event.kind == JobEvent::Kind::kFailed && why.ok()) {
        why = absl::UnknownError("job failed without a reason");
      }
      if (event.kind == JobEvent::Kind::kCompleted) why = absl::OkStatus();
      EndStreamStage();
      out_ = std::move(out);
      CallOps* ops = ops_;
      ops_ = nullptr;
      ops->SendAndEnd(&out_, ToGrpcStatus(why));
      return Done();
    }
    Send(std::move(out));
    return Wait();  // OnWriteDone wakes us
  }

  // How this call's tiles go out (from its request), before the first step.
  void SetTileOptions(TileEncoding encoding, bool omit_tiles) {
    encoding_ = encoding;
    omit_tiles_ = omit_tiles;
  }

  RegistrationService* const service_;
  const std::string principal_;
  // Step-only state (see StreamPump::Task).
  std::string job_id_;
  std::unique_ptr<EventStream> stream_;
  CallOps* ops_ = nullptr;  // null once the call has ended

 private:
  // The "stream" stage of this call, for the observer: from the first tile
  // sent to `completed`, or to the end of the call.
  void EndStreamStage() {
    if (!streaming_) return;
    streaming_ = false;
    service_->observer()->OnStreamEnded(
        stream_completed_, absl::ToDoubleSeconds(absl::Now() - stream_start_));
  }

  // Encodes a tile's samples as the call asked; the encoder (with its
  // codec state) is made for the first tile only, so idle Watch streams
  // cost none.
  absl::Status EncodeTile(JobEvent* event) {
    if (encoding_ == TileEncoding::kRaw) return absl::OkStatus();
    if (encoder_ == nullptr) {
      REGSERVE_ASSIGN_OR_RETURN(encoder_, TileWireEncoder::Create(encoding_));
    }
    const WireTileShape shape{event->rect.w, event->rect.h, event->channels,
                              event->sample_type};
    return encoder_->Encode(shape, &event->data, &event->encoding);
  }

  v1::JobEvent out_;  // the message in flight; gRPC reads it until done
  TileEncoding encoding_ = TileEncoding::kRaw;
  bool omit_tiles_ = false;
  std::unique_ptr<TileWireEncoder> encoder_;
  bool accepted_sent_ = false;
  bool streaming_ = false;
  bool stream_completed_ = false;
  absl::Time stream_start_;

  absl::Mutex mu_;
  EventStream* open_stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// Server-streaming Watch: opens the stream, then follows it.
class WatchCall final : public StreamCall {
 public:
  WatchCall(RegistrationService* service, std::string principal,
            const v1::WatchRequest& request)
      : StreamCall(service, std::move(principal)),
        from_tile_(request.from_tile()),
        tile_encoding_(request.tile_encoding()) {
    job_id_ = request.job_id();
  }

  StepResult Step(absl::Duration wait) override {
    const Flags f = flags();
    if (f.write_pending) return Wait();
    if (f.write_failed || f.cancelled) return End(ClientGone());
    if (stream_ == nullptr) {
      if (from_tile_ < 0) {
        return End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "from_tile must be >= 0"));
      }
      absl::StatusOr<TileEncoding> encoding =
          TileEncodingFromProto(tile_encoding_, "tile_encoding");
      if (!encoding.ok()) return End(ToGrpcStatus(encoding.status()));
      SetTileOptions(*encoding, /*omit_tiles=*/false);
      absl::StatusOr<std::unique_ptr<EventStream>> stream =
          service_->manager()->OpenEventStream(job_id_, principal_, from_tile_);
      if (!stream.ok()) return End(ToGrpcStatus(stream.status()));
      SetStream(*std::move(stream));
    }
    return PumpEvent(wait);
  }

 private:
  const int64_t from_tile_;
  const int tile_encoding_;
};

// Bidirectional Submit: the spec, the upload, then the job's events.
class SubmitCall final : public StreamCall {
 public:
  SubmitCall(RegistrationService* service, std::string principal)
      : StreamCall(service, std::move(principal)) {}

  void OnReadDone(bool ok) {
    {
      absl::MutexLock lock(&read_mu_);
      read_pending_ = false;
      read_done_ = true;
      read_ok_ = ok;
    }
    service_->pump()->Wake(this);
  }

  StepResult Step(absl::Duration wait) override {
    switch (phase_) {
      case Phase::kSpec:
        return SpecStep();
      case Phase::kUpload:
        return UploadStep();
      case Phase::kEvents: {
        const Flags f = flags();
        if (f.write_pending) return Wait();
        if (f.write_failed || f.cancelled) return End(ClientGone());
        return PumpEvent(wait);
      }
      case Phase::kEnding:
        // After an abort: the call ends once the write in flight is done.
        if (flags().write_pending) return Wait();
        return End(ending_status_);
    }
    return End(grpc::Status(grpc::StatusCode::INTERNAL, "unknown phase"));
  }

 private:
  enum class Phase { kSpec, kUpload, kEvents, kEnding };

  struct ReadState {
    bool pending = false;
    bool done = false;
    bool ok = false;
  };
  ReadState read_state() {
    absl::MutexLock lock(&read_mu_);
    return {read_pending_, read_done_, read_ok_};
  }
  void Receive() {
    request_.Clear();
    read_deadline_ = absl::Now() + service_->options().upload_idle_timeout;
    {
      absl::MutexLock lock(&read_mu_);
      read_pending_ = true;
      read_done_ = false;
    }
    ops_->Receive(&request_);  // not under read_mu_: may complete inline
  }
  absl::Status IdleError() const {
    return absl::DeadlineExceededError(absl::StrCat(
        "no message from the client for ",
        absl::FormatDuration(service_->options().upload_idle_timeout),
        " (--upload_idle_timeout); the upload was abandoned: submit again"));
  }
  // Ends a call that sent nothing for upload_idle_timeout: cancels it (the
  // client learns nothing more) and fails its job, if any.
  StepResult EndIdle() {
    const absl::Status why = IdleError();
    if (!job_id_.empty()) service_->manager()->AbortUpload(job_id_, why);
    ops_->Abandon();
    ending_status_ = ToGrpcStatus(why);
    phase_ = Phase::kEnding;
    return Again();
  }

  // Waits for the JobSpec, creates the job and sends `created`.
  StepResult SpecStep() {
    JobObserver* observer = service_->observer();
    if (!spec_requested_) {
      spec_requested_ = true;
      Receive();
    }
    if (flags().cancelled) {
      observer->OnRejected(absl::CancelledError("no spec"));
      return End(grpc::Status(grpc::StatusCode::CANCELLED,
                              "the client cancelled the call"));
    }
    const ReadState read = read_state();
    if (!read.done) {
      if (absl::Now() < read_deadline_) return Wait(read_deadline_);
      observer->OnRejected(absl::InvalidArgumentError("no spec"));
      return EndIdle();
    }
    if (!read.ok) {
      observer->OnRejected(absl::InvalidArgumentError("no spec"));
      return End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "the request stream ended before a JobSpec: "
                              "send SubmitRequest.spec first"));
    }
    if (!request_.has_spec()) {
      observer->OnRejected(absl::InvalidArgumentError("no spec"));
      return End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "the first SubmitRequest must carry the JobSpec "
                              "(spec), before any chunk"));
    }
    absl::StatusOr<JobSpec> spec = SpecFromProto(request_.spec());
    if (!spec.ok()) {
      observer->OnRejected(spec.status());
      return End(ToGrpcStatus(spec.status()));
    }
    absl::StatusOr<TileEncoding> encoding =
        TileEncodingFromProto(request_.tile_encoding(), "tile_encoding");
    if (!encoding.ok()) {
      observer->OnRejected(encoding.status());
      return End(ToGrpcStatus(encoding.status()));
    }
    SetTileOptions(*encoding, request_.omit_tiles());
    JobManager* manager = service_->manager();
    absl::StatusOr<std::string> created = manager->CreateJob(*spec, principal_);
    if (!created.ok()) {
      observer->OnRejected(created.status());
      return End(ToGrpcStatus(created.status()));
    }
    job_id_ = *created;
    uploading_ = spec->fixed.path.empty() || spec->moving.path.empty();
    if (spec->fixed.path.empty()) declared_[0] = spec->fixed.upload_bytes;
    if (spec->moving.path.empty()) declared_[1] = spec->moving.upload_bytes;
    // Open the stream before the upload so that no event is missed.
    absl::StatusOr<std::unique_ptr<EventStream>> stream =
        manager->OpenEventStream(job_id_, principal_, /*from_tile=*/0);
    if (!stream.ok()) {
      if (uploading_) manager->AbortUpload(job_id_, stream.status());
      return End(ToGrpcStatus(stream.status()));
    }
    SetStream(*std::move(stream));
    v1::JobEvent event;
    CreatedEventToProto(job_id_, declared_[0] + declared_[1], &event);
    Send(std::move(event));
    if (!uploading_) {
      phase_ = Phase::kEvents;
      return Wait();
    }
    phase_ = Phase::kUpload;
    Receive();  // after `created` is on its way
    return Wait(read_deadline_);
  }

  // Receives chunks (one per step) until the client half-closes, and
  // meanwhile sends the job's events (upload progress) as they come.
  StepResult UploadStep() {
    JobManager* manager = service_->manager();
    Flags f = flags();
    if (f.cancelled || f.write_failed) return ClientWentAway();
    const ReadState read = read_state();
    if (read.done && read.ok) {
      chunk_.Swap(&request_);
      Receive();  // the next chunk arrives while this one is written
      const absl::Status appended = Append();
      if (!appended.ok()) {
        // The job fails (AppendUpload may have failed it already); its
        // terminal event comes through the stream and ends the call.
        manager->AbortUpload(job_id_, appended);
        phase_ = Phase::kEvents;
        return Again();
      }
    } else if (read.done) {
      // The request stream ended: a half-close, or a disconnection whose
      // cancellation gRPC has not reported yet.
      const bool complete =
          received_[0] == declared_[0] && received_[1] == declared_[1];
      if (!complete && end_seen_ == absl::InfinitePast()) {
        end_seen_ = absl::Now();
      }
      if (complete || absl::Now() >= end_seen_ + kDisconnectGrace) {
        // On error the core fails the job; its terminal event follows.
        (void)manager->FinishUpload(job_id_);
        phase_ = Phase::kEvents;
        return Again();
      }
    } else if (absl::Now() >= read_deadline_) {
      return EndIdle();
    }
    const absl::Time wake_at =
        read.done && !read.ok ? end_seen_ + kDisconnectGrace : read_deadline_;
    f = flags();
    if (f.write_pending) return Wait(wake_at);
    // Upload progress, without blocking: the next chunk must not wait.
    StepResult pumped = PumpEvent(absl::ZeroDuration());
    if (pumped.kind == StepResult::kWait || pumped.kind == StepResult::kPoll) {
      pumped.wake_at = wake_at;  // the idle timeout and the grace still run
    }
    return pumped;
  }

  // During the upload a vanished client cancels its job (the call ends once
  // the write in flight, if any, is done); later the job goes on.
  StepResult ClientWentAway() override {
    if (phase_ != Phase::kUpload) return StreamCall::ClientWentAway();
    service_->manager()->AbortUpload(
        job_id_,
        absl::CancelledError("the client disconnected during the upload"));
    ending_status_ = grpc::Status(
        grpc::StatusCode::CANCELLED,
        "the client disconnected during the upload; the job is cancelled");
    phase_ = Phase::kEnding;
    return Again();
  }

  // Checks and stores the chunk in chunk_.
  absl::Status Append() {
    if (chunk_.has_spec()) {
      return absl::InvalidArgumentError(
          "a second JobSpec arrived: send the spec once, as the first "
          "message, then only chunks");
    }
    if (!chunk_.has_chunk()) {
      return absl::InvalidArgumentError(
          "an empty SubmitRequest arrived: set spec or chunk");
    }
    const v1::ImageChunk& chunk = chunk_.chunk();
    REGSERVE_ASSIGN_OR_RETURN(const ImageRole role,
                              RoleFromProto(chunk.role()));
    uint64_t& done = received_[static_cast<int>(role)];
    if (chunk.offset() != done) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk.offset is ", chunk.offset(), " but ", done, " bytes of the ",
          RoleName(role),
          " image came before it: send the chunks of each image in order"));
    }
    const auto* bytes = reinterpret_cast<const uint8_t*>(chunk.data().data());
    REGSERVE_RETURN_IF_ERROR(service_->manager()->AppendUpload(
        job_id_, role, absl::MakeConstSpan(bytes, chunk.data().size())));
    done += chunk.data().size();
    service_->observer()->OnBytesReceived(chunk.data().size());
    return absl::OkStatus();
  }

  // Step-only state.
  Phase phase_ = Phase::kSpec;
  bool spec_requested_ = false;
  bool uploading_ = false;
  uint64_t declared_[2] = {0, 0};  // by ImageRole
  uint64_t received_[2] = {0, 0};
  absl::Time read_deadline_ = absl::InfiniteFuture();
  absl::Time end_seen_ = absl::InfinitePast();
  grpc::Status ending_status_;
  v1::SubmitRequest request_;  // the read buffer, touched by one read at a time
  v1::SubmitRequest chunk_;    // the chunk being stored

  absl::Mutex read_mu_;
  bool read_pending_ ABSL_GUARDED_BY(read_mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(read_mu_) = false;
  bool read_ok_ ABSL_GUARDED_BY(read_mu_) = false;
};

// The gRPC reactors: they forward callbacks to their call and own a
// reference to it until OnDone. A call refused in the constructor (no
// token, shutting down, too many streams) never reaches the pump.
class SubmitReactor final
    : public grpc::ServerBidiReactor<v1::SubmitRequest, v1::JobEvent>,
      public CallOps {
 public:
  SubmitReactor(RegistrationService* service,
                grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    absl::StatusOr<std::string> principal = service->Authenticate(*context);
    if (!principal.ok()) {
      Finish(ToGrpcStatus(principal.status()));
      return;
    }
    JobObserver* observer = service->observer();
    observer->OnSubmitted();
    if (!service->accepting()) {
      observer->OnRejected(absl::UnavailableError("shutting down"));
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the server is shutting down; submit again later"));
      return;
    }
    const absl::Status counted = service->StreamStarted();
    if (!counted.ok()) {
      observer->OnRejected(counted);
      Finish(ToGrpcStatus(counted));
      return;
    }
    counted_ = true;
    call_ = std::make_shared<SubmitCall>(service, *std::move(principal));
    call_->Bind(this);
    service->pump()->Add(call_);
  }

  void OnReadDone(bool ok) override { call_->OnReadDone(ok); }
  void OnWriteDone(bool ok) override { call_->OnWriteDone(ok); }
  void OnCancel() override {
    if (call_ != nullptr) call_->OnCancel();
  }
  void OnDone() override {
    if (counted_) service_->StreamEnded();
    delete this;
  }

  // CallOps.
  void Send(const v1::JobEvent* event) override { StartWrite(event); }
  void SendAndEnd(const v1::JobEvent* event, grpc::Status status) override {
    StartWriteAndFinish(event, grpc::WriteOptions(), std::move(status));
  }
  void End(grpc::Status status) override { Finish(std::move(status)); }
  void Receive(v1::SubmitRequest* request) override { StartRead(request); }
  void Abandon() override { context_->TryCancel(); }

 private:
  RegistrationService* const service_;
  grpc::CallbackServerContext* const context_;
  bool counted_ = false;
  std::shared_ptr<SubmitCall> call_;
};

class WatchReactor final : public grpc::ServerWriteReactor<v1::JobEvent>,
                           public CallOps {
 public:
  WatchReactor(RegistrationService* service,
               grpc::CallbackServerContext* context,
               const v1::WatchRequest* request)
      : service_(service), context_(context) {
    absl::StatusOr<std::string> principal = service->Authenticate(*context);
    if (!principal.ok()) {
      Finish(ToGrpcStatus(principal.status()));
      return;
    }
    const absl::Status counted = service->StreamStarted();
    if (!counted.ok()) {
      Finish(ToGrpcStatus(counted));
      return;
    }
    counted_ = true;
    call_ =
        std::make_shared<WatchCall>(service, *std::move(principal), *request);
    call_->Bind(this);
    service->pump()->Add(call_);
  }

  void OnWriteDone(bool ok) override { call_->OnWriteDone(ok); }
  void OnCancel() override {
    if (call_ != nullptr) call_->OnCancel();
  }
  void OnDone() override {
    if (counted_) service_->StreamEnded();
    delete this;
  }

  // CallOps.
  void Send(const v1::JobEvent* event) override { StartWrite(event); }
  void SendAndEnd(const v1::JobEvent* event, grpc::Status status) override {
    StartWriteAndFinish(event, grpc::WriteOptions(), std::move(status));
  }
  void End(grpc::Status status) override { Finish(std::move(status)); }
  void Abandon() override { context_->TryCancel(); }

 private:
  RegistrationService* const service_;
  grpc::CallbackServerContext* const context_;
  bool counted_ = false;
  std::shared_ptr<WatchCall> call_;
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
                                             : &null_observer_),
      pump_(std::make_unique<StreamPump>(options_.stream_threads)) {
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
  pump_.reset();
}

void RegistrationService::StopAccepting() { accepting_.store(false); }

void RegistrationService::WaitForCalls() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &open_streams_));
}

absl::Status RegistrationService::StreamStarted() {
  absl::MutexLock lock(&mu_);
  if (open_streams_ >= options_.max_streams) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server has ", open_streams_,
        " streaming calls open, its limit (--max_streams); retry later"));
  }
  ++open_streams_;
  return absl::OkStatus();
}

void RegistrationService::StreamEnded() {
  absl::MutexLock lock(&mu_);
  --open_streams_;
}

grpc::ServerUnaryReactor* RegistrationService::RunUnary(
    grpc::CallbackServerContext* context,
    std::function<absl::Status(const std::string& principal)> body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> caller = Authenticate(*context);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  absl::MutexLock lock(&mu_);
  unary_queue_.push_back(
      [reactor, body = std::move(body), principal = *std::move(caller)] {
        reactor->Finish(ToGrpcStatus(body(principal)));
      });
  return reactor;
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
  return RunUnary(context, [this, request, response](const std::string& who) {
    REGSERVE_RETURN_IF_ERROR(manager_->Cancel(request->job_id(), who));
    REGSERVE_ASSIGN_OR_RETURN(const JobInfo info,
                              manager_->GetJob(request->job_id(), who));
    CancelResponseFromInfo(info, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistrationService::GetJob(
    grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
    v1::JobStatus* response) {
  return RunUnary(context, [this, request, response](const std::string& who) {
    REGSERVE_ASSIGN_OR_RETURN(const JobInfo info,
                              manager_->GetJob(request->job_id(), who));
    REGSERVE_ASSIGN_OR_RETURN(
        const std::vector<TransformFile> files,
        manager_->ReadTransformFiles(request->job_id(), who));
    JobInfoToProto(info, files, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistrationService::ListJobs(
    grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  return RunUnary(context, [this, request, response](const std::string& who) {
    REGSERVE_ASSIGN_OR_RETURN(const JobManager::JobPage page,
                              manager_->ListJobPage(who, request->page_size(),
                                                    request->page_token()));
    for (const JobInfo& info : page.jobs) {
      JobInfoToProto(info, {}, response->add_jobs());
    }
    response->set_next_page_token(page.next_page_token);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistrationService::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  return RunUnary(context, [this, response](const std::string& /*who*/) {
    absl::StatusOr<HardwareSnapshot> hw =
        probe_ != nullptr ? probe_->Probe()
                          : absl::StatusOr<HardwareSnapshot>(
                                absl::UnavailableError("no hardware probe"));
    ServerInfoToProto(hw, scheduler_->Stats(), scheduler_->config(),
                      manager_->GetStats(), manager_->options(),
                      options_.max_message_bytes, response);
    response->set_version(options_.version);
    if (!manager_->options().fleet_db.empty()) {
      REGSERVE_ASSIGN_OR_RETURN(std::vector<JobManager::FleetReplica> replicas,
                                manager_->FleetReplicas());
      FleetToProto(manager_->options().replica_name, replicas, absl::Now(),
                   response);
    }
    return absl::OkStatus();
  });
}

}  // namespace regserve
