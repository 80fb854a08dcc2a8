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
// RunWatchFlood opens many Watch streams on one job at once (through the
// gRPC callback API, so the load generator itself needs no thread per
// stream) and counts the daemon's threads while they are all open:
//
//   WatchFloodOptions w;  w.address = ...;  w.daemon_pid = pid;
//   w.job_id = id;  w.streams = 1000;
//   WatchFloodReport f = RunWatchFlood(w);   // streams still open
//   ... cancel the job: every stream ends with CANCELLED ...
//   f = FinishWatchFlood(std::move(f), absl::Seconds(60));
//
// Thread safety: RunLoad and RunWatchFlood are re-entrant; they run their
// clients on their own threads (or gRPC's) and return when all are done.
#ifndef REGSERVE_TESTS_ROBUSTNESS_LOAD_H_
#define REGSERVE_TESTS_ROBUSTNESS_LOAD_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
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
  // Submit to the first event the client receives (p50, p95, max).
  double first_event_p50 = 0;
  double first_event_p95 = 0;
  double first_event_max = 0;
  // The result stream: first tile to `completed` (p50, p95, max), and the
  // largest gap between two consecutive events of that stream.
  double stream_p50 = 0;
  double stream_p95 = 0;
  double stream_max = 0;
  double event_gap_max = 0;
  // Daemon threads (/proc/PID/task): after the warm-up job, and the peak
  // during the load.
  int threads_baseline = 0;
  int threads_peak = 0;
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
// Threads of `pid` (entries of /proc/PID/task), or -1.
int ProcessThreads(pid_t pid);
// CPU time `pid` has used (user + system), or a negative duration.
absl::Duration ProcessCpuTime(pid_t pid);

// Runs the warm-up job, takes the baseline, runs the load, waits until the
// daemon is idle and reads the RSS again.
LoadReport RunLoad(const LoadOptions& options);

struct WatchFloodOptions {
  std::string address;
  pid_t daemon_pid = -1;  // for the thread count; -1 = none
  std::string job_id;
  int streams = 1000;
  int channels = 8;  // the streams are spread over this many connections
  // How long to wait for every stream to receive its first event.
  absl::Duration open_timeout = absl::Seconds(120);
  // Then how long to measure the daemon's CPU use with the streams open.
  absl::Duration idle_sample = absl::Seconds(2);
};

class WatchFlood;  // the open streams (load.cc)

struct WatchFloodReport {
  int streams = 0;
  // Streams that received at least one event, and those that ended early
  // (before FinishWatchFlood), with the first few of their statuses.
  int got_event = 0;
  int ended_early = 0;
  std::vector<std::string> early_errors;
  // Time from the first stream's start to the last stream's first event,
  // and each stream's start to its first event (p50, max).
  double open_seconds = 0;
  double first_event_p50 = 0;
  double first_event_max = 0;
  // Daemon threads before the streams were opened and once all were open,
  // and the daemon's CPU use (user + system, in cores) over `idle_sample`
  // while they were all open and waiting.
  int threads_before = 0;
  int threads_open = 0;
  double idle_cpu_cores = 0;
  // Set by FinishWatchFlood: streams that ended, how many with CANCELLED,
  // how long the last took, and the daemon's threads afterwards.
  int ended = 0;
  int ended_cancelled = 0;
  double end_seconds = 0;
  int threads_after = 0;
  std::shared_ptr<WatchFlood> flood;  // keeps the streams open

  std::string Summary() const;
};

// Opens `streams` Watch calls of `job_id` and waits until each has received
// an event (or ended, or open_timeout passed); the calls stay open.
WatchFloodReport RunWatchFlood(const WatchFloodOptions& options);
// Waits up to `timeout` for every stream to end (the caller has ended the
// job, or cancels them: `cancel` = true cancels each call first), fills the
// `ended` figures and closes the streams.
WatchFloodReport FinishWatchFlood(WatchFloodReport report, bool cancel,
                                  absl::Duration timeout);

}  // namespace load
}  // namespace regserve

#endif  // REGSERVE_TESTS_ROBUSTNESS_LOAD_H_
