// Copyright regserve authors.
//
// Test helpers for the refinement: a known smooth map (rotation about the
// centre, a shift, a bending in x and y, each step invertible in closed
// form) or a known homography, a fixed/moving pair made from a real grey image
// with it, the map's field on any grid (plus a known error), and a field's
// error against the map.
//
//   KnownMap map(1400, 756, /*degrees=*/0.5, 3.2, -2.1, /*bend=*/0.0035);
//   Scene s = MakeScene(source_gray, /*margin=*/36, map).value();
//   DisplacementField start = MapField(map, grid_like, /*bump_px=*/2.5);
//   FieldError e = ErrorOf(refined, map);  // e.mean, e.p95, e.max
#ifndef REGSERVE_CORE_REFINE_REFINE_TEST_UTIL_H_
#define REGSERVE_CORE_REFINE_REFINE_TEST_UTIL_H_

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/common/status_macros.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "core/warp/warp.h"

namespace regserve {
namespace refine_test {

// T: fixed full-resolution position -> moving full-resolution position.
struct KnownMap {
  double w, h, cx, cy, c, s, tx, ty, a;
  KnownMap(int64_t width, int64_t height, double degrees, double shift_x,
           double shift_y, double bend)
      : w(static_cast<double>(width)),
        h(static_cast<double>(height)),
        cx((w - 1) / 2),
        cy((h - 1) / 2),
        c(std::cos(degrees * M_PI / 180)),
        s(std::sin(degrees * M_PI / 180)),
        tx(shift_x),
        ty(shift_y),
        a(bend * w) {}
  void Forward(double x, double y, double* X, double* Y) const {
    y += a * std::sin(2 * M_PI * x / w);
    x += a * std::sin(2 * M_PI * y / h);
    const double u = x - cx, v = y - cy;
    *X = cx + c * u - s * v + tx;
    *Y = cy + s * u + c * v + ty;
  }
  void Inverse(double X, double Y, double* x, double* y) const {
    const double u = X - tx - cx, v = Y - ty - cy;
    double xx = cx + c * u + s * v, yy = cy - s * u + c * v;
    xx -= a * std::sin(2 * M_PI * yy / h);
    yy -= a * std::sin(2 * M_PI * xx / w);
    *x = xx;
    *y = yy;
  }
};

// A projective map as T, row-major 3x3 on full-resolution positions (the
// refinement's prior has the same form); the inverse in closed form.
struct HomographyMap {
  double w, h;
  std::array<double, 9> m, inv;
  HomographyMap(int64_t width, int64_t height, const std::array<double, 9>& h)
      : w(static_cast<double>(width)), h(static_cast<double>(height)), m(h) {
    // The adjugate: the inverse up to a scale, which a projective map
    // ignores.
    inv = {m[4] * m[8] - m[5] * m[7], m[2] * m[7] - m[1] * m[8],
           m[1] * m[5] - m[2] * m[4], m[5] * m[6] - m[3] * m[8],
           m[0] * m[8] - m[2] * m[6], m[2] * m[3] - m[0] * m[5],
           m[3] * m[7] - m[4] * m[6], m[1] * m[6] - m[0] * m[7],
           m[0] * m[4] - m[1] * m[3]};
  }
  static void Apply(const std::array<double, 9>& a, double x, double y,
                    double* X, double* Y) {
    const double d = a[6] * x + a[7] * y + a[8];
    *X = (a[0] * x + a[1] * y + a[2]) / d;
    *Y = (a[3] * x + a[4] * y + a[5]) / d;
  }
  void Forward(double x, double y, double* X, double* Y) const {
    Apply(m, x, y, X, Y);
  }
  void Inverse(double X, double Y, double* x, double* y) const {
    Apply(inv, X, Y, x, y);
  }
};

struct Scene {
  Image fixed;   // full resolution, map.w x map.h
  Image moving;  // same size: moving(q) = source(T^-1(q) + margin)
};

// Warps `source` (any type) into a w x h image through `field`.
inline absl::StatusOr<Image> WarpInto(const Image& source,
                                      const DisplacementField& field, int64_t w,
                                      int64_t h) {
  REGSERVE_ASSIGN_OR_RETURN(auto warper, Warper::Create(WarpDevice::kCpu));
  ImageSpec spec = source.spec();
  spec.width = w;
  spec.height = h;
  REGSERVE_ASSIGN_OR_RETURN(Image out, Image::Allocate(spec));
  WarpOptions o;
  o.interpolation = Interpolation::kCubic;
  o.cpu_threads = 2;
  const size_t bpp = spec.bytes_per_pixel();
  REGSERVE_RETURN_IF_ERROR(
      warper
          ->Warp(source, field, w, h, o,
                 [&](const TileRect& r, const Image& tile) {
                   for (int64_t j = 0; j < r.h; ++j) {
                     std::copy_n(tile.row(j), tile.row_bytes(),
                                 out.row(r.y + j) + r.x * bpp);
                   }
                   return absl::OkStatus();
                 })
          .status());
  return out;
}

// The fixed image is `source` less `margin` on every side; the moving one
// is made from the whole source, so that real content (not fill) lies
// wherever T sends the fixed image (|T(p) - p| < margin).
template <typename Map>
absl::StatusOr<Scene> MakeScene(const Image& source, int64_t margin,
                                const Map& map) {
  const int64_t w = static_cast<int64_t>(map.w);
  const int64_t h = static_cast<int64_t>(map.h);
  DisplacementField shift;
  shift.width = shift.height = 1;
  shift.dx = {static_cast<float>(margin)};
  shift.dy = {static_cast<float>(margin)};
  DisplacementField inverse;
  inverse.spacing_x = inverse.spacing_y = 4;
  inverse.width = (w - 1) / 4 + 2;
  inverse.height = (h - 1) / 4 + 2;
  for (int64_t j = 0; j < inverse.height; ++j) {
    for (int64_t i = 0; i < inverse.width; ++i) {
      double x, y;
      map.Inverse(i * 4.0, j * 4.0, &x, &y);
      inverse.dx.push_back(static_cast<float>(x + margin - i * 4.0));
      inverse.dy.push_back(static_cast<float>(y + margin - j * 4.0));
    }
  }
  Scene s;
  REGSERVE_ASSIGN_OR_RETURN(s.fixed, WarpInto(source, shift, w, h));
  REGSERVE_ASSIGN_OR_RETURN(s.moving, WarpInto(source, inverse, w, h));
  return s;
}

// The seeding photo of tests/data (or $REGSERVE_TEST_DATA).
inline std::string SeedingPhotoPath() {
  const char* dir = std::getenv("REGSERVE_TEST_DATA");
  return std::string(dir != nullptr ? dir : "tests/data") +
         "/photos/seeding_5312x2988.jpg";
}

// The registration copies (copy_w x copy_h, grey float) of MakeScene's
// pair made from the seeding photo reduced to map.w x map.h plus `margin`
// on every side.
struct Copies {
  Image fixed, moving;
};
template <typename Map>
absl::StatusOr<Copies> MakeSeedingCopies(const Map& map, int64_t margin,
                                         int64_t copy_w, int64_t copy_h) {
  REGSERVE_ASSIGN_OR_RETURN(Image photo, ReadImageFile(SeedingPhotoPath()));
  const int64_t w = static_cast<int64_t>(map.w);
  const int64_t h = static_cast<int64_t>(map.h);
  REGSERVE_ASSIGN_OR_RETURN(
      Image source,
      MakeGrayscaleCopy(photo, w + 2 * margin, h + 2 * margin, 2));
  REGSERVE_ASSIGN_OR_RETURN(Scene scene, MakeScene(source, margin, map));
  Copies c;
  REGSERVE_ASSIGN_OR_RETURN(c.fixed,
                            MakeGrayscaleCopy(scene.fixed, copy_w, copy_h, 2));
  REGSERVE_ASSIGN_OR_RETURN(c.moving,
                            MakeGrayscaleCopy(scene.moving, copy_w, copy_h, 2));
  return c;
}

// T(p) - p on the grid of `like`, plus a known error: a Gaussian bump of
// `bump_px` in x (centred at 30% / 60% of the image, 10% of its width
// wide) and a constant (shift_x, shift_y).
template <typename Map>
DisplacementField MapField(const Map& map, const DisplacementField& like,
                           double bump_px = 0, double shift_x = 0,
                           double shift_y = 0) {
  DisplacementField f = like;
  f.dx.assign(f.width * f.height, 0.f);
  f.dy.assign(f.width * f.height, 0.f);
  for (int64_t j = 0; j < f.height; ++j) {
    for (int64_t i = 0; i < f.width; ++i) {
      const double x = f.origin_x + i * f.spacing_x;
      const double y = f.origin_y + j * f.spacing_y;
      double X, Y;
      map.Forward(x, y, &X, &Y);
      const double r = 0.1 * map.w;
      const double bump = std::exp(-(std::pow((x - 0.3 * map.w) / r, 2) +
                                     std::pow((y - 0.6 * map.h) / r, 2)));
      f.dx[j * f.width + i] =
          static_cast<float>(X - x + shift_x + bump_px * bump);
      f.dy[j * f.width + i] = static_cast<float>(Y - y + shift_y);
    }
  }
  return f;
}

// An empty field with the geometry of a registration copy of a
// full_w x full_h image at copy_w x copy_h (as registration makes it).
inline DisplacementField CopyGridField(int64_t full_w, int64_t full_h,
                                       int64_t copy_w, int64_t copy_h) {
  DisplacementField f;
  f.width = copy_w;
  f.height = copy_h;
  f.spacing_x = static_cast<double>(full_w) / copy_w;
  f.spacing_y = static_cast<double>(full_h) / copy_h;
  f.origin_x = (f.spacing_x - 1) / 2;
  f.origin_y = (f.spacing_y - 1) / 2;
  f.dx.assign(copy_w * copy_h, 0.f);
  f.dy.assign(copy_w * copy_h, 0.f);
  return f;
}

struct FieldError {
  double mean = 0, p95 = 0, max = 0;
};

// |field(p) - (T(p) - p)| over the field's nodes.
template <typename Map>
FieldError ErrorOf(const DisplacementField& field, const Map& map) {
  std::vector<double> e;
  for (int64_t j = 0; j < field.height; ++j) {
    for (int64_t i = 0; i < field.width; ++i) {
      const double x = field.origin_x + i * field.spacing_x;
      const double y = field.origin_y + j * field.spacing_y;
      double X, Y;
      map.Forward(x, y, &X, &Y);
      const size_t k = j * field.width + i;
      e.push_back(std::hypot(field.dx[k] - (X - x), field.dy[k] - (Y - y)));
    }
  }
  std::sort(e.begin(), e.end());
  FieldError r;
  for (double v : e) r.mean += v;
  r.mean /= std::max<size_t>(1, e.size());
  r.p95 = e.empty() ? 0 : e[static_cast<size_t>(0.95 * (e.size() - 1))];
  r.max = e.empty() ? 0 : e.back();
  return r;
}

}  // namespace refine_test
}  // namespace regserve

#endif  // REGSERVE_CORE_REFINE_REFINE_TEST_UTIL_H_
