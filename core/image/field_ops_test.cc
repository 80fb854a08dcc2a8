// Copyright regserve authors.
#include "core/image/field_ops.h"

#include <cmath>
#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

// A homography with rotation, scale, shear and perspective; w stays
// positive over a few thousand pixels.
Homography Perspective() {
  Homography h;
  h.m = {0.76, -0.30, 225.7, 0.33, 1.01, -77.0, 3.4e-4, -1.4e-5, 1.0};
  return h;
}

// f(X, Y) = a X + b Y + c: bilinear interpolation reproduces it exactly.
double Plane(double x, double y) { return 0.25 * x - 0.125 * y + 40.0; }

// A float32 image whose node (i, j) on `g` holds Plane at its position.
Image PlaneImage(const GridGeometry& g) {
  Image img = *Image::Allocate({.width = g.width,
                                .height = g.height,
                                .channels = 1,
                                .type = SampleType::kFloat32});
  for (int64_t j = 0; j < g.height; ++j) {
    float* row = reinterpret_cast<float*>(img.row(j));
    for (int64_t i = 0; i < g.width; ++i) {
      row[i] = static_cast<float>(
          Plane(g.origin_x + i * g.spacing_x, g.origin_y + j * g.spacing_y));
    }
  }
  return img;
}

TEST(HomographyTest, ApplyThenAndInverse) {
  Homography shift;
  shift.m = {1, 0, 5, 0, 1, -3, 0, 0, 1};
  double x = 0, y = 0;
  ASSERT_TRUE(shift.Apply(10, 20, &x, &y));
  EXPECT_DOUBLE_EQ(x, 15);
  EXPECT_DOUBLE_EQ(y, 17);

  Homography scale;
  scale.m = {2, 0, 0, 0, 2, 0, 0, 0, 1};
  // First the shift, then the scale: 2 * (p + t).
  ASSERT_TRUE(shift.Then(scale).Apply(10, 20, &x, &y));
  EXPECT_DOUBLE_EQ(x, 30);
  EXPECT_DOUBLE_EQ(y, 34);

  const Homography h = Perspective();
  Homography inv;
  ASSERT_TRUE(h.Inverse(&inv));
  double bx = 0, by = 0;
  ASSERT_TRUE(h.Apply(123.5, 456.25, &x, &y));
  ASSERT_TRUE(inv.Apply(x, y, &bx, &by));
  EXPECT_NEAR(bx, 123.5, 1e-9);
  EXPECT_NEAR(by, 456.25, 1e-9);

  Homography singular;
  singular.m = {1, 2, 3, 2, 4, 6, 0, 0, 1};
  EXPECT_FALSE(singular.Inverse(&inv));

  // The line w = 0 and beyond it: no image point.
  Homography horizon;
  horizon.m = {1, 0, 0, 0, 1, 0, -0.01, 0, 1};  // w = 0 at x = 100
  EXPECT_TRUE(horizon.Apply(99, 0, &x, &y));
  EXPECT_FALSE(horizon.Apply(100, 0, &x, &y));
  EXPECT_FALSE(horizon.Apply(150, 0, &x, &y));
}

TEST(RegistrationGridTest, SpacingAndOriginOfACopy) {
  const GridGeometry g = RegistrationGrid(1000, 500, 4000, 2500);
  EXPECT_DOUBLE_EQ(g.spacing_x, 4.0);
  EXPECT_DOUBLE_EQ(g.spacing_y, 5.0);
  EXPECT_DOUBLE_EQ(g.origin_x, 1.5);  // the centre of full pixels 0..3
  EXPECT_DOUBLE_EQ(g.origin_y, 2.0);
}

TEST(WarpByHomographyTest, SamplesAPlaneExactlyAndMasksTheOutside) {
  // The source: a 3x registration copy of a 900x600 image.
  const GridGeometry src_grid = RegistrationGrid(300, 200, 900, 600);
  const Image src = PlaneImage(src_grid);
  // The target: a 2x copy of an 800x640 fixed image.
  const GridGeometry target = RegistrationGrid(400, 320, 800, 640);
  const Homography h = Perspective();
  Image valid;
  absl::StatusOr<Image> out =
      WarpByHomography(src, src_grid, h, target, -1.0f, &valid, 2);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->width(), 400);
  ASSERT_EQ(out->height(), 320);
  ASSERT_EQ(valid.width(), 400);
  int inside = 0, outside = 0;
  for (int64_t gy = 0; gy < target.height; ++gy) {
    const float* row = reinterpret_cast<const float*>(out->row(gy));
    for (int64_t gx = 0; gx < target.width; ++gx) {
      const double px = target.origin_x + gx * target.spacing_x;
      const double py = target.origin_y + gy * target.spacing_y;
      double qx = 0, qy = 0;
      ASSERT_TRUE(h.Apply(px, py, &qx, &qy));
      const double u = (qx - src_grid.origin_x) / src_grid.spacing_x;
      const double v = (qy - src_grid.origin_y) / src_grid.spacing_y;
      const bool in = u >= 0 && v >= 0 && u <= 299 && v <= 199;
      ASSERT_EQ(valid.row(gy)[gx], in ? 1 : 0) << gx << "," << gy;
      if (in) {
        ++inside;
        ASSERT_NEAR(row[gx], Plane(qx, qy), 2e-3) << gx << "," << gy;
      } else {
        ++outside;
        ASSERT_EQ(row[gx], -1.0f);
      }
    }
  }
  // The homography keeps part of the image and sends part outside.
  EXPECT_GT(inside, 20000);
  EXPECT_GT(outside, 5000);
}

