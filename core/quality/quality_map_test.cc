// Copyright regserve authors.
//
// The quality map against known truth, on a real photo (the seeding photo,
// sharp dandelions in front of out-of-focus grass and sky). A "full
// resolution" image of 1328x747 is the photo downsampled; the moving image
// is it warped by a known smooth deformation; both registration copies are
// 664x373 (factor 2), as the pipeline makes them. The field handed to
// EstimateQuality is the truth plus a known error, and the estimate must
// find that error.
#include "core/quality/quality_map.h"

#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "core/image/image_io.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

constexpr int64_t kFullW = 1328, kFullH = 747;  // "full resolution"
constexpr int64_t kCopyW = 664, kCopyH = 373;   // registration copies
constexpr double kPi = 3.14159265358979323846;

struct Vec {
  double x = 0, y = 0;
};
using FieldFn = std::function<Vec(double x, double y)>;

std::string DataPath(const std::string& rel) {
  const char* dir = std::getenv("REGSERVE_TEST_DATA");
  return std::string(dir != nullptr ? dir : "tests/data") + "/" + rel;
}

// The photo as a float32 grey image at kFullW x kFullH (read once).
const Image& FullFixed() {
  static const Image* img = [] {
    absl::StatusOr<Image> photo =
        ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"), ReadOptions{});
    if (!photo.ok()) return new Image();
    absl::StatusOr<Image> gray = MakeGrayscaleCopy(*photo, kFullW, kFullH, 2);
    return gray.ok() ? new Image(*std::move(gray)) : new Image();
  }();
  return *img;
}

float Bilinear(const Image& img, double x, double y) {
  const float* p = img.as<float>();
  const int64_t w = img.width(), h = img.height();
  x = std::clamp(x, 0.0, w - 1.0);
  y = std::clamp(y, 0.0, h - 1.0);
  const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(x), w - 2);
  const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(y), h - 2);
  const double fx = x - x0, fy = y - y0;
  const float* r0 = p + y0 * w;
  const float* r1 = r0 + w;
  return static_cast<float>((r0[x0] * (1 - fx) + r0[x0 + 1] * fx) * (1 - fy) +
                            (r1[x0] * (1 - fx) + r1[x0 + 1] * fx) * fy);
}

// The moving full-resolution image for a true field d: M(p + d(p)) = F(p),
// i.e. M(q) = F(p) with p solving p + d(p) = q (fixed-point iteration).
Image MakeMovingFull(const Image& fixed, const FieldFn& d) {
  Image m = *Image::Allocate(fixed.spec());
  float* out = m.as<float>();
  for (int64_t y = 0; y < m.height(); ++y) {
    for (int64_t x = 0; x < m.width(); ++x) {
      double px = x, py = y;
      for (int it = 0; it < 20; ++it) {
        const Vec v = d(px, py);
        px = x - v.x;
        py = y - v.y;
      }
      out[y * m.width() + x] = Bilinear(fixed, px, py);
    }
  }
  return m;
}

// A field on the fixed copy's grid (origin 0.5, spacing 2) sampled from d.
DisplacementField FieldOnCopyGrid(const FieldFn& d) {
  DisplacementField f;
  f.width = kCopyW;
  f.height = kCopyH;
  f.spacing_x = static_cast<double>(kFullW) / kCopyW;
  f.spacing_y = static_cast<double>(kFullH) / kCopyH;
  f.origin_x = (f.spacing_x - 1) / 2;
  f.origin_y = (f.spacing_y - 1) / 2;
  f.dx.resize(kCopyW * kCopyH);
  f.dy.resize(kCopyW * kCopyH);
  for (int64_t j = 0; j < kCopyH; ++j) {
    for (int64_t i = 0; i < kCopyW; ++i) {
      const Vec v =
          d(f.origin_x + i * f.spacing_x, f.origin_y + j * f.spacing_y);
      f.dx[j * kCopyW + i] = static_cast<float>(v.x);
      f.dy[j * kCopyW + i] = static_cast<float>(v.y);
    }
  }
  return f;
}

