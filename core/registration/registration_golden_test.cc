// Copyright regserve authors.
//
// Register() against the real Debian elastix/transformix 5.0.1 on the images
// in tests/data (label: golden). Every registration uses small images and
// -threads 2 so the whole file runs in well under a minute on 2 cores.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/registration/metaimage.h"
#include "core/registration/parameters.h"
#include "core/registration/process.h"
#include "core/registration/registration.h"
#include "core/registration/test_temp_dir.h"
#include "core/registration/testutil.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;
using testutil::ReadGrayFloat;

constexpr double kPi = 3.14159265358979323846;

std::string Data(const std::string& relative) {
  const char* root = std::getenv("REGSERVE_TEST_DATA");
  return absl::StrCat(root ? root : "tests/data", "/", relative);
}

std::string TempDir() {
  std::string d = MakeTestTempDir("regserve_golden");
  EXPECT_FALSE(d.empty());
  return d;
}

Image Load(const std::string& relative) {
  auto img = ReadGrayFloat(Data(relative));
  EXPECT_TRUE(img.ok()) << img.status();
  return img.ok() ? std::move(*img) : Image();
}

RegistrationRequest Request(const Image& fixed, const Image& moving,
                            TransformKind kind, int factor = 1) {
  RegistrationRequest r;
  r.work_dir = TempDir() + "/registration";
  r.fixed = &fixed;
  r.moving = &moving;
  r.fixed_full_width = fixed.width() * factor;
  r.fixed_full_height = fixed.height() * factor;
  r.moving_full_width = moving.width() * factor;
  r.moving_full_height = moving.height() * factor;
  r.transform = kind;
  r.threads = 2;
  r.timeout = absl::Minutes(5);
  return r;
}

// ITK's BrainProtonDensitySliceBorder20: the slice with a 20-pixel frame. The
// shifted and rotated brains in tests/data are made from it, so it is the
// fixed image for which their documented (13, 17) holds.
Image Border20() {
  return testutil::Pad(Load("itk_brain/BrainProtonDensitySlice.png"), 20);
}

TEST(RegisterGolden, RigidRecoversTheBrainShift) {
  Image fixed = Border20();
  Image moving = Load("itk_brain/BrainProtonDensitySliceShifted13x17y.png");
  ASSERT_EQ(fixed.width(), moving.width());
  auto r = Register(Request(fixed, moving, TransformKind::kRigid), {});
  ASSERT_TRUE(r.ok()) << r.status();
  // The field maps fixed positions to moving ones: moving content is shifted
  // by (+13, +17), so d = (+13, +17) everywhere.
  std::array<double, 2> mean = testutil::MeanDisplacement(r->field);
  std::printf("recovered shift (%.3f, %.3f)\n", mean[0], mean[1]);
  EXPECT_NEAR(mean[0], 13.0, 0.25);
  EXPECT_NEAR(mean[1], 17.0, 0.25);
  std::array<double, 6> a = testutil::FitAffine(r->field);
  EXPECT_NEAR(std::atan2(a[2], a[0]) * 180 / kPi, 0.0, 0.1);
  EXPECT_EQ(r->transform_parameter_files.size(), 1u);
  EXPECT_LT(r->final_metric, 0.0);    // Mattes MI is negated
  EXPECT_EQ(r->iterations, 3 * 250);  // 3 resolutions for a 221x257 copy
  EXPECT_GT(r->elastix_peak_rss_bytes, 0);
}

