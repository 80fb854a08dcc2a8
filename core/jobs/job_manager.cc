// Copyright regserve authors.
//
// JobManager implementation: the job table, the queue, uploads, queries and
// the pipeline and janitor threads. What a job does when it runs is in the
// stages (core/jobs/stage_runner.h); where its files are, in JobDir; what
// recovery decides, in recovery.cc; the events' fan-out, in event_stream.cc.
//
// Locking: see job_manager_impl.h.
#include "core/jobs/job_manager.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/image/image_io.h"
#include "core/jobs/job_dir.h"
#include "core/jobs/job_manager_impl.h"
#include "core/jobs/job_store.h"
#include "core/jobs/recovery.h"
#include "core/jobs/spec_validation.h"
#include "core/jobs/stage_runner.h"
#include "core/plan/resources.h"

namespace regserve {
namespace jobs_internal {

namespace fs = std::filesystem;

// Most jobs one ListJobPage returns.
constexpr int kMaxListPageSize = 1000;
constexpr absl::Duration kProgressInterval = absl::Milliseconds(50);

absl::Status NoSuchJob(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no job '", id.substr(0, 64), "'"));
}

absl::Status NotUploadingStatus(const JobInfo& info) {
  if (info.state == JobState::kCancelled) {
    return absl::CancelledError(absl::StrCat(
        "job ", info.id,
        " was cancelled during its upload: ", info.failure.message()));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "job ", info.id, " is no longer uploading (it is ",
      JobStateName(info.state), ")",
      info.failure.ok() ? "" : absl::StrCat(": ", info.failure.message())));
}

absl::Status ValidateOptions(const JobManager::Options& o) {
  if (o.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir is required");
  }
  if (o.max_queue < 1) {
    return absl::InvalidArgumentError("max_queue must be >= 1");
  }
  if (o.max_jobs_per_principal < 0) {
    return absl::InvalidArgumentError(
        "max_jobs_per_principal must be >= 0 (0 = no limit)");
  }
  if (o.max_attempts < 1) {
    return absl::InvalidArgumentError("max_attempts must be >= 1");
  }
  REGSERVE_RETURN_IF_ERROR(
      TileGrid::ValidateEdge(o.stream_tile_size, "stream_tile_size"));
  if (o.retention <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retention must be positive");
  }
  if (o.registration_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("registration_timeout must be positive");
  }
  if (o.max_upload_bytes == 0) {
    return absl::InvalidArgumentError("max_upload_bytes must be positive");
  }
  if (o.max_pixels < 1) {
    return absl::InvalidArgumentError("max_pixels must be positive");
  }
  if (!(o.default_max_registration_megapixels > 0) ||
      !std::isfinite(o.default_max_registration_megapixels)) {
    return absl::InvalidArgumentError(
        "default_max_registration_megapixels must be positive");
  }
  for (const ElastixSchedule* e :
       {&o.elastix_before_gpu_refine, &o.elastix_before_cpu_correction}) {
    if (!(e->max_megapixels >= 0) || !std::isfinite(e->max_megapixels)) {
      return absl::InvalidArgumentError(
          "elastix_before_*.max_megapixels must be >= 0");
    }
    if (!(e->iteration_scale > 0) || !(e->iteration_scale <= 100)) {
      return absl::InvalidArgumentError(
          "elastix_before_*.iteration_scale must be in (0, 100]");
    }
  }
  if (o.shift_correction_passes < 0 || o.shift_correction_passes > 20 ||
      o.gpu_correction_passes < 0 || o.gpu_correction_passes > 20) {
    return absl::InvalidArgumentError(
        "shift_correction_passes and gpu_correction_passes must be in [0, "
        "20]");
  }
  if (o.pipeline_threads < 0) {
    return absl::InvalidArgumentError("pipeline_threads must be >= 0");
  }
  if (!o.fleet_db.empty()) {
    if (o.replica_name.empty()) {
      return absl::InvalidArgumentError("fleet mode needs a replica name");
    }
    if (o.fleet_lease < absl::Seconds(1)) {
      return absl::InvalidArgumentError("fleet_lease must be at least 1 s");
    }
    if (o.fleet_jobs_per_replica < 1) {
      return absl::InvalidArgumentError("fleet_jobs_per_replica must be >= 1");
    }
    if (o.fleet_poll <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("fleet_poll must be positive");
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Creation and recovery.

JobManagerImpl::JobManagerImpl(const Options& options,
                               ResourceScheduler* scheduler,
                               HardwareProbe* probe, JobManagerEnv env)
    : options_(options),
      scheduler_(scheduler),
      probe_(probe),
      env_(std::move(env)) {
  fs_ = env_.fs != nullptr ? env_.fs : DefaultJobFileSystem();
  if (!env_.register_fn) {
    env_.register_fn = [](const RegistrationRequest& request,
                          const ElastixConfig& config) {
      return ::regserve::Register(request, config);
    };
  }
  if (!env_.free_disk_bytes) {
    env_.free_disk_bytes =
        [](const std::string& dir) -> std::optional<uint64_t> {
      std::error_code ec;
      const std::filesystem::space_info space = std::filesystem::space(dir, ec);
      if (ec) return std::nullopt;
      return static_cast<uint64_t>(space.available);
    };
  }
  if (!env_.create_warper) {
    env_.create_warper = [](WarpDevice device, int cuda_device) {
      return Warper::Create(device, cuda_device);
    };
  }
  warpers_ = std::make_unique<WarperPool>(env_.create_warper);
  services_.fs = fs_;
  services_.register_fn = env_.register_fn;
  services_.align_fn = env_.align_fn;
  services_.warpers = warpers_.get();
  services_.scheduler = scheduler_;
  services_.input_root = &input_root_;
  services_.output_root = &output_root_;
  services_.elastix = options_.elastix;
  services_.max_pixels = options_.max_pixels;
  services_.registration_timeout = options_.registration_timeout;
  services_.before_stage = env_.before_stage;
  stages_ = DefaultPipeline(&services_);
}

absl::Status JobManagerImpl::Init() {
  REGSERVE_RETURN_IF_ERROR(ValidateOptions(options_));
  if (scheduler_ == nullptr) {
    return absl::InvalidArgumentError("JobManager needs a ResourceScheduler");
  }
  std::error_code ec;
  const fs::path data = fs::absolute(options_.data_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad data_dir '", options_.data_dir, "': ", ec.message()));
  }
  fs::create_directories(data / "jobs", ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create ", (data / "jobs").string(), ": ", ec.message()));
  }
  const fs::path canonical = fs::canonical(data, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot resolve data_dir ", data.string(), ": ", ec.message()));
  }
  jobs_dir_ = (canonical / "jobs").string();
  REGSERVE_ASSIGN_OR_RETURN(input_root_, InputRoot::Open(options_.input_root));
  REGSERVE_ASSIGN_OR_RETURN(output_root_,
                            OutputRoot::Open(options_.output_root));
  // In fleet mode the job table, not the directory, says what exists: the
  // directory is shared, and its running jobs are other replicas'.
  if (!options_.fleet_db.empty()) {
    REGSERVE_RETURN_IF_ERROR(OpenFleet());
  } else {
    REGSERVE_RETURN_IF_ERROR(Recover());
  }

  int threads = options_.pipeline_threads;
  if (threads == 0) {
    threads = scheduler_->config().cpu_slots +
              static_cast<int>(scheduler_->config().vram_budget_bytes.size()) +
              1;
  }
  if (env_.pipeline_threads >= 0) threads = env_.pipeline_threads;
  for (int i = 0; i < threads; ++i) {
    pipeline_.emplace_back([this] { PipelineLoop(); });
  }
  janitor_ = std::thread([this] { JanitorLoop(); });
  if (fleet()) {
    SendHeartbeat();
    lease_thread_ = std::thread([this] { LeaseLoop(); });
  }
  return absl::OkStatus();
}

absl::Status JobManagerImpl::Recover() {
  RecoveryOptions ro;
  ro.jobs_dir = jobs_dir_;
  ro.stream_tile_size = options_.stream_tile_size;
  ro.max_attempts = options_.max_attempts;
  REGSERVE_ASSIGN_OR_RETURN(std::vector<RecoveredJob> found,
                            ScanJobDirectory(ro));
  absl::MutexLock lock(&mu_);
  for (RecoveredJob& job : found) AdoptRecoveredLocked(std::move(job));
  UpdateQueuePositionsLocked();
  return absl::OkStatus();
}

void JobManagerImpl::AdoptRecoveredLocked(RecoveredJob recovered) {
  auto job = std::make_shared<Job>();
  job->rec = std::move(recovered.record);
  JobInfo& info = job->rec.info;
  next_sequence_ = std::max(next_sequence_, job->rec.sequence + 1);
  jobs_[info.id] = job;
  switch (recovered.action) {
    case RecoveredJob::Action::kFail:
      FinishJobLocked(job.get(), JobState::kFailed, recovered.failure);
      break;
    case RecoveredJob::Action::kRerun:
      (void)PersistLocked(job.get());
      EnqueueLocked(job);
      break;
    case RecoveredJob::Action::kQueue:
      EnqueueLocked(job);
      break;
    case RecoveredJob::Action::kPersist:
      (void)PersistLocked(job.get());
      break;
    case RecoveredJob::Action::kKeep:
      break;
  }
  // As in FinishJobLocked: a finished job does not need its parameters.
  if (IsTerminal(info.state)) {
    std::vector<std::string>().swap(info.spec.custom_parameters);
  }
}

// ---------------------------------------------------------------------------
// Planning.

absl::StatusOr<ImageSpec> JobManagerImpl::ReadInputSpec(
    ImageRole role, const std::string& path) const {
  const std::string name = absl::StrCat(RoleName(role), " image");
  absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
  if (!spec.ok()) {
    const absl::Status s = WithoutPath(spec.status(), path, name);
    return absl::Status(s.code(), absl::StrCat(name, ": ", s.message()));
  }
  if (spec->pixels() > options_.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " has ", spec->pixels(), " pixels, above the server limit of ",
        options_.max_pixels));
  }
  return *spec;
}

JobOptions JobManagerImpl::PlanningOptions(const JobRecord& rec) const {
  JobOptions options = rec.info.spec.options;
  options.elastix_before_gpu_refine = options_.elastix_before_gpu_refine;
  options.shift_correction_passes = options_.shift_correction_passes;
  options.gpu_correction_passes = options_.gpu_correction_passes;
  options.elastix_before_cpu_correction =
      options_.elastix_before_cpu_correction;
  return options;
}

absl::StatusOr<Plan> JobManagerImpl::PlanJob(const JobRecord& rec) const {
  absl::StatusOr<Plan> here = PlanHere(rec);
  // In a fleet, a job too big for this replica may fit another.
  if (!fleet() || !absl::IsResourceExhausted(here.status())) return here;
  return PlanForFleet(rec, here.status());
}

absl::StatusOr<Plan> JobManagerImpl::PlanHere(const JobRecord& rec) const {
  HardwareSnapshot hw;
  if (probe_ != nullptr) {
    REGSERVE_ASSIGN_OR_RETURN(hw, probe_->Probe());
  }
  ResourceFlags flags;
  flags.ram_bytes = options_.budget_overrides.ram_bytes;
  flags.vram_bytes = options_.budget_overrides.vram_bytes;
  const Budgets budgets =
      PlanningBudgets(hw, flags, scheduler_->config().gpu_ordinals);
  REGSERVE_ASSIGN_OR_RETURN(
      Plan plan, MakePlan(rec.fixed_spec, rec.moving_spec, PlanningOptions(rec),
                          budgets, options_.stream_tile_size));
  // Each stage must fit what the scheduler manages, or the job would wait
  // forever.
  const bool gpu = plan.warp_device == WarpDevice::kCuda;
  const ResourceRequest stages[] = {
      {Lane::kCpu, plan.decode.ram_bytes, 0, -1, "decode"},
      {Lane::kCpu, plan.registration.ram_bytes, 0, -1, "registration"},
      {gpu ? Lane::kGpu : Lane::kCpu, plan.warp.ram_bytes,
       gpu ? plan.warp.vram_bytes : 0, -1, "warp"},
  };
  for (const ResourceRequest& req : stages) {
    REGSERVE_RETURN_IF_ERROR(scheduler_->CheckFits(req));
  }
  // A spill the data directory cannot hold would fail the job mid-decode.
  if (plan.spill_bytes > 0) {
    const std::optional<uint64_t> available = env_.free_disk_bytes(jobs_dir_);
    if (available.has_value() && *available < plan.spill_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the moving image is read by region through a spill file of ",
          plan.spill_bytes / 1000000,
          " MB (its format reads only in order), "
          "but the data directory has ",
          *available / 1000000,
          " MB free; free disk space, raise --ram_budget or send a tiled "
          "TIFF"));
    }
  }
  return plan;
}

