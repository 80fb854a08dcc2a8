// Copyright regserve authors.
//
// JobManager uploads: bytes appended to a job's input files, the end of an
// upload (headers read, planned, queued), and uploads abandoned.
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/jobs/job_manager_impl.h"
#include "core/jobs/spec_validation.h"

namespace regserve {
namespace jobs_internal {

absl::Status JobManagerImpl::AppendUpload(const std::string& job_id,
                                          ImageRole role,
                                          absl::Span<const uint8_t> bytes) {
  if (role != ImageRole::kFixed && role != ImageRole::kMoving) {
    return absl::InvalidArgumentError("unknown image role");
  }
  std::shared_ptr<Job> job = Find(job_id);
  if (job == nullptr) return NoSuchJob(job_id);
  absl::MutexLock upload_lock(&job->upload_mu);
  Job::Upload& up = job->uploads[static_cast<int>(role)];
  std::string path;
  {
    absl::MutexLock lock(&mu_);
    if (job->rec.info.state != JobState::kUploading) {
      return NotUploadingStatus(job->rec.info);
    }
    if (!up.expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("job ", job_id, " has no ", RoleName(role),
                       " upload (the image was given as a server_path)"));
    }
    if (bytes.size() > up.declared - up.received) {
      absl::Status s = absl::InvalidArgumentError(absl::StrCat(
          SourceField(role), ".upload: more bytes than the declared byte_size ",
          up.declared));
      FinishJobLocked(job.get(), JobState::kFailed, s);
      return s;
    }
    path = up.path;
  }
  absl::Status s = fs_->AppendToFile(path, bytes);
  absl::MutexLock lock(&mu_);
  if (job->rec.info.state != JobState::kUploading) {
    return NotUploadingStatus(job->rec.info);
  }
  if (!s.ok()) {
    FinishJobLocked(job.get(), JobState::kFailed,
                    WithoutPath(s, path, "the upload"));
    return job->rec.info.failure;
  }
  up.received += bytes.size();
  uint64_t declared = 0, received = 0;
  for (const Job::Upload& u : job->uploads) {
    declared += u.declared;
    received += u.received;
  }
  ProgressLocked(
      job.get(), Stage::kUpload,
      declared == 0 ? 1.0 : static_cast<double>(received) / declared,
      absl::StrCat("received ", received, " of ", declared, " bytes"), nullptr,
      /*force=*/false);
  return absl::OkStatus();
}

absl::Status JobManagerImpl::CheckUploadsCompleteLocked(Job* job) {
  for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
    const Job::Upload& up = job->uploads[static_cast<int>(role)];
    if (up.expected && up.received != up.declared) {
      absl::Status s = absl::InvalidArgumentError(absl::StrCat(
          RoleName(role), " upload truncated: got ", up.received, " of ",
          up.declared, " bytes (", SourceField(role), ".upload.byte_size)"));
      FinishJobLocked(job, JobState::kFailed, s);
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status JobManagerImpl::ReadUploadedSpecs(const Job& job,
                                               JobRecord* rec) const {
  for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
    const Job::Upload& up = job.uploads[static_cast<int>(role)];
    if (!up.expected) continue;
    REGSERVE_RETURN_IF_ERROR(
        WithoutPath(fs_->SyncFile(up.path), up.path, "the upload"));
    REGSERVE_ASSIGN_OR_RETURN(
        (role == ImageRole::kFixed ? rec->fixed_spec : rec->moving_spec),
        ReadInputSpec(role, up.path));
  }
  return absl::OkStatus();
}

absl::Status JobManagerImpl::AcceptUploadedLocked(Job* job,
                                                  const JobRecord& rec,
                                                  Plan plan) {
  job->rec.fixed_spec = rec.fixed_spec;
  job->rec.moving_spec = rec.moving_spec;
  job->rec.have_input_specs = true;
  job->rec.info.timings.push_back(StageTiming{
      Stage::kUpload, absl::ToDoubleSeconds(absl::Now() - job->stage_start)});
  CloseStageLocked(job, /*completed=*/true);
  SetPlan(job, std::move(plan));
  job->rec.info.state = JobState::kQueued;
  job->rec.info.stage_fraction = 1.0;
  absl::Status s = PersistLocked(job);
  if (!s.ok()) {
    job->rec.info.state = JobState::kUploading;
    FinishJobLocked(job, JobState::kFailed, s);
    return s;
  }
  JobEvent accepted;
  accepted.kind = JobEvent::Kind::kAccepted;
  accepted.info = job->rec.info;
  PublishLocked(job, std::move(accepted));
  return absl::OkStatus();
}

absl::Status JobManagerImpl::FinishUpload(const std::string& job_id) {
  std::shared_ptr<Job> job = Find(job_id);
  if (job == nullptr) return NoSuchJob(job_id);
  absl::MutexLock upload_lock(&job->upload_mu);
  JobRecord rec;
  {
    absl::MutexLock lock(&mu_);
    if (job->rec.info.state != JobState::kUploading) {
      return NotUploadingStatus(job->rec.info);
    }
    REGSERVE_RETURN_IF_ERROR(CheckUploadsCompleteLocked(job.get()));
    rec = job->rec;
  }
  // Make the uploads durable, read their headers and plan, without the lock.
  absl::Status s = ReadUploadedSpecs(*job, &rec);
  absl::StatusOr<Plan> plan = s.ok() ? PlanJob(rec) : absl::StatusOr<Plan>(s);
  {
    absl::MutexLock lock(&mu_);
    if (job->rec.info.state != JobState::kUploading) {
      return NotUploadingStatus(job->rec.info);
    }
    if (!plan.ok()) {
      FinishJobLocked(job.get(), JobState::kFailed, plan.status());
      return plan.status();
    }
    REGSERVE_RETURN_IF_ERROR(
        AcceptUploadedLocked(job.get(), rec, *std::move(plan)));
    if (!fleet()) {
      EnqueueLocked(job);
      UpdateQueuePositionsLocked();
      return absl::OkStatus();
    }
    rec = job->rec;
  }
  // Fleet mode: to the fleet's queue; this replica's readers follow it
  // there.
  const absl::Status queued = FleetEnqueue(rec);
  bool cancelled_meanwhile = false;
  {
    absl::MutexLock lock(&mu_);
    if (!queued.ok()) {
      FinishJobLocked(job.get(), JobState::kFailed, queued);
      return queued;
    }
    cancelled_meanwhile = job->rec.info.state == JobState::kCancelled;
    DetachLocked(job.get());
  }
  if (cancelled_meanwhile) (void)queries_->Cancel(job_id);
  return absl::OkStatus();
}

void JobManagerImpl::AbortUpload(const std::string& job_id,
                                 const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Job> job = FindLocked(job_id);
  if (job == nullptr || job->rec.info.state != JobState::kUploading) return;
  // A client that went away cancelled its job; other aborts are failures.
  if (absl::IsCancelled(why)) {
    FinishJobLocked(job.get(), JobState::kCancelled, why);
    return;
  }
  FinishJobLocked(job.get(), JobState::kFailed,
                  why.ok() ? absl::AbortedError("upload aborted") : why);
}

}  // namespace jobs_internal
}  // namespace regserve
