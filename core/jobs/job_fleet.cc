// Copyright regserve authors.
//
// JobManager in fleet mode (docs/fleet.md): the job table in PostgreSQL
// (core/fleet/job_table.h) is the queue and the one truth about each job
// that left its upload; data_dir is a volume every replica mounts.
//
// - Submit: the job's files go to the shared data_dir as on one host, then
//   its row (spec, record, largest reservations) to the table.
// - Pipeline threads claim jobs that fit this replica's budgets (at most
//   fleet_jobs_per_replica at once), plan them again for this hardware and
//   run them under a lease. The lease thread renews every lease, sends the
//   job's record when it changed (readers elsewhere see progress), passes
//   on a Cancel asked through another replica, and stops a run whose lease
//   was lost (or could not be renewed in time: the local deadline is kept
//   shorter than the lease, so the run stops before the table gives the
//   job to another replica).
// - A run's outcome is committed fenced on its lease before anything is
//   stored or told; a replica that lost the lease leaves the job's files
//   and readers to the new holder.
// - Queries and Watch of a job not running here read its row.
//
// Locking: as job_manager.cc; no call on the job table is made with mu_
// held.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/common/format.h"
#include "core/common/status_macros.h"
#include "core/jobs/fleet_event_stream.h"
#include "core/jobs/job_manager_impl.h"
#include "core/jobs/job_store.h"
#include "core/jobs/result_reader.h"
#include "core/registration/process.h"