void JobManagerImpl::SetPlan(Job* job, Plan plan) const {
  JobInfo& info = job->rec.info;
  info.has_plan = true;
  info.plan = std::move(plan);
  info.tiles = TileGrid(info.plan.output_width, info.plan.output_height,
                        info.plan.stream_tile_size);
  // Known from the plan: the warp keeps the moving image's channels and type.
  info.output.width = info.plan.output_width;
  info.output.height = info.plan.output_height;
  info.output.channels = job->rec.moving_spec.channels;
  info.output.type = job->rec.moving_spec.type;
}

// ---------------------------------------------------------------------------
// Job table helpers.

std::shared_ptr<Job> JobManagerImpl::FindLocked(const std::string& id) const {
  if (!IsValidJobId(id)) return nullptr;
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

std::shared_ptr<Job> JobManagerImpl::Find(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  return FindLocked(id);
}

absl::StatusOr<std::shared_ptr<Job>> JobManagerImpl::FindOwnedLocked(
    const std::string& id, const std::string& principal) const {
  std::shared_ptr<Job> job = FindLocked(id);
  if (job == nullptr || job->rec.info.principal != principal) {
    return NoSuchJob(id);
  }
  return job;
}

absl::Status JobManagerImpl::CheckCapacityLocked(
    const std::string& principal) const {
  int active = 0, mine = 0;
  for (const auto& [id, job] : jobs_) {
    if (IsTerminal(job->rec.info.state)) continue;
    ++active;
    if (job->rec.info.principal == principal) ++mine;
  }
  if (active >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full: ", active, " jobs"));
  }
  const int limit = options_.max_jobs_per_principal;
  if (limit > 0 && mine >= limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "principal ", principal.empty() ? "(anonymous)" : principal, " has ",
        mine, " unfinished jobs (limit ", limit,
        "): wait for one to finish or cancel one"));
  }
  return absl::OkStatus();
}

