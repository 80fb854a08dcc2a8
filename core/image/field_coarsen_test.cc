// Copyright regserve authors.
#include "core/image/field_coarsen.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace regserve {
namespace {

// A field like a job's: nodes every `spacing` px over a w x h image, a
// smooth bend of `amplitude` px over `wavelength` px, plus `noise` px of
// node-to-node roughness.
DisplacementField Field(int64_t w, int64_t h, double spacing, double amplitude,
                        double wavelength, double noise) {
  DisplacementField f;
  f.width = static_cast<int64_t>(std::ceil(w / spacing)) + 1;
  f.height = static_cast<int64_t>(std::ceil(h / spacing)) + 1;
  f.origin_x = f.origin_y = (spacing - 1) / 2;
  f.spacing_x = f.spacing_y = spacing;
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-noise, noise);
  for (int64_t j = 0; j < f.height; ++j) {
    for (int64_t i = 0; i < f.width; ++i) {
      const double x = f.origin_x + i * spacing, y = f.origin_y + j * spacing;
      f.dx.push_back(static_cast<float>(amplitude * std::sin(y / wavelength) +
                                        0.01 * x + u(rng)));
      f.dy.push_back(static_cast<float>(amplitude * std::cos(x / wavelength) -
                                        0.02 * y + u(rng)));
    }
  }
  return f;
}

// Bilinear, border-clamped value at full-resolution position (px, py).
void At(const DisplacementField& f, double px, double py, double* dx,
        double* dy) {
  double gx = std::clamp((px - f.origin_x) / f.spacing_x, 0.0,
                         static_cast<double>(f.width - 1));
  double gy = std::clamp((py - f.origin_y) / f.spacing_y, 0.0,
                         static_cast<double>(f.height - 1));
  const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(gx), f.width - 2);
  const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(gy), f.height - 2);
  const double tx = gx - x0, ty = gy - y0;
  auto lerp2 = [&](const std::vector<float>& v) {
    const double a = v[y0 * f.width + x0], b = v[y0 * f.width + x0 + 1];
    const double c = v[(y0 + 1) * f.width + x0];
    const double d = v[(y0 + 1) * f.width + x0 + 1];
    return (1 - ty) * ((1 - tx) * a + tx * b) + ty * ((1 - tx) * c + tx * d);
  };
  *dx = lerp2(f.dx);
  *dy = lerp2(f.dy);
}

// The largest difference at many random positions, borders and beyond.
double SampledDeviation(const DisplacementField& a, const DisplacementField& b,
                        double w, double h) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> ux(-20, w + 20), uy(-20, h + 20);
  double worst = 0;
  for (int k = 0; k < 200000; ++k) {
    const double x = ux(rng), y = uy(rng);
    double ax, ay, bx, by;
    At(a, x, y, &ax, &ay);
    At(b, x, y, &bx, &by);
    worst = std::max(worst, std::hypot(ax - bx, ay - by));
  }
  return worst;
}

TEST(FieldCoarsenTest, TheBoundHoldsEverywhereAndIsTight) {
  const DisplacementField f = Field(3000, 2000, 3.77, 20.0, 400.0, 0.0);
  for (int factor : {2, 3, 4, 8}) {
    const FieldCoarsening c = CoarsenField(f, factor, 2);
    ASSERT_EQ(c.factor, factor);
    EXPECT_LE(c.field.width, (f.width - 1 + factor - 1) / factor + 1);
    // Same extent: the first and last nodes sit where the field's do.
    EXPECT_DOUBLE_EQ(c.field.origin_x, f.origin_x);
    EXPECT_NEAR(c.field.origin_x + (c.field.width - 1) * c.field.spacing_x,
                f.origin_x + (f.width - 1) * f.spacing_x, 1e-6);
    const double sampled = SampledDeviation(f, c.field, 3000, 2000);
    EXPECT_LE(sampled, c.max_error_px + 1e-4) << factor;
    EXPECT_GE(sampled, 0.5 * c.max_error_px) << factor;
  }
}

TEST(FieldCoarsenTest, ChoosesTheCoarsestWithinTheTolerance) {
  // Smooth: a bend of 20 px over 400 px (sharper than elastix's B-spline
  // grid of a job) is within 0.01 px with a node every 15 px instead of
  // 3.77 (the bilinear error is about spacing^2 / 8 times the curvature:
  // 0.004 px), not every 30 px (0.014 px).
  const DisplacementField smooth = Field(3000, 2000, 3.77, 20.0, 400.0, 0.0);
  const FieldCoarsening c = CoarsestFieldWithin(smooth, 0.01, 8, 2);
  EXPECT_EQ(c.factor, 4);
  EXPECT_LE(c.max_error_px, 0.01);
  EXPECT_LT(c.field.bytes() * 12, smooth.bytes());
  // Smoother still: the coarsest allowed.
  const DisplacementField gentle = Field(3000, 2000, 3.77, 20.0, 1200.0, 0.0);
  EXPECT_EQ(CoarsestFieldWithin(gentle, 0.01, 8, 2).factor, 8);
  // Rough from node to node: kept as it is.
  const DisplacementField rough = Field(3000, 2000, 3.77, 20.0, 400.0, 0.05);
  EXPECT_EQ(CoarsestFieldWithin(rough, 0.01, 8, 2).factor, 1);
  // A looser tolerance takes a coarser grid.
  EXPECT_GT(CoarsestFieldWithin(rough, 0.2, 8, 2).factor, 1);
}

TEST(FieldCoarsenTest, NonFiniteOrTinyFieldsAreKept) {
  DisplacementField f = Field(300, 200, 4.0, 5.0, 100.0, 0.0);
  f.dx[10] = std::nanf("");
  EXPECT_EQ(CoarsestFieldWithin(f, 1.0, 8, 1).factor, 1);
  const DisplacementField tiny = Field(4, 4, 4.0, 1.0, 10.0, 0.0);
  EXPECT_EQ(CoarsenField(tiny, 2, 1).factor, 1);
}

}  // namespace
}  // namespace regserve
