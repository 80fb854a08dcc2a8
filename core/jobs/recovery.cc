// Copyright regserve authors.
#include "core/jobs/recovery.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/jobs/job_dir.h"
#include "core/registration/process.h"

namespace regserve {
namespace {

namespace fs = std::filesystem;

using Action = RecoveredJob::Action;

absl::StatusOr<std::vector<std::string>> ListJobIds(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> ids;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (IsValidJobId(name) && it->is_directory()) ids.push_back(name);
  }
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot list ", dir, ": ", ec.message()));
  }
  return ids;
}

// Reads one job's files; nullopt-like: !ok() means "skip it".
absl::Status ReadJob(const JobDir& dir, const std::string& id, JobRecord* rec) {
  absl::StatusOr<std::string> state = ReadFileToString(dir.state());
  if (!state.ok()) {
    // Present but unreadable (permissions, I/O error): keep the directory,
    // whose result may be intact, and say so.
    return absl::FailedPreconditionError(absl::StrCat(
        "its state file cannot be read (", state.status().message(),
        "); fix the file's permissions or the disk and restart"));
  }
  absl::StatusOr<std::string> spec = ReadFileToString(dir.spec());
  absl::Status s = spec.ok() ? DecodeJobSpec(*spec, rec) : spec.status();
  if (s.ok()) s = DecodeJobState(*state, rec);
  if (s.ok() && rec->info.id != id) {
    s = absl::DataLossError("id in spec does not match its directory");
  }
  return s;
}

// A finished result keeps the tiles it was written and streamed in; jobs
// not yet warped use this daemon's edge.
void RederiveTiles(const RecoveryOptions& o, JobRecord* rec) {
  JobInfo& info = rec->info;
  if (!info.has_plan) return;
  int64_t edge = info.tiles.edge();
  if (info.state != JobState::kCompleted ||
      !TileGrid::ValidateEdge(edge, "tile_size").ok()) {
    SetStreamTiles(o.stream_tile_size, rec->moving_spec, &info.plan);
    edge = info.plan.stream_tile_size;
  }
  info.tiles = TileGrid(info.plan.output_width, info.plan.output_height, edge);
}

// What to do with a job the previous daemon was running.
void DecideInterrupted(const RecoveryOptions& o, const JobDir& dir,
                       RecoveredJob* job) {
  JobInfo& info = job->record.info;
  // elastix/transformix run in their own process group and outlive a
  // daemon killed with SIGKILL: end the one this job left behind before
  // its files go and its memory is counted as free again.
  if (const pid_t stale = KillStaleChild(dir.child_pid())) {
    std::fprintf(stderr,
                 "regserve: job %s: killed registration process %d left by "
                 "the previous daemon\n",
                 info.id.c_str(), static_cast<int>(stale));
  }
  const int lost_runs = info.attempts - job->record.checkpointed_runs;
  if (lost_runs >= o.max_attempts) {
    job->action = Action::kFail;
    job->failure = absl::AbortedError(
        absl::StrCat("interrupted by a daemon restart during ",
                     StageName(info.stage), " (attempt ", info.attempts, ")"));
    return;
  }
  info.state = JobState::kQueued;
  info.stage_fraction = 0;
  info.stage_detail = absl::StrCat("re-queued after a daemon restart during ",
                                   StageName(info.stage));
  info.timings.clear();
  dir.RemoveWorkFiles(/*delete_uploads=*/false, /*keep_result=*/false);
  job->action = Action::kRerun;
}

void Decide(const RecoveryOptions& o, const JobDir& dir, RecoveredJob* job) {
  JobInfo& info = job->record.info;
  switch (info.state) {
    case JobState::kUploading:
      job->action = Action::kFail;
      job->failure = absl::AbortedError(
          "upload interrupted by a daemon restart; submit again");
      return;
    case JobState::kQueued:
      job->action = Action::kQueue;
      return;
    case JobState::kRunning:
      DecideInterrupted(o, dir, job);
      return;
    case JobState::kCompleted: {
      struct stat st;
      if (stat(info.result_path.c_str(), &st) != 0) {
        info.state = JobState::kFailed;
        info.failure = absl::DataLossError(
            "the stored result is missing from the data directory");
        job->action = Action::kPersist;
      }
      return;
    }
    case JobState::kFailed:
    case JobState::kCancelled:
      return;
  }
}

}  // namespace

void RebaseRecord(const JobDir& dir, JobRecord* rec) {
  JobInfo& info = rec->info;
  for (std::string* path : {&info.result_path, &info.transform_dir,
                            &rec->fixed_input, &rec->moving_input}) {
    *path = dir.Rebase(*path);
  }
  for (std::string& path : info.transform_files) path = dir.Rebase(path);
}

absl::StatusOr<std::vector<RecoveredJob>> ScanJobDirectory(
    const RecoveryOptions& o) {
  absl::StatusOr<std::vector<std::string>> ids = ListJobIds(o.jobs_dir);
  if (!ids.ok()) return ids.status();
  std::vector<RecoveredJob> out;
  for (const std::string& id : *ids) {
    const JobDir dir(o.jobs_dir, id);
    struct stat st;
    if (stat(dir.state().c_str(), &st) != 0 && errno == ENOENT) {
      // CreateJob writes the state last, before it returns the id: without
      // it the job was never acknowledged. Remove the debris.
      RemoveAllQuietly(dir.path());
      continue;
    }
    RecoveredJob job;
    absl::Status s = ReadJob(dir, id, &job.record);
    if (!s.ok()) {
      std::fprintf(stderr, "regserve: skipping job %s: %s\n", id.c_str(),
                   std::string(s.message()).c_str());
      continue;
    }
    RebaseRecord(dir, &job.record);
    RederiveTiles(o, &job.record);
    Decide(o, dir, &job);
    out.push_back(std::move(job));
  }
  return out;
}

}  // namespace regserve
