// Copyright regserve authors.
//
// JobManager implementation. Layout of data_dir:
//
//   jobs/<id>/spec                 JobSpec, principal, sequence (written once)
//   jobs/<id>/state                everything else (atomic rewrite)
//   jobs/<id>/inputs/fixed.<ext>   uploads (server-side paths are referenced)
//   jobs/<id>/registration/        elastix work dir (removed after the stage)
//   jobs/<id>/transform/           TransformParameters.<i>.txt (self-contained)
//   jobs/<id>/result.tif           tiled TIFF (written as result.partial.tif)
//
// Locking: mu_ guards the job table, the queue and every Job's fields except
// upload_mu-serialised upload I/O. State files are written under mu_ so that
// their order matches the order of state changes. Subscriber queues have their
// own mutex, always taken after mu_ (never the other way round).
#include "core/jobs/job_manager.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_store.h"
#include "core/jobs/result_reader.h"
#include "core/registration/process.h"

namespace regserve {

namespace {

namespace fs = std::filesystem;

constexpr int kMaxCustomParameters = 8;
constexpr size_t kMaxParameterBytes = 1 << 20;
constexpr size_t kMaxLabelBytes = 256;
constexpr size_t kMaxPathBytes = 4096;
constexpr int kMaxPriority = 1000;
// Pending live events per reader beyond which progress events are coalesced.
constexpr size_t kMaxPendingEvents = 256;
// Most jobs one ListJobPage returns.
constexpr int kMaxListPageSize = 1000;
constexpr absl::Duration kProgressInterval = absl::Milliseconds(50);

// A path that a job's files recorded inside that job's directory
// ("<old data_dir>/jobs/<id>/..."), rewritten to lie under `dir`, where the
// job's directory is now. Other paths (server-side inputs) are left alone.
void RebaseIntoJobDir(const std::string& id, const std::string& dir,
                      std::string* path) {
  const std::string marker = absl::StrCat("/jobs/", id);
  const size_t at = path->rfind(marker);
  if (at == std::string::npos) return;
  const size_t end = at + marker.size();
  if (end != path->size() && (*path)[end] != '/') return;
  *path = absl::StrCat(dir, path->substr(end));
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return ss.str();
}

void RemoveAllQuietly(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

void RemoveQuietly(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
}

bool SameSpec(const ImageSpec& a, const ImageSpec& b) {
  return a.width == b.width && a.height == b.height &&
         a.channels == b.channels && a.type == b.type;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool ValidStreamTileSize(int64_t t) {
  return TileGrid::ValidateEdge(t, "stream_tile_size").ok();
}

// ---------------------------------------------------------------------------
// Event streams.

struct Subscriber {
  absl::Mutex mu;
  std::deque<JobEvent> pending ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
  bool shutdown ABSL_GUARDED_BY(mu) = false;
  bool have_terminal ABSL_GUARDED_BY(mu) = false;
  JobEvent terminal ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  // Tiles replayed from the stored result before the terminal event.
  bool replay ABSL_GUARDED_BY(mu) = false;
  std::string result_path ABSL_GUARDED_BY(mu);
  TileGrid tiles ABSL_GUARDED_BY(mu);
  int64_t next_tile ABSL_GUARDED_BY(mu) = 0;

  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return closed || shutdown || done || !pending.empty() || have_terminal;
  }

  void Push(JobEvent event) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    if (closed || have_terminal) return;
    // Coalesce progress of the same stage, and queue positions, so that a
    // slow reader stays bounded: only the latest of each matters.
    if (event.kind == JobEvent::Kind::kProgress && !pending.empty() &&
        pending.back().kind == JobEvent::Kind::kProgress &&
        pending.back().stage == event.stage) {
      pending.back() = std::move(event);
      return;
    }
    if (event.kind == JobEvent::Kind::kQueued && !pending.empty() &&
        pending.back().kind == JobEvent::Kind::kQueued) {
      pending.back() = std::move(event);
      return;
    }
    if (pending.size() >= kMaxPendingEvents) {
      for (auto it = pending.begin(); it != pending.end(); ++it) {
        if (it->kind == JobEvent::Kind::kProgress) {
          pending.erase(it);
          break;
        }
      }
    }
    pending.push_back(std::move(event));
  }

  // The terminal event; for a completed job, tiles are replayed first.
  void Finish(JobEvent terminal_event, const JobInfo& info, int64_t from_tile)
      ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    if (closed || have_terminal) return;
    SetTerminalLocked(std::move(terminal_event), info, from_tile);
  }

  void SetTerminalLocked(JobEvent terminal_event, const JobInfo& info,
                         int64_t from_tile) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    have_terminal = true;
    terminal = std::move(terminal_event);
    if (info.state == JobState::kCompleted && info.tiles.count() > 0) {
      replay = true;
      result_path = info.result_path;
      tiles = info.tiles;
      next_tile = from_tile;
    }
  }
};

class JobEventStream final : public EventStream {
 public:
  JobEventStream(std::shared_ptr<Subscriber> sub, ImageSpec output)
      : sub_(std::move(sub)), output_(output) {}
  ~JobEventStream() override { Close(); }

  absl::Status Next(JobEvent* event, absl::Time deadline) override {
    int64_t tile = -1;
    std::string path;
    TileGrid tiles;
    {
      absl::MutexLock lock(&sub_->mu);
      sub_->mu.AwaitWithDeadline(
          absl::Condition(sub_.get(), &Subscriber::Ready), deadline);
      if (sub_->closed) return absl::CancelledError("event stream closed");
      if (sub_->done) return absl::OutOfRangeError("event stream has ended");
      if (!sub_->pending.empty()) {
        *event = std::move(sub_->pending.front());
        sub_->pending.pop_front();
        return absl::OkStatus();
      }
      if (sub_->have_terminal) {
        if (sub_->replay && sub_->next_tile < sub_->tiles.count()) {
          tile = sub_->next_tile++;
          path = sub_->result_path;
          tiles = sub_->tiles;
        } else {
          *event = sub_->terminal;
          sub_->done = true;
          return absl::OkStatus();
        }
      } else if (sub_->shutdown) {
        return absl::UnavailableError("job manager is shutting down");
      } else {
        return absl::DeadlineExceededError("no event yet");
      }
    }
    absl::Status s = ReadTile(path, tile, tiles, event);
    if (!s.ok()) {
      absl::MutexLock lock(&sub_->mu);
      sub_->done = true;
    }
    return s;
  }

  void Close() override {
    absl::MutexLock lock(&sub_->mu);
    sub_->closed = true;
  }

 private:
  absl::Status ReadTile(const std::string& path, int64_t index,
                        const TileGrid& tiles, JobEvent* event) {
    if (!reader_) {
      REGSERVE_ASSIGN_OR_RETURN(reader_, ResultReader::Open(path));
    }
    const ImageSpec& spec = reader_->spec();
    const TileGrid grid(spec.width, spec.height, tiles.edge());
    const TileRect rect = grid.rect(index);
    absl::StatusOr<std::string> data_or = reader_->ReadRegion(rect);
    if (!data_or.ok()) {
      // OutOfRange means "the stream has ended" to callers of Next: a tile
      // outside the stored result is an inconsistency, not an end.
      return absl::DataLossError(absl::StrCat("result tile ", index, " of ",
                                              path, ": ",
                                              data_or.status().message()));
    }
    std::string data = *std::move(data_or);
    JobEvent ev;
    {
      absl::MutexLock lock(&sub_->mu);
      ev.job_id = sub_->terminal.job_id;
    }
    ev.kind = JobEvent::Kind::kTile;
    ev.stage = Stage::kStream;
    ev.tile_index = index;
    ev.grid = grid;
    ev.rect = rect;
    ev.channels = spec.channels;
    ev.sample_type = spec.type;
    ev.encoding = TileEncoding::kRaw;
    ev.data = std::move(data);
    *event = std::move(ev);
    return absl::OkStatus();
  }