namespace regserve {
namespace jobs_internal {
namespace {

// Each lease is renewed this often (and the record sent with it), so a
// Cancel through another replica reaches the run within about this long.
absl::Duration RenewInterval(absl::Duration lease) {
  return std::min(lease / 4, absl::Milliseconds(500));
}
constexpr absl::Duration kHeartbeatInterval = absl::Seconds(2);
// Replicas not heard from for this long are left out of FleetReplicas.
constexpr absl::Duration kReplicaMaxAge = absl::Seconds(10);

template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// A call on the table, once more when the first found its connection dead
// (the database restarted since the last call: the table reconnects on the
// next call). For calls that are safe to repeat.
template <typename Fn>
auto Retried(Fn fn) {
  auto result = fn();
  const absl::StatusCode code = StatusOf(result).code();
  if (code == absl::StatusCode::kUnavailable ||
      code == absl::StatusCode::kInternal) {
    result = fn();
  }
  return result;
}

StageNeeds NeedsOf(const Plan& plan) {
  StageNeeds needs;
  for (const StageMemory* m :
       {&plan.decode, &plan.initial_alignment, &plan.registration,
        &plan.quality, &plan.refine, &plan.shift_correction, &plan.warp}) {
    needs.ram_bytes = std::max(needs.ram_bytes, m->ram_bytes);
    needs.vram_bytes = std::max(needs.vram_bytes, m->vram_bytes);
  }
  return needs;
}

JobRowState RowStateOf(JobState state) {
  switch (state) {
    case JobState::kCompleted:
      return JobRowState::kSucceeded;
    case JobState::kCancelled:
      return JobRowState::kCancelled;
    default:
      return JobRowState::kFailed;
  }
}

// The replica's own line in the replicas table: key=value lines.
std::string EncodeReplica(const JobManager::FleetReplica& r) {
  std::vector<std::string> vram;
  for (uint64_t v : r.vram_budget_bytes) vram.push_back(absl::StrCat(v));
  std::vector<std::string> gpus;
  for (std::string name : r.gpu_names) {
    absl::StrReplaceAll({{",", " "}, {"\n", " "}}, &name);
    gpus.push_back(std::move(name));
  }
  return absl::StrCat("address=", r.address, "\nram=", r.ram_budget_bytes,
                      "\nvram=", absl::StrJoin(vram, ","),
                      "\ngpus=", absl::StrJoin(gpus, ","),
                      "\nrunning=", absl::StrJoin(r.running_ids, ","), "\n");
}

JobManager::FleetReplica DecodeReplica(const ReplicaRow& row) {
  JobManager::FleetReplica r;
  r.name = row.name;
  r.heartbeat = row.heartbeat_at;
  for (absl::string_view line : absl::StrSplit(row.info, '\n')) {
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) continue;
    const absl::string_view key = line.substr(0, eq);
    const absl::string_view value = line.substr(eq + 1);
    if (key == "address") r.address = std::string(value);
    if (key == "ram") (void)absl::SimpleAtoi(value, &r.ram_budget_bytes);
    for (absl::string_view part : absl::StrSplit(value, ',')) {
      if (part.empty()) continue;
      uint64_t v = 0;
      if (key == "vram" && absl::SimpleAtoi(part, &v)) {
        r.vram_budget_bytes.push_back(v);
      }
      if (key == "running") r.running_ids.emplace_back(part);
      if (key == "gpus") r.gpu_names.emplace_back(part);
    }
  }
  return r;
}

}  // namespace

absl::Status JobManagerImpl::OpenFleet() {
  if (options_.replica_name.empty()) {
    return absl::InvalidArgumentError("fleet mode needs a replica name");
  }
  JobTable::Options table_options;
  table_options.max_attempts = options_.max_attempts;
  for (std::unique_ptr<JobTable>* table : {&claims_, &leases_, &queries_}) {
    absl::StatusOr<std::unique_ptr<JobTable>> opened =
        JobTable::Open(options_.fleet_db, table_options);
    // Not InvalidArgument even for a malformed string: the daemon cannot
    // start (exit 1), whatever is wrong with the database.
    if (!opened.ok()) {
      claims_.reset();
      return absl::FailedPreconditionError(absl::StrCat(
          "fleet database (fleet_db): ", opened.status().message()));
    }
    *table = *std::move(opened);
  }
  return absl::OkStatus();
}

ReplicaBudgets JobManagerImpl::OwnBudgets() const {
  ReplicaBudgets b;
  b.ram_bytes = scheduler_->config().ram_budget_bytes;
  for (uint64_t v : scheduler_->config().vram_budget_bytes) {
    b.vram_bytes = std::max(b.vram_bytes, v);
  }
  return b;
}

absl::StatusOr<Plan> JobManagerImpl::PlanForFleet(
    const JobRecord& rec, const absl::Status& here) const {
  absl::StatusOr<std::vector<FleetReplica>> replicas = FleetReplicas();
  if (!replicas.ok()) return here;
  std::vector<std::string> others;
  for (const FleetReplica& r : *replicas) {
    if (r.name == options_.replica_name) continue;
    Budgets b;
    b.ram_bytes = r.ram_budget_bytes;
    for (uint64_t v : r.vram_budget_bytes) {
      b.vram_bytes = std::max(b.vram_bytes, v);
    }
    b.has_gpu = b.vram_bytes > 0;
    absl::StatusOr<Plan> plan =
        MakePlan(rec.fixed_spec, rec.moving_spec, PlanningOptions(rec), b,
                 options_.stream_tile_size);
    if (plan.ok()) {
      const StageNeeds needs = NeedsOf(*plan);
      if (needs.ram_bytes <= b.ram_bytes && needs.vram_bytes <= b.vram_bytes) {
        plan->reasons.push_back(absl::StrCat(
            "planned for replica ", r.name, " (RAM budget ",
            FormatBytes(b.ram_bytes), "): it does not fit ",
            options_.replica_name, "; the replica that runs it plans again"));
        return plan;
      }
    }
    others.push_back(absl::StrCat(r.name, " (RAM budget ",
                                  FormatBytes(b.ram_bytes), ", VRAM ",
                                  FormatBytes(b.vram_bytes), ")"));
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      here.message(), "; no replica of the fleet can run it",
      others.empty() ? "" : absl::StrCat(": ", absl::StrJoin(others, ", "))));
}

absl::Status JobManagerImpl::CheckFleetCapacity(
    const std::string& principal) const {
  // The fleet's queue and the principal's jobs across the fleet are what
  // fill up (the local check counts the uploads here on top).
  absl::StatusOr<int64_t> depth = QueueDepth();
  if (depth.ok() && *depth >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full: ", *depth, " jobs queued in the fleet"));
  }
  const int limit = options_.max_jobs_per_principal;
  if (limit <= 0) return absl::OkStatus();
  absl::StatusOr<int64_t> mine =
      Retried([&] { return queries_->Unfinished(principal); });
  if (mine.ok() && *mine >= limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "principal ", principal.empty() ? "(anonymous)" : principal, " has ",
        *mine, " unfinished jobs in the fleet (limit ", limit,
        "): wait for one to finish or cancel one"));
  }
  return absl::OkStatus();
}

