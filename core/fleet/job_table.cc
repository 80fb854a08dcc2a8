// Copyright regserve authors.
#include "core/fleet/job_table.h"

#include <libpq-fe.h>

#include <algorithm>
#include <limits>
#include <pqxx/pqxx>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"

namespace regserve {

struct JobTable::Db {
  explicit Db(const std::string& connection_string) : conn(connection_string) {}
  pqxx::connection conn;
};

namespace {

// The schema, one step per version, applied in order and never edited once
// released (a change is a new step). docs/fleet.md describes the tables.
struct Migration {
  int version;
  const char* sql;
};
constexpr Migration kMigrations[] = {
    {1,
     "CREATE TABLE jobs ("
     "  id text PRIMARY KEY,"
     "  principal text NOT NULL,"
     "  priority integer NOT NULL,"
     "  sequence bigserial NOT NULL UNIQUE,"
     "  state text NOT NULL CHECK (state IN"
     "    ('queued', 'running', 'succeeded', 'failed', 'cancelled')),"
     "  spec bytea NOT NULL,"
     "  ram_bytes bigint NOT NULL CHECK (ram_bytes >= 0),"
     "  vram_bytes bigint NOT NULL CHECK (vram_bytes >= 0),"
     "  cancel_requested boolean NOT NULL DEFAULT false,"
     "  lease_owner text,"
     "  lease_expires_at timestamptz,"
     "  lease_token bigint NOT NULL DEFAULT 0,"
     "  attempts integer NOT NULL DEFAULT 0,"
     "  error text NOT NULL DEFAULT '',"
     "  created_at timestamptz NOT NULL DEFAULT now(),"
     "  updated_at timestamptz NOT NULL DEFAULT now(),"
     "  finished_at timestamptz);"
     // The claim's scan and the sweep's, each over the few rows it wants.
     "CREATE INDEX jobs_queue_order ON jobs (priority DESC, sequence)"
     "  WHERE state = 'queued';"
     "CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at)"
     "  WHERE state = 'running';"},
    // The job's record (JobInfo and paths, core/jobs/job_store.h's state
    // text) kept by its holder, so that any replica can answer for it; and
    // the replicas' heartbeats (GetServerInfo).
    {2,
     "ALTER TABLE jobs ADD COLUMN record bytea NOT NULL DEFAULT ''::bytea,"
     "  ADD COLUMN record_version bigint NOT NULL DEFAULT 0;"
     "CREATE TABLE replicas ("
     "  name text PRIMARY KEY,"
     "  info bytea NOT NULL,"
     "  heartbeat_at timestamptz NOT NULL DEFAULT now());"},
};

// Replicas starting together take this lock around the migration, so that
// one migrates and the others find the work done.
constexpr int64_t kMigrationLockKey = 0x72656773657276;  // "regserv"

// A column as microseconds since the epoch (NULL stays NULL).
#define REGSERVE_EPOCH_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

// Times as microseconds since the epoch (NULL stays NULL).
constexpr char kColumns[] =
    "id, principal, priority, sequence, state,"
    " encode(spec, 'hex') AS spec_hex, ram_bytes, vram_bytes,"
    " cancel_requested, coalesce(lease_owner, '') AS lease_owner,"
    " (extract(epoch FROM lease_expires_at) * 1e6)::bigint AS lease_expires_us,"
    " lease_token, attempts, error,"
    " (extract(epoch FROM created_at) * 1e6)::bigint AS created_us,"
    " (extract(epoch FROM updated_at) * 1e6)::bigint AS updated_us,"
    " (extract(epoch FROM finished_at) * 1e6)::bigint AS finished_us,"
    " encode(record, 'hex') AS record_hex, record_version";

// Bytes as the table's bigint (budgets beyond 8 EiB are "no limit").
int64_t AsBigint(uint64_t v) {
  return static_cast<int64_t>(
      std::min<uint64_t>(v, std::numeric_limits<int64_t>::max()));
}

absl::Time TimeField(const pqxx::field& f) {
  return f.is_null() ? absl::InfinitePast()
                     : absl::FromUnixMicros(f.as<int64_t>());
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

std::optional<JobRowState> ParseState(const std::string& s) {
  for (JobRowState st :
       {JobRowState::kQueued, JobRowState::kRunning, JobRowState::kSucceeded,
        JobRowState::kFailed, JobRowState::kCancelled}) {
    if (s == JobRowStateName(st)) return st;
  }
  return std::nullopt;
}

JobRow RowFrom(const pqxx::row& r) {
  JobRow row;
  row.id = r["id"].as<std::string>();
  row.principal = r["principal"].as<std::string>();
  row.priority = r["priority"].as<int>();
  row.sequence = r["sequence"].as<int64_t>();
  // The CHECK constraint keeps the spelling to these five.
  row.state =
      ParseState(r["state"].as<std::string>()).value_or(JobRowState::kFailed);
  row.spec = absl::HexStringToBytes(r["spec_hex"].as<std::string>());
  row.needs.ram_bytes = static_cast<uint64_t>(r["ram_bytes"].as<int64_t>());
  row.needs.vram_bytes = static_cast<uint64_t>(r["vram_bytes"].as<int64_t>());
  row.cancel_requested = r["cancel_requested"].as<bool>();
  row.lease_owner = r["lease_owner"].as<std::string>();
  row.lease_expires_at = TimeField(r["lease_expires_us"]);
  row.lease_token = r["lease_token"].as<int64_t>();
  row.attempts = r["attempts"].as<int>();
  row.error = r["error"].as<std::string>();
  row.created_at = TimeField(r["created_us"]);
  row.updated_at = TimeField(r["updated_us"]);
  row.finished_at = TimeField(r["finished_us"]);
  row.record = absl::HexStringToBytes(r["record_hex"].as<std::string>());
  row.record_version = r["record_version"].as<int64_t>();
  return row;
}

// Expired leases back to the queue, or ended (cancel asked, or too many
// lost leases). Locked rows are skipped: another sweep or a fenced write
// has them, and the next sweep sees them again.
int SweepExpired(pqxx::work& txn, int max_attempts) {
  pqxx::result r = txn.exec_params(
      "UPDATE jobs j SET"
      "  state = CASE WHEN j.cancel_requested THEN 'cancelled'"
      "               WHEN j.attempts + 1 >= $1 THEN 'failed'"
      "               ELSE 'queued' END,"
      "  error = CASE WHEN NOT j.cancel_requested AND j.attempts + 1 >= $1"
      "               THEN 'lease lost ' || (j.attempts + 1) || ' times, last"
      " held by ' || j.lease_owner ELSE j.error END,"
      "  finished_at = CASE WHEN j.cancel_requested OR j.attempts + 1 >= $1"
      "                     THEN now() END,"
      "  attempts = j.attempts + 1, updated_at = now()"
      " FROM (SELECT id FROM jobs WHERE state = 'running'"
      "       AND lease_expires_at <= now() FOR UPDATE SKIP LOCKED) e"
      " WHERE j.id = e.id",
      max_attempts);
  return static_cast<int>(r.affected_rows());
}

// A holder's new record, when $5 (a boolean) says it sent one as $6 (hex).
constexpr char kRecordUpdate[] =
    " record = CASE WHEN $5 THEN decode($6, 'hex') ELSE record END,"
    " record_version = record_version + CASE WHEN $5 THEN 1 ELSE 0 END";

// The fenced rows: still running under this very lease, and not expired.
constexpr char kFence[] =
    " WHERE id = $1 AND lease_token = $2 AND lease_owner = $3"
    " AND state = 'running' AND lease_expires_at > now()";

}  // namespace

const char* JobRowStateName(JobRowState state) {
  switch (state) {
    case JobRowState::kQueued:
      return "queued";
    case JobRowState::kRunning:
      return "running";
    case JobRowState::kSucceeded:
      return "succeeded";
    case JobRowState::kFailed:
      return "failed";
    case JobRowState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

bool IsTerminal(JobRowState state) {
  return state == JobRowState::kSucceeded || state == JobRowState::kFailed ||
         state == JobRowState::kCancelled;
}

JobTable::JobTable(std::string connection_string, Options options)
    : connection_string_(std::move(connection_string)), options_(options) {}

JobTable::~JobTable() = default;

int JobTable::LatestSchemaVersion() {
  return std::end(kMigrations)[-1].version;
}

absl::StatusOr<std::unique_ptr<JobTable>> JobTable::Open(
    const std::string& connection_string, Options options) {
  // libpq's own parser first: a malformed string is the caller's mistake,
  // not an unreachable database.
  char* parse_error = nullptr;
  PQconninfoOption* parsed =
      PQconninfoParse(connection_string.c_str(), &parse_error);
  if (parsed == nullptr) {
    std::string why = parse_error ? parse_error : "out of memory";
    PQfreemem(parse_error);
    while (!why.empty() && why.back() == '\n') why.pop_back();
    return absl::InvalidArgumentError(
        absl::StrCat("fleet database connection string: ", why));
  }
  PQconninfoFree(parsed);
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("JobTable max_attempts must be >= 1");
  }
  std::unique_ptr<JobTable> table(new JobTable(connection_string, options));
  absl::MutexLock lock(&table->mu_);
  REGSERVE_RETURN_IF_ERROR(table->Migrate());
  return table;
}

absl::StatusOr<JobTable::Db*> JobTable::Connection() {
  if (db_ == nullptr) {
    try {
      db_ = std::make_unique<Db>(connection_string_);
      // A replica frozen inside a transaction (a pause, a stopped process)
      // must not hold its rows' locks for ever: the server ends such a
      // session, and a statement waits for a lock this long at most.
      pqxx::nontransaction txn(db_->conn);
      txn.exec("SET idle_in_transaction_session_timeout = '5s'");
      txn.exec("SET lock_timeout = '5s'");
    } catch (...) {
      return CurrentException("connect to the fleet database");
    }
  }
  return db_.get();
}

absl::Status JobTable::CurrentException(const char* what) {
  try {
    throw;
  } catch (const pqxx::broken_connection& e) {
    db_.reset();  // made again by the next call
    return absl::UnavailableError(absl::StrCat(what, ": ", e.what()));
  } catch (const pqxx::unique_violation& e) {
    return absl::AlreadyExistsError(absl::StrCat(what, ": ", e.what()));
  } catch (const pqxx::in_doubt_error& e) {
    db_.reset();
    return absl::UnavailableError(
        absl::StrCat(what, ": connection lost at commit: ", e.what()));
  } catch (const pqxx::sql_error& e) {
    return absl::InternalError(
        absl::StrCat(what, ": SQLSTATE ", e.sqlstate(), ": ", e.what()));
  } catch (const std::exception& e) {
    // libpqxx 6 reports a connection lost mid-statement this way too; the
    // connection is checked before it is used again.
    if (db_ != nullptr && !db_->conn.is_open()) db_.reset();
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

absl::Status JobTable::Migrate() {
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    txn.exec_params("SELECT pg_advisory_xact_lock($1)", kMigrationLockKey);
    txn.exec(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "  version integer PRIMARY KEY,"
        "  applied_at timestamptz NOT NULL DEFAULT now())");
    const int current =
        txn.exec("SELECT coalesce(max(version), 0) FROM schema_version")[0][0]
            .as<int>();
    if (current > LatestSchemaVersion()) {
      return absl::FailedPreconditionError(
          absl::StrCat("fleet database schema is version ", current,
                       ", newer than this "
                       "build's ",
                       LatestSchemaVersion(), "; upgrade regserved"));
    }
    for (const Migration& m : kMigrations) {
      if (m.version <= current) continue;
      txn.exec(m.sql);
      txn.exec_params("INSERT INTO schema_version (version) VALUES ($1)",
                      m.version);
    }
    txn.commit();
  } catch (...) {
    return CurrentException("migrate the fleet database schema");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> JobTable::SchemaVersion() {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    return txn
        .exec("SELECT coalesce(max(version), 0) FROM schema_version")[0][0]
        .as<int>();
  } catch (...) {
    return CurrentException("read the schema version");
  }
}

absl::StatusOr<int64_t> JobTable::Enqueue(const NewJob& job) {
  if (job.id.empty()) return absl::InvalidArgumentError("job id is empty");
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    pqxx::row r = txn.exec_params1(
        "INSERT INTO jobs (id, principal, priority, state, spec, ram_bytes,"
        " vram_bytes, record) VALUES ($1, $2, $3, 'queued', decode($4, 'hex'),"
        " $5, $6, decode($7, 'hex')) RETURNING sequence",
        job.id, job.principal, job.priority, absl::BytesToHexString(job.spec),
        AsBigint(job.needs.ram_bytes), AsBigint(job.needs.vram_bytes),
        absl::BytesToHexString(job.record));
    txn.commit();
    return r[0].as<int64_t>();
  } catch (...) {
    return CurrentException(absl::StrCat("enqueue job ", job.id).c_str());
  }
}

absl::StatusOr<std::optional<Lease>> JobTable::Claim(
    const std::string& owner, const ReplicaBudgets& budgets,
    absl::Duration duration) {
  if (owner.empty()) return absl::InvalidArgumentError("claim owner is empty");
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    SweepExpired(txn, options_.max_attempts);
    pqxx::result r = txn.exec_params(
        "WITH next AS (SELECT id FROM jobs WHERE state = 'queued'"
        "  AND NOT cancel_requested AND ram_bytes <= $2 AND vram_bytes <= $3"
        "  ORDER BY priority DESC, sequence LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " UPDATE jobs j SET state = 'running', lease_owner = $1,"
        "  lease_expires_at = now() + make_interval(secs => $4::float8),"
        "  lease_token = j.lease_token + 1, updated_at = now()"
        " FROM next WHERE j.id = next.id"
        " RETURNING j.id, j.lease_token, " REGSERVE_EPOCH_US(
            "j.lease_expires_at"),
        owner, AsBigint(budgets.ram_bytes), AsBigint(budgets.vram_bytes),
        Seconds(duration));
    txn.commit();
    if (r.empty()) return std::optional<Lease>();
    Lease lease;
    lease.job_id = r[0][0].as<std::string>();
    lease.owner = owner;
    lease.token = r[0][1].as<int64_t>();
    lease.expires_at = TimeField(r[0][2]);
    return std::optional<Lease>(std::move(lease));
  } catch (...) {
    return CurrentException("claim a job");
  }
}

absl::Status JobTable::FenceFailure(const Lease& lease) {
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    pqxx::result r = txn.exec_params(
        "SELECT state, lease_token, coalesce(lease_owner, ''),"
        " lease_expires_at <= now() FROM jobs WHERE id = $1",
        lease.job_id);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("no job ", lease.job_id));
    }
    const std::string state = r[0][0].as<std::string>();
    const int64_t token = r[0][1].as<int64_t>();
    const std::string owner = r[0][2].as<std::string>();
    if (token != lease.token || owner != lease.owner) {
      return absl::AbortedError(absl::StrCat(
          "job ", lease.job_id, ": lease ", lease.token, " of ", lease.owner,
          " was taken over by ", owner, " (lease ", token, ")"));
    }
    if (state == "queued" || (state == "running" && r[0][3].as<bool>())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", lease.job_id, ": lease ", lease.token, " of ",
                       lease.owner, " expired"));
    }
    return absl::AbortedError(absl::StrCat("job ", lease.job_id, " is ", state,
                                           ", no longer running under lease ",
                                           lease.token));
  } catch (...) {
    return CurrentException("check a job's lease");
  }
}