  std::shared_ptr<Subscriber> sub_;
  ImageSpec output_;
  std::unique_ptr<ResultReader> reader_;
};

// ---------------------------------------------------------------------------
// Jobs.

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
  std::vector<std::shared_ptr<Subscriber>> subs;
  absl::Time last_progress = absl::InfinitePast();
  Stage last_progress_stage = Stage::kUpload;
  // The stage reported to the observer as started and not yet ended.
  bool stage_open = false;
  Stage open_stage = Stage::kUpload;
  absl::Time stage_start;
  // Serialises AppendUpload/FinishUpload file I/O of this job.
  absl::Mutex upload_mu;
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

QueueKey KeyOf(const Job& job) {
  return QueueKey{-job.rec.info.spec.priority, job.rec.sequence,
                  job.rec.info.id};
}

// One CUDA warper per GPU, shared by the jobs warping there. A warper that
// could not be created is remembered for kWarperRetryAfter, so that the jobs
// in between go straight to the CPU instead of each paying for (and logging)
// the same failure.
constexpr absl::Duration kWarperRetryAfter = absl::Minutes(1);
struct WarperSlot {
  absl::Mutex mu;
  std::unique_ptr<Warper> warper ABSL_GUARDED_BY(mu);
  absl::Status failure ABSL_GUARDED_BY(mu);
  absl::Time failed_at ABSL_GUARDED_BY(mu) = absl::InfinitePast();
};

class JobManagerImpl final : public JobManager {
 public:
  JobManagerImpl(const Options& options, ResourceScheduler* scheduler,
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
    if (!env_.create_warper) {
      env_.create_warper = [](WarpDevice device, int cuda_device) {
        return Warper::Create(device, cuda_device);
      };
    }
  }

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

 private:
  std::string JobDir(const std::string& id) const {
    return absl::StrCat(jobs_dir_, "/", id);
  }

  absl::StatusOr<JobSpec> ValidateSpec(const JobSpec& spec) const;
  absl::StatusOr<std::string> ResolveInputPath(absl::string_view field,
                                               const std::string& path) const;
  absl::StatusOr<Plan> PlanJob(const JobSpec& spec, const ImageSpec& fixed,
                               const ImageSpec& moving) const;
  absl::StatusOr<ImageSpec> ReadInputSpec(absl::string_view field,
                                          const std::string& path) const;
  // Stores the plan and the tile geometry it implies. Needs mu_ once the job
  // is in the table.
  void SetPlan(Job* job, Plan plan) const;

  absl::Status Recover();
  std::shared_ptr<Job> FindLocked(const std::string& id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  void CleanupJobFiles(const Job& job, bool delete_uploads);
  void ProgressLocked(Job* job, Stage stage, double fraction,
                      std::string detail, const RegistrationProgress* reg,
                      bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Progress(Job* job, Stage stage, double fraction, std::string detail,
                bool force = true) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ProgressLocked(job, stage, fraction, std::move(detail), nullptr, force);
  }

  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shutting_down_ || !queue_.empty();
  }
  void PipelineLoop();
  void JanitorLoop();
  void RunJob(const std::shared_ptr<Job>& job);
  absl::Status RunStages(const std::shared_ptr<Job>& job, const JobRecord& rec,
                         const CancelTokenPtr& token);
  absl::StatusOr<Reservation> AcquireStage(const JobRecord& rec, Lane lane,
                                           uint64_t ram, uint64_t vram,
                                           absl::string_view what,
                                           const CancelToken* token);
  void StartStage(Job* job, Stage stage) ABSL_LOCKS_EXCLUDED(mu_);
  // Observer bookkeeping: every started stage is ended exactly once.
  void OpenStageLocked(Job* job, Stage stage)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseStageLocked(Job* job, bool completed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddTiming(Job* job, Stage stage, absl::Time start)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> InputPathFor(const JobRecord& rec,
                                           ImageRole role) const;
  absl::Status CopyTransformFiles(const std::string& work_dir,
                                  const std::string& transform_dir,
                                  const std::vector<std::string>& files,
                                  std::vector<std::string>* copied);
  std::shared_ptr<WarperSlot> CudaWarperSlot(int ordinal);

  const Options options_;
  ResourceScheduler* const scheduler_;
  HardwareProbe* const probe_;
  JobManagerEnv env_;
  JobFileSystem* fs_ = nullptr;
  std::string data_dir_;
  std::string jobs_dir_;
  std::string input_root_;  // canonical, or empty (server paths disabled)

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::set<QueueKey> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool joined_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> pipeline_;
  std::thread janitor_;

  absl::Mutex warper_mu_;
  std::map<int, std::shared_ptr<WarperSlot>> cuda_warpers_
      ABSL_GUARDED_BY(warper_mu_);
};

// ---------------------------------------------------------------------------
// Creation and recovery.

absl::Status ValidateOptions(const JobManager::Options& o) {
  if (o.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir is required");
  }
  if (o.max_queue < 1)
    return absl::InvalidArgumentError("max_queue must be >= 1");
  if (o.max_jobs_per_principal < 0) {
    return absl::InvalidArgumentError(
        "max_jobs_per_principal must be >= 0 (0 = no limit)");
  }
  if (o.max_attempts < 1) {
    return absl::InvalidArgumentError("max_attempts must be >= 1");
  }
  if (o.elastix_threads < 1) {
    return absl::InvalidArgumentError("elastix_threads must be >= 1");
  }
  if (!ValidStreamTileSize(o.stream_tile_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stream_tile_size must be a multiple of 16 in [16, 8192], got ",
        o.stream_tile_size));
  }
  if (o.retention <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retention must be positive");
  }
  if (o.registration_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("registration_timeout must be positive");
  }
  if (o.max_upload_bytes == 0 || o.max_pixels < 1) {
    return absl::InvalidArgumentError(
        "max_upload_bytes and max_pixels must be positive");
  }
  if (!(o.default_max_registration_megapixels > 0) ||
      !std::isfinite(o.default_max_registration_megapixels)) {
    return absl::InvalidArgumentError(
        "default_max_registration_megapixels must be positive");
  }
  if (o.pipeline_threads < 0) {
    return absl::InvalidArgumentError("pipeline_threads must be >= 0");
  }
  return absl::OkStatus();
}

absl::Status JobManagerImpl::Init() {
  REGSERVE_RETURN_IF_ERROR(ValidateOptions(options_));
  if (scheduler_ == nullptr) {
    return absl::InvalidArgumentError("JobManager needs a ResourceScheduler");
  }
  std::error_code ec;
  fs::path data = fs::absolute(options_.data_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad data_dir '", options_.data_dir, "': ", ec.message()));
  }
  fs::create_directories(data / "jobs", ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create ", (data / "jobs").string(), ": ", ec.message()));
  }
  fs::path canonical = fs::canonical(data, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot resolve data_dir ", data.string(), ": ", ec.message()));
  }
  data_dir_ = canonical.string();
  jobs_dir_ = (canonical / "jobs").string();
  if (!options_.input_root.empty()) {
    fs::path root = fs::canonical(options_.input_root, ec);
    if (ec || !fs::is_directory(root, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_root '", options_.input_root,
                       "' is not an existing directory"));
    }
    input_root_ = root.string();
  }
  REGSERVE_RETURN_IF_ERROR(Recover());

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
  return absl::OkStatus();
}