absl::Status JobManagerImpl::FleetEnqueue(const JobRecord& rec) {
  NewJob job;
  job.id = rec.info.id;
  job.principal = rec.info.principal;
  job.priority = rec.info.spec.priority;
  job.spec = EncodeJobSpec(rec);
  job.record = EncodeJobState(rec);
  if (rec.info.has_plan) job.needs = NeedsOf(rec.info.plan);
  absl::StatusOr<int64_t> sequence = queries_->Enqueue(job);
  if (absl::IsUnavailable(sequence.status()) ||
      absl::IsInternal(sequence.status())) {
    // Once more; ALREADY_EXISTS then means the first one did reach it.
    sequence = queries_->Enqueue(job);
    if (absl::IsAlreadyExists(sequence.status())) sequence = 0;
  }
  if (!sequence.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the fleet's job table did not take the job: ",
                     sequence.status().message(), "; submit again"));
  }
  absl::MutexLock lock(&mu_);
  fleet_kick_ = true;
  return absl::OkStatus();
}

absl::StatusOr<JobRecord> JobManagerImpl::FleetRecord(
    const std::string& id, const std::string& principal,
    int64_t* version) const {
  if (!IsValidJobId(id)) return NoSuchJob(id);
  absl::StatusOr<JobRow> row = Retried([&] { return queries_->Get(id); });
  if (absl::IsNotFound(row.status())) return NoSuchJob(id);
  if (!row.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the fleet's job table cannot be read: ", row.status().message()));
  }
  if (row->principal != principal) return NoSuchJob(id);
  JobRecord rec;
  absl::Status s = DecodeJobSpec(row->spec, &rec);
  if (s.ok()) s = DecodeJobState(row->record, &rec);
  if (!s.ok()) {
    return absl::DataLossError(absl::StrCat(
        "job ", id, "'s record in the fleet's table: ", s.message()));
  }
  RebaseRecord(DirOf(id), &rec);
  // The row's state is the truth (a sweep re-queues or fails a job whose
  // holder died, without its record).
  JobInfo& info = rec.info;
  switch (row->state) {
    case JobRowState::kQueued:
      info.state = JobState::kQueued;
      break;
    case JobRowState::kRunning:
      info.state = JobState::kRunning;
      break;
    default: {
      const JobState final =
          row->state == JobRowState::kSucceeded   ? JobState::kCompleted
          : row->state == JobRowState::kCancelled ? JobState::kCancelled
                                                  : JobState::kFailed;
      if (info.state != final) {
        info.state = final;
        info.failure = final == JobState::kCancelled
                           ? absl::CancelledError("cancelled by the client")
                           : absl::AbortedError(absl::StrCat(
                                 row->error.empty() ? "failed" : row->error));
        info.stage_detail = std::string(info.failure.message());
        if (info.finished == absl::InfinitePast()) {
          info.finished = row->finished_at;
        }
      }
    }
  }
  if (row->state == JobRowState::kQueued) {
    info.queue_position = static_cast<int>(
        Retried([&] { return queries_->QueuePosition(id); }).value_or(0));
  }
  if (version != nullptr) {
    *version = static_cast<int64_t>(absl::HashOf(row->record_version,
                                                 static_cast<int>(row->state),
                                                 info.queue_position));
  }
  return rec;
}

absl::StatusOr<JobInfo> JobManagerImpl::FleetGetJob(
    const std::string& id, const std::string& principal) const {
  REGSERVE_ASSIGN_OR_RETURN(JobRecord rec, FleetRecord(id, principal, nullptr));
  return std::move(rec.info);
}

absl::StatusOr<JobManager::JobPage> JobManagerImpl::FleetListJobPage(
    const std::string& principal, size_t limit, uint64_t before) const {
  JobListFilter filter;
  filter.principal = principal;
  filter.newest_first = true;
  filter.limit = static_cast<int>(limit) + 1;
  filter.before_sequence =
      before == UINT64_MAX ? 0 : static_cast<int64_t>(before);
  absl::StatusOr<std::vector<JobRow>> rows =
      Retried([&] { return queries_->List(filter); });
  if (!rows.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the fleet's job table cannot be read: ", rows.status().message()));
  }
  JobPage page;
  for (size_t i = 0; i < rows->size() && i < limit; ++i) {
    absl::StatusOr<JobInfo> info = FleetGetJob((*rows)[i].id, principal);
    if (info.ok()) page.jobs.push_back(*std::move(info));
  }
  if (rows->size() > limit) {
    page.next_page_token = absl::StrCat("s", (*rows)[limit - 1].sequence);
  }
  return page;
}