absl::Status JobManagerImpl::PersistLocked(Job* job) {
  ++job->version;
  return fs_->WriteFileAtomic(DirOf(job->rec.info.id).state(),
                              EncodeJobState(job->rec));
}

void JobManagerImpl::PublishLocked(Job* job, JobEvent event) {
  event.job_id = job->rec.info.id;
  job->events.Publish(event);
}

void JobManagerImpl::EnqueueLocked(const std::shared_ptr<Job>& job) {
  job->rec.info.state = JobState::kQueued;
  queue_.insert(KeyOf(*job));
}

void JobManagerImpl::UpdateQueuePositionsLocked() {
  int pos = 1;
  for (const QueueKey& key : queue_) {
    Job* job = jobs_.at(key.id).get();
    if (job->rec.info.queue_position != pos) {
      job->rec.info.queue_position = pos;
      JobEvent ev;
      ev.kind = JobEvent::Kind::kQueued;
      ev.queue_position = pos;
      PublishLocked(job, std::move(ev));
    }
    ++pos;
  }
}

void MarkTerminal(JobInfo* info, JobState state, absl::Status why) {
  info->state = state;
  info->failure =
      state == JobState::kCompleted ? absl::OkStatus() : std::move(why);
  info->queue_position = 0;
  info->finished = absl::Now();
  if (state == JobState::kCompleted) {
    info->stage_fraction = 1.0;
    info->stage_detail = "completed";
  } else {
    info->stage_detail = std::string(info->failure.message());
    info->result_path.clear();
    info->transform_dir.clear();
    info->transform_files.clear();
  }
}

