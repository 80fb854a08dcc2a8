// Copyright regserve authors.
#include "core/image/field_ops.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace {

// Where H sends a point to infinity: far outside any image, so that the
// warp fills it (the field stays finite for its bilinear upsampling).
constexpr float kFarAway = -1e7f;

// Runs fn(row_begin, row_end) over [0, rows) on up to `threads` threads.
void ForRows(int64_t rows, int threads,
             const std::function<void(int64_t, int64_t)>& fn) {
  const int n = static_cast<int>(
      std::clamp<int64_t>(std::min<int64_t>(threads, rows / 16), 1, 64));
  if (n == 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < n; ++i) {
    pool.emplace_back(fn, rows * i / n, rows * (i + 1) / n);
  }
  for (std::thread& t : pool) t.join();
}

double MaxAbs(const std::array<double, 9>& m) {
  double a = 0;
  for (double v : m) a = std::max(a, std::fabs(v));
  return a;
}

absl::Status CheckGrid(const GridGeometry& g, const char* what) {
  if (g.width <= 0 || g.height <= 0 || !(g.spacing_x > 0) ||
      !(g.spacing_y > 0) || !std::isfinite(g.origin_x) ||
      !std::isfinite(g.origin_y)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": empty grid or bad spacing/origin (", g.width, "x", g.height,
        ", spacing ", g.spacing_x, "x", g.spacing_y, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

bool Homography::Apply(double x, double y, double* out_x, double* out_y) const {
  const double w = m[6] * x + m[7] * y + m[8];
  // Relative to the matrix's scale, so a homography multiplied by a
  // constant behaves the same.
  if (!(w > 1e-12 * MaxAbs(m))) return false;
  *out_x = (m[0] * x + m[1] * y + m[2]) / w;
  *out_y = (m[3] * x + m[4] * y + m[5]) / w;
  return true;
}

Homography Homography::Then(const Homography& after) const {
  Homography r;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      double s = 0;
      for (int k = 0; k < 3; ++k) s += after.m[i * 3 + k] * m[k * 3 + j];
      r.m[i * 3 + j] = s;
    }
  }
  return r;
}

bool Homography::Inverse(Homography* out) const {
  const std::array<double, 9>& a = m;
  const double c00 = a[4] * a[8] - a[5] * a[7];
  const double c01 = a[5] * a[6] - a[3] * a[8];
  const double c02 = a[3] * a[7] - a[4] * a[6];
  const double det = a[0] * c00 + a[1] * c01 + a[2] * c02;
  const double scale = MaxAbs(a);
  if (!(std::fabs(det) > 1e-14 * scale * scale * scale)) return false;
  const std::array<double, 9> adj = {
      c00, a[2] * a[7] - a[1] * a[8], a[1] * a[5] - a[2] * a[4],
      c01, a[0] * a[8] - a[2] * a[6], a[2] * a[3] - a[0] * a[5],
      c02, a[1] * a[6] - a[0] * a[7], a[0] * a[4] - a[1] * a[3]};
  for (int i = 0; i < 9; ++i) out->m[i] = adj[i] / det;
  return true;
}

GridGeometry RegistrationGrid(int64_t copy_width, int64_t copy_height,
                              int64_t full_width, int64_t full_height) {
  GridGeometry g;
  g.width = copy_width;
  g.height = copy_height;
  g.spacing_x =
      copy_width > 0 ? static_cast<double>(full_width) / copy_width : 1.0;
  g.spacing_y =
      copy_height > 0 ? static_cast<double>(full_height) / copy_height : 1.0;
  g.origin_x = (g.spacing_x - 1.0) / 2.0;
  g.origin_y = (g.spacing_y - 1.0) / 2.0;
  return g;
}