TEST(RegisterGolden, RigidRecoversTheBrainRotation) {
  Image fixed = Border20();
  Image moving = Load("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
  auto r = Register(Request(fixed, moving, TransformKind::kRigid), {});
  ASSERT_TRUE(r.ok()) << r.status();
  std::array<double, 6> a = testutil::FitAffine(r->field);
  double angle = std::atan2(a[2], a[0]) * 180 / kPi;
  std::printf(
      "recovered rotation %.3f degrees, shift at the origin (%.2f, "
      "%.2f)\n",
      angle, a[4], a[5]);
  EXPECT_NEAR(angle, 10.0, 0.2);
  // A rigid transform: the fitted matrix is a rotation (no scale/shear).
  EXPECT_NEAR(a[0], a[3], 1e-3);
  EXPECT_NEAR(a[1], -a[2], 1e-3);
}

// The registration copy is 2x downsampled; the field must come out in
// full-resolution pixels on the full-resolution frame.
TEST(RegisterGolden, DownsampledCopyGivesAFullResolutionField) {
  Image fixed_full = Border20();  // 221 x 257
  Image moving_full =
      Load("itk_brain/BrainProtonDensitySliceShifted13x17y.png");
  Image fixed = testutil::DownsampleBox(fixed_full, 2);  // 110 x 128
  Image moving = testutil::DownsampleBox(moving_full, 2);
  RegistrationRequest req = Request(fixed, moving, TransformKind::kRigid, 2);
  auto r = Register(req, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->field.width, 110);
  EXPECT_EQ(r->field.height, 128);
  EXPECT_DOUBLE_EQ(r->field.spacing_x, 2.0);
  EXPECT_DOUBLE_EQ(r->field.spacing_y, 2.0);
  EXPECT_DOUBLE_EQ(r->field.origin_x, 0.5);
  EXPECT_DOUBLE_EQ(r->field.origin_y, 0.5);
  std::array<double, 2> mean = testutil::MeanDisplacement(r->field);
  std::printf("recovered shift at half resolution (%.3f, %.3f)\n", mean[0],
              mean[1]);
  // At half resolution the shift is still (13, 17) full-resolution pixels
  // (not 6.5, 8.5); half a registration pixel is 1 full-res pixel, we allow
  // a quarter of one.
  EXPECT_NEAR(mean[0], 13.0, 0.5);
  EXPECT_NEAR(mean[1], 17.0, 0.5);
}

// elastix's own example pair with the default B-spline preset; the moving
// image warped with our field is compared with elastix's shipped solution
// (rigid + B-spline with elastix's example files).
TEST(RegisterGolden, BSplineMatchesElastixsExampleSolution) {
  Image fixed = Load("elastix_example/fixed.mhd");
  Image moving = Load("elastix_example/moving.mhd");
  Image solution = Load("elastix_example/solution_deformedmovingimage.mhd");
  ASSERT_FALSE(solution.empty());
  auto r = Register(Request(fixed, moving, TransformKind::kBSpline), {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->transform_parameter_files.size(), 2u);
  Image warped =
      testutil::WarpWithField(moving, r->field, fixed.width(), fixed.height());
  const float* s = solution.as<float>();
  const float* w = warped.as<float>();
  const float* f = fixed.as<float>();
  float lo = *std::min_element(s, s + solution.spec().pixels());
  float hi = *std::max_element(s, s + solution.spec().pixels());
  double range = hi - lo;
  int64_t n = solution.spec().pixels();
  int64_t over = 0;
  double worst = 0, sum = 0, sum_before = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = std::abs(w[i] - s[i]) / range;
    worst = std::max(worst, d);
    sum += d;
    sum_before += std::abs(f[i] - s[i]) / range;
    if (d > 0.10) ++over;
  }
  double over_percent = 100.0 * over / n;
  std::printf(
      "vs elastix solution: mean %.4f, max %.4f, >0.10: %.3f%% "
      "(fixed vs solution mean %.4f)\n",
      sum / n, worst, over_percent, sum_before / n);
  // Thresholds (fractions of the solution's intensity range). Measured on
  // Debian 12, 2 cores (elastix seeds its sampler, so runs repeat exactly):
  // mean 0.018, 1.4% of pixels above 0.10,
  // worst 0.44 (at sharp edges, where a fraction of a pixel of disagreement
  // flips the value); the unregistered fixed image differs from the solution
  // by 0.138 on average. Two random-sampling registrations (ours: affine +
  // B-spline preset; elastix's: its example files) never agree exactly, so
  // the tolerance is OIIO-style with ~3x headroom: fail if more than 5% of
  // pixels differ by more than 0.10 of the range, or any by more than 0.9,
  // or the mean exceeds 0.03.
  EXPECT_LT(over_percent, 5.0);
  EXPECT_LT(worst, 0.9);
  EXPECT_LT(sum / n, 0.03);
  EXPECT_LT(sum / n, 0.5 * sum_before / n);  // it did register
}

// Each preset against the real binary on a small (64 x 64) copy of the
// example pair, at factor 4 so the physical size is the original's.
TEST(RegisterGolden, EveryPresetRunsOnTheRealBinary) {
  Image fixed = testutil::DownsampleBox(Load("elastix_example/fixed.mhd"), 4);
  Image moving = testutil::DownsampleBox(Load("elastix_example/moving.mhd"), 4);
  for (TransformKind kind : {TransformKind::kRigid, TransformKind::kAffine,
                             TransformKind::kBSpline}) {
    RegistrationRequest req = Request(fixed, moving, kind, 4);
    auto r = Register(req, {});
    ASSERT_TRUE(r.ok()) << TransformKindName(kind) << ": " << r.status();
    EXPECT_EQ(r->field.width, 64);
    EXPECT_DOUBLE_EQ(r->field.spacing_x, 4.0);
    long long expected = 0;
    for (const std::string& text : PresetParameters(kind, 64, 64)) {
      expected += ScheduleFromParameters(ParseParameterText(text).value())
                      .TotalIterations();
    }
    EXPECT_EQ(r->iterations, expected) << TransformKindName(kind);
    for (size_t i = 0; i < r->field.dx.size(); ++i) {
      ASSERT_TRUE(std::isfinite(r->field.dx[i]) &&
                  std::abs(r->field.dx[i]) < 40)
          << TransformKindName(kind);
    }
  }
}

// Records the pids the real runner starts.
class PidRecordingRunner : public ProcessRunner {
 public:
  absl::StatusOr<ProcessResult> Run(const ProcessOptions& options) override {
    ProcessOptions o = options;
    o.on_start = [this](pid_t pid) { pids.push_back(pid); };
    return ProcessRunner::Default()->Run(o);
  }
  std::vector<pid_t> pids;
};

std::string LongRun() {
  return "(Transform \"BSplineTransform\")\n"
         "(Metric \"AdvancedMattesMutualInformation\")\n"
         "(Optimizer \"AdaptiveStochasticGradientDescent\")\n"
         "(FixedImagePyramid \"FixedRecursiveImagePyramid\")\n"
         "(MovingImagePyramid \"MovingRecursiveImagePyramid\")\n"
         "(ImageSampler \"RandomCoordinate\")\n"
         "(NumberOfResolutions 1)\n"
         "(MaximumNumberOfIterations 100000)\n"
         "(FinalGridSpacingInVoxels 16)\n";
}

TEST(RegisterGolden, CancelKillsElastixWithinASecond) {
  Image fixed = Load("elastix_example/fixed.mhd");
  Image moving = Load("elastix_example/moving.mhd");
  RegistrationRequest req = Request(fixed, moving, TransformKind::kBSpline);
  req.custom_parameters = {LongRun()};
  CancelToken token;
  req.cancel = &token;
  std::atomic<int64_t> cancelled_at_ns{0};
  req.on_progress = [&](const RegistrationProgress& p) {
    if (p.iteration >= 5 && !token.cancelled()) {
      cancelled_at_ns = absl::ToUnixNanos(absl::Now());
      token.Cancel("test cancels");
    }
  };
  PidRecordingRunner runner;
  auto r = Register(req, {}, &runner);
  absl::Time returned = absl::Now();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  ASSERT_NE(cancelled_at_ns.load(), 0);
  EXPECT_LT(returned - absl::FromUnixNanos(cancelled_at_ns.load()),
            absl::Seconds(1));
  ASSERT_EQ(runner.pids.size(), 1u);  // transformix never ran
  // Reaped, not a zombie.
  EXPECT_NE(kill(runner.pids[0], 0), 0);
  EXPECT_EQ(errno, ESRCH);
}

TEST(RegisterGolden, TimeoutIsDeadlineExceeded) {
  Image fixed = Load("elastix_example/fixed.mhd");
  Image moving = Load("elastix_example/moving.mhd");
  RegistrationRequest req = Request(fixed, moving, TransformKind::kBSpline);
  req.custom_parameters = {LongRun()};
  req.timeout = absl::Milliseconds(1500);
  std::vector<RegistrationProgress> seen;
  req.on_progress = [&](const RegistrationProgress& p) { seen.push_back(p); };
  PidRecordingRunner runner;
  absl::Time start = absl::Now();
  auto r = Register(req, {}, &runner);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("time limit"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  ASSERT_EQ(runner.pids.size(), 1u);
  EXPECT_NE(kill(runner.pids[0], 0), 0);
  EXPECT_FALSE(seen.empty());  // progress arrived while it ran
}

TEST(RegisterGolden, ImagesThatDoNotOverlapAreAFailedPrecondition) {
  // A 256 x 256 fixed image against a 16 x 16 moving one (both at their own
  // full resolution): almost every fixed sample falls outside the moving
  // image, even after centring.
  Image fixed = Load("elastix_example/fixed.mhd");
  Image moving_big = Load("elastix_example/moving.mhd");
  Image moving = testutil::DownsampleBox(moving_big, 16);
  RegistrationRequest req = Request(fixed, moving, TransformKind::kRigid);
  auto r = Register(req, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("do not overlap"));
}

TEST(RegisterGolden, ElastixsOwnParameterFilesAreAccepted) {
  Image fixed = testutil::DownsampleBox(Load("elastix_example/fixed.mhd"), 2);
  Image moving = testutil::DownsampleBox(Load("elastix_example/moving.mhd"), 2);
  RegistrationRequest req = Request(fixed, moving, TransformKind::kRigid, 2);
  std::FILE* f = std::fopen(
      Data("elastix_example/parameters_Translation.txt").c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string params;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) params.append(buf, n);
  std::fclose(f);
  req.custom_parameters = {params};
  auto r = Register(req, {});
  ASSERT_TRUE(r.ok()) << r.status();
  // Translation only: the field is constant.
  EXPECT_NEAR(r->field.dx.front(), r->field.dx.back(), 1e-3);
  EXPECT_NEAR(r->field.dy.front(), r->field.dy.back(), 1e-3);
}

}  // namespace
}  // namespace regserve
