// Copyright regserve authors.
//
// The job pipeline as an ordered list of stages. Each stage is a class in
// its own file with one Run; it gets the job's run state (JobRun: inputs,
// and what earlier stages produced) and a narrow host (StageHost) through
// which it reserves memory, reports progress and records results. A stage
// never sees the job manager or its lock.
//
//   decode -> registration -> refine -> quality -> warp -> commit
//
//   StageServices services = ...;             // fs, elastix, warpers, ...
//   std::vector<std::unique_ptr<PipelineStage>> stages =
//       DefaultPipeline(services);
//   JobRun run(record, JobDir(jobs_dir, id), cancel_token);
//   REGSERVE_RETURN_IF_ERROR(RunPipeline(stages, services, &run, &host));
//
// Adding a stage: one new file with a PipelineStage, its memory estimate in
// the planner (core/plan), and its place in DefaultPipeline.
//
// Thread safety: a pipeline runs one job on one thread; StageServices are
// shared between pipelines and must be thread-safe.
#ifndef REGSERVE_CORE_JOBS_STAGE_RUNNER_H_
#define REGSERVE_CORE_JOBS_STAGE_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/common/cancel.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "core/image/region_source.h"
#include "core/jobs/input_root.h"
#include "core/jobs/job_dir.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_store.h"
#include "core/jobs/warper_pool.h"
#include "core/quality/quality_map.h"
#include "core/registration/registration.h"
#include "core/registration/robust_start.h"
#include "core/scheduler/scheduler.h"

