// Copyright regserve authors.
//
// The robust start on real photos: a known similarity, affine map and
// strong homography applied to a photo are recovered from the registration
// copies to sub-pixel corner error at full resolution; the Oxford graffiti
// pair recovers its published homography; unrelated images are refused
// with a reason.
#include "core/registration/robust_start.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/image/image_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

std::string DataPath(const std::string& rel) {
  const char* dir = std::getenv("REGSERVE_TEST_DATA");
  return std::string(dir != nullptr ? dir : "tests/data") + "/" + rel;
}

// Rotation by `deg` and scale `s` about (cx, cy), then a shift (tx, ty),
// then perspective terms (p, q): fixed full-res -> moving full-res.
Homography MakeMap(double deg, double s, double cx, double cy, double tx,
                   double ty, double p = 0, double q = 0) {
  const double a = deg * M_PI / 180.0;
  const double c = s * std::cos(a), n = s * std::sin(a);
  Homography rot;
  rot.m = {c, -n, cx - c * cx + n * cy + tx, n, c, cy - n * cx - c * cy + ty, 0,
           0, 1};
  // Keystone about the centre: w = 1 + p (x - cx) + q (y - cy), in the
  // moving frame.
  Homography key;
  key.m = {1 + p * cx, q * cx,     -cx * (p * cx + q * cy),
           p * cy,     1 + q * cy, -cy * (p * cx + q * cy),
           p,          q,          1 - p * cx - q * cy};
  return rot.Then(key);
}

cv::Mat AsMat(const Image& img) {
  return cv::Mat(static_cast<int>(img.height()), static_cast<int>(img.width()),
                 CV_32F, const_cast<uint8_t*>(img.data()));
}

Image FromMat(const cv::Mat& m) {
  Image img = *Image::Allocate({.width = m.cols,
                                .height = m.rows,
                                .channels = 1,
                                .type = SampleType::kFloat32});
  cv::Mat dst = AsMat(img);
  m.copyTo(dst);
  return img;
}

// moving(y) = fixed(H^-1 y): the image a camera at H sees. OpenCV's pixel
// centres are at integer coordinates, as ours.
Image WarpFull(const Image& fixed, const Homography& h, int w, int hgt) {
  const cv::Matx33d m(h.m.data());
  cv::Mat out;
  cv::warpPerspective(AsMat(fixed), out, m, cv::Size(w, hgt), cv::INTER_LINEAR,
                      cv::BORDER_CONSTANT, cv::Scalar(0));
  return FromMat(out);
}

// Largest distance between the true and the estimated images of the
// fixed image's corners and centre, in moving full-res pixels.
double CornerError(const Homography& truth, const Homography& est, double w,
                   double h) {
  const double pts[5][2] = {
      {0, 0}, {w - 1, 0}, {w - 1, h - 1}, {0, h - 1}, {w / 2, h / 2}};
  double worst = 0;
  for (const auto& p : pts) {
    double tx = 0, ty = 0, ex = 0, ey = 0;
    if (!truth.Apply(p[0], p[1], &tx, &ty) ||
        !est.Apply(p[0], p[1], &ex, &ey)) {
      return 1e9;
    }
    worst = std::max(worst, std::hypot(tx - ex, ty - ey));
  }
  return worst;
}

class RobustStartTest : public ::testing::Test {
 protected:
  // The photo at 2656x1494 (4 MP, float grey) is the "full resolution"; its
  // registration copies are 2x smaller, as the planner would make them.
  static void SetUpTestSuite() {
    absl::StatusOr<Image> photo =
        ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"));
    ASSERT_TRUE(photo.ok()) << photo.status();
    absl::StatusOr<Image> full = MakeGrayscaleCopy(*photo, 2656, 1494, 2);
    ASSERT_TRUE(full.ok()) << full.status();
    full_ = new Image(*std::move(full));
  }
  static void TearDownTestSuite() {
    delete full_;
    full_ = nullptr;
  }

  static Image Copy(const Image& full) {
    return *MakeGrayscaleCopy(full, full.width() / 2, full.height() / 2);
  }

