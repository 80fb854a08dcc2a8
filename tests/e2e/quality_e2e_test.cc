// Copyright regserve authors.
//
// End to end: the quality map through a real regserved and regctl. A good
// rigid registration of the ITK brain slice (rotated 10 degrees and
// shifted by (13, 17) px) prints a small estimated residual and writes a
// heat map with green cells; a pair with a local deformation that a rigid
// registration cannot undo is flagged: regctl prints a warning and the map
// is red where the deformation is.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/image/image_io.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The "est. mean X px" figure of regctl's quality line; -1 when absent.
// (Parsed by hand: GCC 12's <regex> trips -Wmaybe-uninitialized under the
// sanitizers' -O2 build.)
double EstimatedMean(const std::string& out) {
  const std::string kPrefix = "quality: est. mean ";
  const size_t at = out.find(kPrefix);
  if (at == std::string::npos) return -1;
  const size_t begin = at + kPrefix.size();
  const size_t end = out.find(" px, p95 ", begin);
  if (end == std::string::npos) return -1;
  const size_t line_end = out.find('\n', end);
  if (out.substr(end, line_end - end).find("% of the area") ==
      std::string::npos) {
    return -1;
  }
  double v = -1;
  return absl::SimpleAtod(out.substr(begin, end - begin), &v) ? v : -1;
}

// The 32-hex-digit id after "job " in regctl's output; empty when absent.
std::string JobIdIn(const std::string& out) {
  for (size_t at = out.find("job "); at != std::string::npos;
       at = out.find("job ", at + 1)) {
    const std::string id = out.substr(at + 4, 32);
    if (id.size() == 32 &&
        id.find_first_not_of("0123456789abcdef") == std::string::npos) {
      return id;
    }
  }
  return "";
}

struct Colours {
  int green = 0, red = 0, grey = 0;
};
Colours CountColours(const Image& rgb) {
  Colours c;
  for (int64_t i = 0; i < rgb.width() * rgb.height(); ++i) {
    const uint8_t* p = rgb.data() + 3 * i;
    if (p[1] > p[0] + 30 && p[1] > p[2] + 30) ++c.green;
    if (p[0] > p[1] + 30 && p[0] > p[2] + 30) ++c.red;
    if (p[0] == p[1] && p[1] == p[2]) ++c.grey;
  }
  return c;
}

class QualityE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon();
    ASSERT_TRUE(daemon_->Start(MakeTempDir("regserve_quality_data"),
                               {"--elastix_threads=1", "--cpu_slots=2"}))
        << ReadAll(daemon_->stderr_path());
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << ReadAll(daemon_->stderr_path());
    delete daemon_;
  }
  static Daemon* daemon_;
};
Daemon* QualityE2eTest::daemon_ = nullptr;

TEST_F(QualityE2eTest, GoodRegistrationPrintsSmallResidualAndGreenMap) {
  const std::string dir = MakeTempDir("quality_good");
  const std::string map = dir + "/map.png";
  CommandResult r =
      RunRegctl(daemon_->address(),
                {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
                 dir + "/r.tif", "--transform", "rigid", "--quality-map", map});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const double mean = EstimatedMean(r.out);
  ASSERT_GE(mean, 0) << r.out;
  EXPECT_LT(mean, 0.5) << r.out;
  EXPECT_EQ(r.out.find("WARNING"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("wrote quality map " + map), std::string::npos) << r.out;

  absl::StatusOr<Image> rgb = ReadImageFile(map);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->width(), 181);  // the fixed image's size: under 1024 px
  EXPECT_EQ(rgb->height(), 217);
  EXPECT_EQ(rgb->channels(), 3);
  EXPECT_EQ(rgb->type(), SampleType::kUInt8);
  const Colours c = CountColours(*rgb);
  EXPECT_GT(c.green, 181 * 217 / 4) << "green " << c.green;
  EXPECT_EQ(c.red, 0);
  // The patches that the rotated moving image's edge crosses are measured
  // over the part it covers, so the corners need not be grey (unchecked).

  // The summary is also in the job's status.
  const std::string id = JobIdIn(r.err);
  ASSERT_FALSE(id.empty()) << r.err;
  CommandResult status = RunRegctl(daemon_->address(), {"status", id});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find("quality: est. mean"), std::string::npos)
      << status.out;
  // Watching the finished job again: the map comes from the job directory.
  const std::string again = dir + "/again.png";
  CommandResult watch =
      RunRegctl(daemon_->address(), {"watch", id, "--quality-map", again});
  EXPECT_EQ(watch.exit_code, 0) << watch.err;
  absl::StatusOr<Image> rgb2 = ReadImageFile(again);
  ASSERT_TRUE(rgb2.ok()) << rgb2.status();
  EXPECT_EQ(CountColours(*rgb2).green, c.green);
}