absl::StatusOr<LeaseRenewal> JobTable::RenewLease(const Lease& lease,
                                                  absl::Duration duration,
                                                  const std::string* record) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    pqxx::result r = txn.exec_params(
        absl::StrCat("UPDATE jobs SET lease_expires_at = now() +"
                     " make_interval(secs => $4::float8), updated_at = now(),",
                     kRecordUpdate, kFence,
                     " RETURNING " REGSERVE_EPOCH_US(
                         "lease_expires_at") ","
                                             " cancel_requested"),
        lease.job_id, lease.token, lease.owner, Seconds(duration),
        record != nullptr, absl::BytesToHexString(record ? *record : ""));
    txn.commit();
    if (r.empty()) return FenceFailure(lease);
    LeaseRenewal renewal;
    renewal.expires_at = TimeField(r[0][0]);
    renewal.cancel_requested = r[0][1].as<bool>();
    return renewal;
  } catch (...) {
    return CurrentException("renew a lease");
  }
}

absl::Status JobTable::CompleteWithFence(const Lease& lease,
                                         const JobOutcome& outcome) {
  if (!IsTerminal(outcome.state)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a job ends succeeded, failed or cancelled, not ",
                     JobRowStateName(outcome.state)));
  }
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    pqxx::result r = txn.exec_params(
        absl::StrCat("UPDATE jobs SET state = $4, error = $7,"
                     " finished_at = now(), updated_at = now(),",
                     kRecordUpdate, kFence),
        lease.job_id, lease.token, lease.owner,
        std::string(JobRowStateName(outcome.state)), outcome.record.has_value(),
        absl::BytesToHexString(outcome.record.value_or("")), outcome.error);
    txn.commit();
    if (r.affected_rows() == 0) return FenceFailure(lease);
    return absl::OkStatus();
  } catch (...) {
    return CurrentException("complete a job");
  }
}

