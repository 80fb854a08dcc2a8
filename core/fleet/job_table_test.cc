// Copyright regserve authors.
//
// JobTable against a real PostgreSQL server started for this test
// (testing/postgres_server.h); skipped when the server binaries are absent.
#include "core/fleet/job_table.h"

#include <algorithm>
#include <map>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/fleet/testing/postgres_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;
const ReplicaBudgets kBig{64 * kGiB, 80 * kGiB};

class JobTableTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = PostgresServer::Start();
    if (server.ok()) {
      server_ = std::move(*server).release();
    } else {
      skip_reason_ = new std::string(server.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << *skip_reason_;
    // One database per test: no rows shared between tests.
    const std::string name = absl::AsciiStrToLower(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    auto conn = server_->CreateDatabase(name);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *conn;
    auto table = JobTable::Open(conn_);
    ASSERT_TRUE(table.ok()) << table.status();
    table_ = std::move(*table);
  }

  NewJob Job(const std::string& id, int priority = 0,
             StageNeeds needs = {kGiB, kGiB}) {
    NewJob job;
    job.id = id;
    job.principal = "alice";
    job.priority = priority;
    job.spec = "spec of " + id;
    job.needs = needs;
    return job;
  }

  void Enqueue(const NewJob& job) {
    auto seq = table_->Enqueue(job);
    ASSERT_TRUE(seq.ok()) << seq.status();
  }

  Lease MustClaim(JobTable& table, const std::string& owner,
                  absl::Duration duration = absl::Seconds(30)) {
    auto lease = table.Claim(owner, kBig, duration);
    EXPECT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(lease.ok() && lease->has_value()) << "nothing claimed";
    return lease.ok() && lease->has_value() ? **lease : Lease();
  }

  static PostgresServer* server_;
  static std::string* skip_reason_;
  std::string conn_;
  std::unique_ptr<JobTable> table_;
};

PostgresServer* JobTableTest::server_ = nullptr;
std::string* JobTableTest::skip_reason_ = nullptr;

TEST_F(JobTableTest, OpenIsIdempotentAndKeepsRows) {
  Enqueue(Job("a"));
  auto again = JobTable::Open(conn_);
  ASSERT_TRUE(again.ok()) << again.status();
  auto version = (*again)->SchemaVersion();
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(*version, JobTable::LatestSchemaVersion());
  auto row = (*again)->Get("a");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->state, JobRowState::kQueued);
}

TEST_F(JobTableTest, ConcurrentOpensMigrateOnce) {
  const std::string conn = *server_->CreateDatabase("concurrent_fresh");
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = JobTable::Open(conn).status(); });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  pqxx::connection c(conn);
  pqxx::nontransaction txn(c);
  EXPECT_EQ(txn.exec("SELECT count(*) FROM schema_version")[0][0].as<int>(),
            JobTable::LatestSchemaVersion());
}

