// Copyright regserve authors.
//
// Faults, end to end, against a real regserved on loopback:
//   - kill -9 of the daemon during an upload, during registration and during
//     the warp, each followed by a restart on the same --data_dir: no
//     finished result is lost and every job either completes or fails with a
//     reason;
//   - elastix crashing (SIGSEGV) and hanging (killed at
//     --registration_timeout, DEADLINE_EXCEEDED, no process left);
//   - a full --data_dir (a small tmpfs mounted for the test; skipped when
//     the test may not mount, see README.md);
//   - clients that vanish mid-upload, mid-result and mid-watch leave no file
//     descriptor or thread behind.
//
// The daemon runs elastix through a wrapper script (--elastix) whose
// behaviour the test switches through a file, so that each window is hit
// deterministically: "slow" sleeps before exec'ing the real elastix, "crash"
// kills itself with SIGSEGV, "hang" sleeps forever. Every wrapper run
// appends its pid to elastix.pids.
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "core/common/file_util.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

using C = grpc::StatusCode;

std::string ReadAll(const std::string& path) {
  return ReadFileToString(path).value_or("");  // "" when missing
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}
// 5312x2988 RGB: its full-resolution warp takes long enough to be caught.
std::string Photo() { return TestData("photos/seeding_5312x2988.jpg"); }

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout,
             absl::Duration poll = absl::Milliseconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(poll);
  }
  return done();
}

bool ProcessAlive(pid_t pid) {
  // A zombie still answers kill(0); read its state instead.
  const std::string stat = ReadAll(absl::StrCat("/proc/", pid, "/stat"));
  if (stat.empty()) return false;
  const size_t close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ||
         stat[close + 2] != 'Z';
}