absl::Status JobTable::Release(const Lease& lease) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    pqxx::result r = txn.exec_params(
        absl::StrCat("UPDATE jobs SET state = CASE WHEN cancel_requested"
                     " THEN 'cancelled' ELSE 'queued' END,"
                     " finished_at = CASE WHEN cancel_requested THEN now() END,"
                     " updated_at = now()",
                     kFence),
        lease.job_id, lease.token, lease.owner);
    txn.commit();
    if (r.affected_rows() == 0) return FenceFailure(lease);
    return absl::OkStatus();
  } catch (...) {
    return CurrentException("release a job");
  }
}

absl::StatusOr<int> JobTable::ExpireLeases() {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    const int swept = SweepExpired(txn, options_.max_attempts);
    txn.commit();
    return swept;
  } catch (...) {
    return CurrentException("expire leases");
  }
}

absl::StatusOr<JobRow> JobTable::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    // One statement: the row's state is read under its lock, so a claim
    // racing with the cancel either sees it cancelled or sees the flag.
    txn.exec_params(
        "UPDATE jobs SET cancel_requested = true, updated_at = now(),"
        " state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,"
        " finished_at = CASE WHEN state = 'queued' THEN now()"
        "   ELSE finished_at END"
        " WHERE id = $1 AND state IN ('queued', 'running')",
        id);
    pqxx::result r = txn.exec_params(
        absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = $1"), id);
    txn.commit();
    if (r.empty()) return absl::NotFoundError(absl::StrCat("no job ", id));
    return RowFrom(r[0]);
  } catch (...) {
    return CurrentException(absl::StrCat("cancel job ", id).c_str());
  }
}

