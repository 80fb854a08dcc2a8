// Copyright regserve authors.
//
// The job table's own cost per job (docs/benchmarks.md, "Fleet job table"):
// a throwaway PostgreSQL on loopback (testing/postgres_server.h), `jobs`
// jobs enqueued, then `replicas` threads, each with its own connection,
// claiming, renewing once and completing until the queue is empty. Prints
// the latency of each call (p50, p95, max) and the jobs per second.
//
//   job_table_benchmark [jobs=2000] [replicas=4]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/fleet/job_table.h"
#include "core/fleet/testing/postgres_server.h"

namespace regserve {
namespace {

struct Samples {
  absl::Mutex mu;
  std::vector<double> ms ABSL_GUARDED_BY(mu);
  void Add(absl::Duration d) {
    absl::MutexLock lock(&mu);
    ms.push_back(absl::ToDoubleMilliseconds(d));
  }
  void Print(const char* name) {
    absl::MutexLock lock(&mu);
    std::sort(ms.begin(), ms.end());
    if (ms.empty()) return;
    std::printf("%-9s n=%-6zu p50 %.2f ms  p95 %.2f ms  max %.2f ms\n", name,
                ms.size(), ms[ms.size() / 2], ms[ms.size() * 95 / 100],
                ms.back());
  }
};

const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// Runs f, adds its wall time to s, exits on error (a benchmark has no
// partial result worth printing).
template <typename F>
auto Timed(Samples& s, const char* what, F f) {
  const absl::Time start = absl::Now();
  auto result = f();
  s.Add(absl::Now() - start);
  if (!result.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, StatusOf(result).ToString().c_str());
    std::exit(1);
  }
  return result;
}

int Main(int argc, char** argv) {
  const int jobs = argc > 1 ? std::atoi(argv[1]) : 2000;
  const int replicas = argc > 2 ? std::atoi(argv[2]) : 4;
  auto server = PostgresServer::Start();
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  auto conn = (*server)->CreateDatabase("bench");
  auto table = JobTable::Open(*conn);
  if (!conn.ok() || !table.ok()) {
    std::fprintf(stderr, "setup failed\n");
    return 1;
  }
  Samples enqueue, claim, renew, complete;
  for (int i = 0; i < jobs; ++i) {
    NewJob job;
    job.id = absl::StrCat("job", i);
    job.principal = "bench";
    job.priority = i % 4;
    job.spec = std::string(512, 'x');  // about a serialised spec's size
    job.needs = {uint64_t{1} << 30, uint64_t{1} << 30};
    (void)Timed(enqueue, "enqueue",
                [&] { return (*table)->Enqueue(job).status(); });
  }
  const ReplicaBudgets budgets{uint64_t{64} << 30, uint64_t{80} << 30};
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int r = 0; r < replicas; ++r) {
    threads.emplace_back([&, r] {
      auto mine = JobTable::Open(*conn);
      if (!mine.ok()) std::exit(1);
      const std::string owner = absl::StrCat("replica", r);
      while (true) {
        auto lease = Timed(claim, "claim", [&] {
          return (*mine)->Claim(owner, budgets, absl::Seconds(30));
        });
        if (!lease->has_value()) return;
        (void)Timed(renew, "renew", [&] {
          return (*mine)->RenewLease(**lease, absl::Seconds(30)).status();
        });
        (void)Timed(complete, "complete",
                    [&] { return (*mine)->CompleteWithFence(**lease, {}); });
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf(
      "%d jobs, %d replicas: %.2f s, %.0f jobs/s "
      "(claim + renew + complete each)\n",
      jobs, replicas, seconds, jobs / seconds);
  enqueue.Print("enqueue");
  claim.Print("claim");
  renew.Print("renew");
  complete.Print("complete");
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
