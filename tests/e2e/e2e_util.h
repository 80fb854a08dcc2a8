// Copyright regserve authors.
//
// Helpers for the end-to-end tests: a real regserved process on a loopback
// port chosen at run time (port 0, read back from its "listening" line),
// regctl run as a subprocess, and image comparisons.
//
// Binaries are found through REGSERVE_BINARY_DIR, test images through
// REGSERVE_TEST_DATA (both set by CTest).
#ifndef REGSERVE_TESTS_E2E_E2E_UTIL_H_
#define REGSERVE_TESTS_E2E_E2E_UTIL_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace regserve {
namespace e2e {

std::string BinaryDir();
std::string TestData(const std::string& relative);
// A fresh directory under TMPDIR (or /tmp).
std::string MakeTempDir(const std::string& prefix);

// A regserved child process.
class Daemon {
 public:
  Daemon() = default;
  ~Daemon();  // SIGKILLs a daemon still running
  // Starts regserved with --listen=127.0.0.1:0 --data_dir=data_dir and
  // `flags`, waits (up to 60 s) for the listening line. False on failure
  // (the daemon's stderr is in stderr_path()).
  bool Start(const std::string& data_dir,
             const std::vector<std::string>& flags);
  // SIGTERM and wait; returns the exit status (-1 if killed by a signal).
  int Stop();
  // SIGKILL and reap.
  void Kill();
  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }
  std::string stderr_path() const { return log_dir_ + "/regserved.err"; }

 private:
  pid_t pid_ = -1;
  std::string address_;
  std::string log_dir_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs regctl with `args` (the --server flag is added first).
CommandResult RunRegctl(const std::string& server,
                        const std::vector<std::string>& args);

// Pids of the direct and indirect children of `pid` whose command name is
// `comm` (from /proc).
std::vector<pid_t> DescendantsNamed(pid_t pid, const std::string& comm);

// Normalised cross-correlation of two images read from files (first
// channel), over the first image's grid; the second is placed with the
// identity transform (0 outside it). NaN on error.
double FileNcc(const std::string& a, const std::string& b);
// True when both files decode to identical pixels.
bool SamePixels(const std::string& a, const std::string& b, std::string* why);

}  // namespace e2e
}  // namespace regserve

#endif  // REGSERVE_TESTS_E2E_E2E_UTIL_H_