void JobManagerImpl::FinishJobLocked(Job* job, JobState state,
                                     absl::Status why) {
  JobInfo& info = job->rec.info;
  if (IsTerminal(info.state)) return;
  if (info.state == JobState::kQueued) queue_.erase(KeyOf(*job));
  MarkTerminal(&info, state, std::move(why));
  DirOf(info.id).RemoveWorkFiles(/*delete_uploads=*/true,
                                 /*keep_result=*/state == JobState::kCompleted);
  // Custom elastix parameters (up to 8 MiB a job) are needed only to run
  // the job; its spec file keeps them. Finished jobs stay in memory for the
  // whole retention, so they drop them.
  std::vector<std::string>().swap(info.spec.custom_parameters);
  absl::Status persisted = PersistLocked(job);
  if (!persisted.ok()) {
    std::fprintf(stderr, "regserve: cannot persist job %s: %s\n",
                 info.id.c_str(), std::string(persisted.message()).c_str());
  }
  CloseStageLocked(job, /*completed=*/false);
  if (options_.observer != nullptr) options_.observer->OnJobFinished(info);
  job->events.Finish(TerminalEvent(info), info);
  // Up to ~1 MB a job for the whole retention: later readers read it from
  // the job directory (OpenEventStream).
  info.quality_map = nullptr;
}

void JobManagerImpl::ProgressLocked(Job* job, Stage stage, double fraction,
                                    std::string detail,
                                    const RegistrationProgress* reg,
                                    bool force) {
  JobInfo& info = job->rec.info;
  if (info.state != JobState::kRunning && info.state != JobState::kUploading) {
    return;
  }
  info.stage = stage;
  info.stage_fraction = std::clamp(fraction, 0.0, 1.0);
  info.stage_detail = detail;
  const absl::Time now = absl::Now();
  if (!force && stage == job->last_progress_stage &&
      now - job->last_progress < kProgressInterval && fraction < 1.0) {
    return;
  }
  job->last_progress = now;
  job->last_progress_stage = stage;
  ++job->version;
  JobEvent ev;
  ev.kind = JobEvent::Kind::kProgress;
  ev.stage = stage;
  ev.fraction = info.stage_fraction;
  ev.detail = std::move(detail);
  if (reg != nullptr) ev.registration = *reg;
  PublishLocked(job, std::move(ev));
}