TEST_F(JobTableTest, NewerSchemaIsRefused) {
  {
    pqxx::connection c(conn_);
    pqxx::work txn(c);
    txn.exec("INSERT INTO schema_version (version) VALUES (999)");
    txn.commit();
  }
  auto table = JobTable::Open(conn_);
  EXPECT_EQ(table.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(table.status().message(), HasSubstr("version 999"));
}

TEST_F(JobTableTest, BadConnectionStringsGiveClearErrors) {
  auto malformed = JobTable::Open("host=127.0.0.1 nonsense");
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(malformed.status().message(), HasSubstr("connection string"));
  auto bad_url = JobTable::Open("postgresql://[::1");
  EXPECT_EQ(bad_url.status().code(), absl::StatusCode::kInvalidArgument);
  // Port 1 on loopback: nothing listens there, so the refusal is at once.
  auto unreachable = JobTable::Open(
      "postgresql://regserve:secret@127.0.0.1:1/x?connect_timeout=2");
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(unreachable.status().message(), HasSubstr("connect"));
  EXPECT_THAT(unreachable.status().message(),
              ::testing::Not(HasSubstr("secret")));
}

TEST_F(JobTableTest, RowsRoundTrip) {
  NewJob job = Job("a", 3, {5 * kGiB, 7 * kGiB});
  job.spec = std::string("\0\x01\xff binary", 10);
  auto seq = table_->Enqueue(job);
  ASSERT_TRUE(seq.ok()) << seq.status();
  auto row = table_->Get("a");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->spec, job.spec);
  EXPECT_EQ(row->priority, 3);
  EXPECT_EQ(row->sequence, *seq);
  EXPECT_EQ(row->needs.ram_bytes, 5 * kGiB);
  EXPECT_EQ(row->needs.vram_bytes, 7 * kGiB);
  EXPECT_EQ(row->lease_token, 0);
  EXPECT_EQ(row->lease_expires_at, absl::InfinitePast());
  EXPECT_EQ(row->finished_at, absl::InfinitePast());
  EXPECT_LT(absl::AbsDuration(row->created_at - absl::Now()), absl::Minutes(1));
  EXPECT_EQ(table_->Enqueue(job).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(table_->Get("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobTableTest, ClaimsByPriorityThenSequence) {
  Enqueue(Job("low1", 0));
  Enqueue(Job("high1", 5));
  Enqueue(Job("low2", 0));
  Enqueue(Job("high2", 5));
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) order.push_back(MustClaim(*table_, "r").job_id);
  EXPECT_EQ(order,
            (std::vector<std::string>{"high1", "high2", "low1", "low2"}));
  auto none = table_->Claim("r", kBig, absl::Seconds(30));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
}

TEST_F(JobTableTest, ReplicaTooSmallNeverClaimsTheJob) {
  Enqueue(Job("big", 9, {32 * kGiB, 0}));
  Enqueue(Job("gpu", 8, {kGiB, 40 * kGiB}));
  Enqueue(Job("small", 0, {kGiB, 0}));
  const ReplicaBudgets small{8 * kGiB, 24 * kGiB};
  // The small replica passes over both higher-priority jobs it cannot hold.
  auto a = table_->Claim("small-replica", small, absl::Seconds(30));
  ASSERT_TRUE(a.ok() && a->has_value()) << a.status();
  EXPECT_EQ((*a)->job_id, "small");
  auto b = table_->Claim("small-replica", small, absl::Seconds(30));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->has_value());
  EXPECT_EQ(MustClaim(*table_, "big-replica").job_id, "big");
  EXPECT_EQ(MustClaim(*table_, "big-replica").job_id, "gpu");
}

TEST_F(JobTableTest, ConcurrentClaimsNeverShareAJob) {
  constexpr int kJobs = 60;
  constexpr int kReplicas = 4;
  for (int i = 0; i < kJobs; ++i) Enqueue(Job(absl::StrCat("job", i), i % 3));
  absl::Mutex mu;
  std::map<std::string, std::vector<std::string>> runs;  // job -> owners
  std::vector<std::thread> threads;
  for (int r = 0; r < kReplicas; ++r) {
    threads.emplace_back([&, r] {
      const std::string owner = absl::StrCat("replica", r);
      auto table = JobTable::Open(conn_);
      ASSERT_TRUE(table.ok()) << table.status();
      while (true) {
        auto lease = (*table)->Claim(owner, kBig, absl::Seconds(30));
        ASSERT_TRUE(lease.ok()) << lease.status();
        if (!lease->has_value()) return;
        {
          absl::MutexLock lock(&mu);
          runs[(*lease)->job_id].push_back(owner);
        }
        ASSERT_TRUE((*table)->CompleteWithFence(**lease, {}).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(runs.size(), static_cast<size_t>(kJobs));
  for (const auto& [job, owners] : runs) EXPECT_EQ(owners.size(), 1u) << job;
  JobListFilter succeeded;
  succeeded.state = JobRowState::kSucceeded;
  auto rows = table_->List(succeeded);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), static_cast<size_t>(kJobs));
  for (const JobRow& row : *rows) EXPECT_EQ(row.lease_token, 1) << row.id;
}

TEST_F(JobTableTest, ExpiredLeaseIsReclaimedAndOldHolderIsFenced) {
  Enqueue(Job("a"));
  auto other = JobTable::Open(conn_);
  ASSERT_TRUE(other.ok()) << other.status();
  // Leases of 1 s, so that a loaded machine does not lose them early.
  const Lease old = MustClaim(*table_, "replica-a", absl::Seconds(1));
  auto renewed = table_->RenewLease(old, absl::Seconds(1));
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_GT(renewed->expires_at, old.expires_at);
  // Nobody else can take it while the lease holds.
  auto none = (*other)->Claim("replica-b", kBig, absl::Seconds(30));
  ASSERT_TRUE(none.ok() && !none->has_value());
  // The database's clock is this machine's.
  absl::SleepFor(renewed->expires_at - absl::Now() + absl::Milliseconds(100));
  // Expired, not yet swept: already lost.
  EXPECT_EQ(table_->RenewLease(old, absl::Seconds(30)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const Lease fresh = MustClaim(**other, "replica-b");
  EXPECT_EQ(fresh.job_id, "a");
  EXPECT_GT(fresh.token, old.token);
  const absl::Status late = table_->CompleteWithFence(old, {});
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;
  EXPECT_THAT(late.message(), HasSubstr("taken over by replica-b"));
  ASSERT_TRUE((*other)->CompleteWithFence(fresh, {}).ok());
  auto row = table_->Get("a");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->state, JobRowState::kSucceeded);
  EXPECT_EQ(row->lease_owner, "replica-b");
  EXPECT_EQ(row->attempts, 1);
}

TEST_F(JobTableTest, SweepRequeuesThenFailsAfterMaxAttempts) {
  JobTable::Options options;
  options.max_attempts = 2;
  auto table = JobTable::Open(conn_, options);
  ASSERT_TRUE(table.ok()) << table.status();
  Enqueue(Job("crasher"));
  const Lease first = MustClaim(**table, "r1", absl::Milliseconds(50));
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(*(*table)->ExpireLeases(), 1);
  EXPECT_EQ((*table)->Get("crasher")->state, JobRowState::kQueued);
  EXPECT_EQ((*table)->CompleteWithFence(first, {}).code(),
            absl::StatusCode::kFailedPrecondition);
  MustClaim(**table, "r2", absl::Milliseconds(50));
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(*(*table)->ExpireLeases(), 1);
  auto row = (*table)->Get("crasher");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->state, JobRowState::kFailed);
  EXPECT_EQ(row->attempts, 2);
  EXPECT_THAT(row->error, HasSubstr("lease lost 2 times"));
  EXPECT_NE(row->finished_at, absl::InfinitePast());
}

TEST_F(JobTableTest, CancelQueuedAndRunning) {
  Enqueue(Job("queued"));
  Enqueue(Job("running", 1));
  const Lease lease = MustClaim(*table_, "r");
  ASSERT_EQ(lease.job_id, "running");
  auto q = table_->Cancel("queued");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->state, JobRowState::kCancelled);
  auto r = table_->Cancel("running");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state, JobRowState::kRunning);
  EXPECT_TRUE(r->cancel_requested);
  auto renewal = table_->RenewLease(lease, absl::Seconds(30));
  ASSERT_TRUE(renewal.ok()) << renewal.status();
  EXPECT_TRUE(renewal->cancel_requested);
  JobOutcome cancelled;
  cancelled.state = JobRowState::kCancelled;
  ASSERT_TRUE(table_->CompleteWithFence(lease, cancelled).ok());
  // A finished job stays as it ended; a second commit is refused.
  EXPECT_EQ(table_->Cancel("running")->state, JobRowState::kCancelled);
  EXPECT_EQ(table_->CompleteWithFence(lease, {}).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(table_->Cancel("nope").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(*table_->QueueDepth(), 0);
}

TEST_F(JobTableTest, ReleaseRequeuesWithoutAnAttempt) {
  Enqueue(Job("a"));
  const Lease lease = MustClaim(*table_, "r");
  EXPECT_EQ(*table_->QueueDepth(), 0);
  ASSERT_TRUE(table_->Release(lease).ok());
  EXPECT_EQ(*table_->QueueDepth(), 1);
  auto row = table_->Get("a");
  EXPECT_EQ(row->attempts, 0);
  EXPECT_EQ(table_->Release(lease).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_GT(MustClaim(*table_, "r").token, lease.token);
}

TEST_F(JobTableTest, ListFiltersByPrincipalAndState) {
  NewJob bob = Job("b1");
  bob.principal = "bob";
  Enqueue(Job("a1"));
  Enqueue(bob);
  Enqueue(Job("a2"));
  JobListFilter alice;
  alice.principal = "alice";
  auto rows = table_->List(alice);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].id, "a1");
  EXPECT_EQ((*rows)[1].id, "a2");
  alice.limit = 1;
  EXPECT_EQ(table_->List(alice)->size(), 1u);
}

TEST_F(JobTableTest, HolderKeepsTheRecordFencedOnItsLease) {
  NewJob job = Job("a");
  job.record = std::string("first\0record", 12);
  Enqueue(job);
  auto row = table_->Get("a");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->record, job.record);
  EXPECT_EQ(row->record_version, 0);
  const Lease lease = MustClaim(*table_, "r1");
  ASSERT_TRUE(table_->RenewLease(lease, absl::Seconds(30)).ok());
  EXPECT_EQ(table_->Get("a")->record_version, 0);  // no record: unchanged
  const std::string second = "second";
  ASSERT_TRUE(table_->RenewLease(lease, absl::Seconds(30), &second).ok());
  row = table_->Get("a");
  EXPECT_EQ(row->record, "second");
  EXPECT_EQ(row->record_version, 1);
  JobOutcome done;
  done.record = "final";
  ASSERT_TRUE(table_->CompleteWithFence(lease, done).ok());
  row = table_->Get("a");
  EXPECT_EQ(row->state, JobRowState::kSucceeded);
  EXPECT_EQ(row->record, "final");
  EXPECT_EQ(row->record_version, 2);
  // A stale holder's record is refused with its write.
  const std::string late = "late";
  EXPECT_FALSE(table_->RenewLease(lease, absl::Seconds(30), &late).ok());
  EXPECT_EQ(table_->Get("a")->record, "final");
}

TEST_F(JobTableTest, ListPagesNewestFirst) {
  for (const char* id : {"a", "b", "c", "d"}) Enqueue(Job(id));
  JobListFilter filter;
  filter.newest_first = true;
  filter.limit = 2;
  auto page = table_->List(filter);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].id, "d");
  EXPECT_EQ((*page)[1].id, "c");
  filter.before_sequence = (*page)[1].sequence;
  page = table_->List(filter);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].id, "b");
  EXPECT_EQ((*page)[1].id, "a");
}

