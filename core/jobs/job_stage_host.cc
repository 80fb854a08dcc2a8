// Copyright regserve authors.
//
// JobStageHost: what a running stage may ask of the job manager.
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/jobs/job_manager_impl.h"

namespace regserve {
namespace jobs_internal {

void JobStageHost::Registered(const std::string& transform_dir,
                              std::vector<std::string> transform_files,
                              const RegistrationResult& result) {
  const Plan& plan = rec_.info.plan;
  absl::MutexLock lock(&m_->mu_);
  JobInfo& info = job_->rec.info;
  info.registration_metric = result.final_metric;
  info.transform_dir = transform_dir;
  info.transform_files = std::move(transform_files);
  if (m_->options_.observer != nullptr) {
    m_->options_.observer->OnRegistered(
        plan.registration_fixed_width * plan.registration_fixed_height +
            plan.registration_moving_width * plan.registration_moving_height,
        result.iterations, result.final_metric);
  }
}

bool JobStageHost::WatchedElsewhere() {
  if (!spool_.has_value()) return false;
  absl::MutexLock lock(&spool_mu_);
  const absl::Time now = absl::Now();
  if (now - spool_checked_ >= absl::Milliseconds(250)) {
    spool_checked_ = now;
    spool_watched_ = spool_->Watched(now);
  }
  return spool_watched_;
}

TileDemand JobStageHost::Demand(int64_t index) {
  // A reader elsewhere takes every tile, from files: it never holds the
  // warp up.
  if (WatchedElsewhere()) return TileDemand::kNow;
  absl::MutexLock lock(&m_->mu_);
  return job_->events.Demand(index);
}

void JobStageHost::PublishTile(const JobEvent& tile) {
  JobEvent ev = tile;
  ev.job_id = job_->rec.info.id;
  {
    absl::MutexLock lock(&m_->mu_);
    job_->events.PublishTile(ev);
  }
  // Best effort: a tile that is not in the spool comes from the stored
  // result once the job is committed.
  if (WatchedElsewhere()) (void)spool_->Write(ev);
}

absl::Status JobStageHost::MayCommit() {
  if (!job_->lease.has_value()) return absl::OkStatus();
  return m_->RenewBeforeCommit(job_.get());
}

void JobStageHost::QualityEstimated(const QualitySummary& summary,
                                    std::shared_ptr<const QualityMap> map) {
  absl::MutexLock lock(&m_->mu_);
  JobInfo& info = job_->rec.info;
  info.quality = summary;
  info.quality_map = std::move(map);
  (void)m_->PersistLocked(job_.get());
}

void JobStageHost::Warped(const ImageSpec& output, const WarpStats& stats) {
  (void)stats;
  absl::MutexLock lock(&m_->mu_);
  JobInfo& info = job_->rec.info;
  info.output = output;
  if (m_->options_.observer != nullptr) {
    m_->options_.observer->OnWarped(output.width * output.height);
  }
}

}  // namespace jobs_internal
}  // namespace regserve