absl::Status JobManagerImpl::Recover() {
  std::error_code ec;
  std::vector<std::string> ids;
  for (fs::directory_iterator it(jobs_dir_, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (IsValidJobId(name) && it->is_directory()) ids.push_back(name);
  }
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot list ", jobs_dir_, ": ", ec.message()));
  }
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (const std::string& id : ids) {
    const std::string dir = JobDir(id);
    struct stat state_stat;
    if (stat((dir + "/state").c_str(), &state_stat) != 0 && errno == ENOENT) {
      // CreateJob writes the state last, before it returns the id: without it
      // the job was never acknowledged. Remove the debris.
      RemoveAllQuietly(dir);
      continue;
    }
    absl::StatusOr<std::string> state_text = ReadWholeFile(dir + "/state");
    if (!state_text.ok()) {
      // Present but unreadable (permissions, I/O error): keep the directory,
      // whose result may be intact, and say so.
      std::fprintf(stderr,
                   "regserve: skipping job %s: its state file cannot be read "
                   "(%s); fix the file's permissions or the disk and "
                   "restart\n",
                   id.c_str(),
                   std::string(state_text.status().message()).c_str());
      continue;
    }
    auto job = std::make_shared<Job>();
    absl::Status s;
    absl::StatusOr<std::string> spec_text = ReadWholeFile(dir + "/spec");
    s = spec_text.ok() ? DecodeJobSpec(*spec_text, &job->rec)
                       : spec_text.status();
    if (s.ok()) s = DecodeJobState(*state_text, &job->rec);
    if (s.ok() && job->rec.info.id != id) {
      s = absl::DataLossError("id in spec does not match its directory");
    }
    if (!s.ok()) {
      std::fprintf(stderr, "regserve: skipping unreadable job %s: %s\n",
                   id.c_str(), std::string(s.message()).c_str());
      continue;
    }
    JobInfo& info = job->rec.info;
    next_sequence_ = std::max(next_sequence_, job->rec.sequence + 1);
    // The data directory may have moved since these paths were written.
    for (std::string* path : {&info.result_path, &info.transform_dir,
                              &job->rec.fixed_input, &job->rec.moving_input}) {
      RebaseIntoJobDir(id, dir, path);
    }
    for (std::string& path : info.transform_files)
      RebaseIntoJobDir(id, dir, &path);
    // A finished result keeps the tiles it was written and streamed in, so
    // a client resuming with from_tile after a restart under another
    // --stream_tile_size gets the tiles after the ones it has. Jobs not yet
    // warped use this daemon's size. The count is recomputed either way.
    if (info.has_plan) {
      int64_t edge = info.tiles.edge();
      if (info.state != JobState::kCompleted || !ValidStreamTileSize(edge)) {
        edge = options_.stream_tile_size;
      }
      info.tiles =
          TileGrid(info.plan.output_width, info.plan.output_height, edge);
    }
    jobs_[id] = job;
    switch (info.state) {
      case JobState::kUploading:
        FinishJobLocked(job.get(), JobState::kFailed,
                        absl::AbortedError("upload interrupted by a daemon "
                                           "restart; submit again"));
        break;
      case JobState::kQueued:
        EnqueueLocked(job);
        break;
      case JobState::kRunning:
        // elastix/transformix run in their own process group and outlive a
        // daemon killed with SIGKILL: end the one this job left behind
        // before its files go and its memory is counted as free again.
        if (const pid_t stale =
                KillStaleChild(dir + "/registration/child.pid")) {
          std::fprintf(stderr,
                       "regserve: job %s: killed registration process %d "
                       "left by the previous daemon\n",
                       id.c_str(), static_cast<int>(stale));
        }
        if (info.attempts < options_.max_attempts) {
          info.state = JobState::kQueued;
          info.stage_fraction = 0;
          info.stage_detail =
              absl::StrCat("re-queued after a daemon restart during ",
                           StageName(info.stage));
          info.timings.clear();
          CleanupJobFiles(*job, /*delete_uploads=*/false);
          (void)PersistLocked(job.get());
          EnqueueLocked(job);
        } else {
          FinishJobLocked(
              job.get(), JobState::kFailed,
              absl::AbortedError(absl::StrCat(
                  "interrupted by a daemon restart during ",
                  StageName(info.stage), " (attempt ", info.attempts, ")")));
        }
        break;
      case JobState::kCompleted: {
        struct stat st;
        if (stat(info.result_path.c_str(), &st) != 0) {
          info.state = JobState::kFailed;
          info.failure = absl::DataLossError(
              absl::StrCat("the result ", info.result_path,
                           " is missing from the data directory"));
          (void)PersistLocked(job.get());
        }
        break;
      }
      case JobState::kFailed:
      case JobState::kCancelled:
        break;
    }
    // As in FinishJobLocked: a finished job does not need its parameters.
    if (IsTerminal(info.state))
      std::vector<std::string>().swap(info.spec.custom_parameters);
    (void)now;
  }
  UpdateQueuePositionsLocked();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Validation and planning.

absl::Status ValidateUploadName(absl::string_view field,
                                absl::string_view name) {
  size_t dot = name.rfind('.');
  absl::string_view ext = dot == absl::string_view::npos ? absl::string_view()
                                                         : name.substr(dot + 1);
  bool ok = !ext.empty() && ext.size() <= 8;
  for (char c : ext)
    ok = ok && absl::ascii_isalnum(static_cast<unsigned char>(c));
  if (!ok || name.size() > 255) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".upload_name '", name.substr(0, 64),
        "' must end in a file extension naming the format (e.g. scan.tif)"));
  }
  return absl::OkStatus();
}

std::string UploadExtension(absl::string_view name) {
  return absl::AsciiStrToLower(name.substr(name.rfind('.') + 1));
}

absl::StatusOr<JobSpec> JobManagerImpl::ValidateSpec(const JobSpec& in) const {
  JobSpec spec = in;
  for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
    const char* field = RoleName(role);
    const ImageSource& src =
        role == ImageRole::kFixed ? spec.fixed : spec.moving;
    const bool has_path = !src.path.empty();
    const bool has_upload = src.upload_bytes > 0 || !src.upload_name.empty();
    if (has_path && has_upload) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": give either a server-side path or an upload, not both"));
    }
    if (!has_path && !has_upload) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": missing: give a server-side path or upload the image"));
    }
    if (has_path) {
      if (src.path.size() > kMaxPathBytes ||
          src.path.find('\0') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".path is not a valid path"));
      }
      continue;
    }
    if (src.upload_bytes == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".upload_bytes must be > 0"));
    }
    if (src.upload_bytes > options_.max_upload_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".upload_bytes ", src.upload_bytes, " exceeds the limit of ",
          options_.max_upload_bytes, " bytes"));
    }
    REGSERVE_RETURN_IF_ERROR(ValidateUploadName(field, src.upload_name));
  }
  if (spec.options.device == DevicePreference::kUnspecified) {
    spec.options.device = options_.device;
  }
  const JobOptions& o = spec.options;
  if (static_cast<int>(o.transform) < 0 || static_cast<int>(o.transform) > 2) {
    return absl::InvalidArgumentError(
        "options.transform is not a known transform");
  }
  if (static_cast<int>(o.interpolation) < 0 ||
      static_cast<int>(o.interpolation) > 2) {
    return absl::InvalidArgumentError(
        "options.interpolation is not a known interpolation");
  }
  if (static_cast<int>(o.device) < 0 || static_cast<int>(o.device) > 2) {
    return absl::InvalidArgumentError("options.device is not a known device");
  }
  if (!std::isfinite(o.max_registration_megapixels) ||
      o.max_registration_megapixels < 0) {
    return absl::InvalidArgumentError(
        "options.max_registration_megapixels must be >= 0 (0 = server "
        "default)");
  }
  if (o.max_registration_megapixels == 0) {
    spec.options.max_registration_megapixels =
        options_.default_max_registration_megapixels;
  }

  if (spec.custom_parameters.size() >
      static_cast<size_t>(kMaxCustomParameters)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "custom_parameters: at most ", kMaxCustomParameters, " files"));
  }
  for (size_t i = 0; i < spec.custom_parameters.size(); ++i) {
    const std::string& text = spec.custom_parameters[i];
    if (text.size() > kMaxParameterBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("custom_parameters[", i, "] is larger than ",
                       kMaxParameterBytes, " bytes"));
    }
    absl::Status s = ValidateParameterText(text);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("custom_parameters[", i, "]: ", s.message()));
    }
  }
  if (spec.priority < -kMaxPriority || spec.priority > kMaxPriority) {
    return absl::InvalidArgumentError(absl::StrCat(
        "priority must be in [", -kMaxPriority, ", ", kMaxPriority, "]"));
  }
  if (!std::isfinite(spec.fill_value)) {
    return absl::InvalidArgumentError("fill_value must be a finite number");
  }
  if (spec.client_label.size() > kMaxLabelBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("client_label is longer than ", kMaxLabelBytes, " bytes"));
  }
  return spec;
}