// About 1 degree of rotation about the centre, a shift and a gentle
// bending of +-0.35% of the width: at most ~14 px.
Vec SmoothTruth(double x, double y) {
  const double a = 1.0 * kPi / 180, cx = kFullW / 2.0, cy = kFullH / 2.0;
  const double rx = std::cos(a) * (x - cx) - std::sin(a) * (y - cy) + cx;
  const double ry = std::sin(a) * (x - cx) + std::cos(a) * (y - cy) + cy;
  const double bend = 0.0035 * kFullW * std::sin(2 * kPi * x / kFullW);
  return {rx - x + 3.0, ry - y - 2.0 + bend};
}

class QualityMapTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_FALSE(FullFixed().empty()) << "cannot read the seeding photo";
    fixed_ = new Image(*MakeGrayscaleCopy(FullFixed(), kCopyW, kCopyH));
    moving_ = new Image(*MakeGrayscaleCopy(
        MakeMovingFull(FullFixed(), SmoothTruth), kCopyW, kCopyH));
  }
  static void TearDownTestSuite() {
    delete fixed_;
    delete moving_;
  }

  static QualityReport Estimate(const FieldFn& field) {
    QualityOptions o;
    o.fixed_full_width = o.moving_full_width = kFullW;
    o.fixed_full_height = o.moving_full_height = kFullH;
    o.threads = 2;
    absl::StatusOr<QualityReport> r =
        EstimateQuality(*fixed_, *moving_, FieldOnCopyGrid(field), o);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return QualityReport{};
    std::cerr << QualitySummaryLine(r->summary) << ", " << r->summary.unmatched
              << " unmatched\n";
    return *std::move(r);
  }

  // The true error (field minus truth) averaged over patch k's footprint.
  static Vec TrueErrorAt(const QualityGrid& g, size_t k, const FieldFn& err) {
    const int c = static_cast<int>(k % g.cols),
              r = static_cast<int>(k / g.cols);
    Vec sum;
    int n = 0;
    for (int y = 0; y < g.patch_size; y += 4) {
      for (int x = 0; x < g.patch_size; x += 4) {
        const Vec e = err((g.x0[c] + x + 0.5) * g.scale_x,
                          (g.y0[r] + y + 0.5) * g.scale_y);
        sum.x += e.x;
        sum.y += e.y;
        ++n;
      }
    }
    return {sum.x / n, sum.y / n};
  }

  static Image* fixed_;
  static Image* moving_;
};
Image* QualityMapTest::fixed_ = nullptr;
Image* QualityMapTest::moving_ = nullptr;

TEST_F(QualityMapTest, CorrectFieldReportsAboutZero) {
  const QualityReport q = Estimate(SmoothTruth);
  const QualitySummary& s = q.summary;
  EXPECT_EQ(s.verdict, QualityVerdict::kGood) << s.warning;
  EXPECT_LT(s.mean_px, 0.15);
  EXPECT_LT(s.p95_px, 0.4);
  EXPECT_LT(s.unmatched_fraction, 0.05);
  // The sharp dandelions and grass are checked, and with faint texture
  // (QualityOptions::faint_texture) the blurred background too.
  EXPECT_GT(s.checked_fraction, 0.9);
  EXPECT_TRUE(s.warning.empty());
}

TEST_F(QualityMapTest, GlobalShiftErrorIsMeasuredWithinAFactorOfTwo) {
  const FieldFn err = [](double, double) { return Vec{1.5, 0.0}; };
  const QualityReport q = Estimate([&](double x, double y) {
    const Vec t = SmoothTruth(x, y), e = err(x, y);
    return Vec{t.x + e.x, t.y + e.y};
  });
  const QualityGrid& g = q.grid;
  int measured = 0, within = 0;
  for (size_t k = 0; k < g.state.size(); ++k) {
    if (g.state[k] != PatchState::kMeasured) continue;
    ++measured;
    within += g.error_px[k] >= 0.75 && g.error_px[k] <= 3.0 && g.dx[k] > 0;
  }
  ASSERT_GT(measured, 50);
  EXPECT_GE(within, 0.95 * measured) << within << " of " << measured;
  EXPECT_NEAR(q.summary.mean_px, 1.5, 0.3);
}

