// Copyright regserve authors.
//
// A load generator for regserved: N concurrent clients, each on its own
// channel, submit small jobs (upload + rigid registration + warp + streamed
// result) back to back for a bounded time or a fixed number of jobs, while
// the daemon's resident memory is sampled from /proc. Used by the
// regserve_load program (scripts/load_test.sh) and by load_e2e_test.
//
//   LoadOptions o;  o.address = "127.0.0.1:50051";  o.daemon_pid = pid;
//   o.clients = 32;  o.duration = absl::Seconds(60);
//   LoadReport r = RunLoad(o);
//   printf("%s", r.Summary().c_str());
//
// Thread safety: RunLoad is re-entrant; it runs its clients on its own
// threads and returns when all are done.
#ifndef REGSERVE_TESTS_ROBUSTNESS_LOAD_H_
#define REGSERVE_TESTS_ROBUSTNESS_LOAD_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace regserve {
namespace load {

struct LoadOptions {
  std::string address;
  pid_t daemon_pid = -1;  // for RSS sampling; -1 = none
  int clients = 32;
  // Each client submits until `duration` has passed (checked before each
  // submission) or until it has submitted `jobs_per_client` (0 = no limit).
  absl::Duration duration = absl::Seconds(60);
  int jobs_per_client = 0;
  std::string fixed_path;
  std::string moving_path;
  // How long to wait for the daemon to be idle after the load, and then how
  // long to let it settle before reading its RSS.
  absl::Duration idle_timeout = absl::Seconds(120);
  absl::Duration settle = absl::Seconds(3);
};

struct LoadReport {
  int submitted = 0;
  int completed = 0;
  int failed = 0;
  std::vector<std::string> failures;  // the first few error messages
  double seconds = 0;                 // first submission to last completion
  double jobs_per_second = 0;
  double p50_seconds = 0;  // job latency: submit to completed
  double p95_seconds = 0;
  double max_seconds = 0;
  // Daemon RSS in bytes: after one warm-up job, the peak during the load,
  // and after the load once idle and settled.
  int64_t rss_baseline = 0;
  int64_t rss_peak = 0;
  int64_t rss_after = 0;
  bool warm_up_ok = false;

  // (after - baseline) / baseline.
  double RssGrowth() const;
  // Human-readable figures, several lines.
  std::string Summary() const;
};

// Resident set size of `pid` in bytes (VmRSS), or -1.
int64_t ProcessRss(pid_t pid);

// Runs the warm-up job, takes the baseline, runs the load, waits until the
// daemon is idle and reads the RSS again.
LoadReport RunLoad(const LoadOptions& options);

}  // namespace load
}  // namespace regserve

#endif  // REGSERVE_TESTS_ROBUSTNESS_LOAD_H_