void JobManagerImpl::OpenStageLocked(Job* job, Stage stage) {
  CloseStageLocked(job, /*completed=*/false);
  job->stage_open = true;
  job->open_stage = stage;
  job->stage_start = absl::Now();
  if (options_.observer != nullptr) options_.observer->OnStageStarted(stage);
}

void JobManagerImpl::CloseStageLocked(Job* job, bool completed) {
  if (!job->stage_open) return;
  job->stage_open = false;
  if (options_.observer != nullptr) {
    options_.observer->OnStageEnded(
        job->open_stage, completed,
        absl::ToDoubleSeconds(absl::Now() - job->stage_start));
  }
}

// ---------------------------------------------------------------------------
// Submission.

absl::Status JobManagerImpl::PrepareInputs(Job* job) const {
  JobRecord& rec = job->rec;
  const JobDir dir = DirOf(rec.info.id);
  // The output path is checked (and stored resolved) before anything runs,
  // so a job that could not write its output is refused at once.
  std::string& output = rec.info.spec.output_path;
  if (!output.empty()) {
    REGSERVE_ASSIGN_OR_RETURN(
        output, output_root_.Resolve("spec.output_path", output,
                                     rec.info.spec.overwrite_output));
  }
  bool all_server_side = true;
  for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
    const bool fixed = role == ImageRole::kFixed;
    const ImageSource& src = fixed ? rec.info.spec.fixed : rec.info.spec.moving;
    std::string& input = fixed ? rec.fixed_input : rec.moving_input;
    ImageSpec& image_spec = fixed ? rec.fixed_spec : rec.moving_spec;
    if (!src.path.empty()) {
      REGSERVE_ASSIGN_OR_RETURN(
          input,
          input_root_.Resolve(absl::StrCat(SourceField(role), ".server_path"),
                              src.path));
      REGSERVE_ASSIGN_OR_RETURN(image_spec, ReadInputSpec(role, input));
      continue;
    }
    all_server_side = false;
    input = dir.upload(role, UploadExtension(src.upload_name));
    Job::Upload& up = job->uploads[static_cast<int>(role)];
    up.expected = true;
    up.path = input;
    up.declared = src.upload_bytes;
  }
  if (!all_server_side) {
    rec.info.state = JobState::kUploading;
    rec.info.stage = Stage::kUpload;
    return absl::OkStatus();
  }
  rec.have_input_specs = true;
  REGSERVE_ASSIGN_OR_RETURN(Plan plan, PlanJob(rec));
  SetPlan(job, std::move(plan));
  rec.info.state = JobState::kQueued;
  return absl::OkStatus();
}

absl::Status JobManagerImpl::WriteNewJob(const Job& job) const {
  // The state file comes last: recovery removes a directory without one.
  const JobDir dir = DirOf(job.rec.info.id);
  std::error_code ec;
  fs::create_directories(
      job.rec.info.state == JobState::kUploading ? dir.inputs() : dir.path(),
      ec);
  absl::Status s;
  if (ec) s = WriteErrnoToStatus(ec.value(), "creating", dir.path());
  if (s.ok()) s = fs_->WriteFileAtomic(dir.spec(), EncodeJobSpec(job.rec));
  if (s.ok()) s = fs_->WriteFileAtomic(dir.state(), EncodeJobState(job.rec));
  // The job directory's own entry in jobs/, before the id is acknowledged.
  if (s.ok()) s = fs_->SyncFile(dir.path());
  if (!s.ok()) RemoveAllQuietly(dir.path());
  return s;
}