// The fixed slice with a local bump of up to kBump px (Gaussian, sigma
// 30 px) in its middle: no rigid transform (nor the robust start's
// homography) can undo it, so the residual there is the bump.
constexpr double kBump = 8.0;
std::string WriteBumpedMoving(const std::string& dir) {
  absl::StatusOr<Image> fixed = ReadImageFile(Fixed());
  if (!fixed.ok()) return "";
  Image moving = *Image::Allocate(fixed->spec());
  const int64_t w = fixed->width(), h = fixed->height();
  const int c = fixed->channels();
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      // M(q) = F(q - b(q)): the moving content sits b further along.
      const double r2 = (x - 90.0) * (x - 90.0) + (y - 110.0) * (y - 110.0);
      const double b = kBump * std::exp(-r2 / (2 * 30.0 * 30.0));
      const double sx = std::clamp(x - 0.6 * b, 0.0, w - 1.0);
      const double sy = std::clamp(y - 0.8 * b, 0.0, h - 1.0);
      const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(sx), w - 2);
      const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(sy), h - 2);
      const double fx = sx - x0, fy = sy - y0;
      for (int ch = 0; ch < c; ++ch) {
        auto at = [&](int64_t xx, int64_t yy) {
          return static_cast<double>(fixed->row(yy)[xx * c + ch]);
        };
        const double v =
            (at(x0, y0) * (1 - fx) + at(x0 + 1, y0) * fx) * (1 - fy) +
            (at(x0, y0 + 1) * (1 - fx) + at(x0 + 1, y0 + 1) * fx) * fy;
        moving.row(y)[x * c + ch] = static_cast<uint8_t>(std::lround(v));
      }
    }
  }
  const std::string path = dir + "/bumped.png";
  return WriteImageFile(path, moving).ok() ? path : "";
}

TEST_F(QualityE2eTest, RigidFitOfALocalDeformationIsFlaggedPoor) {
  const std::string dir = MakeTempDir("quality_bad");
  const std::string moving = WriteBumpedMoving(dir);
  ASSERT_FALSE(moving.empty());
  const std::string map = dir + "/map.png";
  CommandResult r =
      RunRegctl(daemon_->address(),
                {"submit", "--fixed", Fixed(), "--moving", moving, "--output",
                 dir + "/r.tif", "--transform", "rigid", "--quality-map", map});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(poor)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("WARNING: the registration looks poor"),
            std::string::npos)
      << r.out;
  EXPECT_GT(EstimatedMean(r.out), 1.0) << r.out;
  absl::StatusOr<Image> rgb = ReadImageFile(map);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  const Colours c = CountColours(*rgb);
  EXPECT_GT(c.red, 181 * 217 / 10) << "red " << c.red;
  // Red where the bump is.
  const uint8_t* centre = rgb->row(110) + 3 * 90;
  EXPECT_GT(centre[0], centre[1] + 30)
      << int(centre[0]) << "," << int(centre[1]) << "," << int(centre[2]);
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
