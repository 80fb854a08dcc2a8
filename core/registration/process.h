// Copyright regserve authors.
//
// ProcessRunner: runs a program as a child process in its own process group,
// streams its combined stdout/stderr line by line, and kills the whole group
// on cancellation or timeout. An interface so that tests (and the scheduler's
// tests) can fake elastix.
//
//   ProcessOptions opts;
//   opts.argv = {"elastix", "-f", "/abs/fixed.mhd", ...};
//   opts.on_line = [&](absl::string_view line) { parser.Consume(line); };
//   opts.cancel = token;             // polled every poll_interval
//   opts.deadline = absl::Now() + absl::Minutes(5);
//   REGSERVE_ASSIGN_OR_RETURN(ProcessResult r,
//                             ProcessRunner::Default()->Run(opts));
//   if (r.exit_code != 0) ...
//
// The posix implementation uses posix_spawn (no fork of a large parent), puts
// the child in a new process group with an empty signal mask and default
// signal dispositions, connects stdin to /dev/null and stdout+stderr to one
// O_CLOEXEC pipe read by a dedicated thread that splits on '\n' and '\r'.
// On cancellation or deadline it sends SIGTERM to the group, then SIGKILL
// after kill_grace, and always reaps the child before returning; after a
// normal exit it SIGKILLs anything left in the group. No zombies, no fds
// leaked into other children.
//
// Thread safety: Run is thread-safe; concurrent Runs are independent.
// on_line is called on an internal thread, serially, and must not block for
// long (the child stalls when the pipe fills).
#ifndef REGSERVE_CORE_REGISTRATION_PROCESS_H_
#define REGSERVE_CORE_REGISTRATION_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/common/cancel.h"

namespace regserve {

struct ProcessOptions {
  // argv[0] is the program: an absolute/relative path if it contains '/',
  // otherwise looked up in PATH.
  std::vector<std::string> argv;
  std::string working_dir;                              // empty: inherit
  std::function<void(absl::string_view line)> on_line;  // may be null
  const CancelToken* cancel = nullptr;                  // may be null
  absl::Time deadline = absl::InfiniteFuture();
  absl::Duration poll_interval = absl::Milliseconds(100);
  absl::Duration kill_grace = absl::Milliseconds(500);  // SIGTERM -> SIGKILL
  size_t tail_lines = 200;  // how many last output lines to keep
  // Called once with the child's pid right after it started (tests use it).
  std::function<void(pid_t)> on_start;
  // If set, the child's pid (which is also its process group) is written to
  // this file once it has started, and the file is removed once the child
  // has been reaped. The child runs in its own process group, so it outlives
  // a parent killed with SIGKILL; the file lets a restarted parent end it
  // (KillStaleChild). Best effort: a pid file that cannot be written does not
  // stop the run. Use a file in working_dir (KillStaleChild checks that).
  std::string pid_file;
};

// Ends the process group of a child that a previous parent started with
// `pid_file` and did not reap (the parent was killed): reads the pid, and if
// that process still runs with the pid file's directory as its working
// directory (so a recycled pid is never touched), sends SIGKILL to its
// process group and waits up to `wait` for it to go. Removes the pid file.
// Returns the pid it killed, or 0 if there was nothing to kill.
pid_t KillStaleChild(const std::string& pid_file,
                     absl::Duration wait = absl::Seconds(2));

struct ProcessResult {
  pid_t pid = -1;
  int exit_code = -1;             // valid when term_signal == 0
  int term_signal = 0;            // signal that ended the child, or 0
  std::vector<std::string> tail;  // last output lines
  // The child's peak resident set: VmHWM from /proc/<pid>/status, sampled
  // at every poll (so a peak in the last few ms may be missed). Falls back to
  // wait4's ru_maxrss, which Linux inflates to at least the parent's resident
  // set at spawn time, for a child that exits before the first sample.
  int64_t peak_rss_bytes = 0;
  double seconds = 0.0;  // wall time
  // User + system CPU time of the child (wait4), which with `seconds` says
  // how much of the machine it used.
  double cpu_seconds = 0.0;
};

class ProcessRunner {
 public:
  virtual ~ProcessRunner() = default;
  // Runs to completion. Returns the result for any exit (including a
  // non-zero exit code or death by signal). Errors: InvalidArgument (empty
  // argv), Unavailable (program not found / not executable), Cancelled
  // (cancel token fired; the token's reason is the message),
  // DeadlineExceeded (deadline or the token's deadline passed), Internal
  // (pipe/spawn failures). On error the child has already been killed and
  // reaped.
  virtual absl::StatusOr<ProcessResult> Run(const ProcessOptions& options) = 0;

  // The process-wide posix_spawn implementation (never null, thread-safe).
  static ProcessRunner* Default();
};

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_PROCESS_H_