TEST_F(QualityMapTest, LocalBumpIsFoundWhereItIsAndNowhereElse) {
  // A 3 px bump (Gaussian, sigma 90 px) on the big dandelion.
  const FieldFn err = [](double x, double y) {
    const double r2 = (x - 390) * (x - 390) + (y - 250) * (y - 250);
    const double a = 3.0 * std::exp(-r2 / (2 * 90.0 * 90.0));
    return Vec{a * 0.6, a * 0.8};
  };
  const QualityReport q = Estimate([&](double x, double y) {
    const Vec t = SmoothTruth(x, y), e = err(x, y);
    return Vec{t.x + e.x, t.y + e.y};
  });
  const QualityGrid& g = q.grid;
  int large = 0, large_ok = 0, small = 0, small_ok = 0;
  for (size_t k = 0; k < g.state.size(); ++k) {
    if (g.state[k] != PatchState::kMeasured) continue;
    const Vec e = TrueErrorAt(g, k, err);
    const double truth = std::hypot(e.x, e.y);
    if (truth > 1.0) {
      ++large;
      large_ok += g.error_px[k] >= truth / 2 && g.error_px[k] <= truth * 2;
    } else if (truth < 0.05) {
      ++small;
      small_ok += g.error_px[k] < 0.4;
    }
  }
  ASSERT_GT(large, 10);
  ASSERT_GT(small, 50);
  EXPECT_GE(large_ok, 0.9 * large) << large_ok << " of " << large;
  EXPECT_GE(small_ok, 0.95 * small) << small_ok << " of " << small;
  EXPECT_GT(q.summary.max_px, 2.0);
}

TEST_F(QualityMapTest, PatchesCrossingTheMovingImagesEdgeAreMeasured) {
  // The truth shifted 40 px further: the fixed image's right 40 px or so
  // lie beyond the moving image's edge, and the last column of patches
  // (copy x 600..663) crosses it. Those patches are measured over the part
  // that the moving image covers, and find the field's 1.5 px error there.
  const FieldFn truth = [](double x, double y) {
    const Vec t = SmoothTruth(x, y);
    return Vec{t.x + 40.0, t.y};
  };
  const Image moving =
      *MakeGrayscaleCopy(MakeMovingFull(FullFixed(), truth), kCopyW, kCopyH);
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = kFullW;
  o.fixed_full_height = o.moving_full_height = kFullH;
  absl::StatusOr<QualityReport> q =
      EstimateQuality(*fixed_, moving, FieldOnCopyGrid([&](double x, double y) {
        const Vec t = truth(x, y);
        return Vec{t.x + 1.5, t.y};
      }),
                      o);
  ASSERT_TRUE(q.ok()) << q.status();
  const QualityGrid& g = q->grid;
  ASSERT_EQ(g.x0.back(), kCopyW - 64);
  int measured = 0, within = 0;
  for (int r = 0; r < g.rows; ++r) {
    const size_t k = static_cast<size_t>(r) * g.cols + g.cols - 1;
    if (g.state[k] != PatchState::kMeasured) continue;
    ++measured;
    within += g.dx[k] >= 1.2 && g.dx[k] <= 1.8 && std::abs(g.dy[k]) < 0.3;
  }
  EXPECT_GE(measured, g.rows / 2) << "of " << g.rows << " edge patches";
  EXPECT_GE(within, 0.9 * measured) << within << " of " << measured;
  EXPECT_NEAR(q->summary.mean_px, 1.5, 0.3);
}