absl::StatusOr<std::string> JobManagerImpl::ResolveInputPath(
    absl::string_view field, const std::string& path) const {
  if (input_root_.empty()) {
    return absl::PermissionDeniedError(
        absl::StrCat(field,
                     ".path: server-side paths are disabled (the daemon has no "
                     "input root); upload the image instead"));
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return absl::PermissionDeniedError(absl::StrCat(
          field, ".path: '..' is not allowed in server-side paths"));
    }
  }
  fs::path candidate =
      path[0] == '/' ? fs::path(path) : fs::path(input_root_) / path;
  std::error_code ec;
  fs::path resolved = fs::canonical(candidate, ec);
  if (ec) {
    // Do not reveal whether something exists outside the root.
    fs::path lexical = candidate.lexically_normal();
    std::string lex = lexical.string();
    if (lex != input_root_ && !absl::StartsWith(lex, input_root_ + "/")) {
      return absl::PermissionDeniedError(absl::StrCat(
          field, ".path '", path, "' is outside the server's input root"));
    }
    return absl::NotFoundError(absl::StrCat(
        field, ".path '", path, "' not found under the input root"));
  }
  const std::string r = resolved.string();
  if (!absl::StartsWith(r, input_root_ + "/")) {
    return absl::PermissionDeniedError(absl::StrCat(
        field, ".path '", path,
        "' resolves outside the server's input root (symbolic links may not "
        "leave it)"));
  }
  if (!fs::is_regular_file(resolved, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".path '", path, "' is not a regular file"));
  }
  return r;
}

absl::StatusOr<ImageSpec> JobManagerImpl::ReadInputSpec(
    absl::string_view field, const std::string& path) const {
  absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
  if (!spec.ok()) {
    return absl::Status(
        spec.status().code(),
        absl::StrCat(field, " image: ", spec.status().message()));
  }
  if (spec->pixels() > options_.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " image has ", spec->pixels(),
        " pixels, above the server limit of ", options_.max_pixels));
  }
  return *spec;
}

absl::StatusOr<Plan> JobManagerImpl::PlanJob(const JobSpec& spec,
                                             const ImageSpec& fixed,
                                             const ImageSpec& moving) const {
  HardwareSnapshot hw;
  if (probe_ != nullptr) {
    REGSERVE_ASSIGN_OR_RETURN(hw, probe_->Probe());
  }
  Budgets budgets = BudgetsFromHardware(hw, options_.budget_overrides);
  REGSERVE_ASSIGN_OR_RETURN(Plan plan,
                            MakePlan(fixed, moving, spec.options, budgets));
  ResourceRequest req;
  req.lane = Lane::kCpu;
  req.ram_bytes = plan.decode.ram_bytes;
  REGSERVE_RETURN_IF_ERROR(scheduler_->CheckFits(req));
  req.ram_bytes = plan.registration.ram_bytes;
  REGSERVE_RETURN_IF_ERROR(scheduler_->CheckFits(req));
  // The stored result's writer keeps partly covered tiles in RAM.
  plan.warp.ram_bytes += TiffWriterPartialBytes(
      plan.tile_size, plan.output_width, options_.stream_tile_size, moving);
  req.lane = plan.warp_device == WarpDevice::kCuda ? Lane::kGpu : Lane::kCpu;
  req.ram_bytes = plan.warp.ram_bytes;
  req.vram_bytes = req.lane == Lane::kGpu ? plan.warp.vram_bytes : 0;
  REGSERVE_RETURN_IF_ERROR(scheduler_->CheckFits(req));
  const int64_t t = options_.stream_tile_size;
  plan.reasons.push_back(absl::StrCat(
      "result streamed as ",
      CeilDiv(plan.output_width, t) * CeilDiv(plan.output_height, t),
      " tiles of ", t, " px"));
  return plan;
}

