// Copyright regserve authors.
//
// Private to core/jobs: the JobManager's implementation class, shared by
// its translation units (job_manager.cc: creation, the table, queries and
// the threads; job_uploads.cc: uploads; job_stage_host.cc: what a running
// stage may ask of the manager). Not for use outside core/jobs.
//
// Locking: mu_ guards the job table, the queue and every Job's fields except
// upload_mu-serialised upload I/O. State files are written under mu_ so that
// their order matches the order of state changes. Subscriber queues have
// their own mutex, always taken after mu_ (never the other way round).
// Stages run without mu_ and reach the job only through JobStageHost.
#ifndef REGSERVE_CORE_JOBS_JOB_MANAGER_IMPL_H_
#define REGSERVE_CORE_JOBS_JOB_MANAGER_IMPL_H_

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/fleet/job_table.h"
#include "core/jobs/job_dir.h"
#include "core/jobs/job_manager.h"
#include "core/jobs/job_store.h"
#include "core/jobs/recovery.h"
#include "core/jobs/stage_runner.h"
#include "core/jobs/tile_spool.h"

namespace regserve {
namespace jobs_internal {

struct Job {
  JobRecord rec;
  struct Upload {
    bool expected = false;
    std::string path;
    uint64_t declared = 0;
    uint64_t received = 0;
  };
  Upload uploads[2];
  bool user_cancelled = false;
  CancelTokenPtr run_token;
  JobEvents events;
  absl::Time last_progress = absl::InfinitePast();
  Stage last_progress_stage = Stage::kUpload;
  // The stage reported to the observer as started and not yet ended.
  bool stage_open = false;
  Stage open_stage = Stage::kUpload;
  absl::Time stage_start;
  // Serialises AppendUpload/FinishUpload file I/O of this job.
  absl::Mutex upload_mu;
  // Fleet mode (job_fleet.cc): the lease this replica runs the job under;
  // the local time by which it must be renewed, or it counts as lost;
  // whether it was lost. `version` grows at every change a replica that
  // does not run the job would show; the lease thread sends the record
  // when it is ahead of `pushed_version`.
  std::optional<Lease> lease;
  absl::Time lease_deadline = absl::InfinitePast();
  bool lease_lost = false;
  uint64_t version = 0;
  uint64_t pushed_version = 0;
};

struct QueueKey {
  int neg_priority;
  uint64_t sequence;
  std::string id;
  bool operator<(const QueueKey& o) const {
    if (neg_priority != o.neg_priority) return neg_priority < o.neg_priority;
    if (sequence != o.sequence) return sequence < o.sequence;
    return id < o.id;
  }
};

inline QueueKey KeyOf(const Job& job) {
  return QueueKey{-job.rec.info.spec.priority, job.rec.sequence,
                  job.rec.info.id};
}

absl::Status NoSuchJob(const std::string& id);
// Why an upload call found its job no longer uploading: CANCELLED when a
// Cancel ended it meanwhile, FAILED_PRECONDITION (with the job's failure)
// otherwise.
absl::Status NotUploadingStatus(const JobInfo& info);
absl::Status ValidateOptions(const JobManager::Options& o);
// A job's info as it ends in `state` (FinishJobLocked's changes to it).
void MarkTerminal(JobInfo* info, JobState state, absl::Status why);

class JobStageHost;

class JobManagerImpl final : public JobManager {
 public:
  JobManagerImpl(const Options& options, ResourceScheduler* scheduler,
                 HardwareProbe* probe, JobManagerEnv env);
  ~JobManagerImpl() override { Shutdown(); }

  absl::Status Init();

  absl::StatusOr<std::string> CreateJob(const JobSpec& spec,
                                        const std::string& principal) override;
  absl::Status AppendUpload(const std::string& job_id, ImageRole role,
                            absl::Span<const uint8_t> bytes) override;
  absl::Status FinishUpload(const std::string& job_id) override;
  void AbortUpload(const std::string& job_id, const absl::Status& why) override;
  absl::Status Cancel(const std::string& job_id,
                      const std::string& principal) override;
  absl::StatusOr<JobInfo> GetJob(const std::string& job_id,
                                 const std::string& principal) const override;
  absl::StatusOr<std::vector<TransformFile>> ReadTransformFiles(
      const std::string& job_id, const std::string& principal) const override;
  std::vector<JobInfo> ListJobs(const std::string& principal) const override;
  absl::StatusOr<JobPage> ListJobPage(
      const std::string& principal, int page_size,
      const std::string& page_token) const override;
  absl::StatusOr<std::unique_ptr<EventStream>> OpenEventStream(
      const std::string& job_id, const std::string& principal,
      int64_t from_tile) override;
  void Shutdown() override;
  Stats GetStats() const override;
  const Options& options() const override { return options_; }
  absl::Status FleetHealth() const override;
  absl::StatusOr<std::vector<FleetReplica>> FleetReplicas() const override;
  absl::StatusOr<int64_t> QueueDepth() const override;

