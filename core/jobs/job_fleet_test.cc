// Copyright regserve authors.
//
// Two JobManagers in fleet mode on one real PostgreSQL (skipped without
// its binaries) and one data directory: replica "a" runs the jobs, replica
// "b" (no pipeline threads, so it never claims) answers for them. The
// fleet end to end, with real daemons, is tests/e2e/fleet_e2e_test.cc.
#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "core/fleet/testing/postgres_server.h"
#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

class JobFleetTest : public JobManagerTest {
 protected:
  static void SetUpTestSuite() {
    auto server = PostgresServer::Start();
    if (server.ok()) {
      pg_ = std::move(*server).release();
    } else {
      skip_ = new std::string(server.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete pg_;
    pg_ = nullptr;
  }

  void SetUp() override {
    if (pg_ == nullptr) GTEST_SKIP() << *skip_;
    JobManagerTest::SetUp();
    auto db = pg_->CreateDatabase(absl::AsciiStrToLower(
        ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    ASSERT_TRUE(db.ok()) << db.status();
    opts_.fleet_db = *db;
    opts_.fleet_poll = absl::Milliseconds(50);
  }

  std::unique_ptr<JobManager> Replica(const std::string& name,
                                      JobManagerEnv env) {
    opts_.replica_name = name;
    return Make(std::move(env));
  }

  // Whether a reader elsewhere has marked the job's tile spool.
  bool Marked(const std::string& id) const {
    std::error_code ec;
    for (fs::directory_iterator it(JobDir(id) + "/tiles", ec), end;
         !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().rfind("watch.", 0) == 0) return true;
    }
    return false;
  }

  static PostgresServer* pg_;
  static std::string* skip_;
};

PostgresServer* JobFleetTest::pg_ = nullptr;
std::string* JobFleetTest::skip_ = nullptr;

// Holds the commit of the result until `release` (or 20 s), so that the
// job is still running when a reader elsewhere has its live tiles.
class HeldCommitFileSystem final : public JobFileSystem {
 public:
  std::atomic<bool> release{false};
  absl::Status WriteFileAtomic(const std::string& path,
                               absl::string_view contents) override {
    return DefaultJobFileSystem()->WriteFileAtomic(path, contents);
  }
  absl::Status AppendToFile(const std::string& path,
                            absl::Span<const uint8_t> bytes) override {
    return DefaultJobFileSystem()->AppendToFile(path, bytes);
  }
  absl::Status SyncFile(const std::string& path) override {
    if (absl::StrContains(path, "/result.partial.")) {
      const absl::Time deadline = absl::Now() + absl::Seconds(20);
      while (!release && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
    return DefaultJobFileSystem()->SyncFile(path);
  }
};

TEST_F(JobFleetTest, ReaderOnAnotherReplicaGetsLiveTilesThenTheEnd) {
  // Replica a holds the warp until the reader on b has marked the spool,
  // and the commit until that reader has every tile.
  HeldCommitFileSystem held;
  JobManagerEnv env_a = FakeEnv();
  env_a.fs = &held;
  env_a.before_stage = [&](const std::string& id, Stage stage) {
    if (stage != Stage::kWarp) return;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!Marked(id) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  };
  auto a = Replica("a", std::move(env_a));
  auto b = Replica("b", FakeEnv(/*threads=*/0));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto id = b->CreateJob(BrainSpec(), "alice");
  ASSERT_TRUE(id.ok()) << id.status();
  auto stream = b->OpenEventStream(*id, "alice", 0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  Drained live;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  int tiles = 0;
  while (true) {
    JobEvent ev;
    live.end = (*stream)->Next(&ev, deadline);
    if (!live.end.ok()) break;
    live.events.push_back(ev);
    if (ev.kind == JobEvent::Kind::kTile && ++tiles == 12) held.release = true;
    if (ev.kind == JobEvent::Kind::kCompleted ||
        ev.kind == JobEvent::Kind::kFailed) {
      break;
    }
  }
  held.release = true;
  ASSERT_TRUE(live.end.ok()) << live.end;
  EXPECT_EQ(live.Last()->kind, JobEvent::Kind::kCompleted);
  EXPECT_EQ(live.Count(JobEvent::Kind::kAccepted), 1);
  // Every tile came live from the spool (stage warp), in order, and they
  // are the stored result's (stage stream, read after the end).
  auto later = b->OpenEventStream(*id, "alice", 0);
  ASSERT_TRUE(later.ok()) << later.status();
  Drained stored = Drain(later->get());
  ASSERT_TRUE(stored.end.ok()) << stored.end;
  std::vector<const JobEvent*> live_tiles, stored_tiles;
  for (const JobEvent& e : live.events) {
    if (e.kind == JobEvent::Kind::kTile) live_tiles.push_back(&e);
  }
  for (const JobEvent& e : stored.events) {
    if (e.kind == JobEvent::Kind::kTile) stored_tiles.push_back(&e);
  }
  ASSERT_EQ(live_tiles.size(), 12u);  // 181x217 in 64 px tiles
  ASSERT_EQ(stored_tiles.size(), 12u);
  for (size_t i = 0; i < live_tiles.size(); ++i) {
    EXPECT_EQ(live_tiles[i]->tile_index, static_cast<int64_t>(i));
    EXPECT_EQ(live_tiles[i]->stage, Stage::kWarp) << i;
    EXPECT_EQ(stored_tiles[i]->stage, Stage::kStream) << i;
    EXPECT_TRUE(live_tiles[i]->data == stored_tiles[i]->data) << i;
  }
  // b answers for the job it never ran; the spool went with the work files.
  auto info = b->GetJob(*id, "alice");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state, JobState::kCompleted);
  EXPECT_EQ(b->GetJob(*id, "bob").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/tiles"));
}

TEST_F(JobFleetTest, LimitsCountTheWholeFleet) {
  opts_.max_jobs_per_principal = 2;
  opts_.max_queue = 3;
  auto a = Replica("a", FakeEnv(/*threads=*/0));  // nobody claims
  auto b = Replica("b", FakeEnv(/*threads=*/0));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(a->CreateJob(BrainSpec(), "alice").ok());
  ASSERT_TRUE(b->CreateJob(BrainSpec(), "alice").ok());
  auto third = a->CreateJob(BrainSpec(), "alice");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(),
              HasSubstr("alice has 2 unfinished jobs in the fleet (limit 2)"));
  ASSERT_TRUE(b->CreateJob(BrainSpec(), "bob").ok());
  auto full = a->CreateJob(BrainSpec(), "carol");
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(),
              HasSubstr("queue full: 3 jobs queued in the fleet"));
}

TEST_F(JobFleetTest, DirectoriesNoRowAccountsForAreRemovedWhenStale) {
  opts_.fleet_orphan_age = absl::Seconds(2);
  auto a = Replica("a", FakeEnv(/*threads=*/0));
  ASSERT_NE(a, nullptr);
  // An upload whose replica died (no row), one still fresh, and a queued
  // job with its row: only the first goes.
  auto stale_id = NewJobId();
  auto fresh_id = NewJobId();
  ASSERT_TRUE(stale_id.ok() && fresh_id.ok());
  const std::string stale = JobDir(*stale_id), fresh = JobDir(*fresh_id);
  for (const std::string& dir : {stale, fresh}) {
    fs::create_directories(dir + "/inputs");
    std::ofstream(dir + "/inputs/fixed.png") << "partial";
    std::ofstream(dir + "/state") << "format=regserve-job-state-1\n";
  }
  auto queued = a->CreateJob(BrainSpec(), "alice");
  ASSERT_TRUE(queued.ok()) << queued.status();
  const auto old = fs::file_time_type::clock::now() - std::chrono::hours(2);
  for (const std::string& p :
       {stale, stale + "/inputs", stale + "/inputs/fixed.png", stale + "/state",
        JobDir(*queued)}) {
    fs::last_write_time(p, old);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (fs::exists(stale) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh));
  EXPECT_TRUE(fs::exists(JobDir(*queued)));
}

TEST_F(JobFleetTest, ReplicasTellTheirBudgetsAndGpus) {
  UseFakeGpu();
  opts_.replica_address = "gpu-host:50051";
  auto a = Replica("a", FakeEnv(/*threads=*/0));
  ASSERT_NE(a, nullptr);
  auto replicas = a->FleetReplicas();
  ASSERT_TRUE(replicas.ok()) << replicas.status();
  ASSERT_EQ(replicas->size(), 1u);
  const JobManager::FleetReplica& r = (*replicas)[0];
  EXPECT_EQ(r.name, "a");
  EXPECT_EQ(r.address, "gpu-host:50051");
  EXPECT_EQ(r.vram_budget_bytes, std::vector<uint64_t>{4ull << 30});
  EXPECT_EQ(r.gpu_names, std::vector<std::string>{"Fake GPU"});
  EXPECT_GT(r.ram_budget_bytes, 0u);
  EXPECT_TRUE(a->FleetHealth().ok());
}

TEST_F(JobFleetTest, QueuedJobShowsItsPlaceAndCancelReachesTheTable) {
  auto b = Replica("b", FakeEnv(/*threads=*/0));  // nobody claims
  ASSERT_NE(b, nullptr);
  auto first = b->CreateJob(BrainSpec(), "alice");
  auto second = b->CreateJob(BrainSpec(), "alice");
  ASSERT_TRUE(first.ok() && second.ok());
  auto info = b->GetJob(*second, "alice");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state, JobState::kQueued);
  EXPECT_EQ(info->queue_position, 2);
  ASSERT_TRUE(b->Cancel(*first, "alice").ok());
  EXPECT_EQ(b->GetJob(*first, "alice")->state, JobState::kCancelled);
  EXPECT_EQ(b->GetJob(*second, "alice")->queue_position, 1);
  auto page = b->ListJobPage("alice", 1, "");
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->jobs.size(), 1u);
  EXPECT_EQ(page->jobs[0].id, *second);  // newest first
  page = b->ListJobPage("alice", 1, page->next_page_token);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->jobs.size(), 1u);
  EXPECT_EQ(page->jobs[0].id, *first);
  EXPECT_TRUE(page->next_page_token.empty());
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