void JobManagerImpl::SetPlan(Job* job, Plan plan) const {
  JobInfo& info = job->rec.info;
  info.has_plan = true;
  info.plan = std::move(plan);
  info.tiles = TileGrid(info.plan.output_width, info.plan.output_height,
                        options_.stream_tile_size);
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

absl::StatusOr<std::shared_ptr<Job>> JobManagerImpl::FindOwnedLocked(
    const std::string& id, const std::string& principal) const {
  std::shared_ptr<Job> job = FindLocked(id);
  if (job == nullptr || job->rec.info.principal != principal) {
    return absl::NotFoundError(absl::StrCat("no job '", id.substr(0, 64), "'"));
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

// Why an upload call found its job no longer uploading: CANCELLED when a
// Cancel ended it meanwhile, FAILED_PRECONDITION (with the job's failure)
// otherwise.
namespace {
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
}  // namespace

absl::Status JobManagerImpl::PersistLocked(Job* job) {
  return fs_->WriteFileAtomic(JobDir(job->rec.info.id) + "/state",
                              EncodeJobState(job->rec));
}

void JobManagerImpl::PublishLocked(Job* job, JobEvent event) {
  event.job_id = job->rec.info.id;
  auto& subs = job->subs;
  for (size_t i = 0; i < subs.size();) {
    bool closed;
    {
      absl::MutexLock lock(&subs[i]->mu);
      closed = subs[i]->closed;
    }
    if (closed) {
      subs.erase(subs.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    subs[i]->Push(event);
    ++i;
  }
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

void JobManagerImpl::CleanupJobFiles(const Job& job, bool delete_uploads) {
  const std::string dir = JobDir(job.rec.info.id);
  RemoveAllQuietly(dir + "/registration");
  RemoveQuietly(dir + "/result.partial.tif");
  if (delete_uploads) RemoveAllQuietly(dir + "/inputs");
  if (job.rec.info.state != JobState::kCompleted) {
    RemoveQuietly(dir + "/result.tif");
    RemoveAllQuietly(dir + "/transform");
  }
}

void JobManagerImpl::FinishJobLocked(Job* job, JobState state,
                                     absl::Status why) {
  JobInfo& info = job->rec.info;
  if (IsTerminal(info.state)) return;
  if (info.state == JobState::kQueued) queue_.erase(KeyOf(*job));
  info.state = state;
  info.failure =
      state == JobState::kCompleted ? absl::OkStatus() : std::move(why);
  info.queue_position = 0;
  info.finished = absl::Now();
  if (state == JobState::kCompleted) {
    info.stage_fraction = 1.0;
    info.stage_detail = "completed";
  } else {
    info.stage_detail = std::string(info.failure.message());
  }
  CleanupJobFiles(*job, /*delete_uploads=*/true);
  if (state != JobState::kCompleted) {
    info.result_path.clear();
    info.transform_dir.clear();
    info.transform_files.clear();
  }
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
  JobEvent ev;
  ev.kind = state == JobState::kCompleted ? JobEvent::Kind::kCompleted
                                          : JobEvent::Kind::kFailed;
  ev.job_id = info.id;
  ev.info = info;
  for (auto& sub : job->subs) {
    int64_t from_tile;
    {
      absl::MutexLock lock(&sub->mu);
      from_tile = sub->next_tile;
    }
    sub->Finish(ev, info, from_tile);
  }
  job->subs.clear();
}

void JobManagerImpl::ProgressLocked(Job* job, Stage stage, double fraction,
                                    std::string detail,
                                    const RegistrationProgress* reg,
                                    bool force) {
  JobInfo& info = job->rec.info;
  if (info.state != JobState::kRunning && info.state != JobState::kUploading)
    return;
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
  JobEvent ev;
  ev.kind = JobEvent::Kind::kProgress;
  ev.stage = stage;
  ev.fraction = info.stage_fraction;
  ev.detail = std::move(detail);
  if (reg != nullptr) ev.registration = *reg;
  PublishLocked(job, std::move(ev));
}

// ---------------------------------------------------------------------------
// Submission and uploads.

absl::StatusOr<std::string> JobManagerImpl::CreateJob(
    const JobSpec& in, const std::string& principal) {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("shutting down");
  }
  REGSERVE_ASSIGN_OR_RETURN(JobSpec spec, ValidateSpec(in));
  auto job = std::make_shared<Job>();
  JobRecord& rec = job->rec;
  JobInfo& info = rec.info;
  info.principal = principal;
  info.spec = spec;
  info.created = absl::Now();
  info.finished = absl::InfinitePast();
  REGSERVE_ASSIGN_OR_RETURN(info.id, NewJobId());
  const std::string dir = JobDir(info.id);

  bool all_server_side = true;
  for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
    const ImageSource& src =
        role == ImageRole::kFixed ? spec.fixed : spec.moving;
    std::string& input =
        role == ImageRole::kFixed ? rec.fixed_input : rec.moving_input;
    ImageSpec& image_spec =
        role == ImageRole::kFixed ? rec.fixed_spec : rec.moving_spec;
    Job::Upload& up = job->uploads[static_cast<int>(role)];
    if (!src.path.empty()) {
      REGSERVE_ASSIGN_OR_RETURN(input,
                                ResolveInputPath(RoleName(role), src.path));
      REGSERVE_ASSIGN_OR_RETURN(image_spec,
                                ReadInputSpec(RoleName(role), input));
    } else {
      all_server_side = false;
      input = absl::StrCat(dir, "/inputs/", RoleName(role), ".",
                           UploadExtension(src.upload_name));
      up.expected = true;
      up.path = input;
      up.declared = src.upload_bytes;
    }
  }
  if (all_server_side) {
    rec.have_input_specs = true;
    REGSERVE_ASSIGN_OR_RETURN(Plan plan,
                              PlanJob(spec, rec.fixed_spec, rec.moving_spec));
    SetPlan(job.get(), std::move(plan));
    info.state = JobState::kQueued;
  } else {
    info.state = JobState::kUploading;
    info.stage = Stage::kUpload;
  }

  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("shutting down");
    REGSERVE_RETURN_IF_ERROR(CheckCapacityLocked(principal));
    rec.sequence = next_sequence_++;
  }

  // Write the job directory. The state file comes last: recovery removes a
  // directory without one.
  std::error_code ec;
  fs::create_directories(
      all_server_side ? fs::path(dir) : fs::path(dir) / "inputs", ec);
  absl::Status s;
  if (ec) {
    s = WriteErrnoToStatus(ec.value(), "creating", dir);
  }
  if (s.ok()) s = fs_->WriteFileAtomic(dir + "/spec", EncodeJobSpec(rec));
  if (s.ok()) s = fs_->WriteFileAtomic(dir + "/state", EncodeJobState(rec));
  // The job directory's own entry in jobs/, before the id is acknowledged.
  if (s.ok()) s = fs_->SyncFile(dir);
  if (!s.ok()) {
    RemoveAllQuietly(dir);
    return s;
  }

  absl::MutexLock lock(&mu_);
  if (shutting_down_) {
    RemoveAllQuietly(dir);
    return absl::UnavailableError("shutting down");
  }
  if (absl::Status capacity = CheckCapacityLocked(principal); !capacity.ok()) {
    RemoveAllQuietly(dir);
    return capacity;
  }
  jobs_[info.id] = job;
  if (info.state == JobState::kUploading)
    OpenStageLocked(job.get(), Stage::kUpload);
  if (info.state == JobState::kQueued) {
    EnqueueLocked(job);
    UpdateQueuePositionsLocked();
  }
  return info.id;
}

absl::Status JobManagerImpl::AppendUpload(const std::string& job_id,
                                          ImageRole role,
                                          absl::Span<const uint8_t> bytes) {
  if (role != ImageRole::kFixed && role != ImageRole::kMoving) {
    return absl::InvalidArgumentError("unknown image role");
  }
  std::shared_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    job = FindLocked(job_id);
    if (job == nullptr)
      return absl::NotFoundError(
          absl::StrCat("no job '", job_id.substr(0, 64), "'"));
  }
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
                       " upload (the image was given as a server-side path)"));
    }
    if (bytes.size() > up.declared - up.received) {
      absl::Status s = absl::InvalidArgumentError(
          absl::StrCat(RoleName(role), " upload is larger than the declared ",
                       up.declared, " bytes"));
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
    FinishJobLocked(job.get(), JobState::kFailed, s);
    return s;
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

absl::Status JobManagerImpl::FinishUpload(const std::string& job_id) {
  std::shared_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    job = FindLocked(job_id);
    if (job == nullptr)
      return absl::NotFoundError(
          absl::StrCat("no job '", job_id.substr(0, 64), "'"));
  }
  absl::MutexLock upload_lock(&job->upload_mu);
  JobRecord rec;
  {
    absl::MutexLock lock(&mu_);
    if (job->rec.info.state != JobState::kUploading) {
      return NotUploadingStatus(job->rec.info);
    }
    for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
      const Job::Upload& up = job->uploads[static_cast<int>(role)];
      if (up.expected && up.received != up.declared) {
        absl::Status s = absl::InvalidArgumentError(
            absl::StrCat(RoleName(role), " upload truncated: got ", up.received,
                         " of ", up.declared, " bytes"));
        FinishJobLocked(job.get(), JobState::kFailed, s);
        return s;
      }
    }
    rec = job->rec;
  }
  // Make the uploads durable, read their headers and plan, without the lock.
  absl::Status s;
  for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
    const Job::Upload& up = job->uploads[static_cast<int>(role)];
    if (!up.expected || !s.ok()) continue;
    s = fs_->SyncFile(up.path);
    if (!s.ok()) break;
    absl::StatusOr<ImageSpec> spec = ReadInputSpec(RoleName(role), up.path);
    if (!spec.ok()) {
      s = spec.status();
      break;
    }
    (role == ImageRole::kFixed ? rec.fixed_spec : rec.moving_spec) = *spec;
  }
  absl::StatusOr<Plan> plan = absl::UnknownError("not planned");
  if (s.ok()) {
    plan = PlanJob(rec.info.spec, rec.fixed_spec, rec.moving_spec);
    s = plan.status();
  }
  absl::MutexLock lock(&mu_);
  if (job->rec.info.state != JobState::kUploading) {
    return NotUploadingStatus(job->rec.info);
  }
  if (!s.ok()) {
    FinishJobLocked(job.get(), JobState::kFailed, s);
    return s;
  }
  job->rec.fixed_spec = rec.fixed_spec;
  job->rec.moving_spec = rec.moving_spec;
  job->rec.have_input_specs = true;
  job->rec.info.timings.push_back(StageTiming{
      Stage::kUpload, absl::ToDoubleSeconds(absl::Now() - job->stage_start)});
  CloseStageLocked(job.get(), /*completed=*/true);
  SetPlan(job.get(), *std::move(plan));
  job->rec.info.state = JobState::kQueued;
  job->rec.info.stage_fraction = 1.0;
  s = PersistLocked(job.get());
  if (!s.ok()) {
    job->rec.info.state = JobState::kUploading;
    FinishJobLocked(job.get(), JobState::kFailed, s);
    return s;
  }
  JobEvent accepted;
  accepted.kind = JobEvent::Kind::kAccepted;
  accepted.info = job->rec.info;
  PublishLocked(job.get(), std::move(accepted));
  EnqueueLocked(job);
  UpdateQueuePositionsLocked();
  return absl::OkStatus();
}

