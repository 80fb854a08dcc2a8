// Copyright regserve authors.
#include "core/quality/phase_correlation.h"

#include <cmath>

#include "gtest/gtest.h"
#include "opencv2/imgproc.hpp"

namespace regserve {
namespace {

// Random texture (blurred by `blur` px when > 0), size x size, shifted by
// (sx, sy) px (bilinear).
cv::Mat Texture(int size, double sx, double sy, unsigned seed,
                double blur = 1.5) {
  cv::RNG rng(seed);
  cv::Mat big(size + 32, size + 32, CV_32F);
  rng.fill(big, cv::RNG::UNIFORM, 0.f, 1.f);
  if (blur > 0) cv::GaussianBlur(big, big, cv::Size(0, 0), blur);
  const cv::Mat m = (cv::Mat_<double>(2, 3) << 1, 0, 16 + sx, 0, 1, 16 + sy);
  cv::Mat out;
  cv::warpAffine(big, out, m, cv::Size(size, size),
                 cv::INTER_LINEAR | cv::WARP_INVERSE_MAP);
  return out - cv::mean(out)[0];
}

cv::Mat Hanning(int size) {
  cv::Mat w;
  cv::createHanningWindow(w, cv::Size(size, size), CV_32F);
  return w;
}

// The same shift and response as cv::phaseCorrelate where every frequency
// carries signal (white noise). Where a blurred patch's spectrum falls to
// the float rounding floor, the two DFTs' rounding differs there and the
// whitening amplifies it: a 64 px patch still agrees within 0.01 px.
TEST(PhaseCorrelatorTest, AgreesWithOpenCV) {
  for (int size : {16, 32, 64, 128}) {
    absl::StatusOr<PhaseCorrelator> pc = PhaseCorrelator::Create(size);
    ASSERT_TRUE(pc.ok()) << pc.status();
    const cv::Mat w = Hanning(size);
    for (int k = 0; k < 20; ++k) {
      for (double blur : {0.0, 1.5}) {
        if (blur > 0 && size < 64) continue;
        const double sx = 0.37 * k - 3.1, sy = 2.2 - 0.29 * k;
        const cv::Mat a = Texture(size, 0, 0, 100 + k, blur);
        const cv::Mat b = Texture(size, sx, sy, 100 + k, blur);
        double ours_peak = 0, cv_peak = 0;
        const cv::Point2d ours = pc->Correlate(a, b, w, &ours_peak);
        const cv::Point2d ref =
            cv::phaseCorrelate(a.mul(w), b.mul(w), cv::noArray(), &cv_peak);
        const double tol = blur > 0 ? 0.01 : 2e-3;
        EXPECT_NEAR(ours.x, ref.x, tol) << size << " " << k << " " << blur;
        EXPECT_NEAR(ours.y, ref.y, tol) << size << " " << k << " " << blur;
        EXPECT_NEAR(ours_peak, cv_peak, 10 * tol) << size << " " << k;
      }
    }
  }
}

TEST(PhaseCorrelatorTest, FindsAKnownShift) {
  absl::StatusOr<PhaseCorrelator> pc = PhaseCorrelator::Create(64);
  ASSERT_TRUE(pc.ok()) << pc.status();
  const cv::Mat a = Texture(64, 0, 0, 7);
  const cv::Mat b = Texture(64, 5, -3, 7);  // b(x) = a(x + (5, -3))
  double peak = 0;
  const cv::Point2d s = pc->Correlate(a, b, Hanning(64), &peak);
  EXPECT_NEAR(s.x, -5, 0.05);
  EXPECT_NEAR(s.y, 3, 0.05);
  EXPECT_GT(peak, 0.3);
}

TEST(PhaseCorrelatorTest, RejectsSizesThatAreNotPowersOfTwo) {
  EXPECT_EQ(PhaseCorrelator::Create(48).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PhaseCorrelator::Create(0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace regserve
