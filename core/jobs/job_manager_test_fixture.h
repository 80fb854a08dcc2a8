// Copyright regserve authors.
//
// The fixture of the JobManager unit tests: a fake registration (no
// elastix), the real CPU warper, real image I/O, a FakeProbe and a real
// ResourceScheduler with small budgets, over a temporary data directory
// with the brain pair under its input root. Included by the job_*_test.cc
// files; the real-elastix runs are in job_manager_e2e_test.cc.
//
//   TEST_F(JobManagerTest, Something) {
//     auto m = Make(FakeEnv());
//     std::string id = *m->CreateJob(BrainSpec(), "");
//     EXPECT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
//   }
#ifndef REGSERVE_CORE_JOBS_JOB_MANAGER_TEST_FIXTURE_H_
#define REGSERVE_CORE_JOBS_JOB_MANAGER_TEST_FIXTURE_H_

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_manager.h"
#include "core/jobs/job_store.h"
#include "core/jobs/job_test_util.h"
#include "core/jobs/result_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace jobs_test {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::BrainFixed;
using testing_util::BrainMoving;
using testing_util::Drain;
using testing_util::Drained;
using testing_util::MeanAbsDiff;
using testing_util::ReadFileBytes;
using testing_util::ServerSideSpec;
using testing_util::WaitTerminal;

#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status _s = (expr);              \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

// A registration that writes two chained TransformParameters files and
// returns a constant displacement (the known offset of the brain pair).
class FakeRegistration {
 public:
  RegisterFunction Fn() {
    return [this](const RegistrationRequest& r, const ElastixConfig&) {
      return Run(r);
    };
  }
  // Runs before the result is returned; a non-OK status fails registration.
  std::function<absl::Status(const RegistrationRequest&)> hook;
  std::atomic<int> calls{0};
  // The PNGs lost ITK's image origins: in pixel indices the moving content
  // sits at +(33, 37) of the fixed one (13, 17 plus a 20 px canvas margin;
  // checked with oiiotool --cut/--diff: mean error 0.0095 there).
  double dx = 33.0;
  double dy = 37.0;

 private:
  absl::StatusOr<RegistrationResult> Run(const RegistrationRequest& req) {
    ++calls;
    fs::create_directories(req.work_dir);
    const std::string tp0 = req.work_dir + "/TransformParameters.0.txt";
    const std::string tp1 = req.work_dir + "/TransformParameters.1.txt";
    std::ofstream(tp0)
        << "(Transform \"TranslationTransform\")\n"
        << "(InitialTransformParametersFileName \"NoInitialTransform\")\n";
    std::ofstream(tp1) << "(Transform \"TranslationTransform\")\n"
                       << "(InitialTransformParametersFileName \"" << tp0
                       << "\")\n";
    if (req.on_progress) {
      RegistrationProgress p;
      p.fraction = 0.5;
      p.message = "fake halfway";
      req.on_progress(p);
    }
    if (hook) {
      absl::Status s = hook(req);
      if (!s.ok()) return s;
    }
    RegistrationResult res;
    res.transform_parameter_files = {tp0, tp1};
    res.field.width = 2;
    res.field.height = 2;
    res.field.spacing_x = static_cast<double>(req.fixed_full_width - 1);
    res.field.spacing_y = static_cast<double>(req.fixed_full_height - 1);
    res.field.dx.assign(4, static_cast<float>(dx));
    res.field.dy.assign(4, static_cast<float>(dy));
    res.final_metric = -0.75;
    res.iterations = 42;
    return res;
  }
};

// An initial alignment that finds nothing. FakeRegistration's field is the
// whole fixed -> moving map; after a found alignment it would be composed
// with it (initial_alignment_stage_test runs the real one).
inline absl::StatusOr<InitialAlignment> NoInitialAlignment(
    const Image&, const Image&, const RobustStartOptions&) {
  InitialAlignment a;
  a.reason = "none in this test";
  return a;
}

// Blocks registration until the job's token fires; tells when it started.
inline absl::Status WaitForCancel(const RegistrationRequest& req,
                                  absl::Notification* started) {
  if (!started->HasBeenNotified()) started->Notify();
  for (;;) {
    absl::Status s = req.cancel->Check();
    if (!s.ok()) return s;
    absl::SleepFor(absl::Milliseconds(2));
  }
}