void JobManagerImpl::AbortUpload(const std::string& job_id,
                                 const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Job> job = FindLocked(job_id);
  if (job == nullptr || job->rec.info.state != JobState::kUploading) return;
  FinishJobLocked(job.get(), JobState::kFailed,
                  why.ok() ? absl::AbortedError("upload aborted") : why);
}

// ---------------------------------------------------------------------------
// Queries and control.

absl::Status JobManagerImpl::Cancel(const std::string& job_id,
                                    const std::string& principal) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job,
                            FindOwnedLocked(job_id, principal));
  JobInfo& info = job->rec.info;
  switch (info.state) {
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
    case JobState::kCancelled:
    case JobState::kCompleted:
    case JobState::kFailed:
      return absl::OkStatus();  // idempotent: the job keeps its final state
  }
  return absl::OkStatus();
}

absl::StatusOr<JobInfo> JobManagerImpl::GetJob(
    const std::string& job_id, const std::string& principal) const {
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
      return absl::DataLossError(absl::StrCat(
          "the stored transform ", file.name, " of job ", info.id,
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
  std::vector<std::pair<uint64_t, std::shared_ptr<Job>>> found;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    if (job->rec.info.principal == principal && job->rec.sequence < before)
      found.push_back({job->rec.sequence, job});
  }
  const size_t n = std::min(limit, found.size());
  std::partial_sort(
      found.begin(), found.begin() + static_cast<std::ptrdiff_t>(n),
      found.end(),
      [](const auto& a, const auto& b) { return a.first > b.first; });
  JobPage page;
  page.jobs.reserve(n);
  for (size_t i = 0; i < n; ++i) page.jobs.push_back(found[i].second->rec.info);
  if (found.size() > n)
    page.next_page_token = absl::StrCat("s", found[n - 1].first);
  return page;
}

absl::StatusOr<std::unique_ptr<EventStream>> JobManagerImpl::OpenEventStream(
    const std::string& job_id, const std::string& principal,
    int64_t from_tile) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job,
                            FindOwnedLocked(job_id, principal));
  const JobInfo& info = job->rec.info;
  if (from_tile < 0) {
    return absl::InvalidArgumentError("from_tile must be >= 0");
  }
  if (info.has_plan && from_tile > info.tiles.count()) {
    return absl::OutOfRangeError(absl::StrCat("from_tile ", from_tile,
                                              " is beyond the result's ",
                                              info.tiles.count(), " tiles"));
  }
  auto sub = std::make_shared<Subscriber>();
  {
    absl::MutexLock sub_lock(&sub->mu);
    sub->next_tile = from_tile;
    sub->terminal.job_id = info.id;
    if (info.has_plan) {
      JobEvent accepted;
      accepted.kind = JobEvent::Kind::kAccepted;
      accepted.job_id = info.id;
      accepted.info = info;
      sub->pending.push_back(std::move(accepted));
    }
    if (IsTerminal(info.state)) {
      JobEvent terminal;
      terminal.kind = info.state == JobState::kCompleted
                          ? JobEvent::Kind::kCompleted
                          : JobEvent::Kind::kFailed;
      terminal.job_id = info.id;
      terminal.info = info;
      sub->SetTerminalLocked(std::move(terminal), info, from_tile);
    } else if (info.state == JobState::kQueued) {
      JobEvent queued;
      queued.kind = JobEvent::Kind::kQueued;
      queued.job_id = info.id;
      queued.queue_position = info.queue_position;
      sub->pending.push_back(std::move(queued));
    } else {
      JobEvent progress;
      progress.kind = JobEvent::Kind::kProgress;
      progress.job_id = info.id;
      progress.stage = info.stage;
      progress.fraction = info.stage_fraction;
      progress.detail = info.stage_detail;
      sub->pending.push_back(std::move(progress));
    }
    if (shutting_down_ && !IsTerminal(info.state)) sub->shutdown = true;
  }
  if (!IsTerminal(info.state)) {
    // Readers that went away are dropped here too, not only when the job
    // next publishes: a quiet job watched many times stays bounded.
    auto& subs = job->subs;
    subs.erase(std::remove_if(subs.begin(), subs.end(),
                              [](const std::shared_ptr<Subscriber>& s) {
                                absl::MutexLock lock(&s->mu);
                                return s->closed;
                              }),
               subs.end());
    subs.push_back(sub);
  }
  return std::unique_ptr<EventStream>(new JobEventStream(sub, info.output));
}

JobManager::Stats JobManagerImpl::GetStats() const {
  Stats stats;
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
  absl::MutexLock lock(&mu_);
  joined_ = true;
  for (auto& [id, job] : jobs_) {
    for (auto& sub : job->subs) {
      absl::MutexLock sub_lock(&sub->mu);
      sub->shutdown = true;
    }
    job->subs.clear();
  }
}

// ---------------------------------------------------------------------------
// Background threads.

void JobManagerImpl::JanitorLoop() {
  const absl::Duration period = std::clamp(
      options_.retention / 4, absl::Milliseconds(5), absl::Minutes(1));
  mu_.Lock();
  while (!shutting_down_) {
    mu_.AwaitWithTimeout(absl::Condition(&shutting_down_), period);
    if (shutting_down_) break;
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
    if (expired.empty()) continue;
    mu_.Unlock();
    for (const std::string& id : expired) {
      // The state file first: a directory without one is debris to recovery.
      RemoveQuietly(JobDir(id) + "/state");
      RemoveAllQuietly(JobDir(id));
    }
    mu_.Lock();
  }
  mu_.Unlock();
}

void JobManagerImpl::PipelineLoop() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &JobManagerImpl::HasWorkOrStop));
      if (shutting_down_) return;
      QueueKey key = *queue_.begin();
      queue_.erase(queue_.begin());
      job = jobs_.at(key.id);
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
    }
    RunJob(job);
  }
}

void JobManagerImpl::RunJob(const std::shared_ptr<Job>& job) {
  JobRecord rec;
  CancelTokenPtr token;
  {
    absl::MutexLock lock(&mu_);
    rec = job->rec;
    token = job->run_token;
  }
  absl::Status s = RunStages(job, rec, token);
  absl::MutexLock lock(&mu_);
  JobInfo& info = job->rec.info;
  if (s.ok()) {
    FinishJobLocked(job.get(), JobState::kCompleted, absl::OkStatus());
  } else if (job->user_cancelled) {
    FinishJobLocked(job.get(), JobState::kCancelled,
                    absl::CancelledError("cancelled by the client"));
  } else if (shutting_down_ && (absl::IsCancelled(s) || absl::IsAborted(s))) {
    // Checkpoint: the next start runs it again without counting this run.
    info.state = JobState::kQueued;
    info.attempts = std::max(0, info.attempts - 1);
    info.stage_fraction = 0;
    info.stage_detail = "interrupted by shutdown; re-queued";
    CloseStageLocked(job.get(), /*completed=*/false);
    info.timings.clear();
    CleanupJobFiles(*job, /*delete_uploads=*/false);
    (void)PersistLocked(job.get());
  } else {
    FinishJobLocked(job.get(), JobState::kFailed, s);
  }
}