absl::Status JobManagerImpl::FleetCancel(const std::string& id,
                                         const std::string& principal) {
  REGSERVE_ASSIGN_OR_RETURN(JobInfo info, FleetGetJob(id, principal));
  if (IsTerminal(info.state)) return absl::OkStatus();
  // Running here: stop it now, not at the next renewal.
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Job> job = FindLocked(id);
    if (job != nullptr && job->lease.has_value() &&
        job->rec.info.state == JobState::kRunning) {
      job->user_cancelled = true;
      if (job->run_token) job->run_token->Cancel("cancelled by the client");
    }
  }
  absl::StatusOr<JobRow> row = Retried([&] { return queries_->Cancel(id); });
  if (!row.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the fleet's job table did not take the cancel: ",
                     row.status().message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<EventStream>>
JobManagerImpl::FleetOpenEventStream(const std::string& id,
                                     const std::string& principal,
                                     int64_t from_tile) {
  std::unique_ptr<EventStream> local;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Job> job = FindLocked(id);
    if (job != nullptr && job->rec.info.principal == principal) {
      REGSERVE_ASSIGN_OR_RETURN(
          local, job->events.Open(job->rec.info, from_tile, shutting_down_));
    }
  }
  if (local == nullptr) {
    // Checks the job exists (NotFound) and from_tile against its plan.
    REGSERVE_ASSIGN_OR_RETURN(JobInfo info, FleetGetJob(id, principal));
    REGSERVE_RETURN_IF_ERROR(CheckFromTile(info, from_tile));
  }
  FleetEventStreamOptions o;
  o.from_tile = from_tile;
  o.poll_interval = options_.fleet_poll;
  o.poll = [this, id, principal]() -> absl::StatusOr<FleetSnapshot> {
    FleetSnapshot snap;
    REGSERVE_ASSIGN_OR_RETURN(JobRecord rec,
                              FleetRecord(id, principal, &snap.version));
    snap.info = std::move(rec.info);
    if (snap.info.state == JobState::kCompleted && snap.info.quality.computed) {
      snap.info.quality_map = ReadStoredQualityMap(DirOf(id)).value_or(nullptr);
    }
    return snap;
  };
  o.attach_local = [this, id,
                    principal](int64_t tile) -> std::unique_ptr<EventStream> {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Job> job = FindLocked(id);
    if (job == nullptr || !job->lease.has_value() || job->lease_lost ||
        job->rec.info.principal != principal) {
      return nullptr;
    }
    absl::StatusOr<std::unique_ptr<EventStream>> here =
        job->events.Open(job->rec.info, tile, shutting_down_);
    return here.ok() ? *std::move(here) : nullptr;
  };
  o.spool = std::make_shared<TileSpool>(DirOf(id).tile_spool());
  REGSERVE_ASSIGN_OR_RETURN(const std::string nonce, NewJobId());
  o.reader = absl::StrCat(options_.replica_name, ".", nonce.substr(0, 12));
  o.shutting_down = [this] {
    absl::MutexLock lock(&mu_);
    return shutting_down_;
  };
  return NewFleetEventStream(std::move(local), std::move(o));
}

// ---------------------------------------------------------------------------
// Claims and runs.

std::shared_ptr<Job> JobManagerImpl::ClaimFleetJob() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &JobManagerImpl::MayClaimOrStop));
      if (shutting_down_) return nullptr;
      ++fleet_active_;  // held while this thread claims
      fleet_kick_ = false;
    }
    absl::StatusOr<std::optional<Lease>> lease = claims_->Claim(
        options_.replica_name, OwnBudgets(), options_.fleet_lease);
    absl::StatusOr<std::shared_ptr<Job>> job =
        lease.ok() && lease->has_value()
            ? AdoptClaimed(**lease)
            : absl::StatusOr<std::shared_ptr<Job>>(nullptr);
    if (job.ok() && *job != nullptr) return *job;
    absl::MutexLock lock(&mu_);
    --fleet_active_;
    if (!lease.ok() || !job.ok()) {
      std::fprintf(
          stderr, "regserve: fleet claim: %s\n",
          (lease.ok() ? job.status() : lease.status()).ToString().c_str());
    }
    // Nothing to run (or the table is away): look again after a while,
    // or at once when a job is queued here.
    mu_.AwaitWithTimeout(absl::Condition(&fleet_kick_), options_.fleet_poll);
  }
}

