// Copyright regserve authors.
#include "core/registration/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace regserve {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         access(path.c_str(), X_OK) == 0;
}

// Makes `path` absolute against the current directory (lexically: symlinks
// are kept, so argv[0] and error messages show the path the user gave).
absl::StatusOr<std::string> Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  std::string cwd(256, '\0');
  while (getcwd(&cwd[0], cwd.size()) == nullptr) {
    if (errno != ERANGE || cwd.size() > (1u << 20)) {
      return absl::InternalError(absl::StrCat("cannot resolve '", path,
                                              "': getcwd: ", ErrnoText(errno)));
    }
    cwd.resize(cwd.size() * 2);
  }
  cwd.resize(std::strlen(cwd.c_str()));
  std::string rel = path;
  while (rel.size() > 2 && rel.compare(0, 2, "./") == 0) rel.erase(0, 2);
  return cwd == "/" ? absl::StrCat("/", rel) : absl::StrCat(cwd, "/", rel);
}

// Resolves argv[0] the way execvp would, in the parent, so that a missing
// program is reported before anything is spawned. The result is absolute:
// the child changes into working_dir before exec, so a relative program
// path (or a relative PATH entry) is resolved here, against our own cwd.
absl::StatusOr<std::string> ResolveProgram(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    if (IsExecutableFile(program)) return Absolute(program);
    return absl::UnavailableError(absl::StrCat("program '", program,
                                               "' does not exist or is not "
                                               "executable"));
  }
  const char* path_env = std::getenv("PATH");
  std::string path = path_env ? path_env : "/usr/local/bin:/usr/bin:/bin";
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", program);
    if (IsExecutableFile(candidate)) return Absolute(candidate);
  }
  return absl::UnavailableError(absl::StrCat(
      "program '", program, "' was not found in PATH (", path,
      "); install it (Debian: apt-get install elastix) or configure its "
      "absolute path"));
}

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { Reset(); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// Reads the child's output until EOF (or until told to give up after the
// child is gone), splitting into lines on '\n' and '\r'.
class OutputReader {
 public:
  OutputReader(int fd, std::function<void(absl::string_view)> on_line,
               size_t tail_lines)
      : fd_(fd), on_line_(std::move(on_line)), tail_lines_(tail_lines) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~OutputReader() { Finish(); }

  // Waits for EOF, at most `drain` after the call.
  void Finish(absl::Duration drain = absl::Seconds(2)) {
    if (!thread_.joinable()) return;
    give_up_at_ns_.store(absl::ToUnixNanos(absl::Now() + drain));
    thread_.join();
  }
  std::vector<std::string> TakeTail() {
    return std::vector<std::string>(tail_.begin(), tail_.end());
  }

 private:
  void Emit(absl::string_view line) {
    if (line.empty()) return;
    if (on_line_) on_line_(line);
    if (tail_lines_ > 0) {
      tail_.emplace_back(line);
      if (tail_.size() > tail_lines_) tail_.pop_front();
    }
  }

  void Loop() {
    std::string pending;
    char buf[8192];
    while (true) {
      if (absl::ToUnixNanos(absl::Now()) > give_up_at_ns_.load()) break;
      struct pollfd pfd = {fd_, POLLIN, 0};
      int pr = poll(&pfd, 1, 50);
      if (pr < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (pr == 0) continue;
      ssize_t n = read(fd_, buf, sizeof(buf));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        break;
      }
      if (n == 0) break;  // EOF: every writer is gone
      for (ssize_t i = 0; i < n; ++i) {
        char c = buf[i];
        if (c == '\n' || c == '\r') {
          Emit(pending);
          pending.clear();
        } else if (pending.size() < 64 * 1024) {
          pending.push_back(c);
        }
      }
    }
    Emit(pending);
  }

  int fd_;
  std::function<void(absl::string_view)> on_line_;
  size_t tail_lines_;
  std::deque<std::string> tail_;  // only touched by the thread until joined
  std::atomic<int64_t> give_up_at_ns_{INT64_MAX};
  std::thread thread_;
};

void WritePidFile(const std::string& path, pid_t pid) {
  FILE* f = std::fopen(path.c_str(), "we");
  if (f == nullptr) return;
  std::fprintf(f, "%d\n", static_cast<int>(pid));
  std::fclose(f);
}

// The real path of `path`, or "" if it does not resolve.
std::string RealPath(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return "";
  std::string out(resolved);
  std::free(resolved);
  return out;
}

// Whether `pid` exists and is not a zombie.
bool Running(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return false;
  char buf[512];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // "pid (comm) S ...": the state follows the last ')'.
  const char* close = std::strrchr(buf, ')');
  return close != nullptr && close[1] == ' ' && close[2] != 'Z' &&
         close[2] != 'X';
}

// User + system CPU seconds of a reaped child.
double CpuSeconds(const struct rusage& ru) {
  const auto sec = [](const struct timeval& t) {
    return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6;
  };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

// The child's own peak resident set ("VmHWM" in /proc/<pid>/status), in
// bytes, or 0 if unreadable. Unlike wait4's ru_maxrss this does not include
// the parent's resident set: posix_spawn's child shares the parent's memory
// until exec, and Linux carries that high-water mark into ru_maxrss.
int64_t ReadVmHwm(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/status", static_cast<int>(pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return 0;
  char line[256];
  int64_t kb = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::strncmp(line, "VmHWM:", 6) == 0) {
      kb = std::strtoll(line + 6, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return kb * 1024;
}

// Kills the process group led by `pid` (SIGTERM, then SIGKILL after `grace`)
// and reaps `pid`. Returns its wait status.
int KillAndReap(pid_t pid, absl::Duration grace, struct rusage* ru) {
  kill(-pid, SIGTERM);
  int status = 0;
  absl::Time give_up = absl::Now() + grace;
  while (absl::Now() < give_up) {
    pid_t r = wait4(pid, &status, WNOHANG, ru);
    if (r == pid) {
      kill(-pid, SIGKILL);  // stragglers in the group, if any
      return status;
    }
    if (r < 0 && errno != EINTR) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  kill(-pid, SIGKILL);
  while (wait4(pid, &status, 0, ru) < 0 && errno == EINTR) {
  }
  return status;
}

class PosixProcessRunner final : public ProcessRunner {
 public:
  absl::StatusOr<ProcessResult> Run(const ProcessOptions& options) override {
    if (options.argv.empty()) {
      return absl::InvalidArgumentError("ProcessOptions.argv is empty");
    }
    auto program = ResolveProgram(options.argv[0]);
    if (!program.ok()) return program.status();

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe2: ", ErrnoText(errno)));
    }
    FdCloser read_end(fds[0]);
    FdCloser write_end(fds[1]);
    FdCloser devnull(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (devnull.get() < 0) {
      return absl::InternalError(
          absl::StrCat("open /dev/null: ", ErrnoText(errno)));
    }

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, devnull.get(), 0);
    posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
    posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
    if (!options.working_dir.empty()) {
      posix_spawn_file_actions_addchdir_np(&actions,
                                           options.working_dir.c_str());
    }
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // New process group; clean signal state even if the server blocks
    // signals in its threads (it waits for them with sigwait).
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
                                        POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t empty_mask;
    sigemptyset(&empty_mask);
    posix_spawnattr_setsigmask(&attr, &empty_mask);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int sig : {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGCHLD, SIGUSR1,
                    SIGUSR2, SIGALRM}) {
      sigaddset(&defaults, sig);
    }
    posix_spawnattr_setsigdefault(&attr, &defaults);

    std::vector<char*> argv;
    for (const std::string& a : options.argv) {
      argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);

    absl::Time start = absl::Now();
    pid_t pid = -1;
    int rc = posix_spawn(&pid, program->c_str(), &actions, &attr, argv.data(),
                         environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    write_end.Reset();
    devnull.Reset();
    if (rc != 0) {
      if (rc == ENOENT || rc == EACCES || rc == ENOEXEC) {
        return absl::UnavailableError(
            absl::StrCat("cannot run '", *program, "': ", ErrnoText(rc)));
      }
      if (!options.working_dir.empty() && rc == ENOTDIR) {
        return absl::InternalError(absl::StrCat("cannot run '", *program,
                                                "' in '", options.working_dir,
                                                "': ", ErrnoText(rc)));
      }
      return absl::InternalError(
          absl::StrCat("posix_spawn '", *program, "': ", ErrnoText(rc)));
    }
    setpgid(pid, pid);  // already done by the child; harmless if so
    if (!options.pid_file.empty()) WritePidFile(options.pid_file, pid);
    if (options.on_start) options.on_start(pid);

    OutputReader reader(read_end.get(), options.on_line, options.tail_lines);
    ProcessResult result;
    result.pid = pid;
    struct rusage ru;
    std::memset(&ru, 0, sizeof(ru));
    int status = 0;
    absl::Status outcome = absl::OkStatus();
    absl::Duration step =
        std::min(options.poll_interval, absl::Milliseconds(20));
    if (step <= absl::ZeroDuration()) step = absl::Milliseconds(1);
    int64_t peak_rss = 0;
    while (true) {
      peak_rss = std::max(peak_rss, ReadVmHwm(pid));
      pid_t r = wait4(pid, &status, WNOHANG, &ru);
      if (r == pid) {
        kill(-pid, SIGKILL);  // anything the child left in its group
        break;
      }
      if (r < 0 && errno != EINTR) {
        outcome =
            absl::InternalError(absl::StrCat("wait4: ", ErrnoText(errno)));
        status = KillAndReap(pid, options.kill_grace, &ru);
        break;
      }
      absl::Status check = absl::OkStatus();
      if (options.cancel != nullptr) check = options.cancel->Check();
      if (check.ok() && absl::Now() >= options.deadline) {
        check = absl::DeadlineExceededError(absl::StrCat(
            "'", options.argv[0], "' did not finish before its deadline (ran ",
            absl::FormatDuration(absl::Now() - start), ")"));
      }
      if (!check.ok()) {
        outcome = check;
        status = KillAndReap(pid, options.kill_grace, &ru);
        break;
      }
      absl::SleepFor(step);
    }
    if (!options.pid_file.empty()) unlink(options.pid_file.c_str());
    reader.Finish();
    result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    result.tail = reader.TakeTail();
    result.cpu_seconds = CpuSeconds(ru);
    // Sampled VmHWM; wait4's figure only when no sample was taken (a child
    // that exited before the first poll), where it is an upper bound.
    result.peak_rss_bytes =
        peak_rss > 0 ? peak_rss : static_cast<int64_t>(ru.ru_maxrss) * 1024;
    if (WIFEXITED(status)) {
      result.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      result.term_signal = WTERMSIG(status);
    }
    if (!outcome.ok()) return outcome;
    return result;
  }
};

}  // namespace

pid_t KillStaleChild(const std::string& pid_file, absl::Duration wait) {
  FILE* f = std::fopen(pid_file.c_str(), "re");
  if (f == nullptr) return 0;
  int value = 0;
  const bool parsed = std::fscanf(f, "%d", &value) == 1;
  std::fclose(f);
  unlink(pid_file.c_str());
  const pid_t pid = static_cast<pid_t>(value);
  if (!parsed || pid <= 1 || !Running(pid)) return 0;
  const size_t slash = pid_file.rfind('/');
  const std::string dir =
      RealPath(slash == std::string::npos ? "." : pid_file.substr(0, slash));
  const std::string cwd = RealPath(absl::StrCat("/proc/", pid, "/cwd"));
  if (dir.empty() || cwd != dir) return 0;
  kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  const absl::Time until = absl::Now() + wait;
  while (Running(pid) && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pid;
}

ProcessRunner* ProcessRunner::Default() {
  static auto* const kRunner = new PosixProcessRunner();
  return kRunner;
}

}  // namespace regserve
