// Copyright regserve authors.
//
// Fleet mode's costs (docs/benchmarks.md, "Fleet mode"), with a throwaway
// PostgreSQL and real daemons on loopback, small pairs (the ITK brain
// slice, rigid), each job through regctl as a user would:
//
//   1. per job, N jobs one after another: one plain daemon, a fleet of one
//      replica, a fleet of three (all submitted through replica 0), and a
//      fleet of three whose replica 0 is too small to run them (every job
//      runs on another replica; its client's events come from the table);
//   2. the time from kill -9 of the replica running a job (held in its
//      registration) to the job running again elsewhere, and to its end,
//      at --fleet_lease (default here 3 s).
//
//   fleet_benchmark [--jobs 10] [--lease 3s] [--kills 3]
//
// Needs the PostgreSQL server binaries and elastix (as the tests do).
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/fleet/job_table.h"
#include "core/fleet/testing/postgres_server.h"
#include "tests/e2e/e2e_util.h"

ABSL_FLAG(int, jobs, 10, "Jobs per configuration (part 1).");
ABSL_FLAG(absl::Duration, lease, absl::Seconds(3), "--fleet_lease.");
ABSL_FLAG(int, kills, 3, "Kill -9 runs (part 2).");

namespace regserve {
namespace e2e {
namespace {

std::vector<std::string> DaemonFlags() {
  return {"--stream_tile_size=64", "--elastix_threads=1", "--cpu_slots=1",
          absl::StrCat("--fleet_lease=",
                       absl::FormatDuration(absl::GetFlag(FLAGS_lease)))};
}

std::vector<std::string> SubmitArgs(const std::string& out) {
  return {"submit",
          "--fixed",
          TestData("itk_brain/BrainProtonDensitySlice.png"),
          "--moving",
          TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png"),
          "--output",
          out,
          "--transform",
          "rigid"};
}

struct Summary {
  double median = 0, mean = 0, min = 0, max = 0;
};

Summary Summarise(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = v[v.size() / 2];
  for (double x : v) s.mean += x / static_cast<double>(v.size());
  return s;
}

// Seconds per job, `n` jobs one after another through `server`.
std::vector<double> TimeJobs(const std::string& server, int n) {
  const std::string dir = MakeTempDir("regserve_fleet_bench_out");
  std::vector<double> seconds;
  for (int i = 0; i < n; ++i) {
    const absl::Time start = absl::Now();
    CommandResult r =
        RunRegctl(server, SubmitArgs(absl::StrCat(dir, "/", i, ".png")));
    if (r.exit_code != 0) {
      std::fprintf(stderr, "job failed: %s\n", r.err.c_str());
      continue;
    }
    seconds.push_back(absl::ToDoubleSeconds(absl::Now() - start));
  }
  return seconds;
}

void Print(const char* what, const std::vector<double>& v) {
  const Summary s = Summarise(v);
  std::printf(
      "%-34s %3zu jobs  median %.3f s  mean %.3f s  min %.3f  max %.3f\n", what,
      v.size(), s.median, s.mean, s.min, s.max);
}

// A fleet of `n` replicas on a fresh database and data directory.
std::vector<std::unique_ptr<Daemon>> StartFleet(
    PostgresServer* pg, const std::string& db_name, int n,
    const std::string& elastix, const std::string& first_flag = "") {
  auto db = pg->CreateDatabase(db_name);
  std::vector<std::unique_ptr<Daemon>> fleet;
  if (!db.ok()) return fleet;
  const std::string data = MakeTempDir("regserve_fleet_bench_data");
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> flags = DaemonFlags();
    flags.push_back("--fleet_db=" + *db);
    flags.push_back(absl::StrCat("--fleet_replica=r", i));
    if (!elastix.empty()) flags.push_back("--elastix=" + elastix);
    if (i == 0 && !first_flag.empty()) flags.push_back(first_flag);
    auto d = std::make_unique<Daemon>();
    if (!d->Start(data, flags)) {
      std::fprintf(stderr, "replica %d did not start\n", i);
      return {};
    }
    fleet.push_back(std::move(d));
  }
  return fleet;
}

void PartOne(PostgresServer* pg) {
  const int n = absl::GetFlag(FLAGS_jobs);
  std::printf(
      "1. per job, %d jobs one after another (regctl submit, 181x217 "
      "rigid)\n",
      n);
  {
    Daemon one;
    std::vector<std::string> flags = DaemonFlags();
    flags.pop_back();  // no --fleet_lease without a fleet
    if (!one.Start(MakeTempDir("regserve_fleet_bench_single"), flags)) return;
    Print("single host", TimeJobs(one.address(), n));
  }
  for (int replicas : {1, 3}) {
    auto fleet =
        StartFleet(pg, absl::StrCat("bench_part1_", replicas), replicas, "");
    if (fleet.empty()) return;
    Print(absl::StrCat("fleet of ", replicas, ", through replica 0").c_str(),
          TimeJobs(fleet[0]->address(), n));
  }
  // Every job runs on another replica than the one its client talks to
  // (too small for it): the client's events come from the table.
  auto fleet = StartFleet(pg, "bench_part1_remote", 3, "", "--ram_budget=50M");
  if (fleet.empty()) return;
  Print("fleet of 3, run elsewhere", TimeJobs(fleet[0]->address(), n));
}

// One kill: seconds from the kill to the job running again, and to its end.
bool KillOnce(PostgresServer* pg, int round, double* to_rerun, double* to_end) {
  const std::string wrapper_dir = MakeTempDir("regserve_fleet_bench_wrap");
  {
    std::ofstream w(wrapper_dir + "/elastix");
    w << "#!/bin/sh\nwhile [ -f '" << wrapper_dir
      << "/slow' ]; do sleep 0.05; done\nexec elastix \"$@\"\n";
  }
  chmod((wrapper_dir + "/elastix").c_str(), 0755);
  std::ofstream(wrapper_dir + "/slow") << "1\n";
  const std::string db_name = absl::StrCat("bench_kill_", round);
  auto fleet = StartFleet(pg, db_name, 3, wrapper_dir + "/elastix");
  if (fleet.empty()) return false;
  auto table = JobTable::Open(pg->ConnectionString(db_name));
  if (!table.ok()) return false;
  CommandResult submitted;
  std::thread submit([&] {
    submitted =
        RunRegctl(fleet[0]->address(),
                  SubmitArgs(MakeTempDir("regserve_fleet_bench_k") + "/k.png"));
  });
  // The job, running under its first lease.
  std::optional<JobRow> row;
  for (int i = 0; i < 3000 && !row; ++i) {
    auto rows = (*table)->List(JobListFilter());
    if (rows.ok() && !rows->empty() &&
        (*rows)[0].state == JobRowState::kRunning) {
      row = (*rows)[0];
    } else {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  if (!row) return false;
  absl::SleepFor(absl::Milliseconds(300));  // in its registration
  const int owner = row->lease_owner.back() - '0';
  const std::vector<pid_t> children =
      DescendantsNamed(fleet[owner]->pid(), "elastix");
  const absl::Time killed = absl::Now();
  fleet[owner]->Kill();
  for (pid_t child : children) kill(child, SIGKILL);
  std::remove((wrapper_dir + "/slow").c_str());
  *to_rerun = -1;
  while (absl::Now() - killed < absl::Seconds(60)) {
    auto now = (*table)->Get(row->id);
    if (now.ok() && now->lease_token > row->lease_token && *to_rerun < 0) {
      *to_rerun = absl::ToDoubleSeconds(absl::Now() - killed);
    }
    if (now.ok() && IsTerminal(now->state)) {
      *to_end = absl::ToDoubleSeconds(absl::Now() - killed);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  submit.join();
  return *to_rerun >= 0;
}

void PartTwo(PostgresServer* pg) {
  std::printf("2. kill -9 of the running replica (3 replicas, lease %s)\n",
              absl::FormatDuration(absl::GetFlag(FLAGS_lease)).c_str());
  std::vector<double> rerun, end;
  for (int k = 0; k < absl::GetFlag(FLAGS_kills); ++k) {
    double a = 0, b = 0;
    if (!KillOnce(pg, k, &a, &b)) {
      std::fprintf(stderr, "kill run %d failed\n", k);
      continue;
    }
    rerun.push_back(a);
    end.push_back(b);
  }
  Print("kill -9 -> claimed again", rerun);
  Print("kill -9 -> job finished", end);
}

}  // namespace
}  // namespace e2e
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // Where CTest would point the helpers, unless the caller did.
  setenv("REGSERVE_BINARY_DIR", REGSERVE_BENCH_BINARY_DIR, 0);
  setenv("REGSERVE_TEST_DATA", REGSERVE_BENCH_TEST_DATA, 0);
  auto pg = regserve::PostgresServer::Start();
  if (!pg.ok()) {
    std::fprintf(stderr, "no PostgreSQL: %s\n", pg.status().ToString().c_str());
    return 1;
  }
  regserve::e2e::PartOne(pg->get());
  regserve::e2e::PartTwo(pg->get());
  return 0;
}