  // Warps the photo by `truth`, estimates from the copies and returns it.
  static InitialAlignment Recover(const Homography& truth,
                                  RobustStartOptions o = {}) {
    const Image moving = WarpFull(*full_, truth, 2656, 1494);
    const Image fixed_copy = Copy(*full_);
    const Image moving_copy = Copy(moving);
    o.fixed_full_width = o.moving_full_width = 2656;
    o.fixed_full_height = o.moving_full_height = 1494;
    o.threads = 2;
    absl::StatusOr<InitialAlignment> a =
        EstimateInitialAlignment(fixed_copy, moving_copy, o);
    EXPECT_TRUE(a.ok()) << a.status();
    if (!a.ok()) return InitialAlignment();
    std::printf("%s; corner error %.3f px, %.2f s\n", a->reason.c_str(),
                CornerError(truth, a->fixed_to_moving, 2656, 1494), a->seconds);
    return *a;
  }

  static Image* full_;
};
Image* RobustStartTest::full_ = nullptr;

TEST_F(RobustStartTest, RecoversASimilarity) {
  const Homography truth = MakeMap(25, 1.3, 1328, 747, 40, -25);
  const InitialAlignment a = Recover(truth);
  ASSERT_TRUE(a.found) << a.reason;
  EXPECT_EQ(a.model, AlignmentModel::kSimilarity) << a.reason;
  EXPECT_EQ(a.detector, "SIFT");
  EXPECT_FALSE(a.mirrored);
  EXPECT_GE(a.inliers, 200);
  EXPECT_LT(CornerError(truth, a.fixed_to_moving, 2656, 1494), 1.0);
  EXPECT_THAT(a.reason, HasSubstr("similarity from"));
}

// Jobs on a many-core host run their starts at once, each entering
// OpenCV's parallel loops (oneTBB in Debian's build) from its own thread.
// One CI run hung there once (docs/benchmarks.md, "The CPU job's time");
// this did not reproduce it, but keeps concurrent starts checked. A
// watchdog turns a hang into a failure.
TEST_F(RobustStartTest, StartsOnSeveralThreadsAtOnceAllFinish) {
  const Homography truth = MakeMap(25, 1.3, 1328, 747, 40, -25);
  const Image fixed_copy = Copy(*full_);
  const Image moving_copy = Copy(WarpFull(*full_, truth, 2656, 1494));
  RobustStartOptions o;
  o.fixed_full_width = o.moving_full_width = 2656;
  o.fixed_full_height = o.moving_full_height = 1494;
  o.threads = 2;
  std::atomic<bool> done{false};
  std::thread watchdog([&done] {
    for (int i = 0; i < 1200 && !done.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!done.load()) {
      std::fprintf(stderr, "concurrent starts still running after 120 s\n");
      std::abort();
    }
  });
  std::vector<std::thread> jobs;
  std::atomic<int> found{0};
  for (int t = 0; t < 4; ++t) {
    jobs.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        absl::StatusOr<InitialAlignment> a =
            EstimateInitialAlignment(fixed_copy, moving_copy, o);
        if (a.ok() && a->found) ++found;
      }
    });
  }
  for (std::thread& j : jobs) j.join();
  done = true;
  watchdog.join();
  EXPECT_EQ(found.load(), 12);
}

TEST_F(RobustStartTest, RecoversAnyRotationAndScalesFromHalfToTwice) {
  struct Case {
    double deg, scale;
  };
  for (const Case& c : {Case{180, 0.55}, Case{-120, 1.9}, Case{95, 1.0}}) {
    SCOPED_TRACE(::testing::Message() << c.deg << " deg, scale " << c.scale);
    const Homography truth = MakeMap(c.deg, c.scale, 1328, 747, 15, -10);
    const InitialAlignment a = Recover(truth);
    ASSERT_TRUE(a.found) << a.reason;
    EXPECT_EQ(a.model, AlignmentModel::kSimilarity) << a.reason;
    EXPECT_LT(CornerError(truth, a.fixed_to_moving, 2656, 1494), 1.0);
  }
}