absl::StatusOr<std::string> JobManagerImpl::CreateJob(
    const JobSpec& in, const std::string& principal) {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("shutting down");
  }
  SpecDefaults defaults;
  defaults.device = options_.device;
  defaults.max_registration_megapixels =
      options_.default_max_registration_megapixels;
  defaults.max_upload_bytes = options_.max_upload_bytes;
  auto job = std::make_shared<Job>();
  JobInfo& info = job->rec.info;
  REGSERVE_ASSIGN_OR_RETURN(info.spec, ValidateJobSpec(in, defaults));
  info.principal = principal;
  info.created = absl::Now();
  info.finished = absl::InfinitePast();
  REGSERVE_ASSIGN_OR_RETURN(info.id, NewJobId());
  if (fleet()) REGSERVE_RETURN_IF_ERROR(CheckFleetCapacity(principal));
  REGSERVE_RETURN_IF_ERROR(PrepareInputs(job.get()));
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("shutting down");
    REGSERVE_RETURN_IF_ERROR(CheckCapacityLocked(principal));
    job->rec.sequence = next_sequence_++;
  }
  REGSERVE_RETURN_IF_ERROR(WriteNewJob(*job));
  if (fleet() && info.state == JobState::kQueued) {
    // Straight to the fleet's queue: any replica may run it.
    const absl::Status queued = FleetEnqueue(job->rec);
    if (!queued.ok()) RemoveAllQuietly(DirOf(info.id).path());
    if (!queued.ok()) return queued;
    return info.id;
  }
  absl::MutexLock lock(&mu_);
  absl::Status admit = shutting_down_ ? absl::UnavailableError("shutting down")
                                      : CheckCapacityLocked(principal);
  if (!admit.ok()) {
    RemoveAllQuietly(DirOf(info.id).path());
    return admit;
  }
  jobs_[info.id] = job;
  if (info.state == JobState::kUploading) {
    OpenStageLocked(job.get(), Stage::kUpload);
  } else {
    EnqueueLocked(job);
    UpdateQueuePositionsLocked();
  }
  return info.id;
}

// ---------------------------------------------------------------------------
// Queries and control.

absl::Status JobManagerImpl::Cancel(const std::string& job_id,
                                    const std::string& principal) {
  if (fleet()) {
    std::shared_ptr<Job> local = Find(job_id);
    if (local == nullptr || local->lease.has_value()) {
      return FleetCancel(job_id, principal);
    }
  }
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job,
                            FindOwnedLocked(job_id, principal));
  switch (job->rec.info.state) {
    case JobState::kUploading:
    case JobState::kQueued:
      FinishJobLocked(job.get(), JobState::kCancelled,
                      absl::CancelledError("cancelled by the client"));
      UpdateQueuePositionsLocked();
      return absl::OkStatus();
    case JobState::kRunning:
      job->user_cancelled = true;
      if (job->run_token) job->run_token->Cancel("cancelled by the client");
      return absl::OkStatus();
    case JobState::kCompleted:
    case JobState::kFailed:
    case JobState::kCancelled:
      return absl::OkStatus();  // idempotent: the job keeps its final state
  }
  return absl::OkStatus();
}

absl::StatusOr<JobInfo> JobManagerImpl::GetJob(
    const std::string& job_id, const std::string& principal) const {
  if (fleet()) {
    {
      // Uploading or running here: this replica knows best.
      absl::MutexLock lock(&mu_);
      std::shared_ptr<Job> job = FindLocked(job_id);
      if (job != nullptr && job->rec.info.principal == principal) {
        return job->rec.info;
      }
    }
    return FleetGetJob(job_id, principal);
  }
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job,
                            FindOwnedLocked(job_id, principal));
  return job->rec.info;
}

absl::StatusOr<std::vector<TransformFile>> JobManagerImpl::ReadTransformFiles(
    const std::string& job_id, const std::string& principal) const {
  REGSERVE_ASSIGN_OR_RETURN(JobInfo info, GetJob(job_id, principal));
  std::vector<TransformFile> out;
  for (const std::string& path : info.transform_files) {
    TransformFile file;
    file.name = fs::path(path).filename().string();
    absl::StatusOr<std::string> text = ReadFileToString(path);
    if (!text.ok()) {
      return absl::DataLossError(absl::StrCat("the stored transform ",
                                              file.name, " of job ", info.id,
                                              " cannot be read"));
    }
    file.text = *std::move(text);
    out.push_back(std::move(file));
  }
  return out;
}

std::vector<JobInfo> JobManagerImpl::ListJobs(
    const std::string& principal) const {
  // Every page of ListJobPage: one ordering, one place.
  std::vector<JobInfo> out;
  std::string token;
  do {
    absl::StatusOr<JobPage> page =
        ListJobPage(principal, kMaxListPageSize, token);
    if (!page.ok()) break;  // not reached: a valid size and our own token
    for (JobInfo& info : page->jobs) out.push_back(std::move(info));
    token = std::move(page->next_page_token);
  } while (!token.empty());
  return out;
}

