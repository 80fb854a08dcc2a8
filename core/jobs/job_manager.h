// Copyright regserve authors.
//
// JobManager: the engine of the service, with no gRPC. It owns the job
// table, the queue, uploads and the pipeline threads; each job runs through
// the stages of core/jobs/stage_runner.h:
//
//   upload -> decode -> registration -> warp -> commit -> (stream)
//
// Each stage reserves its planned RAM/VRAM through the ResourceScheduler
// before it starts and releases it when it ends. The server layer converts
// RPCs to these calls and JobEvents to protocol messages, nothing more.
//
//   JobManager::Options opts;
//   opts.data_dir = "/var/lib/regserve";
//   REGSERVE_ASSIGN_OR_RETURN(auto manager,
//                             JobManager::Create(opts, &scheduler, probe));
//   REGSERVE_ASSIGN_OR_RETURN(std::string id,
//                             manager->CreateJob(spec, "alice"));
//   manager->AppendUpload(id, ImageRole::kFixed, bytes);   // ...
//   manager->FinishUpload(id);
//   auto stream = manager->OpenEventStream(id, "alice", /*from_tile=*/0);
//   JobEvent ev;
//   while ((*stream)->Next(&ev, absl::Now() + absl::Seconds(1)).ok()) {
//     ...
//   }
//
// Durability: each job lives in its JobDir (core/jobs/job_dir.h) with its
// spec, inputs, state (rewritten atomically: write temp, fsync, rename) and
// result. On Create, jobs found on disk are recovered (core/jobs/recovery.h):
// queued jobs are re-queued; jobs interrupted mid-stage are re-run (their
// inputs are durable) until `max_attempts` runs were lost to crashes, then
// failed with a reason naming the interruption; jobs interrupted mid-upload
// fail with "upload interrupted by a daemon restart; submit again";
// finished jobs are served until `retention` expires.
//
// Thread safety: all methods are thread-safe.
#ifndef REGSERVE_CORE_JOBS_JOB_MANAGER_H_
#define REGSERVE_CORE_JOBS_JOB_MANAGER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/common/types.h"
#include "core/hardware/hardware.h"
#include "core/image/image.h"
#include "core/jobs/event_stream.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_types.h"
#include "core/plan/plan.h"
#include "core/registration/registration.h"
#include "core/scheduler/scheduler.h"
#include "core/warp/warp.h"

namespace regserve {

// Hooks for metrics, called by the JobManager for EVERY job, whether or not
// a client is attached. Called from pipeline and RPC threads, sometimes with
// the manager's lock held: implementations must be thread-safe and fast and
// must never call back into the JobManager. Default implementations do
// nothing.
class JobLifecycleObserver {
 public:
  virtual ~JobLifecycleObserver() = default;
  // A stage started; always followed by exactly one OnStageEnded for it.
  virtual void OnStageStarted(Stage stage) { (void)stage; }
  // `completed`: the stage ran to its end (then `seconds` is its duration);
  // false when the job failed, was cancelled or was checkpointed during it.
  virtual void OnStageEnded(Stage stage, bool completed, double seconds) {
    (void)stage, (void)completed, (void)seconds;
  }
  // Registration finished: registration-copy pixels (fixed + moving), elastix
  // iterations over all stages and resolutions, and the final metric.
  virtual void OnRegistered(int64_t pixels, int64_t iterations,
                            double final_metric) {
    (void)pixels, (void)iterations, (void)final_metric;
  }
  // The warp finished: output pixels written.
  virtual void OnWarped(int64_t pixels) { (void)pixels; }
  // A job reached a terminal state; `info` is its final snapshot. Jobs
  // refused by CreateJob never existed and are not reported here.
  virtual void OnJobFinished(const JobInfo& info) { (void)info; }
};

class JobManager {
 public:
  struct Options {
    std::string data_dir;  // required, created if missing
    std::string
        input_root;  // server-side paths must lie under it; empty = disabled
    // JobSpec::output_path must lie under it; empty = outputs disabled.
    std::string output_root;
    int max_queue = 64;  // jobs not yet terminal, uploads included
    // Jobs not yet terminal (uploads included) one principal may have;
    // 0 = no limit beyond max_queue.
    int max_jobs_per_principal = 0;
    double default_max_registration_megapixels = 20.0;
    // elastix's schedule before a refinement on the GPU (plan.h).
    ElastixSchedule elastix_before_gpu_refine;
    // Passes of the shift correction (plan.h; 0: none).
    int shift_correction_passes = 2;
    // Passes of the shift correction after a GPU refinement (plan.h).
    int gpu_correction_passes = 0;
    // elastix's schedule before the shift correction on the CPU (plan.h).
    ElastixSchedule elastix_before_cpu_correction;
    DevicePreference device = DevicePreference::kAuto;
    BudgetOverrides budget_overrides;
    ElastixConfig elastix;
    absl::Duration registration_timeout = absl::Hours(2);
    absl::Duration retention = absl::Hours(24 * 7);
    int max_attempts = 2;  // runs of a job interrupted by restarts
    // Result tile edge (TIFF tile = stream tile). A finished job keeps the
    // edge it was written with across restarts, so from_tile stays aligned.
    int64_t stream_tile_size = 512;
    uint64_t max_upload_bytes = 8ull << 30;
    int64_t max_pixels = 1000ll * 1000 * 1000;  // per image
    // Not owned; may be null; must outlive the manager.
    JobLifecycleObserver* observer = nullptr;
    int pipeline_threads = 0;  // 0 = cpu slots + gpus + 1