absl::StatusOr<JobRow> JobTable::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    pqxx::result r = txn.exec_params(
        absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = $1"), id);
    if (r.empty()) return absl::NotFoundError(absl::StrCat("no job ", id));
    return RowFrom(r[0]);
  } catch (...) {
    return CurrentException(absl::StrCat("get job ", id).c_str());
  }
}

absl::StatusOr<std::vector<JobRow>> JobTable::List(
    const JobListFilter& filter) {
  const std::string state =
      filter.state.has_value() ? JobRowStateName(*filter.state) : "";
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    pqxx::result r = txn.exec_params(
        absl::StrCat("SELECT ", kColumns,
                     " FROM jobs WHERE ($1 = '' OR principal = $1)"
                     " AND ($2 = '' OR state = $2)"
                     " AND ($4 = 0 OR sequence < $4) ORDER BY sequence",
                     filter.newest_first ? " DESC" : "", " LIMIT $3"),
        filter.principal, state, std::max(filter.limit, 0),
        filter.before_sequence);
    std::vector<JobRow> rows;
    rows.reserve(r.size());
    for (const pqxx::row& row : r) rows.push_back(RowFrom(row));
    return rows;
  } catch (...) {
    return CurrentException("list jobs");
  }
}

absl::StatusOr<int64_t> JobTable::Unfinished(const std::string& principal) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    return txn
        .exec_params(
            "SELECT count(*) FROM jobs WHERE principal = $1"
            " AND state IN ('queued', 'running')",
            principal)[0][0]
        .as<int64_t>();
  } catch (...) {
    return CurrentException("count a principal's jobs");
  }
}