TEST_F(JobTableTest, ReplicasHeartbeatAndLeave) {
  ASSERT_TRUE(table_->Heartbeat("r2", "two").ok());
  ASSERT_TRUE(table_->Heartbeat("r1", "one").ok());
  ASSERT_TRUE(table_->Heartbeat("r1", "one again").ok());
  auto replicas = table_->Replicas(absl::Seconds(60));
  ASSERT_TRUE(replicas.ok()) << replicas.status();
  ASSERT_EQ(replicas->size(), 2u);
  EXPECT_EQ((*replicas)[0].name, "r1");
  EXPECT_EQ((*replicas)[0].info, "one again");
  EXPECT_EQ((*replicas)[1].info, "two");
  ASSERT_TRUE(table_->Leave("r2").ok());
  replicas = table_->Replicas(absl::Seconds(60));
  ASSERT_TRUE(replicas.ok());
  EXPECT_EQ(replicas->size(), 1u);
  // Heartbeats older than max_age are not listed.
  absl::SleepFor(absl::Milliseconds(300));
  replicas = table_->Replicas(absl::Milliseconds(100));
  ASSERT_TRUE(replicas.ok());
  EXPECT_TRUE(replicas->empty());
}

TEST_F(JobTableTest, DeleteFinishedTakesOnlyOldFinishedJobs) {
  for (const char* id : {"a", "b", "c"}) Enqueue(Job(id));
  const Lease a = MustClaim(*table_, "r1");
  ASSERT_TRUE(table_->CompleteWithFence(a, JobOutcome()).ok());
  const Lease b = MustClaim(*table_, "r1");  // running: kept
  auto none = table_->DeleteFinished(absl::Seconds(60), 10);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());  // "a" finished just now
  absl::SleepFor(absl::Milliseconds(200));
  auto gone = table_->DeleteFinished(absl::Milliseconds(100), 10);
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(*gone, std::vector<std::string>{"a"});
  EXPECT_EQ(table_->Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(table_->Get(b.job_id).ok());
  EXPECT_TRUE(table_->Get("c").ok());
}