namespace {

// Ends an elastix that an earlier run of the job left on this host (its
// replica died while the host did not). KillStaleChild checks that the
// pid's working directory is the run's own, so a pid recorded on another
// host is left alone.
void KillLocalOrphans(const JobDir& dir) {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir.registration(), ec), end;
       !ec && it != end; it.increment(ec)) {
    const std::string pid_file = it->path().string() + "/child.pid";
    if (const pid_t killed = KillStaleChild(pid_file)) {
      std::fprintf(stderr,
                   "regserve: killed registration process %d left by an "
                   "earlier run of job %s\n",
                   static_cast<int>(killed), dir.path().c_str());
    }
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<Job>> JobManagerImpl::AdoptClaimed(
    const Lease& lease) {
  const absl::Time claimed = absl::Now();
  KillLocalOrphans(DirOf(lease.job_id));
  absl::StatusOr<JobRow> row = claims_->Get(lease.job_id);
  JobRecord rec;
  absl::Status s = row.status();
  if (s.ok()) s = DecodeJobSpec(row->spec, &rec);
  if (s.ok()) s = DecodeJobState(row->record, &rec);
  if (s.ok()) RebaseRecord(DirOf(lease.job_id), &rec);
  // Planned again for this replica's hardware: the submitter's may differ.
  absl::StatusOr<Plan> plan =
      s.ok() && rec.have_input_specs ? PlanHere(rec) : absl::StatusOr<Plan>(s);
  if (!plan.ok()) {
    JobOutcome failed;
    failed.state = JobRowState::kFailed;
    failed.error = absl::StrCat("replica ", options_.replica_name,
                                " cannot run it: ", plan.status().message());
    (void)claims_->CompleteWithFence(lease, failed);
    return plan.status();
  }
  auto job = std::make_shared<Job>();
  job->rec = std::move(rec);
  SetPlan(job.get(), *std::move(plan));
  absl::MutexLock lock(&mu_);
  JobInfo& info = job->rec.info;
  info.state = JobState::kRunning;
  info.queue_position = 0;
  info.stage = Stage::kDecode;
  info.stage_fraction = 0;
  info.stage_detail = absl::StrCat("claimed by ", options_.replica_name,
                                   "; waiting for resources");
  info.timings.clear();
  ++info.attempts;
  job->run_token = std::make_shared<CancelToken>();
  job->lease = lease;
  job->lease_deadline = claimed + options_.fleet_lease * 0.8;
  jobs_[info.id] = job;
  (void)PersistLocked(job.get());
  return job;
}

absl::Status JobManagerImpl::CommitOutcome(const Lease& lease,
                                           const JobOutcome& outcome) {
  absl::Status s = leases_->CompleteWithFence(lease, outcome);
  if (!absl::IsUnavailable(s) && !absl::IsInternal(s)) return s;
  // The connection died, perhaps at the commit: once more, and ABORTED
  // then means the first one landed if the row ended as asked, under this
  // very lease.
  s = leases_->CompleteWithFence(lease, outcome);
  if (!absl::IsAborted(s)) return s;
  absl::StatusOr<JobRow> row = leases_->Get(lease.job_id);
  if (row.ok() && row->state == outcome.state &&
      row->lease_token == lease.token && row->lease_owner == lease.owner) {
    return absl::OkStatus();
  }
  return s;
}

absl::Status JobManagerImpl::RenewBeforeCommit(Job* job) {
  Lease lease;
  {
    absl::MutexLock lock(&mu_);
    if (job->lease_lost) {
      return absl::AbortedError(
          "the job's lease was lost: another replica "
          "runs it");
    }
    lease = *job->lease;
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<LeaseRenewal> renewal =
      leases_->RenewLease(lease, options_.fleet_lease);
  absl::MutexLock lock(&mu_);
  if (renewal.ok()) {
    job->lease_deadline = start + options_.fleet_lease * 0.8;
    return absl::OkStatus();
  }
  // The table is away, but within the local deadline it cannot have given
  // the job to anyone else.
  const bool unreachable = absl::IsUnavailable(renewal.status()) ||
                           absl::IsInternal(renewal.status());
  if (unreachable && absl::Now() < job->lease_deadline) {
    return absl::OkStatus();
  }
  job->lease_lost = true;
  return absl::AbortedError(absl::StrCat("the job's lease was lost (",
                                         renewal.status().message(),
                                         "): another replica runs it"));
}

void JobManagerImpl::EndFleetRun(const std::shared_ptr<Job>& job,
                                 const absl::Status& s) {
  Lease lease;
  bool lost = false, checkpoint = false;
  JobState state = JobState::kFailed;
  absl::Status why = s;
  JobRecord final_rec;
  {
    absl::MutexLock lock(&mu_);
    lease = *job->lease;
    lost = job->lease_lost;
    if (s.ok()) {
      state = JobState::kCompleted;
    } else if (job->user_cancelled) {
      state = JobState::kCancelled;
      why = absl::CancelledError("cancelled by the client");
    } else if (shutting_down_ && (absl::IsCancelled(s) || absl::IsAborted(s))) {
      checkpoint = true;
    }
    final_rec = job->rec;
    MarkTerminal(&final_rec.info, state, why);
  }
  absl::Status fenced = absl::FailedPreconditionError("the lease was lost");
  if (!lost && checkpoint) {
    fenced = leases_->Release(lease);
  } else if (!lost) {
    JobOutcome outcome;
    outcome.state = RowStateOf(state);
    outcome.error = std::string(why.message());
    outcome.record = EncodeJobState(final_rec);
    fenced = CommitOutcome(lease, outcome);
  }
  absl::MutexLock lock(&mu_);
  --fleet_active_;
  if (fenced.ok() && !checkpoint) {
    FinishJobLocked(job.get(), state, why);
  } else if (!fenced.ok()) {
    std::fprintf(stderr, "regserve: job %s: result not committed: %s\n",
                 lease.job_id.c_str(), fenced.ToString().c_str());
  }
  DetachLocked(job.get());
}

void JobManagerImpl::DetachLocked(Job* job) {
  job->events.Shutdown();
  auto it = jobs_.find(job->rec.info.id);
  if (it != jobs_.end() && it->second.get() == job) jobs_.erase(it);
}

namespace {

// The newest modification time of `dir` and what lies directly in it and
// in its inputs/ (an upload in progress touches its file there).
absl::Time NewestChange(const std::string& dir) {
  absl::Time newest = absl::InfinitePast();
  const auto consider = [&](const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0) {
      newest = std::max(newest, absl::TimeFromTimespec(st.st_mtim));
    }
  };
  consider(dir);
  for (const std::string& sub : {dir, dir + "/inputs"}) {
    std::error_code ec;
    for (std::filesystem::directory_iterator it(sub, ec), end; !ec && it != end;
         it.increment(ec)) {
      consider(it->path().string());
    }
  }
  return newest;
}

}  // namespace

void JobManagerImpl::SweepOrphanedDirs() {
  const absl::Time cutoff = absl::Now() - options_.fleet_orphan_age;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(jobs_dir_, ec), end;
       !ec && it != end; it.increment(ec)) {
    const std::string id = it->path().filename().string();
    if (!IsValidJobId(id) || Find(id) != nullptr) continue;
    if (NewestChange(it->path().string()) > cutoff) continue;
    // Only a row that is certainly absent: an unreachable table keeps all.
    if (!absl::IsNotFound(queries_->Get(id).status())) continue;
    std::fprintf(stderr,
                 "regserve: removing job directory %s: no job in the fleet's "
                 "table and untouched since %s\n",
                 id.c_str(),
                 absl::FormatTime(NewestChange(it->path().string())).c_str());
    DirOf(id).RemoveAll();
  }
}

