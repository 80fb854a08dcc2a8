// Copyright regserve authors.
//
// Fleet mode end to end (issue 12): a real PostgreSQL started by the test
// (core/fleet/testing/postgres_server.h; skipped without its binaries) and
// three regserved replicas on loopback sharing one data directory, driven
// by regctl and the client library. Small images (the ITK brain slice) and
// rigid transforms keep it fast; where a test needs a job to stay in its
// registration, elastix is a script that sleeps while a file exists.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "core/common/file_util.h"
#include "core/fleet/job_table.h"
#include "core/fleet/testing/postgres_server.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}
std::string ReadAll(const std::string& path) {
  return ReadFileToString(path).value_or("");
}
void WriteAll(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

const std::vector<std::string> kFlags = {"--stream_tile_size=64",
                                         "--elastix_threads=1", "--cpu_slots=1",
                                         "--fleet_lease=3s"};

// regserved run to its exit: the exit code and its stderr.
CommandResult RunDaemonToExit(const std::vector<std::string>& flags) {
  const std::string dir = MakeTempDir("regserve_fleet_exit");
  std::string cmd = BinaryDir() + "/server/regserved --listen=127.0.0.1:0" +
                    " --data_dir=" + dir + "/data";
  for (const std::string& f : flags) absl::StrAppend(&cmd, " '", f, "'");
  absl::StrAppend(&cmd, " >", dir, "/out 2>", dir, "/err </dev/null");
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(dir + "/out");
  r.err = ReadAll(dir + "/err");
  return r;
}

// Running, not a zombie (an orphan's parent, init here, may reap late).
bool Alive(pid_t pid) {
  const std::string stat = ReadAll(absl::StrCat("/proc/", pid, "/stat"));
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() &&
         stat[paren + 2] != 'Z';
}

class FleetE2eTest : public ::testing::Test {
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
    const std::string name = absl::AsciiStrToLower(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    auto db = pg_->CreateDatabase(name);
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *db;
    data_ = MakeTempDir("regserve_fleet_data");
    // An elastix that sleeps while `slow` exists (tests that need a job
    // caught in its registration create it); its first run also while
    // `stuck` exists (a run that must never end by itself).
    wrapper_dir_ = MakeTempDir("regserve_fleet_wrapper");
    const std::string& w = wrapper_dir_;
    WriteAll(w + "/elastix", absl::StrCat("#!/bin/sh\n"
                                          "if mkdir '",
                                          w,
                                          "/first' 2>/dev/null; then\n"
                                          "  while [ -f '",
                                          w,
                                          "/stuck' ]; do sleep 0.1; done\n"
                                          "fi\n"
                                          "while [ -f '",
                                          w,
                                          "/slow' ]; do sleep 0.1; done\n"
                                          "exec elastix \"$@\"\n"));
    chmod((wrapper_dir_ + "/elastix").c_str(), 0755);
  }

  void StartReplicas(int n, std::vector<std::string> extra = {}) {
    for (int i = 0; i < n; ++i) {
      std::vector<std::string> flags = kFlags;
      flags.push_back("--fleet_db=" + db_);
      flags.push_back(absl::StrCat("--fleet_replica=r", i));
      flags.push_back("--elastix=" + wrapper_dir_ + "/elastix");
      flags.insert(flags.end(), extra.begin(), extra.end());
      auto d = std::make_unique<Daemon>();
      ASSERT_TRUE(d->Start(data_, flags)) << ReadAll(d->stderr_path());
      replicas_.push_back(std::move(d));
    }
  }

  void TearDown() override {
    for (auto& d : replicas_) {
      if (d->pid() <= 0) continue;
      kill(d->pid(), SIGCONT);  // a test that froze one and failed
      d->Stop();
    }
    std::remove((wrapper_dir_ + "/slow").c_str());
    std::remove((wrapper_dir_ + "/stuck").c_str());
  }

  RegistrationClient Client(int replica) {
    RegistrationClient::Options o;
    o.address = replicas_[replica]->address();
    return RegistrationClient(o);
  }

  // What one plain daemon gives for the rigid pair (the reference).
  std::string Reference() {
    Daemon one;
    EXPECT_TRUE(one.Start(MakeTempDir("regserve_fleet_single"), kFlags));
    const std::string out = MakeTempDir("regserve_fleet_ref") + "/ref.png";
    CommandResult r = RunRegctl(
        one.address(), {"submit", "--fixed", Fixed(), "--moving", Moving(),
                        "--output", out, "--transform", "rigid"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    one.Stop();
    return out;
  }

  std::unique_ptr<JobTable> Table() {
    auto table = JobTable::Open(db_);
    EXPECT_TRUE(table.ok()) << table.status();
    return table.ok() ? std::move(*table) : nullptr;
  }

  // The replica whose GetServerInfo lists `job` as running; -1 if none
  // within `wait`.
  int OwnerOf(const std::string& job, absl::Duration wait) {
    const absl::Time deadline = absl::Now() + wait;
    while (absl::Now() < deadline) {
      for (size_t i = 0; i < replicas_.size(); ++i) {
        if (replicas_[i]->pid() <= 0) continue;
        v1::ServerInfo info;
        if (!Client(static_cast<int>(i)).GetServerInfo(&info).ok()) continue;
        for (const std::string& id : info.running_job_ids()) {
          if (id == job) return static_cast<int>(i);
        }
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return -1;
  }

  // Waits until replica `i` runs a registration child (elastix, here the
  // wrapper): the job is in its registration, past decode and the start.
  bool WaitForElastix(int i, absl::Duration wait) {
    const absl::Time deadline = absl::Now() + wait;
    while (DescendantsNamed(replicas_[i]->pid(), "elastix").empty()) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return true;
  }

  // Submits the rigid pair through `replica` on a thread; the job id is
  // set as soon as the daemon names it.
  std::thread SubmitAsync(int replica, v1::JobSpec spec, std::string* job_id,
                          std::atomic<bool>* named, grpc::Status* status) {
    return std::thread([this, replica, spec, job_id, named, status] {
      RegistrationClient client = Client(replica);
      *status =
          client.Submit(spec, {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
            if (!*named) {
              *job_id = e.job_id();
              *named = true;
            }
            return true;
          });
    });
  }

  static PostgresServer* pg_;
  static std::string* skip_;
  std::string db_;
  std::string data_;
  std::string wrapper_dir_;
  std::vector<std::unique_ptr<Daemon>> replicas_;
};

PostgresServer* FleetE2eTest::pg_ = nullptr;
std::string* FleetE2eTest::skip_ = nullptr;

TEST_F(FleetE2eTest, TwelveJobsFromFourClientsRunOnceEachAndMatchOneDaemon) {
  const std::string reference = Reference();
  StartReplicas(3);
  const std::string out_dir = MakeTempDir("regserve_fleet_out");
  std::vector<std::thread> clients;
  std::vector<CommandResult> results(12);
  // Clients 0-2 go through one replica each (a different one per job);
  // client 3 names them all, and gRPC spreads its calls (round_robin).
  const std::string all =
      absl::StrCat(replicas_[0]->address(), ",", replicas_[1]->address(), ",",
                   replicas_[2]->address());
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int j = 0; j < 3; ++j) {
        const int n = c * 3 + j;
        results[n] = RunRegctl(
            c == 3 ? all : replicas_[n % 3]->address(),
            {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
             absl::StrCat(out_dir, "/", n, ".png"), "--transform", "rigid"});
      }
    });
  }
  for (std::thread& t : clients) t.join();
  for (int n = 0; n < 12; ++n) {
    ASSERT_EQ(results[n].exit_code, 0) << n << ": " << results[n].err;
    std::string why;
    EXPECT_TRUE(
        SamePixels(reference, absl::StrCat(out_dir, "/", n, ".png"), &why))
        << n << ": " << why;
  }
  // Each job was claimed once (lease token 1), none lost a lease, and the
  // work was spread over the replicas.
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  auto rows = table->List(JobListFilter());
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 12u);
  std::set<std::string> owners;
  for (const JobRow& row : *rows) {
    EXPECT_EQ(row.state, JobRowState::kSucceeded) << row.id << " " << row.error;
    EXPECT_EQ(row.lease_token, 1) << row.id;
    EXPECT_EQ(row.attempts, 0) << row.id;
    owners.insert(row.lease_owner);
  }
  EXPECT_GE(owners.size(), 2u);
  // Any replica answers for any job, and tells of the whole fleet.
  v1::ListJobsResponse listed;
  ASSERT_TRUE(Client(2).ListJobs(&listed).ok());
  EXPECT_EQ(listed.jobs_size(), 12);
  CommandResult info = RunRegctl(all, {"server-info"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("3 replica(s):"), std::string::npos) << info.out;
  for (const char* name : {"r0 at", "r1 at", "r2 at"}) {
    EXPECT_NE(info.out.find(name), std::string::npos) << info.out;
  }
  EXPECT_EQ(RunRegctl(all + ",", {"server-info"}).exit_code, 2);
}

TEST_F(FleetE2eTest, KillNineOfTheRunningReplicaRerunsTheJobElsewhere) {
  const std::string reference = Reference();
  StartReplicas(3);
  WriteAll(wrapper_dir_ + "/stuck", "1\n");  // the first run never ends
  std::string job_id;
  std::atomic<bool> named{false};
  grpc::Status submitted;
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  std::thread submit = SubmitAsync(0, spec, &job_id, &named, &submitted);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!named && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(named.load());
  const int owner = OwnerOf(job_id, absl::Seconds(30));
  ASSERT_GE(owner, 0);
  ASSERT_TRUE(WaitForElastix(owner, absl::Seconds(30)));
  // A Watch attached through a replica that is neither the owner nor the
  // submitter (unless there is no other).
  const int watcher = owner == 1 ? 2 : 1;
  const std::string watched = MakeTempDir("regserve_fleet_watch") + "/w.png";
  CommandResult watch_result;
  std::thread watch([&] {
    watch_result = RunRegctl(replicas_[watcher]->address(),
                             {"watch", job_id, "--output", watched});
  });
  // Three more jobs queued through the replica about to die: their
  // clients lose their streams with it, the jobs must not be lost.
  std::vector<std::thread> more;
  for (int n = 0; n < 3; ++n) {
    more.emplace_back([&, n] {
      (void)RunRegctl(
          replicas_[owner]->address(),
          {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
           absl::StrCat(watched, ".", n, ".png"), "--transform", "rigid"});
    });
  }
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  const absl::Time queued_by = absl::Now() + absl::Seconds(30);
  while (absl::Now() < queued_by &&
         table->List(JobListFilter()).value_or(std::vector<JobRow>()).size() <
             4) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Milliseconds(500));  // in its registration
  // The daemon dies, the host does not: its elastix (the wrapper) lives on,
  // in its own process group, until the re-run on this host ends it.
  const std::vector<pid_t> orphans =
      DescendantsNamed(replicas_[owner]->pid(), "elastix");
  EXPECT_FALSE(orphans.empty());
  replicas_[owner]->Kill();
  watch.join();
  submit.join();
  for (std::thread& t : more) t.join();
  ASSERT_EQ(watch_result.exit_code, 0) << watch_result.err;
  std::string why;
  EXPECT_TRUE(SamePixels(reference, watched, &why)) << why;
  // The submitter's own stream went through replica 0: it completes too
  // unless replica 0 was the one killed.
  if (owner != 0) {
    EXPECT_TRUE(submitted.ok()) << submitted.error_message();
  }
  auto row = table->Get(job_id);
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->state, JobRowState::kSucceeded);
  EXPECT_EQ(row->lease_token, 2);  // claimed again after the lease expired
  EXPECT_NE(row->lease_owner, absl::StrCat("r", owner));
  // Every job queued when the replica died ends, run by the others.
  const absl::Time done_by = absl::Now() + absl::Seconds(60);
  std::vector<JobRow> rows;
  bool all_done = false;
  while (!all_done && absl::Now() < done_by) {
    rows = table->List(JobListFilter()).value_or(std::vector<JobRow>());
    all_done = rows.size() == 4u;
    for (const JobRow& r : rows) all_done = all_done && IsTerminal(r.state);
    if (!all_done) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(rows.size(), 4u);
  for (const JobRow& r : rows) {
    EXPECT_EQ(r.state, JobRowState::kSucceeded) << r.id << " " << r.error;
  }
  for (pid_t orphan : orphans) {
    EXPECT_FALSE(Alive(orphan)) << "the dead replica's elastix " << orphan;
    kill(orphan, SIGKILL);
  }
}