absl::StatusOr<JobManager::JobPage> JobManagerImpl::ListJobPage(
    const std::string& principal, int page_size,
    const std::string& page_token) const {
  constexpr int kDefaultPageSize = 100;
  if (page_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be >= 0, got ", page_size));
  }
  const size_t limit = static_cast<size_t>(
      page_size == 0 ? kDefaultPageSize
                     : std::min(page_size, kMaxListPageSize));
  // The token is "s<sequence>" of the last job of the previous page.
  uint64_t before = UINT64_MAX;
  if (!page_token.empty() &&
      (page_token[0] != 's' ||
       !absl::SimpleAtoi(absl::string_view(page_token).substr(1), &before))) {
    return absl::InvalidArgumentError(
        "page_token is not one this server gave out: pass the "
        "next_page_token of the previous ListJobs response unchanged");
  }
  if (fleet()) return FleetListJobPage(principal, limit, before);
  std::vector<std::pair<uint64_t, std::shared_ptr<Job>>> found;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    if (job->rec.info.principal == principal && job->rec.sequence < before) {
      found.push_back({job->rec.sequence, job});
    }
  }
  const size_t n = std::min(limit, found.size());
  std::partial_sort(
      found.begin(), found.begin() + static_cast<std::ptrdiff_t>(n),
      found.end(),
      [](const auto& a, const auto& b) { return a.first > b.first; });
  JobPage page;
  page.jobs.reserve(n);
  for (size_t i = 0; i < n; ++i) page.jobs.push_back(found[i].second->rec.info);
  if (found.size() > n) {
    page.next_page_token = absl::StrCat("s", found[n - 1].first);
  }
  return page;
}

absl::StatusOr<std::unique_ptr<EventStream>> JobManagerImpl::OpenEventStream(
    const std::string& job_id, const std::string& principal,
    int64_t from_tile) {
  if (fleet()) return FleetOpenEventStream(job_id, principal, from_tile);
  // A completed job's quality map is on disk: read outside the lock.
  std::shared_ptr<const QualityMap> map;
  {
    absl::StatusOr<JobInfo> info = GetJob(job_id, principal);
    if (info.ok() && info->state == JobState::kCompleted &&
        info->quality.computed) {
      map = ReadStoredQualityMap(DirOf(job_id)).value_or(nullptr);
    }
  }
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job,
                            FindOwnedLocked(job_id, principal));
  if (map == nullptr || job->rec.info.state != JobState::kCompleted) {
    return job->events.Open(job->rec.info, from_tile, shutting_down_);
  }
  JobInfo info = job->rec.info;
  info.quality_map = std::move(map);
  return job->events.Open(info, from_tile, shutting_down_);
}

JobManager::Stats JobManagerImpl::GetStats() const {
  Stats stats;
  if (fleet()) {
    // The fleet's queue, not this replica's (it has none).
    absl::StatusOr<int64_t> depth = QueueDepth();
    if (depth.ok()) stats.queued = static_cast<int>(*depth);
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    switch (job->rec.info.state) {
      case JobState::kQueued:
        ++stats.queued;
        break;
      case JobState::kRunning:
        ++stats.running;
        stats.running_ids.push_back(id);
        break;
      case JobState::kUploading:
        ++stats.uploading;
        break;
      default:
        break;
    }
  }
  return stats;
}

void JobManagerImpl::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (joined_) return;
    shutting_down_ = true;
    for (auto& [id, job] : jobs_) {
      if (job->rec.info.state == JobState::kRunning && job->run_token) {
        job->run_token->Cancel("the daemon is shutting down");
      }
    }
  }
  for (std::thread& t : pipeline_) {
    if (t.joinable()) t.join();
  }
  if (janitor_.joinable()) janitor_.join();
  if (lease_thread_.joinable()) lease_thread_.join();
  absl::MutexLock lock(&mu_);
  joined_ = true;
  for (auto& [id, job] : jobs_) job->events.Shutdown();
}

// ---------------------------------------------------------------------------
// Background threads.

std::vector<std::string> JobManagerImpl::TakeExpiredLocked() {
  const absl::Time now = absl::Now();
  std::vector<std::string> expired;
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    const JobInfo& info = it->second->rec.info;
    if (IsTerminal(info.state) && info.finished + options_.retention <= now) {
      expired.push_back(it->first);
      it = jobs_.erase(it);
    } else {
      ++it;
    }
  }
  return expired;
}

void JobManagerImpl::JanitorLoop() {
  const absl::Duration period = std::clamp(
      std::min(options_.retention / 4, options_.fleet_orphan_age / 6),
      absl::Milliseconds(5), absl::Minutes(1));
  absl::Time next_orphan_sweep = absl::Now() + options_.fleet_orphan_age / 6;
  mu_.Lock();
  while (!shutting_down_) {
    mu_.AwaitWithTimeout(absl::Condition(&shutting_down_), period);
    if (shutting_down_) break;
    std::vector<std::string> expired = TakeExpiredLocked();
    if (fleet()) {
      // The fleet's finished jobs: whichever replica deletes a row first
      // removes its files.
      mu_.Unlock();
      absl::StatusOr<std::vector<std::string>> deleted =
          queries_->DeleteFinished(options_.retention, 100);
      mu_.Lock();
      if (deleted.ok()) {
        expired.insert(expired.end(), deleted->begin(), deleted->end());
      }
      if (absl::Now() >= next_orphan_sweep) {
        next_orphan_sweep = absl::Now() + options_.fleet_orphan_age / 6;
        mu_.Unlock();
        SweepOrphanedDirs();
        mu_.Lock();
      }
    }
    if (expired.empty()) continue;
    mu_.Unlock();
    for (const std::string& id : expired) DirOf(id).RemoveAll();
    mu_.Lock();
  }
  mu_.Unlock();
}