// ---------------------------------------------------------------------------
// The lease thread.

void JobManagerImpl::LeaseLoop() {
  absl::Time next_heartbeat = absl::InfinitePast();
  mu_.Lock();
  while (!shutting_down_) {
    mu_.AwaitWithTimeout(absl::Condition(&shutting_down_),
                         RenewInterval(options_.fleet_lease));
    if (shutting_down_) break;
    mu_.Unlock();
    RenewLeases();
    if (absl::Now() >= next_heartbeat) {
      SendHeartbeat();
      next_heartbeat = absl::Now() + kHeartbeatInterval;
    }
    mu_.Lock();
  }
  mu_.Unlock();
  (void)leases_->Leave(options_.replica_name);
}

void JobManagerImpl::RenewLeases() {
  struct Held {
    std::shared_ptr<Job> job;
    Lease lease;
    std::optional<std::string> record;
    uint64_t version = 0;
  };
  std::vector<Held> held;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) {
      if (!job->lease.has_value() || job->lease_lost) continue;
      Held h{job, *job->lease, std::nullopt, job->version};
      if (job->version != job->pushed_version) {
        h.record = EncodeJobState(job->rec);
      }
      held.push_back(std::move(h));
    }
  }
  for (Held& h : held) {
    const absl::Time start = absl::Now();
    absl::StatusOr<LeaseRenewal> renewal = leases_->RenewLease(
        h.lease, options_.fleet_lease, h.record ? &*h.record : nullptr);
    absl::MutexLock lock(&mu_);
    Job* job = h.job.get();
    if (job->lease_lost) continue;
    const bool unreachable = absl::IsUnavailable(renewal.status()) ||
                             absl::IsInternal(renewal.status());
    if (renewal.ok()) {
      job->lease_deadline = start + options_.fleet_lease * 0.8;
      job->pushed_version = std::max(job->pushed_version, h.version);
      if (renewal->cancel_requested && !job->user_cancelled && job->run_token) {
        job->user_cancelled = true;
        job->run_token->Cancel("cancelled by the client");
      }
      continue;
    }
    if (unreachable && absl::Now() < job->lease_deadline) continue;
    job->lease_lost = true;
    if (job->run_token) {
      job->run_token->Cancel(absl::StrCat("the job's lease was lost: ",
                                          renewal.status().message()));
    }
  }
}

