// Copyright regserve authors.
//
// Jobs whose moving image does not fit the RAM budget beside the stages:
// refused before region reads existed, now read by region (issue 13), with
// the pixels of the same job run in RAM.
#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "core/common/testing/peak_rss.h"
#include "core/image/image_io.h"
#include "core/jobs/job_manager_test_fixture.h"
#include "gtest/gtest.h"

namespace regserve {
namespace jobs_test {
namespace {

namespace fs = std::filesystem;
using testing_util::WaitTerminal;

// The 190 MB moving image does not fit 400 MB beside the initial
// alignment (about 310 MB for these copies).
constexpr uint64_t kSmallBudget = 400ull << 20;

class StreamedJobTest : public JobManagerTest {
 protected:
  void SetUp() override {
    JobManagerTest::SetUp();
    const std::string photo =
        testing_util::TestDataDir() + "/photos/seeding_5312x2988.jpg";
    fs::create_directories(root_ + "/photo");
    fs::copy_file(photo, root_ + "/photo/fixed.jpg");
    // The moving image: the photo at twice its size (190 MB of RGB), as a
    // JPEG (spilled) and a striped deflate TIFF (read by region directly).
    absl::StatusOr<Image> img = ReadImageFile(photo);
    ASSERT_TRUE(img.ok()) << img.status();
    ImageSpec big = img->spec();
    big.width *= 2;
    big.height *= 2;
    absl::StatusOr<Image> up = Image::Allocate(big);
    ASSERT_TRUE(up.ok());
    for (int64_t y = 0; y < big.height; ++y) {
      const uint8_t* src = img->row(y / 2);
      uint8_t* dst = up->row(y);
      for (int64_t x = 0; x < big.width; ++x) {
        std::memcpy(dst + 3 * x, src + 3 * (x / 2), 3);
      }
    }
    ASSERT_TRUE(WriteImageFile(root_ + "/photo/moving.jpg", *up).ok());
    ASSERT_TRUE(WriteImageFile(root_ + "/photo/moving.tif", *up).ok());
    moving_bytes_ = big.bytes();
    opts_.stream_tile_size = 512;
  }

  JobSpec PhotoSpec(const std::string& moving) const {
    JobSpec spec = ServerSideSpec("photo/fixed.jpg", "photo/" + moving);
    spec.options.transform = TransformKind::kAffine;
    spec.options.max_registration_megapixels = 0.3;
    spec.options.refine = RefineMode::kOff;
    spec.options.interpolation = Interpolation::kCubic;
    return spec;
  }

  uint64_t moving_bytes_ = 0;  // the moving image's samples