// Fails writes with ENOSPC while `full` is set.
class FullDiskFileSystem final : public JobFileSystem {
 public:
  std::atomic<bool> full{false};
  absl::Status WriteFileAtomic(const std::string& path,
                               absl::string_view contents) override {
    if (full) return WriteErrnoToStatus(ENOSPC, "writing", path);
    return DefaultJobFileSystem()->WriteFileAtomic(path, contents);
  }
  absl::Status AppendToFile(const std::string& path,
                            absl::Span<const uint8_t> bytes) override {
    if (full) {
      // A partial write, as a real full disk gives.
      (void)DefaultJobFileSystem()->AppendToFile(
          path, bytes.subspan(0, bytes.size() / 2));
      return WriteErrnoToStatus(ENOSPC, "writing", path);
    }
    return DefaultJobFileSystem()->AppendToFile(path, bytes);
  }
  absl::Status SyncFile(const std::string& path) override {
    {
      absl::MutexLock lock(&mu);
      synced.push_back(path);
    }
    return DefaultJobFileSystem()->SyncFile(path);
  }
  bool Synced(const std::string& path) {
    absl::MutexLock lock(&mu);
    return std::find(synced.begin(), synced.end(), path) != synced.end();
  }
  absl::Mutex mu;
  std::vector<std::string> synced ABSL_GUARDED_BY(mu);
};

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.path() + "/inputs";
    fs::create_directories(root_ + "/brain");
    fs::copy_file(BrainFixed(), root_ + "/brain/fixed.png");
    fs::copy_file(BrainMoving(), root_ + "/brain/moving.png");
    probe_ = std::make_unique<FakeProbe>(testing_util::SmallMachine());
    scheduler_ = std::make_unique<ResourceScheduler>(
        testing_util::SmallSchedulerConfig(), probe_.get());
    opts_.data_dir = tmp_.path() + "/data";
    opts_.input_root = root_;
    opts_.device = DevicePreference::kCpu;
    opts_.stream_tile_size = 64;
    opts_.max_upload_bytes = 1 << 20;
  }

  // The machine gets one fake 8 GiB GPU, which the scheduler manages with
  // a 4 GiB VRAM budget (no CUDA runs: warpers and refinements fail or are
  // faked by the test).
  void UseFakeGpu() {
    HardwareSnapshot hw = testing_util::SmallMachine();
    hw.gpus.push_back(GpuInfo{0, "Fake GPU", 8ull << 30, 8ull << 30});
    probe_->Set(hw);
    SchedulerConfig config = testing_util::SmallSchedulerConfig();
    config.vram_budget_bytes = {4ull << 30};
    config.gpu_ordinals = {0};
    scheduler_ = std::make_unique<ResourceScheduler>(config, probe_.get());
  }

  JobManagerEnv FakeEnv(int threads = -1) {
    JobManagerEnv env;
    env.register_fn = fake_.Fn();
    env.align_fn = NoInitialAlignment;
    env.pipeline_threads = threads;
    return env;
  }

  std::unique_ptr<JobManager> Make(JobManagerEnv env) {
    auto m = CreateJobManagerWithEnv(opts_, scheduler_.get(), probe_.get(),
                                     std::move(env));
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }

  std::string JobDir(const std::string& id) const {
    return fs::canonical(opts_.data_dir).string() + "/jobs/" + id;
  }

  JobSpec BrainSpec() const {
    return ServerSideSpec("brain/fixed.png", "brain/moving.png");
  }

  JobSpec UploadSpec() const {
    JobSpec spec;
    spec.fixed.upload_bytes = fs::file_size(BrainFixed());
    spec.fixed.upload_name = "fixed.png";
    spec.moving.upload_bytes = fs::file_size(BrainMoving());
    spec.moving.upload_name = "moving.PNG";
    spec.options.transform = TransformKind::kRigid;
    return spec;
  }

  static absl::Status Upload(JobManager* m, const std::string& id,
                             ImageRole role, const std::string& bytes,
                             size_t chunk) {
    for (size_t off = 0; off < bytes.size(); off += chunk) {
      const size_t n = std::min(chunk, bytes.size() - off);
      absl::Status s = m->AppendUpload(
          id, role,
          absl::MakeConstSpan(
              reinterpret_cast<const uint8_t*>(bytes.data()) + off, n));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  testing_util::TempDir tmp_;
  std::string root_;
  FakeRegistration fake_;
  std::unique_ptr<FakeProbe> probe_;
  std::unique_ptr<ResourceScheduler> scheduler_;
  JobManager::Options opts_;
};
}  // namespace jobs_test
}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_MANAGER_TEST_FIXTURE_H_
