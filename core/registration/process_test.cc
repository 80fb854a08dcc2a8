// Copyright regserve authors.
//
// The posix process runner against /bin/sh: line splitting, exit codes,
// cancellation and deadlines killing the whole process group, no zombies and
// no leaked file descriptors.
#include "core/registration/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::set<int> OpenFds(const std::string& dir = "/proc/self/fd") {
  std::set<int> fds;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return fds;
  int self = dirfd(d);
  while (dirent* e = readdir(d)) {
    int fd;
    if (absl::SimpleAtoi(e->d_name, &fd) && fd != self) fds.insert(fd);
  }
  closedir(d);
  return fds;
}

bool ProcessGone(pid_t pid) {
  // Reaped (not even a zombie): kill fails with ESRCH.
  return kill(pid, 0) != 0 && errno == ESRCH;
}

// True when `pid` is gone or a zombie. A grandchild is re-parented to PID 1
// when its parent dies, and reaping it is PID 1's job (which may be slow in
// containers), so a zombie there is dead, not leaked.
bool DeadOrZombie(pid_t pid) {
  if (ProcessGone(pid)) return true;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return true;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() &&
         line[paren + 2] == 'Z';
}

// Waits up to `limit` for `pid` to die (signals are delivered asynchronously).
bool EventuallyDead(pid_t pid, absl::Duration limit = absl::Seconds(1)) {
  absl::Time end = absl::Now() + limit;
  while (absl::Now() < end) {
    if (DeadOrZombie(pid)) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return DeadOrZombie(pid);
}

ProcessOptions Sh(const std::string& script) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", script};
  return o;
}

TEST(ProcessRunner, SplitsOutputOnNewlineAndCarriageReturn) {
  std::vector<std::string> lines;
  // stderr first: both share one pipe, and "d" (unterminated) must still
  // come out as a line at EOF.
  ProcessOptions o = Sh("printf 'err\\n' >&2; printf 'a\\rb\\nc\\r\\nd'");
  o.on_line = [&](absl::string_view l) { lines.emplace_back(l); };
  auto r = ProcessRunner::Default()->Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_THAT(lines, ElementsAre("err", "a", "b", "c", "d"));
  EXPECT_THAT(r->tail, ElementsAre("err", "a", "b", "c", "d"));
  EXPECT_GT(r->peak_rss_bytes, 0);
  EXPECT_TRUE(ProcessGone(r->pid));
}

TEST(ProcessRunner, KeepsOnlyTheTail) {
  ProcessOptions o = Sh("for i in 1 2 3 4 5 6; do echo $i; done");
  o.tail_lines = 2;
  auto r = ProcessRunner::Default()->Run(o);
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->tail, ElementsAre("5", "6"));
}