 private:
  friend class JobStageHost;

  JobDir DirOf(const std::string& id) const { return JobDir(jobs_dir_, id); }

  // Recovery's decisions applied to the table (under mu_).
  absl::Status Recover();
  void AdoptRecoveredLocked(RecoveredJob recovered)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Submission: resolves and reads the inputs, plans server-side jobs.
  absl::Status PrepareInputs(Job* job) const;
  absl::Status WriteNewJob(const Job& job) const;
  absl::StatusOr<ImageSpec> ReadInputSpec(ImageRole role,
                                          const std::string& path) const;
  // The plan for this daemon's hardware, or in fleet mode (when it does
  // not fit here) for another replica's budgets.
  absl::StatusOr<Plan> PlanJob(const JobRecord& rec) const;
  absl::StatusOr<Plan> PlanHere(const JobRecord& rec) const;
  JobOptions PlanningOptions(const JobRecord& rec) const;
  // Stores the plan and the tile grid it implies. Needs mu_ once the job
  // is in the table.
  void SetPlan(Job* job, Plan plan) const;
  absl::Status CheckUploadsCompleteLocked(Job* job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReadUploadedSpecs(const Job& job, JobRecord* rec) const;
  absl::Status AcceptUploadedLocked(Job* job, const JobRecord& rec, Plan plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<Job> FindLocked(const std::string& id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<Job> Find(const std::string& id) const
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::shared_ptr<Job>> FindOwnedLocked(
      const std::string& id, const std::string& principal) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK, or ResourceExhausted when the queue or `principal`'s share is full.
  absl::Status CheckCapacityLocked(const std::string& principal) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status PersistLocked(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishLocked(Job* job, JobEvent event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueLocked(const std::shared_ptr<Job>& job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateQueuePositionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a job to a terminal state, tells its readers, persists it and
  // deletes what it no longer needs.
  void FinishJobLocked(Job* job, JobState state, absl::Status why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ProgressLocked(Job* job, Stage stage, double fraction,
                      std::string detail, const RegistrationProgress* reg,
                      bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shutting_down_ || !queue_.empty();
  }
  void PipelineLoop();
  // The next queued job, marked running; null when shutting down.
  std::shared_ptr<Job> TakeNextJob() ABSL_LOCKS_EXCLUDED(mu_);
  void JanitorLoop();
  std::vector<std::string> TakeExpiredLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunJob(const std::shared_ptr<Job>& job);
  void EndRunLocked(Job* job, const absl::Status& s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Observer bookkeeping: every started stage is ended exactly once.
  void OpenStageLocked(Job* job, Stage stage)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseStageLocked(Job* job, bool completed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Fleet mode (job_fleet.cc). The job table holds every job that left its
  // upload; jobs_ holds only those uploading here or running here.
  bool fleet() const { return claims_ != nullptr; }
  absl::Status OpenFleet();
  // ResourceExhausted when the fleet's queue, or `principal`'s share of the
  // fleet, is full (no lock held).
  absl::Status CheckFleetCapacity(const std::string& principal) const;
  // Adds a planned job to the fleet's queue (no lock held).
  absl::Status FleetEnqueue(const JobRecord& rec);
  // The next job this replica claims, marked running; null when shutting
  // down.
  std::shared_ptr<Job> ClaimFleetJob() ABSL_LOCKS_EXCLUDED(mu_);
  bool MayClaimOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shutting_down_ || fleet_active_ < options_.fleet_jobs_per_replica;
  }
  absl::StatusOr<std::shared_ptr<Job>> AdoptClaimed(const Lease& lease);
  // Ends a fleet run: the outcome is committed fenced on the lease first,
  // and only then stored and told; a lost lease leaves the job to its new
  // holder.
  void EndFleetRun(const std::shared_ptr<Job>& job, const absl::Status& s)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status CommitOutcome(const Lease& lease, const JobOutcome& outcome);
  // JobStageHost::MayCommit for a fleet job.
  absl::Status RenewBeforeCommit(Job* job) ABSL_LOCKS_EXCLUDED(mu_);
  // The job leaves this replica: readers here carry on from the table.
  void DetachLocked(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LeaseLoop();
  // Removes job directories that no row and no replica account for (see
  // Options::fleet_orphan_age).
  void SweepOrphanedDirs() ABSL_LOCKS_EXCLUDED(mu_);
  void RenewLeases();
  void SendHeartbeat();
  absl::StatusOr<JobRecord> FleetRecord(const std::string& id,
                                        const std::string& principal,
                                        int64_t* version) const;
  absl::StatusOr<JobInfo> FleetGetJob(const std::string& id,
                                      const std::string& principal) const;
  absl::StatusOr<JobPage> FleetListJobPage(const std::string& principal,
                                           size_t limit, uint64_t before) const;
  absl::Status FleetCancel(const std::string& id, const std::string& principal);
  absl::StatusOr<std::unique_ptr<EventStream>> FleetOpenEventStream(
      const std::string& id, const std::string& principal, int64_t from_tile);
  ReplicaBudgets OwnBudgets() const;
  absl::StatusOr<Plan> PlanForFleet(const JobRecord& rec,
                                    const absl::Status& here) const;

  const Options options_;
  ResourceScheduler* const scheduler_;
  HardwareProbe* const probe_;
  JobManagerEnv env_;
  JobFileSystem* fs_ = nullptr;
  std::string jobs_dir_;
  InputRoot input_root_;
  OutputRoot output_root_;
  std::unique_ptr<WarperPool> warpers_;
  StageServices services_;
  std::vector<std::unique_ptr<PipelineStage>> stages_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::set<QueueKey> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool joined_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> pipeline_;
  std::thread janitor_;

  // Fleet mode: one connection each for claims, the lease thread, and the
  // RPC threads' queries, so that a slow query never delays a renewal.
  std::unique_ptr<JobTable> claims_;
  std::unique_ptr<JobTable> leases_;
  std::unique_ptr<JobTable> queries_;
  std::thread lease_thread_;
  int fleet_active_ ABSL_GUARDED_BY(mu_) = 0;     // claiming or running here
  bool fleet_kick_ ABSL_GUARDED_BY(mu_) = false;  // a job was just queued
  absl::Status fleet_health_ ABSL_GUARDED_BY(mu_);
};

// The narrow view a running stage has of its job (core/jobs/stage_runner.h).
class JobStageHost final : public StageHost {
 public:
  JobStageHost(JobManagerImpl* m, std::shared_ptr<Job> job,
               const JobRecord& rec, const CancelToken* cancel)
      : m_(m), job_(std::move(job)), rec_(rec), cancel_(cancel) {
    // A fleet job's tiles also go to readers on other replicas.
    if (job_->lease.has_value()) {
      spool_.emplace(m_->DirOf(rec_.info.id).tile_spool());
    }
  }

  absl::StatusOr<Reservation> Acquire(Lane lane, uint64_t ram, uint64_t vram,
                                      absl::string_view what) override {
    ResourceRequest req;
    req.lane = lane;
    req.ram_bytes = ram;
    req.vram_bytes = lane == Lane::kGpu ? vram : 0;
    req.label = absl::StrCat("job ", rec_.info.id.substr(0, 8), ": ", what);
    return m_->scheduler_->Acquire(req, rec_.info.spec.priority, rec_.sequence,
                                   cancel_);
  }

  void Started(Stage stage) override {
    absl::MutexLock lock(&m_->mu_);
    m_->OpenStageLocked(job_.get(), stage);
    job_->rec.info.stage = stage;
    (void)m_->PersistLocked(job_.get());
    m_->ProgressLocked(job_.get(), stage, 0.0,
                       absl::StrCat(StageName(stage), " started"), nullptr,
                       /*force=*/true);
  }

  void Progress(Stage stage, double fraction, std::string detail,
                const RegistrationProgress* registration, bool force) override {
    absl::MutexLock lock(&m_->mu_);
    m_->ProgressLocked(job_.get(), stage, fraction, std::move(detail),
                       registration, force);
  }

  void Finished(Stage stage, absl::Time start) override {
    absl::MutexLock lock(&m_->mu_);
    if (job_->stage_open && job_->open_stage == stage) {
      m_->CloseStageLocked(job_.get(), /*completed=*/true);
    }
    job_->rec.info.timings.push_back(
        StageTiming{stage, absl::ToDoubleSeconds(absl::Now() - start)});
  }

  void AddPlanReason(std::string reason) override {
    absl::MutexLock lock(&m_->mu_);
    job_->rec.info.plan.reasons.push_back(std::move(reason));
  }

  void Registered(const std::string& transform_dir,
                  std::vector<std::string> transform_files,
                  const RegistrationResult& result) override;
  TileDemand Demand(int64_t index) override;
  void PublishTile(const JobEvent& tile) override;
  void QualityEstimated(const QualitySummary& summary,
                        std::shared_ptr<const QualityMap> map) override;
  void Warped(const ImageSpec& output, const WarpStats& stats) override;
  absl::Status MayCommit() override;
  void Committed(const std::string& path,
                 const std::string& output_path) override {
    absl::MutexLock lock(&m_->mu_);
    job_->rec.info.result_path = path;
    job_->rec.info.output_path = output_path;
  }

 private:
  // Fleet mode: whether a reader elsewhere waits for tiles, looked up at
  // most every 250 ms.
  bool WatchedElsewhere();

  JobManagerImpl* const m_;
  const std::shared_ptr<Job> job_;
  const JobRecord& rec_;
  const CancelToken* const cancel_;
  std::optional<TileSpool> spool_;
  absl::Mutex spool_mu_;
  absl::Time spool_checked_ ABSL_GUARDED_BY(spool_mu_) = absl::InfinitePast();
  bool spool_watched_ ABSL_GUARDED_BY(spool_mu_) = false;
};

}  // namespace jobs_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_MANAGER_IMPL_H_