    // Fleet mode (docs/fleet.md): a libpq connection string to the job
    // table every replica shares, with data_dir on a volume every replica
    // mounts. Empty: a single host (local queue, recovery from data_dir).
    std::string fleet_db;
    std::string replica_name;     // required in fleet mode, unique
    std::string replica_address;  // what GetServerInfo shows for it
    // A replica that stops renewing loses its jobs after this long.
    absl::Duration fleet_lease = absl::Seconds(10);
    // Jobs one replica claims at once (their stages still share the
    // scheduler).
    int fleet_jobs_per_replica = 2;
    // How often an idle replica looks for work and a reader of a job run
    // elsewhere looks for news.
    absl::Duration fleet_poll = absl::Milliseconds(200);
    // A job directory on the shared volume that has no row and no replica
    // working on it (an upload cut off by its replica's death), untouched
    // this long, is removed.
    absl::Duration fleet_orphan_age = absl::Hours(1);
  };

  // The checks Create makes of `options` alone (InvalidArgument naming the
  // field), for a caller that wants them before it starts anything else.
  static absl::Status ValidateOptions(const Options& options);

  // `scheduler` and `probe` are not owned and must outlive the manager.
  // Recovers jobs found under data_dir (see header comment).
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(
      const Options& options, ResourceScheduler* scheduler,
      HardwareProbe* probe);
  virtual ~JobManager() = default;

  // Server-side paths: PermissionDenied when server paths are disabled, for
  // any '..' component, and for paths that resolve (symbolic links followed)
  // outside input_root; NotFound when missing; paths are re-resolved before
  // decoding. Seams for tests (file system, registration, warper, hooks):
  // core/jobs/job_env.h.
  // Validates the spec (InvalidArgument naming the field), checks the queue
  // (ResourceExhausted "queue full: N jobs") and the principal's share of it
  // (ResourceExhausted "principal P has N unfinished jobs (limit N)"), and
  // creates the job. The job belongs to `principal` ("" = anonymous). Jobs
  // whose images are all server-side are decoded (header only), planned and
  // queued at once; the plan can refuse with ResourceExhausted and the numbers.
  // Jobs with uploads wait in kUploading for AppendUpload/FinishUpload.
  virtual absl::StatusOr<std::string> CreateJob(
      const JobSpec& spec, const std::string& principal) = 0;
  // Appends bytes to an upload. InvalidArgument if more than the declared
  // size arrives; FailedPrecondition if the job is not uploading.
  virtual absl::Status AppendUpload(const std::string& job_id, ImageRole role,
                                    absl::Span<const uint8_t> bytes) = 0;
  // Ends the upload: checks each uploaded image has exactly its declared size
  // (InvalidArgument "upload truncated: got X of Y bytes"), reads headers,
  // plans and queues. On error the job is failed and its inputs deleted.
  virtual absl::Status FinishUpload(const std::string& job_id) = 0;
  // For a client that vanished mid-upload: fails the job, deletes its inputs.
  virtual void AbortUpload(const std::string& job_id,
                           const absl::Status& why) = 0;

