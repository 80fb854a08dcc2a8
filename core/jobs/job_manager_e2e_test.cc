// Copyright regserve authors.
//
// JobManager with the real elastix/transformix programs and the real CPU
// warper, on the small ITK brain pair (shifted by 13, 17 px).
#include <dirent.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_manager.h"
#include "core/jobs/job_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

namespace fs = std::filesystem;
using testing_util::BrainFixed;
using testing_util::BrainMoving;
using testing_util::MeanAbsDiff;
using testing_util::WaitTerminal;

// Processes whose command line mentions `needle`.
int CountProcessesMentioning(const std::string& needle) {
  int n = 0;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return 0;
  while (dirent* e = readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream in(absl::StrCat("/proc/", e->d_name, "/cmdline"),
                     std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (absl::StrContains(ss.str(), needle)) ++n;
  }
  closedir(proc);
  return n;
}

class JobManagerE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    probe_ = std::make_unique<FakeProbe>(testing_util::SmallMachine());
    SchedulerConfig config = testing_util::SmallSchedulerConfig();
    config.machine_threads = config.min_threads = 2;  // elastix's threads
    scheduler_ = std::make_unique<ResourceScheduler>(config, probe_.get());
    opts_.data_dir = tmp_.path() + "/data";
    opts_.input_root = testing_util::TestDataDir();
    opts_.device = DevicePreference::kCpu;
    opts_.stream_tile_size = 64;
  }
  testing_util::TempDir tmp_;
  std::unique_ptr<FakeProbe> probe_;
  std::unique_ptr<ResourceScheduler> scheduler_;
  JobManager::Options opts_;
};

TEST_F(JobManagerE2eTest, RigidBrainJobRegistersShiftedImage) {
  auto m = JobManager::Create(opts_, scheduler_.get(), probe_.get());
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<std::string> id =
      (*m)->CreateJob(testing_util::ServerSideSpec(
                          "itk_brain/BrainProtonDensitySlice.png",
                          "itk_brain/BrainProtonDensitySliceShifted13x17y.png",
                          TransformKind::kRigid),
                      "");
  ASSERT_TRUE(id.ok()) << id.status();
  JobInfo info = WaitTerminal(m->get(), *id, "", absl::Minutes(5));
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  for (const StageTiming& t : info.timings) {
    std::printf("stage %s: %.3f s\n", std::string(StageName(t.stage)).c_str(),
                t.seconds);
  }
  std::printf("final metric %.4f\n", info.registration_metric);
  ASSERT_FALSE(info.transform_files.empty());
  for (const std::string& f : info.transform_files)
    EXPECT_TRUE(fs::exists(f)) << f;

  absl::StatusOr<Image> result = ReadImageFile(info.result_path);
  absl::StatusOr<Image> fixed = ReadImageFile(BrainFixed());
  absl::StatusOr<Image> moving = ReadImageFile(BrainMoving());
  ASSERT_TRUE(result.ok() && fixed.ok() && moving.ok());
  EXPECT_EQ(result->width(), fixed->width());
  EXPECT_EQ(result->height(), fixed->height());
  const double before = MeanAbsDiff(*fixed, *moving);
  const double after = MeanAbsDiff(*fixed, *result);
  std::printf("mean abs difference to fixed: before %.2f, after %.2f\n", before,
              after);
  EXPECT_LT(after, before / 4);
}

TEST_F(JobManagerE2eTest, CancelWhileRegisteringKillsElastix) {
  auto m = JobManager::Create(opts_, scheduler_.get(), probe_.get());
  ASSERT_TRUE(m.ok()) << m.status();
  // B-spline on the rotated pair: long enough to cancel mid-run.
  absl::StatusOr<std::string> id =
      (*m)->CreateJob(testing_util::ServerSideSpec(
                          "itk_brain/BrainProtonDensitySlice.png",
                          "itk_brain/BrainProtonDensitySliceR10X13Y17.png",
                          TransformKind::kBSpline),
                      "");
  ASSERT_TRUE(id.ok()) << id.status();
  const std::string work_dir = (*m)->GetJob(*id, "")->id;  // id appears in -out
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  bool seen = false;
  while (absl::Now() < deadline && !seen) {
    JobInfo info = *(*m)->GetJob(*id, "");
    if (IsTerminal(info.state)) break;
    seen = info.stage == Stage::kRegistration &&
           CountProcessesMentioning(work_dir) > 0;
    if (!seen) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(seen) << "elastix never seen running";
  const absl::Time cancelled_at = absl::Now();
  ASSERT_TRUE((*m)->Cancel(*id, "").ok());
  JobInfo info = WaitTerminal(m->get(), *id, "", absl::Seconds(30));
  std::printf("cancel took %.3f s\n",
              absl::ToDoubleSeconds(absl::Now() - cancelled_at));
  EXPECT_EQ(info.state, JobState::kCancelled);
  EXPECT_EQ(info.failure.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(CountProcessesMentioning(work_dir), 0);
  EXPECT_EQ(scheduler_->Stats().ram_reserved_bytes, 0u);
}

}  // namespace
}  // namespace regserve
