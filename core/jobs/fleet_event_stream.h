// Copyright regserve authors.
//
// Private to core/jobs: the events of a fleet job (job_fleet.cc) for a
// reader on any replica. While the job is here (uploading or running), the
// reader gets this replica's own stream; when the job leaves (its upload
// went to the fleet's queue, or its lease was lost) and for a job that is
// elsewhere, it polls the job's row: the accepted event once the job has a
// plan, its queue state or progress whenever the row changes, the live
// tiles the running replica leaves in the job's tile spool while the
// reader marks it, and, once the job is finished, the stored result's
// tiles from where the reader is (read from the shared data directory)
// and the terminal event.
//
//   FleetEventStreamOptions o;
//   o.poll = [..] { return snapshot of the row; };
//   auto stream = NewFleetEventStream(std::move(local_or_null), o);
//
// Thread safety: as EventStream (one reader; Close from any thread).
#ifndef REGSERVE_CORE_JOBS_FLEET_EVENT_STREAM_H_
#define REGSERVE_CORE_JOBS_FLEET_EVENT_STREAM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/jobs/event_stream.h"
#include "core/jobs/job_types.h"
#include "core/jobs/tile_spool.h"

namespace regserve {
namespace jobs_internal {

// The job as its row says now; `version` changes whenever the row does.
struct FleetSnapshot {
  JobInfo info;
  int64_t version = 0;
};

struct FleetEventStreamOptions {
  std::function<absl::StatusOr<FleetSnapshot>()> poll;
  // This replica's own stream of the job from `from_tile` when it runs
  // here now, else null: a reader polling the row takes it (live tiles, no
  // poll delay) when the job is claimed here.
  std::function<std::unique_ptr<EventStream>(int64_t from_tile)> attach_local;
  // The job's tile spool (tile_spool.h) and this reader's name in it: live
  // tiles from the replica that runs the job. Null: tiles only once the
  // job is finished.
  std::shared_ptr<const TileSpool> spool;
  std::string reader;
  // True once the manager shuts down: the local stream's Unavailable is
  // then the end, not a hand-over.
  std::function<bool()> shutting_down;
  int64_t from_tile = 0;
  absl::Duration poll_interval = absl::Milliseconds(200);
};

// `local` may be null (the job is not here).
std::unique_ptr<EventStream> NewFleetEventStream(
    std::unique_ptr<EventStream> local, FleetEventStreamOptions options);

}  // namespace jobs_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_FLEET_EVENT_STREAM_H_
