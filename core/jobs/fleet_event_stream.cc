// Copyright regserve authors.
#include "core/jobs/fleet_event_stream.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace jobs_internal {
namespace {

bool IsTerminalEvent(const JobEvent& ev) {
  return ev.kind == JobEvent::Kind::kCompleted ||
         ev.kind == JobEvent::Kind::kFailed;
}

class FleetEventStream final : public EventStream {
 public:
  FleetEventStream(std::unique_ptr<EventStream> local,
                   FleetEventStreamOptions options)
      : o_(std::move(options)), next_tile_(o_.from_tile) {
    absl::MutexLock lock(&mu_);
    local_ = std::move(local);
  }

  ~FleetEventStream() override {
    if (o_.spool) o_.spool->Unmark(o_.reader);
  }

  absl::Status Next(JobEvent* event, absl::Time deadline) override {
    if (done_) return absl::OutOfRangeError("the job's events have ended");
    if (final_) return FromFinal(event, deadline);
    EventStream* local = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return absl::CancelledError("stream closed");
      local = local_.get();
    }
    if (local != nullptr) {
      const absl::Status s = FromLocal(local, event, deadline);
      if (s.ok() || !absl::IsUnavailable(s) || o_.shutting_down()) return s;
      // The job left this replica: carry on from its row.
      absl::MutexLock lock(&mu_);
      local_.reset();
    }
    return Poll(event, deadline);
  }

  void Close() override {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    if (local_) local_->Close();
    if (final_) final_->Close();
  }

 private:
  void Track(const JobEvent& ev) {
    if (ev.kind == JobEvent::Kind::kAccepted) accepted_sent_ = true;
    if (ev.kind == JobEvent::Kind::kTile) {
      next_tile_ = std::max(next_tile_, ev.tile_index + 1);
    }
    if (IsTerminalEvent(ev)) done_ = true;
  }

  absl::Status FromLocal(EventStream* local, JobEvent* event,
                         absl::Time deadline) {
    while (true) {
      const absl::Status s = local->Next(event, deadline);
      // A stream attached after a poll repeats the accepted event.
      if (s.ok() && event->kind == JobEvent::Kind::kAccepted &&
          accepted_sent_) {
        continue;
      }
      if (s.ok()) Track(*event);
      return s;
    }
  }

  absl::Status FromFinal(JobEvent* event, absl::Time deadline) {
    while (true) {
      const absl::Status s = final_->Next(event, deadline);
      // The reader had it already, from here or from an earlier poll.
      if (s.ok() && event->kind == JobEvent::Kind::kAccepted &&
          accepted_sent_) {
        continue;
      }
      if (s.ok()) Track(*event);
      return s;
    }
  }

  absl::Status Poll(JobEvent* event, absl::Time deadline) {
    while (true) {
      if (std::optional<JobEvent> tile = LiveTile()) {
        *event = *std::move(tile);
        Track(*event);
        return absl::OkStatus();
      }
      const absl::Time now = absl::Now();
      if (now >= next_poll_) {
        next_poll_ = now + o_.poll_interval;
        if (o_.spool && running_) o_.spool->Mark(o_.reader);
        if (std::unique_ptr<EventStream> here =
                o_.attach_local ? o_.attach_local(next_tile_) : nullptr) {
          {
            absl::MutexLock lock(&mu_);
            local_ = std::move(here);
          }
          return Next(event, deadline);
        }
        absl::StatusOr<FleetSnapshot> snap = o_.poll();
        // An unreachable table is waited out: the job goes on meanwhile.
        if (!snap.ok() && !absl::IsUnavailable(snap.status())) {
          return snap.status();
        }
        if (snap.ok()) {
          bool emitted = false;
          const absl::Status s = FromSnapshot(*snap, event, deadline, &emitted);
          if (!s.ok() || emitted) return s;
        }
      }
      if (now >= deadline) return absl::DeadlineExceededError("no event yet");
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(&closed_),
                            std::min(deadline, next_poll_));
      if (closed_) return absl::CancelledError("stream closed");
    }
  }

  // The next tile from the spool, once the reader has its accepted event
  // and the job runs.
  std::optional<JobEvent> LiveTile() {
    if (!o_.spool || !running_ || !accepted_sent_) return std::nullopt;
    std::optional<JobEvent> tile = o_.spool->Read(next_tile_);
    if (tile) tile->job_id = job_id_;
    return tile;
  }

  absl::Status FromSnapshot(FleetSnapshot& snap, JobEvent* event,
                            absl::Time deadline, bool* emitted) {
    JobInfo& info = snap.info;
    *emitted = true;
    job_id_ = info.id;
    if (o_.spool && !running_ && info.state == JobState::kRunning) {
      o_.spool->Mark(o_.reader);  // before the warp looks
    }
    const bool was_running = running_;
    running_ = info.state == JobState::kRunning;
    if (IsTerminal(info.state)) {
      if (o_.spool && was_running) o_.spool->Unmark(o_.reader);
      // The stored result's tiles from the reader's place, then the end.
      REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<EventStream> final_stream,
                                finished_.Open(info, next_tile_, false));
      {
        absl::MutexLock lock(&mu_);
        final_ = std::move(final_stream);
      }
      return FromFinal(event, deadline);
    }
    JobEvent ev;
    ev.job_id = info.id;
    if (!accepted_sent_ && info.has_plan) {
      ev.kind = JobEvent::Kind::kAccepted;
      ev.info = info;
      accepted_sent_ = true;
    } else if (snap.version == version_) {
      *emitted = false;
      return absl::OkStatus();
    } else if (info.state == JobState::kQueued) {
      ev.kind = JobEvent::Kind::kQueued;
      ev.queue_position = info.queue_position;
    } else {
      ev.kind = JobEvent::Kind::kProgress;
      ev.stage = info.stage;
      ev.fraction = info.stage_fraction;
      ev.detail = info.stage_detail;
    }
    version_ = snap.version;
    *event = std::move(ev);
    return absl::OkStatus();
  }

  const FleetEventStreamOptions o_;
  absl::Mutex mu_;  // local_, final_ (for Close) and closed_
  std::unique_ptr<EventStream> local_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<EventStream> final_;  // written by the reader under mu_
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // The reader's own state.
  JobEvents finished_;
  int64_t next_tile_;
  int64_t version_ = -1;
  bool accepted_sent_ = false;
  bool done_ = false;
  bool running_ = false;  // as of the last snapshot
  std::string job_id_;
  absl::Time next_poll_ = absl::InfinitePast();
};

}  // namespace

std::unique_ptr<EventStream> NewFleetEventStream(
    std::unique_ptr<EventStream> local, FleetEventStreamOptions options) {
  return std::make_unique<FleetEventStream>(std::move(local),
                                            std::move(options));
}

}  // namespace jobs_internal
}  // namespace regserve