TEST(WarpByHomographyTest, IdentityOnTheSameGridIsACopy) {
  const GridGeometry g = RegistrationGrid(64, 48, 256, 192);
  Image src = PlaneImage(g);
  src.as<float>()[5 * 64 + 7] = 1000.0f;  // a spike stays in place
  absl::StatusOr<Image> out =
      WarpByHomography(src, g, Homography::Identity(), g);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(std::memcmp(out->data(), src.data(), src.size_bytes()), 0);
}

TEST(WarpByHomographyTest, RefusesBadInputs) {
  const GridGeometry g = RegistrationGrid(16, 16, 16, 16);
  Image rgb = *Image::Allocate(
      {.width = 16, .height = 16, .channels = 3, .type = SampleType::kUInt8});
  absl::StatusOr<Image> out =
      WarpByHomography(rgb, g, Homography::Identity(), g);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("float32 grey"));

  const Image grey = PlaneImage(g);
  const GridGeometry other = RegistrationGrid(8, 16, 16, 16);
  out = WarpByHomography(grey, other, Homography::Identity(), g);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.status().message(), HasSubstr("16x16 but its grid is 8x16"));

  GridGeometry empty;
  out = WarpByHomography(grey, g, Homography::Identity(), empty);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.status().message(), HasSubstr("target"));
}