TEST_F(JobTableTest, QueuePositionFollowsTheClaimOrder) {
  Enqueue(Job("a"));
  Enqueue(Job("b"));
  Enqueue(Job("urgent", /*priority=*/5));
  EXPECT_EQ(*table_->QueuePosition("urgent"), 1);
  EXPECT_EQ(*table_->QueuePosition("a"), 2);
  EXPECT_EQ(*table_->QueuePosition("b"), 3);
  MustClaim(*table_, "r1");  // urgent
  EXPECT_EQ(*table_->QueuePosition("urgent"), 0);
  EXPECT_EQ(*table_->QueuePosition("b"), 2);
  EXPECT_EQ(*table_->QueuePosition("nope"), 0);
  EXPECT_EQ(*table_->Unfinished("alice"), 3);  // one running, two queued
  EXPECT_EQ(*table_->Unfinished("bob"), 0);
}

// Last: restarts the shared server. A call on the lost connection fails
// UNAVAILABLE; the next one reconnects, and the queue is still there.
TEST_F(JobTableTest, ReconnectsAfterDatabaseRestart) {
  Enqueue(Job("a"));
  ASSERT_TRUE(server_->Restart().ok());
  absl::StatusOr<int64_t> depth = table_->QueueDepth();
  if (!depth.ok()) {
    EXPECT_EQ(depth.status().code(), absl::StatusCode::kUnavailable)
        << depth.status();
    depth = table_->QueueDepth();
  }
  ASSERT_TRUE(depth.ok()) << depth.status();
  EXPECT_EQ(*depth, 1);
}

}  // namespace
}  // namespace regserve