TEST_F(RobustStartTest, RecoversAnAffineMap) {
  Homography truth;
  truth.m = {0.85, 0.25, 120, -0.18, 1.1, 90, 0, 0, 1};
  const InitialAlignment a = Recover(truth);
  ASSERT_TRUE(a.found) << a.reason;
  EXPECT_EQ(a.model, AlignmentModel::kAffine) << a.reason;
  EXPECT_LT(CornerError(truth, a.fixed_to_moving, 2656, 1494), 1.0);
}

TEST_F(RobustStartTest, RecoversAStrongHomography) {
  // 60 degrees, scale 0.9, keystone: elastix from the centres fails here.
  const Homography truth = MakeMap(60, 0.9, 1328, 747, 30, 20, 1.2e-4, -0.8e-4);
  const InitialAlignment a = Recover(truth);
  ASSERT_TRUE(a.found) << a.reason;
  EXPECT_EQ(a.model, AlignmentModel::kHomography) << a.reason;
  EXPECT_LT(CornerError(truth, a.fixed_to_moving, 2656, 1494), 1.0);
}

TEST_F(RobustStartTest, RigidJobsStopAtASimilarity) {
  const Homography truth = MakeMap(60, 0.9, 1328, 747, 30, 20, 1.2e-4, -0.8e-4);
  RobustStartOptions o;
  o.max_model = AlignmentModel::kSimilarity;
  const InitialAlignment a = Recover(truth, o);
  // The keystone leaves the similarity far off at the corners, but right
  // near the centre, where most matches are: a usable start for elastix.
  ASSERT_TRUE(a.found) << a.reason;
  EXPECT_EQ(a.model, AlignmentModel::kSimilarity);
  double tx = 0, ty = 0, ex = 0, ey = 0;
  ASSERT_TRUE(truth.Apply(1328, 747, &tx, &ty));
  ASSERT_TRUE(a.fixed_to_moving.Apply(1328, 747, &ex, &ey));
  EXPECT_LT(std::hypot(tx - ex, ty - ey), 10.0);
}

TEST_F(RobustStartTest, FindsAMirroredImageOnlyWhenAllowed) {
  // The moving image is the photo flipped left-right, then rotated.
  Homography flip;
  flip.m = {-1, 0, 2655, 0, 1, 0, 0, 0, 1};
  const Homography truth = flip.Then(MakeMap(-15, 1.0, 1328, 747, 0, 0));
  RobustStartOptions o;
  const InitialAlignment refused = Recover(truth, o);
  EXPECT_FALSE(refused.found) << refused.reason;
  o.allow_mirror = true;
  const InitialAlignment a = Recover(truth, o);
  ASSERT_TRUE(a.found) << a.reason;
  EXPECT_TRUE(a.mirrored);
  EXPECT_THAT(a.reason, HasSubstr("mirrored"));
  EXPECT_LT(CornerError(truth, a.fixed_to_moving, 2656, 1494), 1.0);
}

// The Oxford graffiti pair: a planar wall from viewpoints ~40 degrees
// apart, with its published homography graf1 -> graf3 (tests/data/README).
TEST(RobustStartGraffitiTest, RecoversThePublishedHomography) {
  absl::StatusOr<Image> g1 = ReadImageFile(DataPath("graffiti/graf1.png"));
  absl::StatusOr<Image> g3 = ReadImageFile(DataPath("graffiti/graf3.png"));
  ASSERT_TRUE(g1.ok() && g3.ok()) << g1.status() << g3.status();
  const Image fixed = *MakeGrayscaleCopy(*g1, 800, 640);
  const Image moving = *MakeGrayscaleCopy(*g3, 800, 640);
  Homography truth;
  truth.m = {7.6285898e-01, -2.9922929e-01, 2.2567123e+02,
             3.3443473e-01, 1.0143901e+00,  -7.6999973e+01,
             3.4663091e-04, -1.4364524e-05, 1.0};
  RobustStartOptions o;
  o.threads = 2;
  absl::StatusOr<InitialAlignment> a =
      EstimateInitialAlignment(fixed, moving, o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->found) << a->reason;
  EXPECT_EQ(a->model, AlignmentModel::kHomography) << a->reason;
  // Over a grid of graf1 points whose image lies inside graf3.
  double worst = 0, sum = 0;
  int n = 0;
  for (int y = 0; y < 640; y += 20) {
    for (int x = 0; x < 800; x += 20) {
      double tx = 0, ty = 0, ex = 0, ey = 0;
      ASSERT_TRUE(truth.Apply(x, y, &tx, &ty));
      if (tx < 0 || ty < 0 || tx > 799 || ty > 639) continue;
      ASSERT_TRUE(a->fixed_to_moving.Apply(x, y, &ex, &ey));
      const double e = std::hypot(tx - ex, ty - ey);
      worst = std::max(worst, e);
      sum += e;
      ++n;
    }
  }
  std::printf("graffiti: %s; error mean %.3f, max %.3f px over %d points\n",
              a->reason.c_str(), sum / n, worst, n);
  EXPECT_GT(n, 600);
  EXPECT_LT(sum / n, 0.6);
  EXPECT_LT(worst, 1.5);
}

