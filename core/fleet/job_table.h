// Copyright regserve authors.
//
// JobTable: fleet mode's durable job table and queue in PostgreSQL. Every
// replica of a fleet opens one on the same database; the rows are the one
// truth about which job exists, who runs it and how it ended. No gRPC here.
//
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<JobTable> table,
//                             JobTable::Open("postgresql://db/regserve"));
//   NewJob job;  // id, principal, priority, spec bytes, needs
//   REGSERVE_ASSIGN_OR_RETURN(int64_t sequence, table->Enqueue(job));
//   ...on each replica's pipeline thread:
//   REGSERVE_ASSIGN_OR_RETURN(std::optional<Lease> lease,
//       table->Claim("replica-a", budgets, absl::Seconds(30)));
//   ...run it, RenewLease(*lease, ...) well inside the lease, and at the end:
//   table->CompleteWithFence(*lease, {JobRowState::kSucceeded, ""});
//
// Queue order: priority descending, then sequence (submission order)
// ascending. Claim takes the first queued job whose figures fit the
// replica's budgets with `SELECT ... FOR UPDATE SKIP LOCKED`, so replicas
// claiming at once never wait on each other and never get the same job: the
// row lock is held until the claim commits, and a job locked by one claim is
// skipped by the others.
//
// Leases: a claim makes the job running under a lease (owner, expiry on the
// database's clock, token). The token is the job's fencing token: it grows
// by one at every claim, so a replica that lost its lease (it stopped
// renewing: crash, pause, network) holds a stale token and every write
// fenced on it is refused. A lease is lost the moment it expires, whether
// or not the sweep (ExpireLeases, also run by every Claim) has put the job
// back in the queue yet: RenewLease and CompleteWithFence refuse an expired
// lease (swept or not) with FAILED_PRECONDITION, and a lease taken over by
// a later claim, or a job that ended, with ABORTED. The sweep returns each
// expired job to the queue with attempts + 1, or fails it once attempts reaches
// Options::max_attempts (a job that kills every replica that runs it must
// not go round the fleet for ever).
//
// Times are the database's (now()), so the replicas' clocks do not matter.
//
// Schema: created and migrated by Open, by version (table schema_version;
// kMigrations in job_table.cc, applied in order, each once, under an
// advisory lock so replicas starting together migrate once). A database
// whose schema is newer than this build is refused.
//
// Errors: every libpqxx exception is caught here and returned as a Status:
// connection lost or refused -> UNAVAILABLE (the next call reconnects);
// duplicate job id -> ALREADY_EXISTS; other SQL errors -> INTERNAL with the
// SQLSTATE. Messages never contain the connection string (it may hold a
// password).
//
// Thread safety: all methods are thread-safe. One JobTable has one
// connection and runs one call at a time on it; a replica that wants calls
// in parallel opens more JobTables.
#ifndef REGSERVE_CORE_FLEET_JOB_TABLE_H_
#define REGSERVE_CORE_FLEET_JOB_TABLE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace regserve {

enum class JobRowState { kQueued, kRunning, kSucceeded, kFailed, kCancelled };

// "queued", "running", ...: the spelling in the table.
const char* JobRowStateName(JobRowState state);
bool IsTerminal(JobRowState state);

// What a job's largest stage reservations need on one replica: RAM, and
// VRAM on one GPU (0: the job has no GPU stage).
struct StageNeeds {
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;
};

// A replica's budgets: its RAM budget and its largest per-GPU VRAM budget
// (0: no GPU). A job is claimable when each of its needs fits.
struct ReplicaBudgets {
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;
};

struct NewJob {
  std::string id;         // unique; chosen by the submitting replica
  std::string principal;  // who submitted it
  int priority = 0;       // higher runs first
  std::string spec;       // opaque bytes (the serialised job spec)
  StageNeeds needs;
  std::string record;  // opaque bytes: the job's first record (JobRow)
};

// One row of the table.
struct JobRow {
  std::string id;
  std::string principal;
  int priority = 0;
  int64_t sequence = 0;  // submission order across the fleet
  JobRowState state = JobRowState::kQueued;
  std::string spec;
  StageNeeds needs;
  bool cancel_requested = false;
  std::string lease_owner;      // "" when never claimed
  absl::Time lease_expires_at;  // absl::InfinitePast() when never claimed
  int64_t lease_token = 0;      // 0 when never claimed
  int attempts = 0;             // leases lost (expired) so far
  std::string error;            // why it failed, for kFailed
  absl::Time created_at;
  absl::Time updated_at;
  absl::Time finished_at;  // absl::InfinitePast() until terminal
  // Opaque bytes kept by the job's holder (RenewLease, CompleteWithFence):
  // what any replica needs to answer for the job. record_version grows by
  // one at each new record, so a poller sees a change without comparing.
  std::string record;
  int64_t record_version = 0;
};

// A replica's latest heartbeat.
struct ReplicaRow {
  std::string name;
  std::string info;  // opaque bytes (what the replica says of itself)
  absl::Time heartbeat_at;
};

