// Copyright regserve authors.
//
// Recovery after a restart: scans data_dir/jobs, reads each job's files,
// ends what the previous daemon left running (an orphaned elastix) and
// decides what to do with each job. The manager applies the decisions under
// its lock; nothing here touches the job table.
//
//   RecoveryOptions o;  o.jobs_dir = "/var/lib/regserve/jobs";  ...
//   REGSERVE_ASSIGN_OR_RETURN(std::vector<RecoveredJob> jobs,
//                             ScanJobDirectory(o));
//   for (RecoveredJob& j : jobs) { ... switch (j.action) ... }
//
// Thread safety: call from one thread, before the pipeline starts.
#ifndef REGSERVE_CORE_JOBS_RECOVERY_H_
#define REGSERVE_CORE_JOBS_RECOVERY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/jobs/job_dir.h"
#include "core/jobs/job_store.h"

namespace regserve {

struct RecoveryOptions {
  std::string jobs_dir;  // data_dir/jobs, canonical
  // Unfinished jobs take this daemon's stream tile edge; finished ones keep
  // theirs, so a client resuming with from_tile stays in the same grid.
  int64_t stream_tile_size = 512;
  // Runs a job may lose to daemon crashes before it is failed.
  int max_attempts = 2;
};

struct RecoveredJob {
  enum class Action {
    kKeep,     // finished: serve it until retention expires
    kQueue,    // queued: queue it again
    kRerun,    // interrupted while running: reset, persist and queue it
    kPersist,  // state changed here (result lost): persist and keep
    kFail,     // fail it with `failure`
  };
  JobRecord record;
  Action action = Action::kKeep;
  absl::Status failure;
};

// The record's paths inside its job directory, recorded when the data
// directory was elsewhere (another mount of it, on another replica, or
// before a move), moved under `dir`.
void RebaseRecord(const JobDir& dir, JobRecord* record);

// Every job found, with its paths rebased to where the directory is now.
// Directories without a state file (never acknowledged) are removed; jobs
// whose files cannot be read are skipped with a line on stderr and left on
// disk. FailedPrecondition when jobs_dir cannot be listed.
absl::StatusOr<std::vector<RecoveredJob>> ScanJobDirectory(
    const RecoveryOptions& options);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_RECOVERY_H_