absl::StatusOr<Reservation> JobManagerImpl::AcquireStage(
    const JobRecord& rec, Lane lane, uint64_t ram, uint64_t vram,
    absl::string_view what, const CancelToken* token) {
  ResourceRequest req;
  req.lane = lane;
  req.ram_bytes = ram;
  req.vram_bytes = lane == Lane::kGpu ? vram : 0;
  req.label = absl::StrCat("job ", rec.info.id.substr(0, 8), ": ", what);
  return scheduler_->Acquire(req, rec.info.spec.priority, rec.sequence, token);
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

void JobManagerImpl::StartStage(Job* job, Stage stage) {
  absl::MutexLock lock(&mu_);
  OpenStageLocked(job, stage);
  job->rec.info.stage = stage;
  (void)PersistLocked(job);
  ProgressLocked(job, stage, 0.0, absl::StrCat(StageName(stage), " started"),
                 nullptr, /*force=*/true);
}

void JobManagerImpl::AddTiming(Job* job, Stage stage, absl::Time start) {
  absl::MutexLock lock(&mu_);
  if (job->stage_open && job->open_stage == stage) {
    CloseStageLocked(job, /*completed=*/true);
  }
  job->rec.info.timings.push_back(
      StageTiming{stage, absl::ToDoubleSeconds(absl::Now() - start)});
}

absl::StatusOr<std::string> JobManagerImpl::InputPathFor(const JobRecord& rec,
                                                         ImageRole role) const {
  const ImageSource& src =
      role == ImageRole::kFixed ? rec.info.spec.fixed : rec.info.spec.moving;
  if (!src.path.empty()) {
    // Re-resolved: the tree under input_root may have changed since submission.
    return ResolveInputPath(RoleName(role), src.path);
  }
  return role == ImageRole::kFixed ? rec.fixed_input : rec.moving_input;
}

absl::Status JobManagerImpl::CopyTransformFiles(
    const std::string& work_dir, const std::string& transform_dir,
    const std::vector<std::string>& files, std::vector<std::string>* copied) {
  std::error_code ec;
  fs::remove_all(transform_dir, ec);
  fs::create_directories(transform_dir, ec);
  if (ec) return WriteErrnoToStatus(ec.value(), "creating", transform_dir);
  for (const std::string& file : files) {
    REGSERVE_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(file));
    // Chained files name their predecessor by absolute path: point them at
    // the copies so that the transform directory stands alone.
    text = absl::StrReplaceAll(text, {{work_dir + "/", transform_dir + "/"}});
    const std::string dest =
        absl::StrCat(transform_dir, "/", fs::path(file).filename().string());
    REGSERVE_RETURN_IF_ERROR(fs_->WriteFileAtomic(dest, text));
    copied->push_back(dest);
  }
  return absl::OkStatus();
}

std::shared_ptr<WarperSlot> JobManagerImpl::CudaWarperSlot(int ordinal) {
  absl::MutexLock lock(&warper_mu_);
  std::shared_ptr<WarperSlot>& slot = cuda_warpers_[ordinal];
  if (!slot) slot = std::make_shared<WarperSlot>();
  return slot;
}