// A replica's hold on a running job. Copyable: it names the hold, it is
// not the hold (that is the row).
struct Lease {
  std::string job_id;
  std::string owner;
  int64_t token = 0;
  absl::Time expires_at;
};

struct LeaseRenewal {
  absl::Time expires_at;
  bool cancel_requested = false;  // someone asked for the job to stop
};

struct JobOutcome {
  JobRowState state = JobRowState::kSucceeded;  // a terminal state
  std::string error;                            // for kFailed
  std::optional<std::string> record;            // the final record, if set
};

struct JobListFilter {
  std::string principal;             // "" = everyone's
  std::optional<JobRowState> state;  // unset = any state
  int limit = 1000;
  int64_t before_sequence = 0;  // > 0: only jobs with a smaller sequence
  bool newest_first = false;    // by sequence descending
};

class JobTable {
 public:
  struct Options {
    // Lost leases after which a job is failed instead of queued again.
    int max_attempts = 3;
  };

  // Connects (libpq URL or key=value string) and creates or migrates the
  // schema. INVALID_ARGUMENT: the string does not parse; UNAVAILABLE: no
  // connection; FAILED_PRECONDITION: schema newer than this build.
  static absl::StatusOr<std::unique_ptr<JobTable>> Open(
      const std::string& connection_string, Options options);
  static absl::StatusOr<std::unique_ptr<JobTable>> Open(
      const std::string& connection_string) {
    return Open(connection_string, Options());
  }
  ~JobTable();

  // The schema version this build creates, and the database's.
  static int LatestSchemaVersion();
  absl::StatusOr<int> SchemaVersion();

  // Adds a queued job; returns its sequence. ALREADY_EXISTS for a used id.
  absl::StatusOr<int64_t> Enqueue(const NewJob& job);

  // Sweeps expired leases, then claims the first queued job (not cancelled)
  // that fits `budgets`, running under a lease of `duration` owned by
  // `owner`. nullopt when no queued job fits.
  absl::StatusOr<std::optional<Lease>> Claim(const std::string& owner,
                                             const ReplicaBudgets& budgets,
                                             absl::Duration duration);

  // Extends the lease to now + duration and, when `record` is not null,
  // stores it as the job's record. FAILED_PRECONDITION: it expired;
  // ABORTED: taken over or the job is no longer running; NOT_FOUND.
  absl::StatusOr<LeaseRenewal> RenewLease(const Lease& lease,
                                          absl::Duration duration,
                                          const std::string* record = nullptr);

  // Ends the job with `outcome` if `lease` still holds it (same errors as
  // RenewLease); the lease ends with it.
  absl::Status CompleteWithFence(const Lease& lease, const JobOutcome& outcome);

  // Gives the job back to the queue without counting an attempt (a
  // graceful shutdown); fenced like CompleteWithFence.
  absl::Status Release(const Lease& lease);

  // Returns every running job whose lease has expired to the queue (or
  // fails it, see Options::max_attempts); returns how many it swept.
  absl::StatusOr<int> ExpireLeases();

  // A queued job is cancelled at once; a running one gets cancel_requested
  // (its holder sees it at its next RenewLease and ends the job); a
  // finished one is left alone. Returns the row after the call.
  absl::StatusOr<JobRow> Cancel(const std::string& id);

  absl::StatusOr<JobRow> Get(const std::string& id);
  // Ordered by sequence.
  absl::StatusOr<std::vector<JobRow>> List(const JobListFilter& filter);
  // Queued jobs (the autoscaler's signal).
  absl::StatusOr<int64_t> QueueDepth();
  // `principal`'s jobs queued or running.
  absl::StatusOr<int64_t> Unfinished(const std::string& principal);
  // 1 for the queued job that runs next, ...; 0 when `id` is not queued.
  absl::StatusOr<int64_t> QueuePosition(const std::string& id);

  // Deletes up to `limit` jobs that finished more than `older_than` ago
  // and returns their ids (the caller removes their files). Replicas
  // deleting at once never get the same id.
  absl::StatusOr<std::vector<std::string>> DeleteFinished(
      absl::Duration older_than, int limit);

  // Replicas: each records what it is (`info`, opaque) every few seconds;
  // Replicas lists those heard from within `max_age`; Leave removes one
  // (a clean shutdown).
  absl::Status Heartbeat(const std::string& name, const std::string& info);
  absl::StatusOr<std::vector<ReplicaRow>> Replicas(absl::Duration max_age);
  absl::Status Leave(const std::string& name);

 private:
  JobTable(std::string connection_string, Options options);

  // The open connection, made again after one was lost.
  struct Db;  // the libpqxx connection (kept out of this header)

  absl::StatusOr<Db*> Connection() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The status of a fenced write that changed no row: why the lease no
  // longer holds the job.
  absl::Status FenceFailure(const Lease& lease)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Turns the exception being handled into a Status (and drops a broken
  // connection). Call only inside a catch block.
  absl::Status CurrentException(const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string connection_string_;
  const Options options_;
  absl::Mutex mu_;
  std::unique_ptr<Db> db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace regserve

#endif  // REGSERVE_CORE_FLEET_JOB_TABLE_H_