int CountFds(pid_t pid) {
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

// Thread counts of `pid` by name (/proc/<pid>/task/*/comm).
std::map<std::string, int> ThreadsByName(pid_t pid) {
  std::map<std::string, int> names;
  const std::string dir = absl::StrCat("/proc/", pid, "/task");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string comm = ReadAll(dir + "/" + e->d_name + "/comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    ++names[comm];
  }
  closedir(d);
  return names;
}

// Threads that regserved's own code starts carry the program's name (they
// are not renamed); every other name belongs to a gRPC-internal pool
// (default-executor, event_engine, timer_manager, ...), whose size gRPC
// adjusts to load on its own schedule.
int OwnThreads(const std::map<std::string, int>& names) {
  const auto it = names.find("regserved");
  return it == names.end() ? 0 : it->second;
}
int PoolThreads(const std::map<std::string, int>& names) {
  int n = 0;
  for (const auto& [name, count] : names)
    if (name != "regserved") n += count;
  return n;
}

// "name xN, ..." (for messages).
std::string ThreadNames(pid_t pid) {
  std::string out;
  for (const auto& [name, n] : ThreadsByName(pid))
    absl::StrAppend(&out, name, " x", n, ", ");
  return out;
}

// The elastix wrapper and its control files.
class Wrapper {
 public:
  Wrapper() : dir_(MakeTempDir("regserve_wrapper")) {
    const std::string script = absl::StrCat(
        "#!/bin/sh\n"
        "dir='",
        dir_, "'\n",
        "echo $$ >> \"$dir/elastix.pids\"\n"
        "case \"$(cat \"$dir/mode\" 2>/dev/null)\" in\n"
        "  slow) sleep \"$(cat \"$dir/delay\")\"; exec '",
        REGSERVE_ELASTIX,
        "' \"$@\" ;;\n"
        "  crash) kill -SEGV $$ ;;\n"
        "  hang) exec sleep 100000 ;;\n"
        "  *) exec '",
        REGSERVE_ELASTIX,
        "' \"$@\" ;;\n"
        "esac\n");
    WriteAll(path(), script);
    chmod(path().c_str(), 0755);
    SetMode("pass");
  }
  std::string path() const { return dir_ + "/elastix"; }
  std::string flag() const { return "--elastix=" + path(); }
  void SetMode(const std::string& mode, int delay_s = 0) {
    WriteAll(dir_ + "/delay", absl::StrCat(delay_s, "\n"));
    WriteAll(dir_ + "/mode", mode + "\n");
  }
  // Pids of every wrapper run so far, in order.
  std::vector<pid_t> Pids() const {
    std::vector<pid_t> pids;
    for (absl::string_view line : absl::StrSplit(
             ReadAll(dir_ + "/elastix.pids"), '\n', absl::SkipEmpty())) {
      int pid = 0;
      if (absl::SimpleAtoi(line, &pid)) pids.push_back(pid);
    }
    return pids;
  }

 private:
  std::string dir_;
};

std::vector<std::string> BaseFlags() {
  return {"--stream_tile_size=64", "--elastix_threads=1", "--cpu_slots=2"};
}

std::vector<std::string> With(std::vector<std::string> flags,
                              const std::vector<std::string>& more) {
  flags.insert(flags.end(), more.begin(), more.end());
  return flags;
}

std::unique_ptr<RegistrationClient> ClientOf(const Daemon& daemon) {
  RegistrationClient::Options o;
  o.address = daemon.address();
  return std::make_unique<RegistrationClient>(o);
}

v1::JobSpec RigidSpec(const std::string& label) {
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  spec.set_client_label(label);
  return spec;
}

// Submits and hangs up once the job is accepted (the job goes on).
std::string SubmitAndHangUp(RegistrationClient* client, v1::JobSpec spec,
                            const std::string& fixed,
                            const std::string& moving) {
  std::string id;
  client->Submit(spec, {fixed, moving}, [&](const v1::JobEvent& e) {
    if (e.has_accepted()) {
      id = e.job_id();
      return false;
    }
    return true;
  });
  return id;
}

absl::StatusOr<v1::JobStatus> Job(RegistrationClient* client,
                                  const std::string& id) {
  v1::JobStatus st;
  grpc::Status s = client->GetJob(id, &st);
  if (!s.ok()) return absl::UnknownError(s.error_message());
  return st;
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

// Every job the daemon knows is finished: completed, or failed/cancelled
// with a reason.
void ExpectEveryJobResolved(RegistrationClient* client) {
  v1::ListJobsResponse list;
  ASSERT_TRUE(WaitFor(
      [&] {
        list.Clear();
        if (!client->ListJobs(&list).ok()) return false;
        for (const v1::JobStatus& j : list.jobs()) {
          if (!IsTerminal(j.state())) return false;
        }
        return true;
      },
      absl::Seconds(180), absl::Milliseconds(200)));
  for (const v1::JobStatus& j : list.jobs()) {
    SCOPED_TRACE(j.job_id() + " " + j.client_label());
    if (j.state() != v1::JOB_STATE_COMPLETED) {
      EXPECT_FALSE(j.failure().message().empty());
      EXPECT_NE(j.failure().code(), 0);
    }
    fprintf(stderr, "job %s (%s): %s attempts=%d %s\n", j.job_id().c_str(),
            j.client_label().c_str(), v1::JobState_Name(j.state()).c_str(),
            j.attempts(), j.failure().message().c_str());
  }
}

// `regctl watch` of a job into a fresh file; returns the file (empty on
// failure, with the reason in *err).
std::string WatchToFile(const Daemon& daemon, const std::string& id,
                        std::string* err) {
  const std::string out = MakeTempDir("regserve_fault_out") + "/r.png";
  CommandResult r = RunRegctl(daemon.address(), {"watch", id, "--output", out});
  if (r.exit_code != 0) {
    *err = absl::StrCat("regctl watch exit ", r.exit_code, ": ", r.err);
    return "";
  }
  return out;
}

TEST(FaultTest, KillNineDuringUploadRegistrationAndWarpThenRestart) {
  const std::string data = MakeTempDir("regserve_fault_data");
  Wrapper wrapper;
  const std::vector<std::string> flags = With(BaseFlags(), {wrapper.flag()});

  // A finished job whose result must survive everything below.
  std::string done_id, done_copy;
  std::string upload_id, reg_id, warp_id;
  {
    Daemon d1;
    ASSERT_TRUE(d1.Start(data, flags)) << ReadAll(d1.stderr_path());
    auto client = ClientOf(d1);
    ASSERT_TRUE(client
                    ->Submit(RigidSpec("finished"), {Fixed(), Moving()},
                             [&](const v1::JobEvent& e) {
                               done_id = e.job_id();
                               return true;
                             })
                    .ok());
    std::string err;
    done_copy = WatchToFile(d1, done_id, &err);
    ASSERT_FALSE(done_copy.empty()) << err;

    // kill -9 during an upload: the client has sent the spec and part of the
    // bytes and keeps the stream open.
    std::atomic<bool> release{false};
    grpc::Status upload_status;
    std::thread uploader([&] {
      grpc::ClientContext ctx;
      auto stream = client->stub()->Submit(&ctx);
      const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
      v1::SubmitRequest spec;
      *spec.mutable_spec() = RigidSpec("upload-kill");
      spec.mutable_spec()->mutable_fixed()->mutable_upload()->set_byte_size(
          f.size());
      spec.mutable_spec()->mutable_fixed()->mutable_upload()->set_file_name(
          "f.png");
      spec.mutable_spec()->mutable_moving()->mutable_upload()->set_byte_size(
          m.size());
      spec.mutable_spec()->mutable_moving()->mutable_upload()->set_file_name(
          "m.png");
      stream->Write(spec);
      v1::SubmitRequest chunk;
      chunk.mutable_chunk()->set_role(v1::IMAGE_ROLE_FIXED);
      chunk.mutable_chunk()->set_data(f);
      stream->Write(chunk);
      chunk.mutable_chunk()->set_role(v1::IMAGE_ROLE_MOVING);
      chunk.mutable_chunk()->set_data(m.substr(0, m.size() / 2));
      stream->Write(chunk);
      while (!release) absl::SleepFor(absl::Milliseconds(10));
      v1::JobEvent e;
      while (stream->Read(&e)) {
      }
      upload_status = stream->Finish();
    });
    const bool uploading = WaitFor(
        [&] {
          v1::ListJobsResponse list;
          if (!client->ListJobs(&list).ok()) return false;
          for (const v1::JobStatus& j : list.jobs()) {
            if (j.client_label() == "upload-kill" &&
                j.state() == v1::JOB_STATE_UPLOADING) {
              upload_id = j.job_id();
              return true;
            }
          }
          return false;
        },
        absl::Seconds(30));
    // Let the moving half reach the disk before the kill.
    absl::SleepFor(absl::Milliseconds(300));
    d1.Kill();
    release = true;
    uploader.join();
    ASSERT_TRUE(uploading);
    EXPECT_EQ(upload_status.error_code(), C::UNAVAILABLE)
        << upload_status.error_message();
  }

  std::vector<pid_t> orphans;
  {
    // The wrapper sleeps far longer than this test waits, so only the
    // restarted daemon can end the run that d2 leaves behind.
    wrapper.SetMode("slow", 120);
    Daemon d2;
    ASSERT_TRUE(d2.Start(data, flags)) << ReadAll(d2.stderr_path());
    auto client = ClientOf(d2);
    // The interrupted upload failed with a reason; the finished job is intact.
    absl::StatusOr<v1::JobStatus> up = Job(client.get(), upload_id);
    ASSERT_TRUE(up.ok()) << up.status();
    EXPECT_EQ(up->state(), v1::JOB_STATE_FAILED);
    EXPECT_NE(up->failure().message().find("upload interrupted"),
              std::string::npos)
        << up->failure().message();
    std::string err, why;
    const std::string again = WatchToFile(d2, done_id, &err);
    ASSERT_FALSE(again.empty()) << err;
    EXPECT_TRUE(SamePixels(again, done_copy, &why)) << why;

    // kill -9 during registration: the wrapper has started (it sleeps
    // before exec'ing elastix) and the job is in its registration stage.
    const size_t runs = wrapper.Pids().size();
    reg_id = SubmitAndHangUp(client.get(), RigidSpec("registration-kill"),
                             Fixed(), Moving());
    ASSERT_FALSE(reg_id.empty());
    ASSERT_TRUE(WaitFor(
        [&] {
          absl::StatusOr<v1::JobStatus> st = Job(client.get(), reg_id);
          return wrapper.Pids().size() > runs && st.ok() &&
                 st->stage() == v1::STAGE_REGISTRATION;
        },
        absl::Seconds(60)));
    orphans = wrapper.Pids();
    orphans.erase(orphans.begin(), orphans.begin() + runs);
    d2.Kill();
  }

  {
    wrapper.SetMode("pass");
    Daemon d3;
    ASSERT_TRUE(d3.Start(data, flags)) << ReadAll(d3.stderr_path());
    auto client = ClientOf(d3);
    std::string err;
    const std::string reg_out = WatchToFile(d3, reg_id, &err);
    ASSERT_FALSE(reg_out.empty()) << err;
    EXPECT_GT(FileNcc(Fixed(), reg_out), FileNcc(Fixed(), Moving()) + 0.2);
    absl::StatusOr<v1::JobStatus> st = Job(client.get(), reg_id);
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->attempts(), 2);
    // elastix runs in its own process group and is not killed with the
    // daemon: the restarted daemon ends the run the killed one left behind
    // (its pid file in the job's registration directory) when it recovers
    // the job, long before the wrapper's sleep would have ended.
    ASSERT_FALSE(orphans.empty());
    for (pid_t pid : orphans) {
      EXPECT_FALSE(ProcessAlive(pid))
          << "orphaned elastix " << pid << " still running";
    }
    EXPECT_NE(ReadAll(d3.stderr_path()).find("left by the previous daemon"),
              std::string::npos)
        << ReadAll(d3.stderr_path());

    // kill -9 during the warp: a 16 MP RGB image, registered at 0.05 MP and
    // warped at full resolution with cubic interpolation on the CPU.
    v1::JobSpec spec = RigidSpec("warp-kill");
    spec.set_max_registration_megapixels(0.05);
    spec.set_interpolation(v1::INTERPOLATION_CUBIC);
    spec.set_device(v1::DEVICE_CPU);
    warp_id = SubmitAndHangUp(client.get(), spec, Photo(), Photo());
    ASSERT_FALSE(warp_id.empty());
    bool warping = false;
    ASSERT_TRUE(WaitFor(
        [&] {
          absl::StatusOr<v1::JobStatus> st = Job(client.get(), warp_id);
          warping = st.ok() && st->state() == v1::JOB_STATE_RUNNING &&
                    st->stage() == v1::STAGE_WARP;
          return warping || (st.ok() && IsTerminal(st->state()));
        },
        absl::Seconds(120), absl::Milliseconds(5)));
    ASSERT_TRUE(warping) << "the job finished before the warp was seen";
    d3.Kill();
  }

  Daemon d4;
  ASSERT_TRUE(d4.Start(data, flags)) << ReadAll(d4.stderr_path());
  auto client = ClientOf(d4);
  std::string err, why;
  const std::string warp_out = WatchToFile(d4, warp_id, &err);
  ASSERT_FALSE(warp_out.empty()) << err;
  absl::StatusOr<v1::JobStatus> st = Job(client.get(), warp_id);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->state(), v1::JOB_STATE_COMPLETED);
  EXPECT_EQ(st->attempts(), 2);
  EXPECT_EQ(st->output().width(), 5312);
  const std::string again = WatchToFile(d4, done_id, &err);
  ASSERT_FALSE(again.empty()) << err;
  EXPECT_TRUE(SamePixels(again, done_copy, &why)) << why;
  ExpectEveryJobResolved(client.get());
  EXPECT_EQ(d4.Stop(), 0);
}