void JobManagerImpl::SendHeartbeat() {
  FleetReplica me;
  me.name = options_.replica_name;
  me.address = options_.replica_address;
  me.ram_budget_bytes = scheduler_->config().ram_budget_bytes;
  me.vram_budget_bytes = scheduler_->config().vram_budget_bytes;
  absl::StatusOr<HardwareSnapshot> hw =
      probe_ != nullptr ? probe_->Probe()
                        : absl::StatusOr<HardwareSnapshot>(HardwareSnapshot());
  for (int ordinal : scheduler_->config().gpu_ordinals) {
    std::string name = absl::StrCat("GPU ", ordinal);
    if (hw.ok()) {
      for (const GpuInfo& g : hw->gpus) {
        if (g.index == ordinal) name = g.name;
      }
    }
    me.gpu_names.push_back(std::move(name));
  }
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) {
      if (job->lease.has_value()) me.running_ids.push_back(id);
    }
  }
  const absl::Status s = leases_->Heartbeat(me.name, EncodeReplica(me));
  absl::MutexLock lock(&mu_);
  fleet_health_ =
      s.ok() ? absl::OkStatus()
             : absl::UnavailableError(absl::StrCat(
                   "the fleet's job table cannot be reached: ", s.message()));
}

absl::Status JobManagerImpl::FleetHealth() const {
  if (!fleet()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  return fleet_health_;
}

absl::StatusOr<std::vector<JobManager::FleetReplica>>
JobManagerImpl::FleetReplicas() const {
  std::vector<FleetReplica> out;
  if (!fleet()) return out;
  REGSERVE_ASSIGN_OR_RETURN(std::vector<ReplicaRow> rows, Retried([&] {
                              return queries_->Replicas(kReplicaMaxAge);
                            }));
  for (const ReplicaRow& row : rows) out.push_back(DecodeReplica(row));
  return out;
}

absl::StatusOr<int64_t> JobManagerImpl::QueueDepth() const {
  if (fleet()) return Retried([&] { return queries_->QueueDepth(); });
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

}  // namespace jobs_internal
}  // namespace regserve