  // Cancels the job. Idempotent: OK for a job already finished (completed,
  // failed or cancelled), which is left as it is; GetJob tells its state. A
  // running job is stopped (elastix is killed) and reaches kCancelled
  // shortly after. NotFound unless the job exists and belongs to
  // `principal` (an empty principal matches only jobs submitted with an
  // empty principal).
  virtual absl::Status Cancel(const std::string& job_id,
                              const std::string& principal) = 0;
  virtual absl::StatusOr<JobInfo> GetJob(
      const std::string& job_id, const std::string& principal) const = 0;
  // The TransformParameters files of a completed job, in chain order.
  // NotFound as for GetJob; empty before the registration has finished;
  // DataLoss when a stored file cannot be read (the message names the file,
  // not its server path).
  virtual absl::StatusOr<std::vector<TransformFile>> ReadTransformFiles(
      const std::string& job_id, const std::string& principal) const = 0;
  // Newest first.
  virtual std::vector<JobInfo> ListJobs(const std::string& principal) const = 0;

  // One page of ListJobs: at most `page_size` jobs (0: 100; at most 1000)
  // that come after `page_token` (empty: from the newest), and the token of
  // the next page (empty on the last). Pages stay consistent while jobs are
  // added: new jobs go to the front, never into a later page. Errors:
  // InvalidArgument for a negative page_size or a token not from here.
  struct JobPage {
    std::vector<JobInfo> jobs;
    std::string next_page_token;
  };
  virtual absl::StatusOr<JobPage> ListJobPage(
      const std::string& principal, int page_size,
      const std::string& page_token) const = 0;

  // Events from now on, for a running job; for a finished job the accepted
  // event, then tiles from `from_tile` read from the stored result, then the
  // terminal event. A live stream also gets tiles from `from_tile` once the
  // result is written. OutOfRange if from_tile > tile count (known once the
  // plan exists); NotFound as for GetJob.
  virtual absl::StatusOr<std::unique_ptr<EventStream>> OpenEventStream(
      const std::string& job_id, const std::string& principal,
      int64_t from_tile) = 0;

  // Stops accepting jobs (Unavailable "shutting down"), cancels waiting for
  // resources, lets running stages finish or checkpoints them as queued for
  // the next start, and joins the pipeline threads. This implementation
  // interrupts running stages (elastix is killed) and checkpoints their jobs
  // as queued; the interrupted run does not count towards max_attempts. Open
  // streams of unfinished jobs then return Unavailable. Idempotent; the
  // destructor calls it.
  virtual void Shutdown() = 0;

  // For GetServerInfo.
  struct Stats {
    int queued = 0;
    int running = 0;
    int uploading = 0;
    std::vector<std::string> running_ids;
  };
  virtual Stats GetStats() const = 0;
  virtual const Options& options() const = 0;

  // Fleet mode: OK while the job table answers (the last call of the lease
  // thread succeeded), UNAVAILABLE with the reason otherwise; a single host
  // is always OK. For the health service.
  virtual absl::Status FleetHealth() const = 0;
  // Fleet mode: the replicas heard from lately, this one included, each
  // with its budgets and running jobs; empty for a single host.
  struct FleetReplica {
    std::string name;
    std::string address;
    uint64_t ram_budget_bytes = 0;
    std::vector<uint64_t> vram_budget_bytes;
    std::vector<std::string> gpu_names;  // one per GPU it manages
    std::vector<std::string> running_ids;
    absl::Time heartbeat;
  };
  virtual absl::StatusOr<std::vector<FleetReplica>> FleetReplicas() const = 0;
  // Fleet mode: jobs queued across the fleet (the autoscaler's signal);
  // a single host: its own queue.
  virtual absl::StatusOr<int64_t> QueueDepth() const = 0;
};

// Create with the seams of core/jobs/job_env.h (tests inject fakes).
absl::StatusOr<std::unique_ptr<JobManager>> CreateJobManagerWithEnv(
    const JobManager::Options& options, ResourceScheduler* scheduler,
    HardwareProbe* probe, JobManagerEnv env);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_MANAGER_H_