namespace regserve {

// What the manager offers a running stage. Implementations take the
// manager's lock themselves; a stage calls them without any lock.
class StageHost {
 public:
  virtual ~StageHost() = default;
  // Waits (cancellably) until the scheduler admits `ram`/`vram` on `lane`.
  virtual absl::StatusOr<Reservation> Acquire(Lane lane, uint64_t ram,
                                              uint64_t vram,
                                              absl::string_view what) = 0;
  // The stage holds its resources and starts: persisted, observed, told.
  virtual void Started(Stage stage) = 0;
  // Progress of `stage` (0..1). Unless `force`, rate-limited to a few
  // events a second for readers.
  virtual void Progress(Stage stage, double fraction, std::string detail,
                        const RegistrationProgress* registration = nullptr,
                        bool force = true) = 0;
  // The stage ran to its end; its time since `start` goes into the job.
  virtual void Finished(Stage stage, absl::Time start) = 0;
  // A decision taken while running (e.g. the CPU fallback of the warp).
  virtual void AddPlanReason(std::string reason) = 0;
  // The registration's outcome: the stored transform and its figures.
  virtual void Registered(const std::string& transform_dir,
                          std::vector<std::string> transform_files,
                          const RegistrationResult& result) = 0;
  // Whether a reader waits for result tile `index` (cheap; TileDemand).
  virtual TileDemand Demand(int64_t index) = 0;
  // A finished result tile for the readers that wait for it.
  virtual void PublishTile(const JobEvent& tile) = 0;
  // The quality stage's estimate and its map, for the job's snapshot and
  // completed event.
  virtual void QualityEstimated(const QualitySummary& summary,
                                std::shared_ptr<const QualityMap> map) = 0;
  // The warp's outcome, before the result is committed.
  virtual void Warped(const ImageSpec& output, const WarpStats& stats) = 0;
  // The stored result is durable at `path`, and at `output_path` (the
  // spec's, resolved) when the spec names one.
  virtual void Committed(const std::string& path,
                         const std::string& output_path) = 0;
  // Whether the run may still put its result in place: in fleet mode, its
  // lease holds (renewed at the table, or within its local deadline);
  // ABORTED when another replica may run the job now.
  virtual absl::Status MayCommit() { return absl::OkStatus(); }
};

// Shared services of every pipeline; not owned, outlive the pipelines.
struct StageServices {
  JobFileSystem* fs = nullptr;
  RegisterFunction register_fn;
  WarperPool* warpers = nullptr;
  ResourceScheduler* scheduler = nullptr;  // GPU ordinals, retained VRAM
  const InputRoot* input_root = nullptr;
  const OutputRoot* output_root = nullptr;
  ElastixConfig elastix;
  int64_t max_pixels = 0;
  absl::Duration registration_timeout = absl::Hours(2);
  // Test hook: called before a stage acquires its resources.
  std::function<void(const std::string& job_id, Stage stage)> before_stage;
  // The initial alignment; empty: EstimateInitialAlignment.
  AlignFunction align_fn;
};

// One run of one job: its inputs and what the stages hand each other.
struct JobRun {
  JobRun(const JobRecord& record, JobDir dir, const CancelToken* cancel)
      : rec(record),
        dir(std::move(dir)),
        cancel(cancel),
        registration_dir(this->dir.registration()),
        partial_result(this->dir.partial_result()),
        transform_dir(this->dir.transform()),
        quality_map(this->dir.quality_map()) {}
  const JobRecord& rec;
  const JobDir dir;
  const CancelToken* const cancel;
  // elastix's work directory: dir.registration(), or in fleet mode one
  // under it per lease, so that an elastix orphaned by a replica that died
  // on a host that did not never writes into a re-run's files.
  std::string registration_dir;
  // The result while it is written: dir.partial_result(), or in fleet mode
  // one per lease (two runs of a job never share it).
  std::string partial_result;
  // Where the run stores its transforms (recorded in the job's info) and
  // its quality map (moved to dir.quality_map() at the commit): dir's, or
  // in fleet mode one per lease, so that a run that lost its lease never
  // writes over the files of the run that holds it.
  std::string transform_dir;
  std::string quality_map;
  // Fleet mode: the job directory is shared with other runs of the job.
  bool fleet_run = false;
  // decode -> registration (-> quality, which frees them): the grayscale
  // registration copies.
  Image fixed_gray;
  Image moving_gray;
  // decode -> warp: the full-resolution moving image, or, when the plan
  // reads it by region (Plan::moving_streamed), its region source (the
  // input file, or the spill in dir.spill()) and nothing in `moving`.
  Image moving;
  std::unique_ptr<RegionSource> moving_regions;
  // decode -> warp: what both files say beside their pixels (ICC profile,
  // resolution, orientation), for the stored result.
  ImageMetadata fixed_metadata;
  ImageMetadata moving_metadata;
  // initial_alignment -> registration: the robust start (initial.found
  // false: none) and, when found, the moving copy pre-warped by it onto the
  // fixed copy's grid (registration frees it).
  InitialAlignment initial;
  Image moving_prewarped;
  // registration -> warp: the displacement field (in reg.field).
  RegistrationResult reg;
  // registration -> refine -> quality: the quality map's estimate of
  // reg.field as it stands, when a stage made one to choose between fields
  // (so that the next one need not make it again). A stage that changes
  // reg.field sets or clears it.
  std::optional<QualityReport> reg_quality;
  // warp -> commit: the written (closed) partial result.
  bool result_written = false;
};

class PipelineStage {
 public:
  virtual ~PipelineStage() = default;
  // The Stage it reports as (hooks, progress); nullopt for bookkeeping
  // steps that are part of the previous stage.
  virtual std::optional<Stage> stage() const = 0;
  // Runs the stage. Errors end the job (Cancelled when `run->cancel`
  // fired); the message says which stage failed and why.
  virtual absl::Status Run(JobRun* run, StageHost* host) = 0;
};

// decode, registration, warp, commit, each in its own file.
std::unique_ptr<PipelineStage> MakeDecodeStage(const StageServices* services);
// initial_alignment: the robust start (core/registration/robust_start).
std::unique_ptr<PipelineStage> MakeInitialAlignmentStage(
    const StageServices* services);
std::unique_ptr<PipelineStage> MakeRegistrationStage(
    const StageServices* services);
// refine: the LibTorch refinement of run->reg.field (core/refine), when the
// plan enables it.
std::unique_ptr<PipelineStage> MakeRefineStage(const StageServices* services);
// quality: the estimated residual of run->reg.field (core/quality); frees
// the grayscale copies. Keeps the map in JobDir::quality_map().
std::unique_ptr<PipelineStage> MakeQualityStage(const StageServices* services);
// The map a quality stage kept in `dir`. NotFound when there is none,
// DataLoss when it cannot be read back.
absl::StatusOr<std::shared_ptr<const QualityMap>> ReadStoredQualityMap(
    const JobDir& dir);
std::unique_ptr<PipelineStage> MakeWarpStage(const StageServices* services);
std::unique_ptr<PipelineStage> MakeCommitStage(const StageServices* services);

std::vector<std::unique_ptr<PipelineStage>> DefaultPipeline(
    const StageServices* services);

// Runs the stages in order, checking the cancel token between them.
absl::Status RunPipeline(
    const std::vector<std::unique_ptr<PipelineStage>>& stages,
    const StageServices& services, JobRun* run, StageHost* host);

// The input file of `role`: the upload, or the server-side path re-resolved
// under the input root (the tree may have changed since submission).
absl::StatusOr<std::string> InputPathFor(const StageServices& services,
                                         const JobRecord& rec, ImageRole role);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_STAGE_RUNNER_H_