TEST_F(QualityMapTest, CoarseFieldGridIsInterpolated) {
  // A constant (1.5, -1) px field on 2x2 nodes spanning the image, as a
  // rigid registration's field may come; both copies are the fixed one, so
  // the field is the whole error.
  DisplacementField coarse;
  coarse.width = coarse.height = 2;
  coarse.spacing_x = kFullW - 1;
  coarse.spacing_y = kFullH - 1;
  coarse.dx.assign(4, 1.5f);
  coarse.dy.assign(4, -1.0f);
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = kFullW;
  o.fixed_full_height = o.moving_full_height = kFullH;
  absl::StatusOr<QualityReport> q =
      EstimateQuality(*fixed_, *fixed_, coarse, o);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_NEAR(q->summary.mean_px, std::hypot(1.5, 1.0), 0.1)
      << QualitySummaryLine(q->summary);
  EXPECT_EQ(q->grid.scale_x, 2.0);
}

TEST_F(QualityMapTest, IdentityOnALargeDeformationIsPoor) {
  const QualityReport q = Estimate([](double, double) { return Vec{}; });
  // The truth moves every point by 4-14 px; the identity is that far off.
  EXPECT_EQ(q.summary.verdict, QualityVerdict::kPoor);
  EXPECT_GT(q.summary.mean_px, 3.0);
  EXPECT_FALSE(q.summary.warning.empty());
}

TEST_F(QualityMapTest, TwentyPixelErrorIsNeverGood) {
  // The truth plus 20 px (mostly a shift, some rotation).
  const QualityReport q = Estimate([](double x, double y) {
    const Vec t = SmoothTruth(x, y);
    return Vec{t.x + 14.0 + 0.004 * (y - 373), t.y - 14.0 - 0.004 * (x - 664)};
  });
  EXPECT_EQ(q.summary.verdict, QualityVerdict::kPoor) << q.summary.warning;
  EXPECT_TRUE(q.summary.mean_px > 10.0 || q.summary.unmatched_fraction > 0.5)
      << QualitySummaryLine(q.summary);
}

TEST_F(QualityMapTest, UnrelatedImagesArePoorNotGood) {
  // The moving copy is the photo upside down: nothing lines up.
  Image flipped = *Image::Allocate(moving_->spec());
  const float* src = moving_->as<float>();
  float* dst = flipped.as<float>();
  const size_t n = static_cast<size_t>(kCopyW * kCopyH);
  for (size_t i = 0; i < n; ++i) dst[i] = src[n - 1 - i];
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = kFullW;
  o.fixed_full_height = o.moving_full_height = kFullH;
  absl::StatusOr<QualityReport> q =
      EstimateQuality(*fixed_, flipped, FieldOnCopyGrid(SmoothTruth), o);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->summary.verdict, QualityVerdict::kPoor)
      << QualitySummaryLine(q->summary);
  EXPECT_GT(q->summary.unmatched_fraction, 0.5);
}

// The identity field on a w x h image's own pixels, and options for two
// images of that size registered at full resolution.
DisplacementField IdentityField(int64_t w, int64_t h) {
  DisplacementField f;
  f.width = w;
  f.height = h;
  f.dx.assign(static_cast<size_t>(w * h), 0.f);
  f.dy.assign(static_cast<size_t>(w * h), 0.f);
  return f;
}
QualityOptions FullSizeOptions(int64_t w, int64_t h) {
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = w;
  o.fixed_full_height = o.moving_full_height = h;
  return o;
}

TEST(QualityMapBasics, FlatImageCannotBeChecked) {
  ImageSpec spec{
      .width = 200, .height = 150, .channels = 1, .type = SampleType::kFloat32};
  Image a = *Image::AllocateZeroed(spec);
  Image b = *Image::AllocateZeroed(spec);
  absl::StatusOr<QualityReport> q =
      EstimateQuality(a, b, IdentityField(200, 150), FullSizeOptions(200, 150));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->summary.verdict, QualityVerdict::kUnchecked);
  EXPECT_EQ(q->summary.checked_fraction, 0.0);
  EXPECT_NE(q->summary.warning.find("could not be checked"), std::string::npos);
  EXPECT_EQ(q->grid.cols * q->grid.rows,
            static_cast<int>(q->grid.state.size()));
}