TEST(ProcessRunner, ReportsExitCodesAndSignals) {
  auto r = ProcessRunner::Default()->Run(Sh("exit 3"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->term_signal, 0);
  r = ProcessRunner::Default()->Run(Sh("kill -9 $$"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->term_signal, SIGKILL);
}

TEST(ProcessRunner, RunsInTheWorkingDirectory) {
  std::vector<std::string> lines;
  ProcessOptions o = Sh("pwd");
  o.working_dir = "/usr";
  o.on_line = [&](absl::string_view l) { lines.emplace_back(l); };
  ASSERT_TRUE(ProcessRunner::Default()->Run(o).ok());
  EXPECT_THAT(lines, ElementsAre("/usr"));
}

TEST(ProcessRunner, MissingProgramIsUnavailable) {
  ProcessOptions o;
  o.argv = {"regserve-no-such-program-xyz"};
  auto r = ProcessRunner::Default()->Run(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("PATH"));
  o.argv = {"/nonexistent/elastix"};
  EXPECT_EQ(ProcessRunner::Default()->Run(o).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ProcessRunner::Default()->Run(ProcessOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ProcessRunner, CancelKillsTheWholeGroupQuickly) {
  CancelToken token;
  pid_t child = -1;
  pid_t grandchild = -1;
  ProcessOptions o = Sh("sleep 30 & echo $!; wait");
  o.cancel = &token;
  o.on_start = [&](pid_t p) { child = p; };
  o.on_line = [&](absl::string_view l) {
    int v;
    if (absl::SimpleAtoi(l, &v)) {
      grandchild = v;
      token.Cancel("client went away");
    }
  };
  absl::Time start = absl::Now();
  auto r = ProcessRunner::Default()->Run(o);
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("client went away"));
  EXPECT_LT(took, absl::Seconds(1.5));
  ASSERT_GT(child, 0);
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(ProcessGone(child));
  EXPECT_TRUE(EventuallyDead(grandchild));
}

TEST(ProcessRunner, EscalatesToSigkillWhenSigtermIsIgnored) {
  CancelToken token;
  pid_t child = -1;
  ProcessOptions o = Sh("trap '' TERM; echo ready; while :; do :; done");
  o.cancel = &token;
  o.kill_grace = absl::Milliseconds(200);
  o.on_start = [&](pid_t p) { child = p; };
  o.on_line = [&](absl::string_view) { token.Cancel("stop"); };
  absl::Time start = absl::Now();
  auto r = ProcessRunner::Default()->Run(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1.5));
  EXPECT_TRUE(ProcessGone(child));
}

TEST(ProcessRunner, DeadlineKillsTheChild) {
  pid_t child = -1;
  ProcessOptions o = Sh("sleep 30");
  o.deadline = absl::Now() + absl::Milliseconds(300);
  o.on_start = [&](pid_t p) { child = p; };
  absl::Time start = absl::Now();
  auto r = ProcessRunner::Default()->Run(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1.5));
  EXPECT_TRUE(ProcessGone(child));

  // The token's own deadline counts too.
  CancelToken token;
  token.set_deadline(absl::Now() + absl::Milliseconds(200));
  ProcessOptions o2 = Sh("sleep 30");
  o2.cancel = &token;
  EXPECT_EQ(ProcessRunner::Default()->Run(o2).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(ProcessRunner, LeaksNoFileDescriptors) {
  // Descriptors of this process that a child would inherit anyway.
  std::set<int> inheritable;
  for (int fd : OpenFds()) {
    int flags = fcntl(fd, F_GETFD);
    if (fd > 2 && flags >= 0 && !(flags & FD_CLOEXEC)) inheritable.insert(fd);
  }
  std::set<int> before = OpenFds();
  std::set<int> child_fds;
  for (int i = 0; i < 20; ++i) {
    child_fds.clear();
    ProcessOptions o = Sh("ls /proc/$$/fd; true");
    o.on_line = [&](absl::string_view l) {
      int fd;
      if (absl::SimpleAtoi(l, &fd)) child_fds.insert(fd);
    };
    ASSERT_TRUE(ProcessRunner::Default()->Run(o).ok());
  }
  EXPECT_EQ(OpenFds(), before);
  std::set<int> expected = {0, 1, 2};
  expected.insert(inheritable.begin(), inheritable.end());
  EXPECT_EQ(child_fds, expected);
}

TEST(ProcessRunner, ConcurrentRunsAreIndependent) {
  std::vector<std::thread> threads;
  std::vector<int> codes(4, -1);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([i, &codes] {
      auto r = ProcessRunner::Default()->Run(
          Sh(absl::StrCat("sleep 0.1; exit ", i + 10)));
      if (r.ok()) codes[i] = r->exit_code;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_THAT(codes, ElementsAre(10, 11, 12, 13));
}

TEST(ProcessRunner, PidFileExistsOnlyWhileTheChildRuns) {
  char tmpl[] = "/tmp/regserve_pidfile_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string pid_file = absl::StrCat(tmpl, "/child.pid");
  std::vector<std::string> lines;
  // The parent writes the file just after the spawn: the child waits for it
  // (a second at most) rather than race it.
  ProcessOptions o =
      Sh("i=0; while [ ! -s child.pid ] && [ $i -lt 100 ]; do sleep 0.01; "
         "i=$((i+1)); done; cat child.pid; echo $$");
  o.working_dir = tmpl;
  o.pid_file = pid_file;
  o.on_line = [&](absl::string_view l) { lines.emplace_back(l); };
  auto r = ProcessRunner::Default()->Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], lines[1]);  // the file held the child's own pid
  EXPECT_EQ(lines[0], absl::StrCat(r->pid));
  EXPECT_NE(access(pid_file.c_str(), F_OK), 0) << "pid file left behind";
  rmdir(tmpl);
}

// A child that outlived its parent: started in its own process group in
// `dir`, with a grandchild in the same group, as elastix is after a daemon
// was killed with SIGKILL.
pid_t StartOrphanLike(const std::string& dir, pid_t* grandchild) {
  const std::string marker = dir + "/grandchild";
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    if (chdir(dir.c_str()) != 0) _exit(127);
    execl("/bin/sh", "sh", "-c", "sleep 30 & echo $! > grandchild; wait",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  *grandchild = 0;
  for (int i = 0; i < 500 && *grandchild == 0; ++i) {
    std::ifstream in(marker);
    int g = 0;
    if (in >> g) *grandchild = g;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pid;
}

TEST(KillStaleChild, KillsTheGroupOfAChildRunningInThePidFilesDirectory) {
  char tmpl[] = "/tmp/regserve_stale_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  pid_t grandchild = 0;
  const pid_t pid = StartOrphanLike(dir, &grandchild);
  ASSERT_GT(pid, 0);
  ASSERT_GT(grandchild, 0);
  std::ofstream(dir + "/child.pid") << pid << "\n";
  EXPECT_EQ(KillStaleChild(dir + "/child.pid"), pid);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_TRUE(EventuallyDead(grandchild)) << "grandchild " << grandchild;
  EXPECT_NE(access((dir + "/child.pid").c_str(), F_OK), 0);
  // Nothing left to kill: a missing pid file, or one naming a dead process.
  EXPECT_EQ(KillStaleChild(dir + "/child.pid"), 0);
  std::ofstream(dir + "/child.pid") << pid << "\n";
  EXPECT_EQ(KillStaleChild(dir + "/child.pid"), 0);
  std::filesystem::remove_all(dir);
}

TEST(KillStaleChild, LeavesAProcessInAnotherDirectoryAlone) {
  // A recycled pid: the file names a live process that is not ours.
  char a[] = "/tmp/regserve_stale_a_XXXXXX";
  char b[] = "/tmp/regserve_stale_b_XXXXXX";
  ASSERT_NE(mkdtemp(a), nullptr);
  ASSERT_NE(mkdtemp(b), nullptr);
  pid_t grandchild = 0;
  const pid_t pid = StartOrphanLike(a, &grandchild);
  ASSERT_GT(pid, 0);
  std::ofstream(std::string(b) + "/child.pid") << pid << "\n";
  EXPECT_EQ(KillStaleChild(std::string(b) + "/child.pid"), 0);
  EXPECT_FALSE(DeadOrZombie(pid));
  kill(-pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  std::filesystem::remove_all(a);
  std::filesystem::remove_all(b);
}

// The child changes into working_dir before exec, so a relative program
// path must be resolved against the runner's own cwd, not the job's.
TEST(ProcessRunner, RelativeProgramPathsResolveFromTheCallersDirectory) {
  char home_tmpl[] = "/tmp/regserve_relprog_XXXXXX";
  char work_tmpl[] = "/tmp/regserve_relwork_XXXXXX";
  ASSERT_NE(mkdtemp(home_tmpl), nullptr);
  ASSERT_NE(mkdtemp(work_tmpl), nullptr);
  const std::string home = home_tmpl;
  const std::string work = work_tmpl;
  std::filesystem::create_directory(home + "/tools");
  const std::string script = home + "/tools/regserve-relprog";
  std::ofstream(script) << "#!/bin/sh\necho \"ran in $(pwd)\"\n";
  ASSERT_EQ(chmod(script.c_str(), 0755), 0);
  // Restores the cwd and PATH this test changes, whatever way it ends.
  struct Restore {
    std::string cwd = std::filesystem::current_path().string();
    std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
    ~Restore() {
      setenv("PATH", path.c_str(), 1);
      if (chdir(cwd.c_str()) != 0) std::abort();
    }
  } restore;
  ASSERT_EQ(chdir(home.c_str()), 0);

  std::vector<std::string> lines;
  ProcessOptions o;
  o.working_dir = work;  // has no tools/ subdirectory
  o.on_line = [&](absl::string_view l) { lines.emplace_back(l); };
  o.argv = {"./tools/regserve-relprog"};
  auto r = ProcessRunner::Default()->Run(o);
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) {
    EXPECT_EQ(r->exit_code, 0);
  }
  EXPECT_THAT(lines, ElementsAre(absl::StrCat("ran in ", work)));

  // The same through a relative PATH entry.
  lines.clear();
  setenv("PATH", absl::StrCat("tools:", restore.path).c_str(), 1);
  o.argv = {"regserve-relprog"};
  r = ProcessRunner::Default()->Run(o);
  setenv("PATH", restore.path.c_str(), 1);
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) {
    EXPECT_EQ(r->exit_code, 0);
  }
  EXPECT_THAT(lines, ElementsAre(absl::StrCat("ran in ", work)));

  std::filesystem::remove_all(home);
  std::filesystem::remove_all(work);
}

}  // namespace
}  // namespace regserve