TEST(FillInvalidTest, CopiesWhereTheMaskIsZero) {
  const GridGeometry src_grid = RegistrationGrid(40, 30, 40, 30);
  const Image src = PlaneImage(src_grid);
  Homography shift;
  shift.m = {1, 0, 10, 0, 1, 0, 0, 0, 1};  // the right 10 columns fall out
  Image valid;
  absl::StatusOr<Image> out =
      WarpByHomography(src, src_grid, shift, src_grid, 0.0f, &valid);
  ASSERT_TRUE(out.ok()) << out.status();
  Image from = *Image::Allocate(src.spec());
  for (int64_t i = 0; i < 40 * 30; ++i) from.as<float>()[i] = -7.0f;
  ASSERT_TRUE(FillInvalid(valid, from, &*out).ok());
  for (int64_t y = 0; y < 30; ++y) {
    const float* row = reinterpret_cast<const float*>(out->row(y));
    EXPECT_NEAR(row[29], Plane(39, y), 1e-4);
    EXPECT_EQ(row[30], -7.0f);
    EXPECT_EQ(row[39], -7.0f);
  }
  Image small = *Image::Allocate(
      {.width = 4, .height = 4, .channels = 1, .type = SampleType::kFloat32});
  EXPECT_EQ(FillInvalid(valid, small, &*out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComposeHomographyFieldTest, TotalIsHomographyAfterField) {
  // A field on a 2x grid: d(x, y) = (0.01 y + 1, -0.02 x + 2).
  DisplacementField d;
  d.width = 50;
  d.height = 40;
  d.origin_x = 0.5;
  d.origin_y = 0.5;
  d.spacing_x = 2.0;
  d.spacing_y = 2.0;
  for (int64_t gy = 0; gy < d.height; ++gy) {
    for (int64_t gx = 0; gx < d.width; ++gx) {
      const double x = d.origin_x + gx * d.spacing_x;
      const double y = d.origin_y + gy * d.spacing_y;
      d.dx.push_back(static_cast<float>(0.01 * y + 1));
      d.dy.push_back(static_cast<float>(-0.02 * x + 2));
    }
  }
  const Homography h = Perspective();
  absl::StatusOr<DisplacementField> t = ComposeHomographyField(h, d, 2);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->width, d.width);
  EXPECT_EQ(t->height, d.height);
  EXPECT_EQ(t->origin_x, d.origin_x);
  EXPECT_EQ(t->spacing_y, d.spacing_y);
  for (int64_t gy = 0; gy < d.height; ++gy) {
    for (int64_t gx = 0; gx < d.width; ++gx) {
      const double x = d.origin_x + gx * d.spacing_x;
      const double y = d.origin_y + gy * d.spacing_y;
      // Written out by hand: H applied to (x + d(x)).
      const double mx = x + 0.01 * y + 1, my = y - 0.02 * x + 2;
      const double w = 3.4e-4 * mx - 1.4e-5 * my + 1.0;
      const double hx = (0.76 * mx - 0.30 * my + 225.7) / w;
      const double hy = (0.33 * mx + 1.01 * my - 77.0) / w;
      const size_t k = static_cast<size_t>(gy * d.width + gx);
      ASSERT_NEAR(t->dx[k], hx - x, 1e-3);
      ASSERT_NEAR(t->dy[k], hy - y, 1e-3);
    }
  }
}

TEST(ComposeHomographyFieldTest, PreWarpThenFieldEqualsTotalField) {
  // Sampling the pre-warped copy P = M o H at x + d(x) is sampling M at
  // x + total(x): the identity the registration stage relies on.
  const GridGeometry moving_grid = RegistrationGrid(200, 150, 800, 600);
  const Image moving = PlaneImage(moving_grid);
  const GridGeometry fixed_grid = RegistrationGrid(160, 120, 640, 480);
  Homography h;
  h.m = {0.9, -0.2, 60, 0.15, 0.95, 20, 1e-4, 5e-5, 1};
  absl::StatusOr<Image> pre =
      WarpByHomography(moving, moving_grid, h, fixed_grid);
  ASSERT_TRUE(pre.ok()) << pre.status();
  // d: a constant shift by whole fixed-grid nodes, so P is sampled at nodes.
  DisplacementField d;
  d.width = fixed_grid.width;
  d.height = fixed_grid.height;
  d.origin_x = fixed_grid.origin_x;
  d.origin_y = fixed_grid.origin_y;
  d.spacing_x = fixed_grid.spacing_x;
  d.spacing_y = fixed_grid.spacing_y;
  d.dx.assign(static_cast<size_t>(d.width * d.height), 3 * 4.0f);
  d.dy.assign(static_cast<size_t>(d.width * d.height), -2 * 4.0f);
  absl::StatusOr<DisplacementField> t = ComposeHomographyField(h, d);
  ASSERT_TRUE(t.ok()) << t.status();
  int checked = 0;
  for (int64_t gy = 10; gy < 100; gy += 7) {
    for (int64_t gx = 10; gx < 140; gx += 9) {
      const float p = reinterpret_cast<const float*>(pre->row(gy - 2))[gx + 3];
      if (p == 0.0f) continue;  // outside the moving image
      const size_t k = static_cast<size_t>(gy * d.width + gx);
      const double x = d.origin_x + gx * d.spacing_x + t->dx[k];
      const double y = d.origin_y + gy * d.spacing_y + t->dy[k];
      EXPECT_NEAR(p, Plane(x, y), 2e-3);
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}

TEST(ComposeHomographyFieldTest, BeyondTheHorizonGoesFarOutside) {
  DisplacementField d;
  d.width = 3;
  d.height = 1;
  d.spacing_x = 100;
  d.dx.assign(3, 0.0f);
  d.dy.assign(3, 0.0f);
  Homography horizon;
  horizon.m = {1, 0, 0, 0, 1, 0, -0.01, 0, 1};  // w <= 0 from x = 100 on
  absl::StatusOr<DisplacementField> t = ComposeHomographyField(horizon, d);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dx[0], 0.0f);
  EXPECT_LE(t->dx[1], -1e6f);
  EXPECT_LE(t->dx[2], -1e6f);
  EXPECT_LE(t->dy[2], -1e6f);
}

TEST(ComposeHomographyFieldTest, RefusesAnInconsistentField) {
  DisplacementField d;
  d.width = 4;
  d.height = 4;
  d.dx.assign(16, 0.0f);
  d.dy.assign(15, 0.0f);
  absl::StatusOr<DisplacementField> t =
      ComposeHomographyField(Homography::Identity(), d);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(
      ComposeHomographyField(Homography::Identity(), DisplacementField()).ok());
}

TEST(HomographyFieldTest, ScaleAboutTheOrigin) {
  Homography scale;
  scale.m = {1.5, 0, 0, 0, 1.5, 0, 0, 0, 1};
  const GridGeometry g = RegistrationGrid(10, 10, 40, 40);
  absl::StatusOr<DisplacementField> f = HomographyField(scale, g);
  ASSERT_TRUE(f.ok()) << f.status();
  // Node (3, 2) lies at (1.5 + 12, 1.5 + 8): d = 0.5 * position.
  EXPECT_NEAR(f->dx[2 * 10 + 3], 0.5 * 13.5, 1e-5);
  EXPECT_NEAR(f->dy[2 * 10 + 3], 0.5 * 9.5, 1e-5);
}

}  // namespace
}  // namespace regserve