absl::StatusOr<int64_t> JobTable::QueuePosition(const std::string& id) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    return txn
        .exec_params(
            "SELECT count(*) FROM jobs q, jobs j WHERE j.id = $1"
            " AND j.state = 'queued' AND q.state = 'queued'"
            " AND (q.priority > j.priority OR (q.priority = j.priority"
            " AND q.sequence <= j.sequence))",
            id)[0][0]
        .as<int64_t>();
  } catch (...) {
    return CurrentException("read a queue position");
  }
}

absl::StatusOr<int64_t> JobTable::QueueDepth() {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    return txn.exec("SELECT count(*) FROM jobs WHERE state = 'queued'")[0][0]
        .as<int64_t>();
  } catch (...) {
    return CurrentException("count queued jobs");
  }
}

absl::StatusOr<std::vector<std::string>> JobTable::DeleteFinished(
    absl::Duration older_than, int limit) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    pqxx::result r = txn.exec_params(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs"
        "  WHERE state IN ('succeeded', 'failed', 'cancelled')"
        "  AND finished_at < now() - make_interval(secs => $1::float8)"
        "  LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
        Seconds(older_than), std::max(limit, 0));
    txn.commit();
    std::vector<std::string> ids;
    for (const pqxx::row& row : r) ids.push_back(row[0].as<std::string>());
    return ids;
  } catch (...) {
    return CurrentException("delete finished jobs");
  }
}