  // Runs one job to its end; returns its result's pixels.
  Image RunToResult(const JobSpec& spec, bool* streamed) {
    auto m = Make(FakeEnv());
    EXPECT_NE(m, nullptr);
    absl::StatusOr<std::string> id = m->CreateJob(spec, "");
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return Image();
    const JobInfo info = WaitTerminal(m.get(), *id, "", absl::Seconds(300));
    EXPECT_EQ(info.state, JobState::kCompleted) << info.failure;
    *streamed = info.plan.moving_streamed;
    EXPECT_FALSE(fs::exists(JobDir(*id) + "/moving.spill"));
    absl::StatusOr<Image> out = ReadImageFile(info.result_path);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *std::move(out) : Image();
  }
};

TEST_F(StreamedJobTest, SmallBudgetStreamsWithTheSamePixels) {
  for (const std::string moving : {"moving.jpg", "moving.tif"}) {
    opts_.budget_overrides.ram_bytes = 0;
    bool streamed = true;
    const Image in_ram = RunToResult(PhotoSpec(moving), &streamed);
    EXPECT_FALSE(streamed);
    ASSERT_FALSE(in_ram.empty());
    opts_.budget_overrides.ram_bytes = kSmallBudget;
    const Image out = RunToResult(PhotoSpec(moving), &streamed);
    EXPECT_TRUE(streamed) << moving;
    ASSERT_EQ(out.spec().DebugString(), in_ram.spec().DebugString());
    EXPECT_EQ(std::memcmp(out.data(), in_ram.data(), in_ram.size_bytes()), 0)
        << moving;
  }
}

TEST_F(StreamedJobTest, PlanSaysWhyAndCancelDuringTheWarpRemovesTheSpill) {
  opts_.budget_overrides.ram_bytes = kSmallBudget;
  JobManager* manager = nullptr;
  bool spill_seen = false;
  JobManagerEnv env = FakeEnv();
  env.before_stage = [&](const std::string& id, Stage stage) {
    if (stage != Stage::kWarp) return;
    spill_seen = fs::exists(JobDir(id) + "/moving.spill");
    EXPECT_TRUE(manager->Cancel(id, "").ok());
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  manager = m.get();
  absl::StatusOr<std::string> id = m->CreateJob(PhotoSpec("moving.jpg"), "");
  ASSERT_TRUE(id.ok()) << id.status();
  const JobInfo info = WaitTerminal(m.get(), *id);
  EXPECT_EQ(info.state, JobState::kCancelled) << info.failure;
  EXPECT_TRUE(spill_seen);
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/moving.spill"));
  bool said = false;
  for (const std::string& r : info.plan.reasons) {
    said = said || absl::StrContains(r, "streaming the moving image from disk");
  }
  EXPECT_TRUE(said);
}

// Cancels its job after the first tile of a warp read by region, then goes
// on: the warp itself must notice, between tiles.
class CancellingWarper final : public Warper {
 public:
  explicit CancellingWarper(std::function<void()> cancel)
      : inner_(Warper::Create(WarpDevice::kCpu).value()),
        cancel_(std::move(cancel)) {}
  absl::StatusOr<WarpStats> Warp(const Image& moving,
                                 const DisplacementField& field, int64_t w,
                                 int64_t h, const WarpOptions& options,
                                 const TileCallback& on_tile) override {
    return inner_->Warp(moving, field, w, h, options, on_tile);
  }
  absl::StatusOr<WarpStats> WarpRegions(RegionSource* moving,
                                        const DisplacementField& field,
                                        int64_t w, int64_t h,
                                        const WarpOptions& options,
                                        const TileCallback& on_tile) override {
    int tiles = 0;
    return inner_->WarpRegions(
        moving, field, w, h, options,
        [&](const TileRect& rect, const Image& tile) -> absl::Status {
          const absl::Status s = on_tile(rect, tile);
          if (++tiles == 1) cancel_();
          return s;
        });
  }
  WarpDevice device() const override { return WarpDevice::kCpu; }

 private:
  std::unique_ptr<Warper> inner_;
  std::function<void()> cancel_;
};

TEST_F(StreamedJobTest, CancelMidWarpReleasesTheReservationAndTheSpill) {
  opts_.budget_overrides.ram_bytes = kSmallBudget;
  JobManager* manager = nullptr;
  std::string job;
  JobManagerEnv env = FakeEnv();
  env.create_warper = [&](WarpDevice,
                          int) -> absl::StatusOr<std::unique_ptr<Warper>> {
    return std::unique_ptr<Warper>(new CancellingWarper(
        [&] { EXPECT_TRUE(manager->Cancel(job, "").ok()); }));
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  manager = m.get();
  absl::StatusOr<std::string> id = m->CreateJob(PhotoSpec("moving.jpg"), "");
  ASSERT_TRUE(id.ok()) << id.status();
  job = *id;
  const JobInfo info = WaitTerminal(m.get(), *id);
  EXPECT_EQ(info.state, JobState::kCancelled) << info.failure;
  EXPECT_TRUE(info.plan.moving_streamed);
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/moving.spill"));
  // Nothing is held once the job has ended (the pipeline thread releases
  // the warp's reservation on its way out).
  SchedulerStats stats;
  for (int i = 0; i < 200; ++i) {
    stats = scheduler_->Stats();
    if (stats.ram_reserved_bytes == 0) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(stats.ram_reserved_bytes, 0u);
  EXPECT_TRUE(stats.held_labels.empty());
}

TEST_F(StreamedJobTest, ASpillTheDiskCannotHoldIsRefusedBeforeTheJobStarts) {
  opts_.budget_overrides.ram_bytes = kSmallBudget;
  JobManagerEnv env = FakeEnv();
  env.free_disk_bytes = [](const std::string&) -> std::optional<uint64_t> {
    return uint64_t{10} << 20;  // 10 MB free
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  absl::StatusOr<std::string> id = m->CreateJob(PhotoSpec("moving.jpg"), "");
  ASSERT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted)
      << id.status();
  EXPECT_TRUE(absl::StrContains(id.status().message(), "spill file"));
  EXPECT_TRUE(absl::StrContains(id.status().message(), "10 MB free"));
  // A tiled or striped TIFF needs no spill: the same budget takes it.
  absl::StatusOr<std::string> tif = m->CreateJob(PhotoSpec("moving.tif"), "");
  ASSERT_TRUE(tif.ok()) << tif.status();
  EXPECT_EQ(WaitTerminal(m.get(), *tif, "", absl::Seconds(300)).state,
            JobState::kCompleted);
}

// A file size limit stands in for a disk that fills during the spill: the
// writes past it fail with EFBIG as a full disk fails them with ENOSPC.
TEST_F(StreamedJobTest, ADiskThatFillsDuringTheSpillFailsOnlyThatJob) {
  opts_.budget_overrides.ram_bytes = kSmallBudget;
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  struct rlimit before;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &before), 0);
  void (*old_handler)(int) = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = before;
  limited.rlim_cur = 32ull << 20;  // the spill needs 190 MB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  absl::StatusOr<std::string> id = m->CreateJob(PhotoSpec("moving.jpg"), "");
  JobInfo info;
  if (id.ok()) info = WaitTerminal(m.get(), *id);
  setrlimit(RLIMIT_FSIZE, &before);
  std::signal(SIGXFSZ, old_handler);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(info.state, JobState::kFailed);
  EXPECT_EQ(info.failure.code(), absl::StatusCode::kResourceExhausted)
      << info.failure;
  EXPECT_TRUE(absl::StrContains(info.failure.message(), "spilling"))
      << info.failure;
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/moving.spill"));
  // The manager goes on serving: the next job completes.
  absl::StatusOr<std::string> next = m->CreateJob(PhotoSpec("moving.tif"), "");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(WaitTerminal(m.get(), *next, "", absl::Seconds(300)).state,
            JobState::kCompleted);
}

using testing_util::kSanitized;
using testing_util::ResetPeakRss;
using testing_util::StatusBytes;

// The job's peak RSS growth in this process, read from /proc: the same job
// in RAM holds the 190 MB moving image; streamed, it must not.
TEST_F(StreamedJobTest, AStreamedJobNeverHoldsTheMovingImage) {
  if (kSanitized) GTEST_SKIP() << "RSS includes the sanitizer's shadow";
  const uint64_t image_bytes = moving_bytes_;
  auto growth = [&](uint64_t budget, bool* streamed) -> uint64_t {
    opts_.budget_overrides.ram_bytes = budget;
    if (!ResetPeakRss()) return 0;
    const uint64_t base = StatusBytes("VmRSS");
    EXPECT_FALSE(RunToResult(PhotoSpec("moving.tif"), streamed).empty());
    return StatusBytes("VmHWM") - base;
  };
  if (!ResetPeakRss()) GTEST_SKIP() << "no /proc/self/clear_refs here";
  bool streamed = true;
  const uint64_t in_ram = growth(0, &streamed);
  EXPECT_FALSE(streamed);
  const uint64_t out_of_core = growth(kSmallBudget, &streamed);
  EXPECT_TRUE(streamed);
  std::printf(
      "peak RSS growth: in RAM %.0f MB, streamed %.0f MB; moving "
      "image %.0f MB\n",
      in_ram / 1e6, out_of_core / 1e6, image_bytes / 1e6);
  EXPECT_GT(in_ram, image_bytes);
  EXPECT_LT(out_of_core, image_bytes);
  EXPECT_LE(out_of_core, kSmallBudget);
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