TEST(FaultTest, ElastixCrashAndHang) {
  // The timeout must leave room for the real registrations of this test
  // (about 1 s each) on a loaded 2-core machine: at 5 s, the final "pass"
  // run timed out while an ASan build shared the cores.
  const std::string data = MakeTempDir("regserve_fault_elastix");
  Wrapper wrapper;
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(
      data, With(BaseFlags(), {wrapper.flag(), "--registration_timeout=15s"})))
      << ReadAll(daemon.stderr_path());
  auto client = ClientOf(daemon);
  const auto run = [&](const std::string& label, std::string* message) {
    grpc::Status s = client->Submit(RigidSpec(label), {Fixed(), Moving()},
                                    [&](const v1::JobEvent& e) {
                                      if (e.has_failed())
                                        *message = e.failed().message();
                                      return true;
                                    });
    return s;
  };
  const auto settled = [&] {
    return WaitFor(
        [&] {
          v1::ServerInfo info;
          return DescendantsNamed(daemon.pid(), "sleep").empty() &&
                 DescendantsNamed(daemon.pid(), "elastix").empty() &&
                 client->GetServerInfo(&info).ok() &&
                 info.ram_reserved_bytes() == 0 && info.cpu_running() == 0;
        },
        absl::Seconds(10));
  };

  // elastix killed by SIGSEGV: the job fails with the signal in its message.
  wrapper.SetMode("crash");
  std::string message;
  grpc::Status s = run("crash", &message);
  EXPECT_EQ(s.error_code(), C::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(message.find("signal 11"), std::string::npos) << message;
  EXPECT_TRUE(settled());

  // elastix hangs: killed at --registration_timeout, DEADLINE_EXCEEDED, and
  // the process is gone.
  wrapper.SetMode("hang");
  const size_t runs = wrapper.Pids().size();
  const absl::Time start = absl::Now();
  s = run("hang", &message);
  const double took = absl::ToDoubleSeconds(absl::Now() - start);
  EXPECT_EQ(s.error_code(), C::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_GE(took, 15.0);
  EXPECT_LT(took, 60.0);
  ASSERT_GT(wrapper.Pids().size(), runs);
  const pid_t hung = wrapper.Pids().back();
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(hung); }, absl::Seconds(10)))
      << "the hung elastix " << hung << " was not killed";
  EXPECT_TRUE(settled());

  // And the daemon still works.
  wrapper.SetMode("pass");
  s = run("after", &message);
  EXPECT_TRUE(s.ok()) << s.error_message();
  bool serving = false;
  ASSERT_TRUE(client->CheckHealth("", &serving).ok());
  EXPECT_TRUE(serving);
  EXPECT_EQ(daemon.Stop(), 0);
}