absl::Status JobTable::Heartbeat(const std::string& name,
                                 const std::string& info) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    txn.exec_params(
        "INSERT INTO replicas (name, info, heartbeat_at)"
        " VALUES ($1, decode($2, 'hex'), now()) ON CONFLICT (name)"
        " DO UPDATE SET info = excluded.info, heartbeat_at = now()",
        name, absl::BytesToHexString(info));
    txn.commit();
    return absl::OkStatus();
  } catch (...) {
    return CurrentException("record this replica's heartbeat");
  }
}

absl::Status JobTable::Leave(const std::string& name) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::work txn(db->conn);
    txn.exec_params("DELETE FROM replicas WHERE name = $1", name);
    txn.commit();
    return absl::OkStatus();
  } catch (...) {
    return CurrentException("remove this replica");
  }
}

absl::StatusOr<std::vector<ReplicaRow>> JobTable::Replicas(
    absl::Duration max_age) {
  absl::MutexLock lock(&mu_);
  REGSERVE_ASSIGN_OR_RETURN(Db * db, Connection());
  try {
    pqxx::nontransaction txn(db->conn);
    pqxx::result r = txn.exec_params(
        "SELECT name, encode(info, 'hex'), " REGSERVE_EPOCH_US(
            "heartbeat_at") " FROM replicas"
                            " WHERE heartbeat_at > now() - make_interval(secs"
                            " => $1::float8) ORDER BY name",
        Seconds(max_age));
    std::vector<ReplicaRow> rows;
    for (const pqxx::row& row : r) {
      ReplicaRow out;
      out.name = row[0].as<std::string>();
      out.info = absl::HexStringToBytes(row[1].as<std::string>());
      out.heartbeat_at = TimeField(row[2]);
      rows.push_back(std::move(out));
    }
    return rows;
  } catch (...) {
    return CurrentException("list the replicas");
  }
}

}  // namespace regserve