// Left half: strong random texture; right half: ten times fainter (a
// hundredth of the structure tensor, between faint_texture and
// min_texture), the same in both images (its shift is measured) or
// independent noise in the moving image (nothing to tell: unknown, not
// unmatched).
struct FaintCase {
  Image fixed, moving;
};
FaintCase MakeFaint(bool same_faint_texture) {
  ImageSpec spec{
      .width = 256, .height = 128, .channels = 1, .type = SampleType::kFloat32};
  FaintCase c{*Image::AllocateZeroed(spec), *Image::AllocateZeroed(spec)};
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (Image* img : {&c.fixed, &c.moving}) {
    float* p = img->as<float>();
    std::mt19937 same(11);
    for (int y = 0; y < 128; ++y) {
      for (int x = 0; x < 256; ++x) {
        float v = u(same);
        const float other = u(rng);
        if (img == &c.moving && !same_faint_texture && x >= 128) v = other;
        p[y * 256 + x] = x < 128 ? v : 0.45f + 0.1f * v;
      }
    }
  }
  return c;
}

// `faint_texture` < 0: the default.
QualityReport EstimateIdentity(const FaintCase& c, double faint_texture = -1) {
  QualityOptions o = FullSizeOptions(256, 128);
  o.patch_size = 32;
  if (faint_texture >= 0) o.faint_texture = faint_texture;
  absl::StatusOr<QualityReport> q =
      EstimateQuality(c.fixed, c.moving, IdentityField(256, 128), o);
  EXPECT_TRUE(q.ok()) << q.status();
  return q.ok() ? *std::move(q) : QualityReport();
}

// The states of the patches lying wholly in the right (faint) half.
std::vector<PatchState> FaintStates(const QualityGrid& g) {
  std::vector<PatchState> out;
  for (int r = 0; r < g.rows; ++r) {
    for (int c = 0; c < g.cols; ++c) {
      if (g.x0[c] >= 128) out.push_back(g.state[r * g.cols + c]);
    }
  }
  return out;
}

TEST(QualityMapBasics, FaintTextureIsMeasuredWhenItMatches) {
  const QualityReport q = EstimateIdentity(MakeFaint(true));
  const std::vector<PatchState> faint = FaintStates(q.grid);
  ASSERT_FALSE(faint.empty());
  for (PatchState s : faint) EXPECT_EQ(s, PatchState::kMeasured);
  EXPECT_LT(q.summary.max_px, 0.05);
}

TEST(QualityMapBasics, FaintTextureThatDoesNotMatchIsUnknown) {
  const QualityReport q = EstimateIdentity(MakeFaint(false));
  const std::vector<PatchState> faint = FaintStates(q.grid);
  ASSERT_FALSE(faint.empty());
  for (PatchState s : faint) EXPECT_EQ(s, PatchState::kUnknown);
  EXPECT_EQ(q.summary.unmatched, 0);
  EXPECT_EQ(q.summary.verdict, QualityVerdict::kGood) << q.summary.warning;
}

TEST(QualityMapBasics, FaintTextureIsIgnoredWhenSwitchedOff) {
  const QualityReport q =
      EstimateIdentity(MakeFaint(true), QualityOptions().min_texture);
  const std::vector<PatchState> faint = FaintStates(q.grid);
  ASSERT_FALSE(faint.empty());
  for (PatchState s : faint) EXPECT_EQ(s, PatchState::kUnknown);
}