// Mounts a tmpfs of `bytes` on `dir` (root with CAP_SYS_ADMIN only).
bool MountSmallFs(const std::string& dir, int64_t bytes, std::string* why) {
  const std::string options = absl::StrCat("size=", bytes, ",mode=0700");
  if (mount("regserve_test", dir.c_str(), "tmpfs", 0, options.c_str()) != 0) {
    *why = absl::StrCat("mount tmpfs: ", strerror(errno));
    return false;
  }
  return true;
}

// Fills the file system of `dir` with `filler` until fewer than `leave`
// bytes are free.
void Fill(const std::string& filler, int64_t leave, const std::string& dir) {
  std::ofstream out(filler, std::ios::binary | std::ios::app);
  const std::string block(4096, 'x');
  for (;;) {
    struct statvfs st;
    if (statvfs(dir.c_str(), &st) != 0) return;
    const int64_t free_bytes = static_cast<int64_t>(st.f_bavail) * st.f_frsize;
    if (free_bytes < leave) return;
    out.write(block.data(), block.size());
    out.flush();
    if (!out) return;
  }
}

TEST(FaultTest, FullDataDirGivesAClearErrorAndNoCorruptJob) {
  const std::string mnt = MakeTempDir("regserve_fault_small_fs");
  std::string why;
  if (!MountSmallFs(mnt, 16 << 20, &why)) {
    GTEST_SKIP() << "cannot mount a small file system here (" << why
                 << "); run as root with CAP_SYS_ADMIN";
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { umount2(dir.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string data = mnt + "/data";
  const std::string filler = mnt + "/filler";
  std::string done_id, done_copy, err;
  {
    Daemon daemon;
    ASSERT_TRUE(daemon.Start(data, BaseFlags()))
        << ReadAll(daemon.stderr_path());
    auto client = ClientOf(daemon);
    ASSERT_TRUE(client
                    ->Submit(RigidSpec("before"), {Fixed(), Moving()},
                             [&](const v1::JobEvent& e) {
                               done_id = e.job_id();
                               return true;
                             })
                    .ok());
    done_copy = WatchToFile(daemon, done_id, &err);
    ASSERT_FALSE(done_copy.empty()) << err;

    // Full: nothing can be written. Submit is refused with a clear reason.
    Fill(filler, 1, mnt);
    std::string message;
    grpc::Status s = client->Submit(RigidSpec("full"), {Fixed(), Moving()},
                                    [&](const v1::JobEvent& e) {
                                      if (e.has_failed())
                                        message = e.failed().message();
                                      return true;
                                    });
    EXPECT_EQ(s.error_code(), C::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("data_dir is full"), std::string::npos)
        << s.error_message();

    // Nearly full: the job gets in, then runs out of space on the way.
    unlink(filler.c_str());
    Fill(filler, 300 << 10, mnt);
    s = client->Submit(RigidSpec("nearly full"), {Fixed(), Moving()},
                       [&](const v1::JobEvent& e) {
                         if (e.has_failed()) message = e.failed().message();
                         return true;
                       });
    fprintf(stderr, "nearly full: %d %s\n", static_cast<int>(s.error_code()),
            s.error_message().c_str());
    EXPECT_EQ(s.error_code(), C::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("No space left"), std::string::npos)
        << s.error_message();

    bool serving = false;
    ASSERT_TRUE(client->CheckHealth("", &serving).ok());
    EXPECT_TRUE(serving);
    ExpectEveryJobResolved(client.get());

    // Space again: jobs complete without a restart.
    unlink(filler.c_str());
    s = client->Submit(RigidSpec("after"), {Fixed(), Moving()},
                       [](const v1::JobEvent&) { return true; });
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(daemon.Stop(), 0);
  }
  // The store reads back cleanly after a restart.
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(data, BaseFlags())) << ReadAll(daemon.stderr_path());
  auto client = ClientOf(daemon);
  const std::string again = WatchToFile(daemon, done_id, &err);
  ASSERT_FALSE(again.empty()) << err;
  EXPECT_TRUE(SamePixels(again, done_copy, &why)) << why;
  ExpectEveryJobResolved(client.get());
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(FaultTest, VanishingClientsLeaveNoFdOrThreadBehind) {
  const std::string data = MakeTempDir("regserve_fault_vanish");
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(data, BaseFlags())) << ReadAll(daemon.stderr_path());
  auto client = ClientOf(daemon);
  // The baseline is taken after a warm-up job and one round of the same
  // disconnects, so that pools that grow once to their working size (gRPC's
  // executor threads) are in it; a leak grows with every further round.
  std::string warm_id;
  ASSERT_TRUE(client
                  ->Submit(RigidSpec("warm-up"), {Fixed(), Moving()},
                           [&](const v1::JobEvent& e) {
                             warm_id = e.job_id();
                             return true;
                           })
                  .ok());
  const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
  const auto round = [&] {
    std::vector<std::thread> clients;
    for (int i = 0; i < 4; ++i) {
      // Each on its own channel (a separate connection that goes away).
      clients.emplace_back([&, i] {
        RegistrationClient::Options o;
        o.address = daemon.address();
        RegistrationClient own(o);
        if (i == 0) {
          // Vanishes mid-upload.
          grpc::ClientContext ctx;
          auto stream = own.stub()->Submit(&ctx);
          v1::SubmitRequest spec;
          *spec.mutable_spec() = RigidSpec("vanish-upload");
          auto* up = spec.mutable_spec()->mutable_fixed()->mutable_upload();
          up->set_byte_size(f.size());
          up->set_file_name("f.png");
          up = spec.mutable_spec()->mutable_moving()->mutable_upload();
          up->set_byte_size(m.size());
          up->set_file_name("m.png");
          stream->Write(spec);
          v1::SubmitRequest chunk;
          chunk.mutable_chunk()->set_role(v1::IMAGE_ROLE_FIXED);
          chunk.mutable_chunk()->set_data(f.substr(0, 1000));
          stream->Write(chunk);
          ctx.TryCancel();
          stream->Finish();
        } else if (i == 1) {
          // Vanishes mid-result (after 3 tiles).
          int tiles = 0;
          own.Submit(RigidSpec("vanish-result"), {Fixed(), Moving()},
                     [&](const v1::JobEvent& e) {
                       return !(e.has_tile() && ++tiles == 3);
                     });
        } else if (i == 2) {
          // Vanishes from a Watch of a finished job, mid-tiles.
          int tiles = 0;
          own.Watch(warm_id, 0, [&](const v1::JobEvent& e) {
            return !(e.has_tile() && ++tiles == 2);
          });
        } else {
          // Vanishes right after acceptance.
          SubmitAndHangUp(&own, RigidSpec("vanish-accepted"), Fixed(),
                          Moving());
        }
      });
    }
    for (std::thread& t : clients) t.join();
  };
  round();
  ExpectEveryJobResolved(client.get());
  absl::SleepFor(absl::Seconds(1));
  const int fds0 = CountFds(daemon.pid());
  const auto names0 = ThreadsByName(daemon.pid());
  const std::string before = ThreadNames(daemon.pid());
  ASSERT_GT(fds0, 0);
  ASSERT_GT(OwnThreads(names0), 0);
  constexpr int kRounds = 5;
  for (int r = 0; r < kRounds; ++r) round();
  ExpectEveryJobResolved(client.get());
  // Our own threads and the descriptors must come back exactly. gRPC's pools
  // may sit a few threads above the baseline (on two busy cores its executor
  // grew by one after the warm-up, seen in CI), so they get a slack smaller
  // than kRounds: a leak of even one thread per round still fails.
  constexpr int kPoolSlack = kRounds - 1;
  int fds = -1, own = -1, pool = -1;
  const bool back = WaitFor(
      [&] {
        const auto names = ThreadsByName(daemon.pid());
        fds = CountFds(daemon.pid());
        own = OwnThreads(names);
        pool = PoolThreads(names);
        return fds <= fds0 && own <= OwnThreads(names0) &&
               pool <= PoolThreads(names0) + kPoolSlack;
      },
      absl::Seconds(20), absl::Milliseconds(200));
  fprintf(stderr, "fds %d -> %d, own threads %d -> %d, gRPC pools %d -> %d\n",
          fds0, fds, OwnThreads(names0), own, PoolThreads(names0), pool);
  EXPECT_TRUE(back) << "fds " << fds0 << " -> " << fds << ", own threads "
                    << OwnThreads(names0) << " -> " << own << ", gRPC pools "
                    << PoolThreads(names0) << " -> " << pool
                    << "\nbefore: " << before
                    << "\nafter:  " << ThreadNames(daemon.pid());
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