absl::StatusOr<Image> WarpByHomography(const Image& src,
                                       const GridGeometry& src_grid,
                                       const Homography& h,
                                       const GridGeometry& target, float fill,
                                       Image* valid, int threads) {
  if (src.empty() || src.channels() != 1 ||
      src.type() != SampleType::kFloat32) {
    return absl::InvalidArgumentError(
        "WarpByHomography: the source must be a float32 grey image");
  }
  if (src.width() != src_grid.width || src.height() != src_grid.height) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WarpByHomography: source is ", src.width(), "x", src.height(),
        " but its grid is ", src_grid.width, "x", src_grid.height));
  }
  REGSERVE_RETURN_IF_ERROR(CheckGrid(src_grid, "WarpByHomography source"));
  REGSERVE_RETURN_IF_ERROR(CheckGrid(target, "WarpByHomography target"));
  REGSERVE_ASSIGN_OR_RETURN(Image out,
                            Image::Allocate({.width = target.width,
                                             .height = target.height,
                                             .channels = 1,
                                             .type = SampleType::kFloat32}));
  Image mask;
  if (valid != nullptr) {
    REGSERVE_ASSIGN_OR_RETURN(mask,
                              Image::Allocate({.width = target.width,
                                               .height = target.height,
                                               .channels = 1,
                                               .type = SampleType::kUInt8}));
  }
  const float* s = src.as<float>();
  const int64_t sw = src.width();
  const int64_t sh = src.height();
  ForRows(target.height, threads, [&](int64_t y0, int64_t y1) {
    for (int64_t gy = y0; gy < y1; ++gy) {
      float* o = reinterpret_cast<float*>(out.row(gy));
      uint8_t* v = mask.empty() ? nullptr : mask.row(gy);
      const double py = target.origin_y + gy * target.spacing_y;
      for (int64_t gx = 0; gx < target.width; ++gx) {
        const double px = target.origin_x + gx * target.spacing_x;
        double qx = 0, qy = 0;
        bool inside = h.Apply(px, py, &qx, &qy);
        // Continuous index into the source's pixel centres.
        const double u = (qx - src_grid.origin_x) / src_grid.spacing_x;
        const double w = (qy - src_grid.origin_y) / src_grid.spacing_y;
        inside = inside && u >= 0 && w >= 0 && u <= sw - 1 && w <= sh - 1;
        if (!inside) {
          o[gx] = fill;
          if (v != nullptr) v[gx] = 0;
          continue;
        }
        // The cell's top-left pixel; a one-pixel-wide source has no second
        // column (row), and then fx (fy) is 0.
        const int64_t i0 = std::clamp<int64_t>(static_cast<int64_t>(u), 0,
                                               std::max<int64_t>(sw - 2, 0));
        const int64_t j0 = std::clamp<int64_t>(static_cast<int64_t>(w), 0,
                                               std::max<int64_t>(sh - 2, 0));
        const int64_t i1 = std::min<int64_t>(i0 + 1, sw - 1);
        const int64_t j1 = std::min<int64_t>(j0 + 1, sh - 1);
        const double fx = u - static_cast<double>(i0);
        const double fy = w - static_cast<double>(j0);
        const float* r0 = s + j0 * sw;
        const float* r1 = s + j1 * sw;
        const double top = r0[i0] + fx * (r0[i1] - r0[i0]);
        const double bottom = r1[i0] + fx * (r1[i1] - r1[i0]);
        o[gx] = static_cast<float>(top + fy * (bottom - top));
        if (v != nullptr) v[gx] = 1;
      }
    }
  });
  if (valid != nullptr) *valid = std::move(mask);
  return out;
}

absl::Status FillInvalid(const Image& valid, const Image& from, Image* image) {
  const auto same = [&](const Image& a, SampleType type) {
    return !a.empty() && a.channels() == 1 && a.type() == type &&
           a.width() == image->width() && a.height() == image->height();
  };
  if (image == nullptr || image->empty() ||
      !same(*image, SampleType::kFloat32) ||
      !same(from, SampleType::kFloat32) || !same(valid, SampleType::kUInt8)) {
    return absl::InvalidArgumentError(
        "FillInvalid: needs a uint8 mask and two float32 grey images of one "
        "size");
  }
  const uint8_t* v = valid.data();
  const float* f = from.as<float>();
  float* o = image->as<float>();
  const size_t n = static_cast<size_t>(image->width() * image->height());
  for (size_t i = 0; i < n; ++i) {
    if (v[i] == 0) o[i] = f[i];
  }
  return absl::OkStatus();
}

absl::StatusOr<DisplacementField> ComposeHomographyField(
    const Homography& h, const DisplacementField& d, int threads) {
  const size_t n = static_cast<size_t>(std::max<int64_t>(0, d.width)) *
                   static_cast<size_t>(std::max<int64_t>(0, d.height));
  if (d.empty() || d.dx.size() != n || d.dy.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ComposeHomographyField: the field is empty or inconsistent (", d.width,
        "x", d.height, " nodes, ", d.dx.size(), " dx, ", d.dy.size(), " dy)"));
  }
  DisplacementField t;
  t.width = d.width;
  t.height = d.height;
  t.origin_x = d.origin_x;
  t.origin_y = d.origin_y;
  t.spacing_x = d.spacing_x;
  t.spacing_y = d.spacing_y;
  t.dx.resize(n);
  t.dy.resize(n);
  ForRows(d.height, threads, [&](int64_t y0, int64_t y1) {
    for (int64_t gy = y0; gy < y1; ++gy) {
      const double py = d.origin_y + gy * d.spacing_y;
      for (int64_t gx = 0; gx < d.width; ++gx) {
        const size_t k = static_cast<size_t>(gy * d.width + gx);
        const double px = d.origin_x + gx * d.spacing_x;
        double qx = 0, qy = 0;
        if (h.Apply(px + d.dx[k], py + d.dy[k], &qx, &qy)) {
          t.dx[k] = static_cast<float>(qx - px);
          t.dy[k] = static_cast<float>(qy - py);
        } else {
          t.dx[k] = kFarAway;
          t.dy[k] = kFarAway;
        }
      }
    }
  });
  return t;
}

absl::StatusOr<DisplacementField> HomographyField(const Homography& h,
                                                  const GridGeometry& grid,
                                                  int threads) {
  REGSERVE_RETURN_IF_ERROR(CheckGrid(grid, "HomographyField"));
  DisplacementField zero;
  zero.width = grid.width;
  zero.height = grid.height;
  zero.origin_x = grid.origin_x;
  zero.origin_y = grid.origin_y;
  zero.spacing_x = grid.spacing_x;
  zero.spacing_y = grid.spacing_y;
  const size_t n = static_cast<size_t>(grid.width * grid.height);
  zero.dx.assign(n, 0.0f);
  zero.dy.assign(n, 0.0f);
  return ComposeHomographyField(h, zero, threads);
}

}  // namespace regserve