TEST(QualityMapBasics, RejectsBadInputs) {
  ImageSpec spec{
      .width = 64, .height = 64, .channels = 1, .type = SampleType::kFloat32};
  Image a = *Image::AllocateZeroed(spec);
  Image rgb = *Image::AllocateZeroed(
      {.width = 64, .height = 64, .channels = 3, .type = SampleType::kUInt8});
  DisplacementField f;
  f.width = 32;
  f.height = 64;
  f.dx.assign(32 * 64, 0.f);
  f.dy.assign(31 * 64, 0.f);
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = 64;
  o.fixed_full_height = o.moving_full_height = 64;
  EXPECT_EQ(EstimateQuality(a, a, f, o).status().code(),
            absl::StatusCode::kInvalidArgument);  // inconsistent field
  f.dy.assign(32 * 64, 0.f);
  EXPECT_TRUE(EstimateQuality(a, a, f, o).ok());  // any grid will do
  EXPECT_EQ(EstimateQuality(rgb, a, f, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.moving_full_width = 0;
  EXPECT_EQ(EstimateQuality(a, a, f, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QualityMapBasics, CancelledTokenStops) {
  ImageSpec spec{
      .width = 128, .height = 128, .channels = 1, .type = SampleType::kFloat32};
  Image a = *Image::Allocate(spec);
  for (int i = 0; i < 128 * 128; ++i) {
    a.as<float>()[i] = static_cast<float>((i * 7919) % 256) / 255.f;
  }
  DisplacementField f;
  f.width = 128;
  f.height = 128;
  f.dx.assign(128 * 128, 0.f);
  f.dy.assign(128 * 128, 0.f);
  CancelToken token;
  token.Cancel("stop");
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = 128;
  o.fixed_full_height = o.moving_full_height = 128;
  o.cancel = &token;
  EXPECT_EQ(EstimateQuality(a, a, f, o).status().code(),
            absl::StatusCode::kCancelled);
}

TEST(QualityMapBasics, JudgeAndSummaryLine) {
  QualityOptions o;
  QualitySummary s;
  s.computed = true;
  s.measured = 80;
  s.unmatched = 2;
  s.checked_fraction = 0.83;
  s.unmatched_fraction = 2.0 / 82;
  s.mean_px = 0.21;
  s.p95_px = 0.6;
  s.max_px = 1.1;
  JudgeQuality(o, &s);
  EXPECT_EQ(s.verdict, QualityVerdict::kGood);
  EXPECT_EQ(QualitySummaryLine(s),
            "quality: est. mean 0.21 px, p95 0.60 px, max 1.10 px, checked 83% "
            "of the area");
  s.p95_px = 2.5;
  JudgeQuality(o, &s);
  EXPECT_EQ(s.verdict, QualityVerdict::kPoor);
  EXPECT_NE(s.warning.find("looks poor"), std::string::npos) << s.warning;
  EXPECT_NE(QualitySummaryLine(s).find("(poor)"), std::string::npos);
  s.p95_px = 0.6;
  s.unmatched_fraction = 0.5;
  JudgeQuality(o, &s);
  EXPECT_EQ(s.verdict, QualityVerdict::kPoor);
  EXPECT_NE(s.warning.find("do not match"), std::string::npos) << s.warning;
}

TEST(QualityMapBasics, ThumbnailFitsAndStretches) {
  ImageSpec spec{.width = 3000,
                 .height = 1000,
                 .channels = 1,
                 .type = SampleType::kFloat32};
  Image a = *Image::Allocate(spec);
  for (int64_t y = 0; y < 1000; ++y) {
    for (int64_t x = 0; x < 3000; ++x) {
      a.as<float>()[y * 3000 + x] = 0.2f + 0.3f * static_cast<float>(x) / 3000;
    }
  }
  absl::StatusOr<Image> t = MakeQualityThumbnail(a, 1024);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->width(), 1024);
  EXPECT_EQ(t->height(), 341);
  EXPECT_EQ(t->channels(), 1);
  EXPECT_EQ(t->type(), SampleType::kUInt8);
  EXPECT_LE(t->data()[0], 5);         // left edge: the 1st percentile
  EXPECT_GE(t->row(100)[1023], 250);  // right edge: the 99th
  EXPECT_EQ(MakeQualityThumbnail(a, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace regserve