std::shared_ptr<Job> JobManagerImpl::TakeNextJob() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &JobManagerImpl::HasWorkOrStop));
  if (shutting_down_) return nullptr;
  const QueueKey key = *queue_.begin();
  queue_.erase(queue_.begin());
  std::shared_ptr<Job> job = jobs_.at(key.id);
  JobInfo& info = job->rec.info;
  info.state = JobState::kRunning;
  info.queue_position = 0;
  info.stage = Stage::kDecode;
  info.stage_fraction = 0;
  info.stage_detail = "waiting for resources";
  info.timings.clear();
  ++info.attempts;
  job->user_cancelled = false;
  job->run_token = std::make_shared<CancelToken>();
  (void)PersistLocked(job.get());
  UpdateQueuePositionsLocked();
  return job;
}

void JobManagerImpl::PipelineLoop() {
  while (std::shared_ptr<Job> job = fleet() ? ClaimFleetJob() : TakeNextJob()) {
    RunJob(job);
  }
}

void JobManagerImpl::RunJob(const std::shared_ptr<Job>& job) {
  JobRecord rec;
  CancelTokenPtr token;
  std::optional<Lease> lease;
  {
    absl::MutexLock lock(&mu_);
    rec = job->rec;
    token = job->run_token;
    lease = job->lease;
  }
  JobRun run(rec, DirOf(rec.info.id), token.get());
  if (lease.has_value()) {
    run.registration_dir =
        absl::StrCat(run.dir.registration(), "/lease-", lease->token);
    const std::string lease_tag = absl::StrCat("lease-", lease->token);
    run.fleet_run = true;
    run.partial_result =
        absl::StrCat(run.dir.path(), "/result.partial.", lease_tag, ".tif");
    run.transform_dir = absl::StrCat(run.dir.transform(), ".", lease_tag);
    run.quality_map =
        absl::StrCat(run.dir.path(), "/quality_map.", lease_tag, ".bin");
  }
  JobStageHost host(this, job, rec, token.get());
  const absl::Status s = RunPipeline(stages_, services_, &run, &host);
  if (fleet()) return EndFleetRun(job, s);
  absl::MutexLock lock(&mu_);
  EndRunLocked(job.get(), s);
}

void JobManagerImpl::EndRunLocked(Job* job, const absl::Status& s) {
  JobInfo& info = job->rec.info;
  if (s.ok()) {
    FinishJobLocked(job, JobState::kCompleted, absl::OkStatus());
  } else if (job->user_cancelled) {
    FinishJobLocked(job, JobState::kCancelled,
                    absl::CancelledError("cancelled by the client"));
  } else if (shutting_down_ && (absl::IsCancelled(s) || absl::IsAborted(s))) {
    // Checkpoint: the next start runs it again. The run counts in
    // `attempts` but not against max_attempts.
    info.state = JobState::kQueued;
    ++job->rec.checkpointed_runs;
    info.stage_fraction = 0;
    info.stage_detail = "interrupted by shutdown; re-queued";
    CloseStageLocked(job, /*completed=*/false);
    info.timings.clear();
    DirOf(info.id).RemoveWorkFiles(/*delete_uploads=*/false,
                                   /*keep_result=*/false);
    (void)PersistLocked(job);
  } else {
    FinishJobLocked(job, JobState::kFailed, s);
  }
}

}  // namespace jobs_internal
absl::StatusOr<std::unique_ptr<JobManager>> CreateJobManagerWithEnv(
    const JobManager::Options& options, ResourceScheduler* scheduler,
    HardwareProbe* probe, JobManagerEnv env) {
  auto manager = std::make_unique<jobs_internal::JobManagerImpl>(
      options, scheduler, probe, std::move(env));
  REGSERVE_RETURN_IF_ERROR(manager->Init());
  return std::unique_ptr<JobManager>(std::move(manager));
}

absl::Status JobManager::ValidateOptions(const Options& options) {
  return jobs_internal::ValidateOptions(options);
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    const Options& options, ResourceScheduler* scheduler,
    HardwareProbe* probe) {
  return CreateJobManagerWithEnv(options, scheduler, probe, JobManagerEnv{});
}

}  // namespace regserve
