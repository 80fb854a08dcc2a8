// Copyright regserve authors.
//
// The events of one job and their readers. JobEvents fans each event out to
// every open reader (EventStream); a slow reader stays bounded because
// progress of the same stage and queue positions coalesce; a reader of a
// completed job gets the stored result's tiles from its position, read from
// disk on the reader's own thread, before the terminal event.
//
//   JobEvents events;                            // one per job
//   auto stream = events.Open(info, /*from_tile=*/0, /*shutting_down=*/false);
//   events.Publish(progress_event);              // from the pipeline
//   events.Finish(completed_event, final_info);  // once
//   JobEvent ev;
//   while ((*stream)->Next(&ev, absl::Now() + absl::Seconds(1)).ok()) {...}
//
// Thread safety: JobEvents is not thread-safe (the job manager calls it
// under its own lock); each EventStream has one reader thread, and Close
// may be called from any thread.
#ifndef REGSERVE_CORE_JOBS_EVENT_STREAM_H_
#define REGSERVE_CORE_JOBS_EVENT_STREAM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/jobs/job_types.h"

namespace regserve {

// A blocking, per-reader view of a job's events. Not thread-safe: one reader.
class EventStream {
 public:
  virtual ~EventStream() = default;
  // Waits until the next event or `deadline`. OK with *event filled;
  // DeadlineExceeded when nothing arrived by the deadline (call again);
  // OutOfRange after the terminal event was returned, or when the reader's
  // from_tile turned out to lie beyond the result once the plan was made;
  // Unavailable when the manager shut down first; Cancelled after Close.
  virtual absl::Status Next(JobEvent* event, absl::Time deadline) = 0;
  // Wakes a blocked Next (from any thread); later calls return Cancelled.
  virtual void Close() = 0;
};

namespace internal {
struct Subscriber;
}  // namespace internal

class JobEvents {
 public:
  JobEvents() = default;
  JobEvents(const JobEvents&) = delete;
  JobEvents& operator=(const JobEvents&) = delete;

  // A reader that first gets the job's present (its accepted event when it
  // has a plan, then its queue position or progress) and then what is
  // published. For a finished job: accepted, the tiles from `from_tile`,
  // the terminal event. OutOfRange when the tile count is known and
  // from_tile is beyond it; InvalidArgument when from_tile < 0.
  absl::StatusOr<std::unique_ptr<EventStream>> Open(const JobInfo& info,
                                                    int64_t from_tile,
                                                    bool shutting_down);
  // To every open reader; readers that closed are dropped. An accepted
  // event ends, with OutOfRange, the readers whose from_tile is beyond the
  // plan's tile count.
  void Publish(const JobEvent& event);
  // Live result tiles, published by the warp as they are stored. A reader
  // takes them only in order: tile i when its next tile is i and it holds
  // fewer than a few unread tiles; otherwise it gets that tile and the
  // rest from the stored result after the job completes (as a reader that
  // attaches late does). Demand says whether any reader would take tile
  // `index` now (the highest of the readers' TileDemand), so the warp
  // copies a tile out only when someone waits for it.
  TileDemand Demand(int64_t index) const;
  void PublishTile(const JobEvent& tile);
  // The terminal event for every reader (a completed job's readers get the
  // stored tiles first); then the readers are released.
  void Finish(const JobEvent& terminal, const JobInfo& info);
  // The manager stopped: unfinished readers get Unavailable.
  void Shutdown();

 private:
  std::vector<std::shared_ptr<internal::Subscriber>> subs_;
};

// The terminal event of a finished job: kCompleted, or kFailed (which also
// covers cancellation, with the failure's code).
JobEvent TerminalEvent(const JobInfo& info);

// InvalidArgument for from_tile < 0; OutOfRange when the job's tile count
// is known and from_tile lies beyond it (what Open checks).
absl::Status CheckFromTile(const JobInfo& info, int64_t from_tile);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_EVENT_STREAM_H_