TEST_F(FleetE2eTest, ReplicaThatComesBackLateCannotCommitOverTheRerun) {
  const std::string reference = Reference();
  StartReplicas(2);
  WriteAll(wrapper_dir_ + "/stuck", "1\n");  // the first run waits
  std::string job_id;
  std::atomic<bool> named{false};
  grpc::Status submitted;
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  std::thread submit = SubmitAsync(0, spec, &job_id, &named, &submitted);
  const absl::Time named_by = absl::Now() + absl::Seconds(30);
  while (!named && absl::Now() < named_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(named.load());
  const int owner = OwnerOf(job_id, absl::Seconds(30));
  ASSERT_GE(owner, 0);
  ASSERT_TRUE(WaitForElastix(owner, absl::Seconds(30)));
  const int other = 1 - owner;
  // The owner freezes (a long GC pause, a VM migration): its lease expires
  // and the other replica runs the job to its end.
  ASSERT_EQ(kill(replicas_[owner]->pid(), SIGSTOP), 0);
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  absl::StatusOr<JobRow> row;
  const absl::Time rerun_by = absl::Now() + absl::Seconds(30);
  while (absl::Now() < rerun_by) {
    row = table->Get(job_id);
    if (row.ok() && IsTerminal(row->state)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(row.ok()) << row.status();
  if (row->state != JobRowState::kSucceeded) {
    std::remove((wrapper_dir_ + "/stuck").c_str());
    kill(replicas_[owner]->pid(), SIGCONT);
    submit.join();
  }
  ASSERT_EQ(row->state, JobRowState::kSucceeded)
      << JobRowStateName(row->state) << " " << row->lease_owner << " lease "
      << row->lease_token << " " << row->error << "\n"
      << ReadAll(replicas_[other]->stderr_path());
  EXPECT_EQ(row->lease_owner, absl::StrCat("r", other));
  const std::string result = data_ + "/jobs/" + job_id + "/result.tif";
  struct stat before;
  ASSERT_EQ(stat(result.c_str(), &before), 0);
  // The owner wakes with its first run going on (its elastix finishes now):
  // its lease is gone, so it stops without touching the row or the result.
  std::remove((wrapper_dir_ + "/stuck").c_str());
  ASSERT_EQ(kill(replicas_[owner]->pid(), SIGCONT), 0);
  bool idle = false;
  const absl::Time idle_by = absl::Now() + absl::Seconds(20);
  while (!idle && absl::Now() < idle_by) {
    v1::ServerInfo info;
    idle = Client(owner).GetServerInfo(&info).ok() &&
           info.running_job_ids_size() == 0 && info.ram_reserved_bytes() == 0;
    if (!idle) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(idle) << "the late replica still runs the job";
  row = table->Get(job_id);
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->lease_owner, absl::StrCat("r", other));
  EXPECT_EQ(row->lease_token, 2);
  struct stat after;
  ASSERT_EQ(stat(result.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino) << "the result was replaced";
  const std::string out = MakeTempDir("regserve_fleet_late") + "/late.png";
  CommandResult watch = RunRegctl(replicas_[owner]->address(),
                                  {"watch", job_id, "--output", out});
  EXPECT_EQ(watch.exit_code, 0) << watch.err;
  std::string why;
  EXPECT_TRUE(SamePixels(reference, out, &why)) << why;
  submit.join();
}

TEST_F(FleetE2eTest, CancelThroughAnotherReplicaStopsTheRunWithinTwoSeconds) {
  StartReplicas(3);
  WriteAll(wrapper_dir_ + "/slow", "1\n");
  std::string job_id;
  std::atomic<bool> named{false};
  grpc::Status submitted;
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  std::thread submit = SubmitAsync(0, spec, &job_id, &named, &submitted);
  const absl::Time named_by = absl::Now() + absl::Seconds(30);
  while (!named && absl::Now() < named_by)
    absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(named.load());
  const int owner = OwnerOf(job_id, absl::Seconds(30));
  ASSERT_GE(owner, 0);
  const pid_t owner_pid = replicas_[owner]->pid();
  // Its registration child (the wrapper's sh) is running.
  const absl::Time started_by = absl::Now() + absl::Seconds(30);
  while (DescendantsNamed(owner_pid, "elastix").empty() &&
         absl::Now() < started_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_FALSE(DescendantsNamed(owner_pid, "elastix").empty());
  const int other = (owner + 1) % 3;
  v1::CancelResponse cancelled;
  const absl::Time asked = absl::Now();
  ASSERT_TRUE(Client(other).Cancel(job_id, &cancelled).ok());
  bool stopped = false;
  while (!stopped && absl::Now() < asked + absl::Seconds(2)) {
    v1::JobStatus status;
    stopped = DescendantsNamed(owner_pid, "elastix").empty() &&
              Client(other).GetJob(job_id, &status).ok() &&
              status.state() == v1::JOB_STATE_CANCELLED;
    if (!stopped) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(stopped) << "not stopped within 2 s of the Cancel";
  submit.join();
  EXPECT_EQ(submitted.error_code(), grpc::StatusCode::CANCELLED)
      << submitted.error_message();
  // The owner released its reservations.
  bool released = false;
  for (int i = 0; i < 100 && !released; ++i) {
    v1::ServerInfo info;
    released = Client(owner).GetServerInfo(&info).ok() &&
               info.ram_reserved_bytes() == 0 && info.cpu_running() == 0;
    if (!released) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(released);
}

TEST_F(FleetE2eTest, SigtermHandsTheRunningJobBackAtOnce) {
  StartReplicas(2, {"--fleet_lease=30s"});
  WriteAll(wrapper_dir_ + "/slow", "1\n");
  std::string job_id;
  std::atomic<bool> named{false};
  grpc::Status submitted;
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  std::thread submit = SubmitAsync(0, spec, &job_id, &named, &submitted);
  const absl::Time named_by = absl::Now() + absl::Seconds(30);
  while (!named && absl::Now() < named_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(named.load());
  const int owner = OwnerOf(job_id, absl::Seconds(30));
  ASSERT_GE(owner, 0);
  // With a 30 s lease, only the hand-back lets the other replica run it
  // within the wait below.
  const absl::Time stopped = absl::Now();
  EXPECT_EQ(replicas_[owner]->Stop(), 0);
  std::remove((wrapper_dir_ + "/slow").c_str());
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  absl::StatusOr<JobRow> row;
  while (absl::Now() - stopped < absl::Seconds(20)) {
    row = table->Get(job_id);
    if (row.ok() && IsTerminal(row->state)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->state, JobRowState::kSucceeded) << row->error;
  EXPECT_EQ(row->lease_owner, absl::StrCat("r", 1 - owner));
  EXPECT_EQ(row->attempts, 0);  // handed back, not lost
  submit.join();
}

TEST_F(FleetE2eTest, ReplicaWithTooSmallABudgetNeverClaimsTheJob) {
  // r0 can run the pair; r1's 50 MB budget cannot (its registration
  // alone reserves about 80 MB). Jobs sent to r1 are planned for r0.
  StartReplicas(1);
  std::vector<std::string> small = kFlags;
  small.push_back("--fleet_db=" + db_);
  small.push_back("--fleet_replica=r1");
  small.push_back("--ram_budget=50M");
  auto d = std::make_unique<Daemon>();
  ASSERT_TRUE(d->Start(data_, small)) << ReadAll(d->stderr_path());
  replicas_.push_back(std::move(d));
  const std::string out_dir = MakeTempDir("regserve_fleet_small");
  for (int n = 0; n < 3; ++n) {
    CommandResult r = RunRegctl(
        replicas_[1]->address(),
        {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
         absl::StrCat(out_dir, "/", n, ".png"), "--transform", "rigid"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  auto rows = table->List(JobListFilter());
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  for (const JobRow& row : *rows) {
    EXPECT_EQ(row.state, JobRowState::kSucceeded) << row.error;
    EXPECT_EQ(row.lease_owner, "r0");
  }
}

TEST_F(FleetE2eTest, JobThatFitsNoReplicaIsRefusedWithTheNumbers) {
  std::vector<std::string> small = kFlags;
  small.push_back("--fleet_db=" + db_);
  small.push_back("--ram_budget=50M");
  for (const char* name : {"--fleet_replica=r0", "--fleet_replica=r1"}) {
    std::vector<std::string> flags = small;
    flags.push_back(name);
    auto d = std::make_unique<Daemon>();
    ASSERT_TRUE(d->Start(data_, flags)) << ReadAll(d->stderr_path());
    replicas_.push_back(std::move(d));
  }
  CommandResult r = RunRegctl(
      replicas_[0]->address(),
      {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
       MakeTempDir("regserve_fleet_none") + "/x.png", "--transform", "rigid"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no replica of the fleet can run it: r1 (RAM budget"),
            std::string::npos)
      << r.err;
}

TEST_F(FleetE2eTest, FinishedJobsAreRemovedAfterTheirRetention) {
  StartReplicas(2, {"--retention=2s"});
  CommandResult r = RunRegctl(
      replicas_[0]->address(),
      {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
       MakeTempDir("regserve_fleet_ret") + "/r.png", "--transform", "rigid"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  auto rows = table->List(JobListFilter());
  ASSERT_TRUE(rows.ok() && rows->size() == 1u);
  const std::string dir = data_ + "/jobs/" + (*rows)[0].id;
  EXPECT_EQ(access(dir.c_str(), F_OK), 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  bool gone = false;
  while (!gone && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(200));
    gone = absl::IsNotFound(table->Get((*rows)[0].id).status()) &&
           access(dir.c_str(), F_OK) != 0;
  }
  EXPECT_TRUE(gone) << "row or directory still there 15 s later";
}

TEST_F(FleetE2eTest, DatabaseLostMakesHealthNotServingAndRestartCarriesOn) {
  StartReplicas(2);
  bool serving = false;
  ASSERT_TRUE(Client(1).CheckHealth("", &serving).ok());
  EXPECT_TRUE(serving);
  // Six jobs: some running (held in their registration), the rest queued,
  // when the database goes away.
  WriteAll(wrapper_dir_ + "/slow", "1\n");
  const std::string out_dir = MakeTempDir("regserve_fleet_restart");
  std::vector<CommandResult> results(6);
  std::vector<std::thread> clients;
  for (int n = 0; n < 6; ++n) {
    clients.emplace_back([&, n] {
      results[n] = RunRegctl(
          replicas_[n % 2]->address(),
          {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
           absl::StrCat(out_dir, "/", n, ".png"), "--transform", "rigid"});
    });
  }
  std::unique_ptr<JobTable> table = Table();
  ASSERT_NE(table, nullptr);
  const absl::Time queued_by = absl::Now() + absl::Seconds(30);
  while (absl::Now() < queued_by &&
         table->List(JobListFilter()).value_or(std::vector<JobRow>()).size() <
             6) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(pg_->Stop().ok());
  const absl::Time lost_by = absl::Now() + absl::Seconds(10);
  while (serving && absl::Now() < lost_by) {
    absl::SleepFor(absl::Milliseconds(100));
    ASSERT_TRUE(Client(1).CheckHealth("", &serving).ok());
  }
  EXPECT_FALSE(serving) << "still SERVING 10 s after the database stopped";
  ASSERT_TRUE(pg_->Restart().ok());
  const absl::Time back_by = absl::Now() + absl::Seconds(15);
  while (!serving && absl::Now() < back_by) {
    absl::SleepFor(absl::Milliseconds(100));
    ASSERT_TRUE(Client(1).CheckHealth("", &serving).ok());
  }
  EXPECT_TRUE(serving);
  std::remove((wrapper_dir_ + "/slow").c_str());
  for (std::thread& t : clients) t.join();
  for (int n = 0; n < 6; ++n) {
    EXPECT_EQ(results[n].exit_code, 0) << n << ": " << results[n].err;
  }
  auto rows = Table()->List(JobListFilter());
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 6u);
  for (const JobRow& row : *rows) {
    EXPECT_EQ(row.state, JobRowState::kSucceeded) << row.error;
  }
}

TEST_F(FleetE2eTest, BadOrUnreachableDatabaseExitsOneWithAClearError) {
  CommandResult bad = RunDaemonToExit({"--fleet_db=host=x port=notaport="});
  EXPECT_EQ(bad.exit_code, 1) << bad.err;
  EXPECT_NE(bad.err.find("fleet database"), std::string::npos) << bad.err;
  // A port where nothing listens (the test server's, once stopped, would
  // race with other tests: a fresh one).
  CommandResult away = RunDaemonToExit(
      {"--fleet_db=host=127.0.0.1 port=1 dbname=x connect_timeout=2"});
  EXPECT_EQ(away.exit_code, 1) << away.err;
  EXPECT_NE(away.err.find("fleet database"), std::string::npos) << away.err;
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