absl::Status JobManagerImpl::RunStages(const std::shared_ptr<Job>& job,
                                       const JobRecord& rec,
                                       const CancelTokenPtr& token) {
  const std::string& id = rec.info.id;
  const Plan& plan = rec.info.plan;
  const JobSpec& spec = rec.info.spec;
  const std::string dir = JobDir(id);
  if (!rec.info.has_plan || !rec.have_input_specs) {
    return absl::InternalError("job has no plan");
  }
  const int threads = options_.elastix_threads;

  // --- decode ---------------------------------------------------------------
  if (env_.before_stage) env_.before_stage(id, Stage::kDecode);
  REGSERVE_RETURN_IF_ERROR(token->Check());
  Image fixed_gray, moving_gray, moving;
  {
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r, AcquireStage(rec, Lane::kCpu, plan.decode.ram_bytes, 0,
                                    "decode", token.get()));
    StartStage(job.get(), Stage::kDecode);
    const absl::Time start = absl::Now();
    ReadOptions ro;
    ro.max_bytes = plan.decode.ram_bytes;
    ro.max_pixels = options_.max_pixels;
    ro.threads = threads;
    for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
      const bool is_fixed = role == ImageRole::kFixed;
      Progress(job.get(), Stage::kDecode, is_fixed ? 0.0 : 0.5,
               absl::StrCat("reading the ", RoleName(role), " image"));
      REGSERVE_ASSIGN_OR_RETURN(std::string path, InputPathFor(rec, role));
      // The moving image feeds the CUDA warp: pinned memory uploads faster.
      ro.allocator = nullptr;
      if (!is_fixed && plan.warp_device == WarpDevice::kCuda) {
        ro.allocator = PinnedHostAllocator();
      }
      absl::StatusOr<Image> image = ReadImageFile(path, ro);
      if (!image.ok()) {
        return absl::Status(image.status().code(),
                            absl::StrCat("decoding the ", RoleName(role),
                                         " image: ", image.status().message()));
      }
      const ImageSpec& want = is_fixed ? rec.fixed_spec : rec.moving_spec;
      if (!SameSpec(image->spec(), want)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the ", RoleName(role), " image changed since submission (now ",
            image->spec().DebugString(), ", was ", want.DebugString(), ")"));
      }
      REGSERVE_RETURN_IF_ERROR(token->Check());
      absl::StatusOr<Image> gray =
          MakeGrayscaleCopy(*image,
                            is_fixed ? plan.registration_fixed_width
                                     : plan.registration_moving_width,
                            is_fixed ? plan.registration_fixed_height
                                     : plan.registration_moving_height,
                            threads);
      if (!gray.ok()) {
        return absl::Status(
            gray.status().code(),
            absl::StrCat("making the ", RoleName(role),
                         " registration copy: ", gray.status().message()));
      }
      (is_fixed ? fixed_gray : moving_gray) = *std::move(gray);
      if (!is_fixed)
        moving = *std::move(image);  // the fixed image is freed here
    }
    Progress(job.get(), Stage::kDecode, 1.0, "decoded");
    AddTiming(job.get(), Stage::kDecode, start);
  }

  // --- registration ---------------------------------------------------------
  if (env_.before_stage) env_.before_stage(id, Stage::kRegistration);
  REGSERVE_RETURN_IF_ERROR(token->Check());
  RegistrationResult reg;
  {
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        AcquireStage(rec, Lane::kCpu, plan.registration.ram_bytes, 0,
                     "registration", token.get()));
    StartStage(job.get(), Stage::kRegistration);
    const absl::Time start = absl::Now();
    RegistrationRequest req;
    req.work_dir = dir + "/registration";
    RemoveAllQuietly(req.work_dir);
    req.fixed = &fixed_gray;
    req.moving = &moving_gray;
    req.fixed_full_width = rec.fixed_spec.width;
    req.fixed_full_height = rec.fixed_spec.height;
    req.moving_full_width = rec.moving_spec.width;
    req.moving_full_height = rec.moving_spec.height;
    req.transform = spec.options.transform;
    req.custom_parameters = spec.custom_parameters;
    req.threads = threads;
    req.timeout = options_.registration_timeout;
    req.cancel = token.get();
    Job* raw = job.get();
    req.on_progress = [this, raw](const RegistrationProgress& p) {
      absl::MutexLock lock(&mu_);
      ProgressLocked(raw, Stage::kRegistration, p.fraction, p.message, &p,
                     /*force=*/false);
    };
    absl::StatusOr<RegistrationResult> result =
        env_.register_fn(req, options_.elastix);
    if (!result.ok()) {
      return absl::Status(
          result.status().code(),
          absl::StrCat("registration: ", result.status().message()));
    }
    reg = *std::move(result);
    fixed_gray = Image();
    moving_gray = Image();
    std::vector<std::string> copied;
    const std::string transform_dir = dir + "/transform";
    REGSERVE_RETURN_IF_ERROR(CopyTransformFiles(
        req.work_dir, transform_dir, reg.transform_parameter_files, &copied));
    RemoveAllQuietly(req.work_dir);
    {
      absl::MutexLock lock(&mu_);
      JobInfo& info = job->rec.info;
      info.registration_metric = reg.final_metric;
      info.transform_dir = transform_dir;
      info.transform_files = copied;
      if (options_.observer != nullptr) {
        options_.observer->OnRegistered(
            plan.registration_fixed_width * plan.registration_fixed_height +
                plan.registration_moving_width *
                    plan.registration_moving_height,
            reg.iterations, reg.final_metric);
      }
    }
    Progress(job.get(), Stage::kRegistration, 1.0,
             absl::StrFormat("registered: final metric %.6g, %d iterations",
                             reg.final_metric, reg.iterations));
    AddTiming(job.get(), Stage::kRegistration, start);
  }

  // --- warp -----------------------------------------------------------------
  if (env_.before_stage) env_.before_stage(id, Stage::kWarp);
  REGSERVE_RETURN_IF_ERROR(token->Check());
  const int64_t out_w = plan.output_width;
  const int64_t out_h = plan.output_height;
  WarpDevice device = plan.warp_device;
  REGSERVE_ASSIGN_OR_RETURN(
      Reservation r,
      AcquireStage(rec, device == WarpDevice::kCuda ? Lane::kGpu : Lane::kCpu,
                   plan.warp.ram_bytes, plan.warp.vram_bytes, "warp",
                   token.get()));
  StartStage(job.get(), Stage::kWarp);
  const absl::Time start = absl::Now();
  std::unique_ptr<Warper> own_warper;
  std::shared_ptr<WarperSlot> slot;
  std::unique_ptr<absl::MutexLock> slot_lock;
  Warper* warper = nullptr;
  if (device == WarpDevice::kCuda) {
    const auto& ordinals = scheduler_->config().gpu_ordinals;
    const int index = std::max(0, r.gpu());
    const int ordinal =
        index < static_cast<int>(ordinals.size()) ? ordinals[index] : index;
    slot = CudaWarperSlot(ordinal);
    slot_lock = std::make_unique<absl::MutexLock>(&slot->mu);
    absl::Status why;
    if (!slot->warper) {
      if (absl::Now() - slot->failed_at < kWarperRetryAfter) {
        why = slot->failure;
      } else {
        absl::StatusOr<std::unique_ptr<Warper>> created =
            env_.create_warper(WarpDevice::kCuda, ordinal);
        if (created.ok()) {
          slot->warper = *std::move(created);
          slot->failure = absl::OkStatus();
        } else {
          why = created.status();
          slot->failure = why;
          slot->failed_at = absl::Now();
        }
      }
    }
    if (slot->warper) {
      warper = slot->warper.get();
    } else {
      // CPU fallback, with the CPU warp's own memory.
      slot_lock.reset();
      r.Release();
      const std::string reason =
          absl::StrCat("CUDA warper for GPU ", ordinal, " unavailable (",
                       why.message(), "); warping on the CPU instead");
      {
        absl::MutexLock lock(&mu_);
        job->rec.info.plan.reasons.push_back(reason);
      }
      Progress(job.get(), Stage::kWarp, 0.0, reason);
      device = WarpDevice::kCpu;
      const WarpMemoryEstimate est = EstimateWarpMemory(
          moving.spec(), out_w, out_h, reg.field.width, reg.field.height,
          plan.tile_size, WarpDevice::kCpu);
      REGSERVE_ASSIGN_OR_RETURN(
          r, AcquireStage(rec, Lane::kCpu,
                          moving.size_bytes() + est.host_bytes +
                              reg.field.bytes() +
                              TiffWriterPartialBytes(plan.tile_size, out_w,
                                                     options_.stream_tile_size,
                                                     moving.spec()),
                          0, "warp (cpu fallback)", token.get()));
    }
  }
  if (warper == nullptr) {
    REGSERVE_ASSIGN_OR_RETURN(own_warper,
                              env_.create_warper(WarpDevice::kCpu, 0));
    warper = own_warper.get();
  }
  WarpOptions wo;
  wo.interpolation = spec.options.interpolation;
  wo.fill_value = spec.fill_value;
  wo.tile_size = plan.tile_size;
  if (!spec.options.output_full_resolution) {
    // The registration copy's pixel centres, per axis (its width and height
    // are rounded separately, so the two factors differ slightly).
    const double fx = static_cast<double>(rec.fixed_spec.width) /
                      static_cast<double>(plan.registration_fixed_width);
    const double fy = static_cast<double>(rec.fixed_spec.height) /
                      static_cast<double>(plan.registration_fixed_height);
    wo.output_origin_x = (fx - 1.0) / 2.0;
    wo.output_origin_y = (fy - 1.0) / 2.0;
    wo.output_spacing_x = fx;
    wo.output_spacing_y = fy;
  }
  wo.cpu_threads = threads;
  wo.cancel = token.get();
  ImageSpec out_spec;
  out_spec.width = out_w;
  out_spec.height = out_h;
  out_spec.channels = moving.channels();
  out_spec.type = moving.type();
  const std::string partial = dir + "/result.partial.tif";
  const std::string final_path = dir + "/result.tif";
  RemoveQuietly(partial);
  RemoveQuietly(final_path);
  REGSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<TiledTiffWriter> writer,
      OpenTiledTiffWriter(partial, out_spec,
                          static_cast<int>(options_.stream_tile_size)));
  const double total = static_cast<double>(out_w) * static_cast<double>(out_h);
  double done = 0;
  int64_t tiles = 0;
  absl::StatusOr<WarpStats> stats = warper->Warp(
      moving, reg.field, out_w, out_h, wo,
      [&](const TileRect& rect, const Image& tile) -> absl::Status {
        REGSERVE_RETURN_IF_ERROR(writer->WriteRegion(rect.x, rect.y, tile));
        done += static_cast<double>(rect.w) * static_cast<double>(rect.h);
        ++tiles;
        absl::MutexLock lock(&mu_);
        ProgressLocked(job.get(), Stage::kWarp, done / total,
                       absl::StrFormat("warped %d tiles (%.0f%%)", tiles,
                                       100.0 * done / total),
                       nullptr, /*force=*/false);
        return absl::OkStatus();
      });
  if (slot != nullptr && r.gpu() >= 0) {
    // Before the reservation goes: what the warper keeps cached on its GPU
    // is ours, not another process's, for the next admission there.
    scheduler_->SetRetainedVram(r.gpu(), warper->retained_device_bytes());
  }
  slot_lock.reset();
  if (!stats.ok()) {
    writer.reset();
    RemoveQuietly(partial);
    return absl::Status(stats.status().code(),
                        absl::StrCat("warp: ", stats.status().message()));
  }
  absl::Status closed = writer->Close();
  writer.reset();
  if (closed.ok()) {
    absl::Status synced = fs_->SyncFile(partial);
    if (!synced.ok()) closed = synced;
  }
  if (closed.ok() && rename(partial.c_str(), final_path.c_str()) != 0) {
    closed = WriteErrnoToStatus(errno, "renaming", partial);
  }
  // The rename itself, before the state says completed.
  if (closed.ok()) closed = fs_->SyncFile(final_path);
  if (!closed.ok()) {
    RemoveQuietly(partial);
    return absl::Status(closed.code(),
                        absl::StrCat("writing the result: ", closed.message()));
  }
  r.Release();
  moving = Image();
  {
    absl::MutexLock lock(&mu_);
    JobInfo& info = job->rec.info;
    info.output = out_spec;
    info.result_path = final_path;
    info.tiles = TileGrid(out_w, out_h, options_.stream_tile_size);
    if (options_.observer != nullptr)
      options_.observer->OnWarped(out_w * out_h);
    ProgressLocked(job.get(), Stage::kWarp, 1.0,
                   absl::StrCat("warped on ", stats->device, " in ",
                                absl::StrFormat("%.2f", stats->seconds), " s"),
                   nullptr, /*force=*/true);
  }
  AddTiming(job.get(), Stage::kWarp, start);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobManager>> CreateJobManagerWithEnv(
    const JobManager::Options& options, ResourceScheduler* scheduler,
    HardwareProbe* probe, JobManagerEnv env) {
  auto manager = std::make_unique<JobManagerImpl>(options, scheduler, probe,
                                                  std::move(env));
  REGSERVE_RETURN_IF_ERROR(manager->Init());
  return std::unique_ptr<JobManager>(std::move(manager));
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    const Options& options, ResourceScheduler* scheduler,
    HardwareProbe* probe) {
  return CreateJobManagerWithEnv(options, scheduler, probe, JobManagerEnv{});
}

}  // namespace regserve