TEST_F(RobustStartTest, RefusesAPhotoAgainstNoise) {
  cv::Mat noise(747, 1328, CV_32F);
  cv::RNG rng(7);
  rng.fill(noise, cv::RNG::UNIFORM, 0.0, 1.0);
  cv::GaussianBlur(noise, noise, cv::Size(0, 0), 1.5);
  const Image moving_copy = FromMat(noise);
  const Image fixed_copy = Copy(*full_);
  RobustStartOptions o;
  o.fixed_full_width = o.moving_full_width = 2656;
  o.fixed_full_height = o.moving_full_height = 1494;
  absl::StatusOr<InitialAlignment> a =
      EstimateInitialAlignment(fixed_copy, moving_copy, o);
  ASSERT_TRUE(a.ok()) << a.status();
  std::printf("photo vs noise: %s\n", a->reason.c_str());
  EXPECT_FALSE(a->found);
  EXPECT_THAT(a->reason, ::testing::ContainsRegex("too few|cover under"));
  // Nothing found: the identity, so callers can ignore it safely.
  EXPECT_EQ(a->fixed_to_moving.m, Homography::Identity().m);
}

TEST_F(RobustStartTest, RefusesTwoDifferentPhotos) {
  absl::StatusOr<Image> graf = ReadImageFile(DataPath("graffiti/graf1.png"));
  ASSERT_TRUE(graf.ok()) << graf.status();
  const Image moving_copy = *MakeGrayscaleCopy(*graf, 800, 640);
  const Image fixed_copy = Copy(*full_);
  RobustStartOptions o;
  o.fixed_full_width = 2656;
  o.fixed_full_height = 1494;
  o.allow_mirror = true;  // no second chance either
  absl::StatusOr<InitialAlignment> a =
      EstimateInitialAlignment(fixed_copy, moving_copy, o);
  ASSERT_TRUE(a.ok()) << a.status();
  std::printf("photo vs graffiti: %s\n", a->reason.c_str());
  EXPECT_FALSE(a->found);
  EXPECT_THAT(a->reason, ::testing::ContainsRegex("too few|cover under"));
  EXPECT_GT(a->fixed_keypoints, 1000);  // refused for want of agreement
  EXPECT_GT(a->moving_keypoints, 1000);
}

TEST_F(RobustStartTest, RefusesBadCopies) {
  const Image tiny = *Image::Allocate(
      {.width = 8, .height = 8, .channels = 1, .type = SampleType::kFloat32});
  const Image fixed_copy = Copy(*full_);
  absl::StatusOr<InitialAlignment> a =
      EstimateInitialAlignment(fixed_copy, tiny, RobustStartOptions());
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("moving copy is 8x8"));
  const Image rgb = *Image::Allocate(
      {.width = 64, .height = 64, .channels = 3, .type = SampleType::kUInt8});
  a = EstimateInitialAlignment(rgb, fixed_copy, RobustStartOptions());
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(a.status().message(), HasSubstr("fixed copy must be float32"));
}

}  // namespace
}  // namespace regserve
