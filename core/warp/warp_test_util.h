// Copyright regserve authors.
//
// Test helpers for the warp tests: random images and smooth random fields,
// warping into one assembled image, and a naive double-precision scalar
// reference of the warp written independently of warp_kernel.h.
#ifndef REGSERVE_CORE_WARP_WARP_TEST_UTIL_H_
#define REGSERVE_CORE_WARP_WARP_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"
#include "core/warp/warp.h"

namespace regserve {
namespace warp_test {

inline Image RandomImage(const ImageSpec& spec, uint32_t seed) {
  Image img = Image::Allocate(spec).value();
  std::mt19937 rng(seed);
  const int64_t n = spec.pixels() * spec.channels;
  switch (spec.type) {
    case SampleType::kUInt8: {
      std::uniform_int_distribution<int> d(0, 255);
      for (int64_t k = 0; k < n; ++k) img.as<uint8_t>()[k] = d(rng);
      break;
    }
    case SampleType::kUInt16: {
      std::uniform_int_distribution<int> d(0, 65535);
      for (int64_t k = 0; k < n; ++k) img.as<uint16_t>()[k] = d(rng);
      break;
    }
    case SampleType::kFloat32: {
      std::uniform_real_distribution<float> d(-1.f, 1.f);
      for (int64_t k = 0; k < n; ++k) img.as<float>()[k] = d(rng);
      break;
    }
  }
  return img;
}

// A field covering a w x h fixed image with `nodes_x` x `nodes_y` nodes and
// a smooth displacement (sum of a few sinusoids) of about +-amplitude px.
inline DisplacementField SmoothField(int64_t w, int64_t h, int64_t nodes_x,
                                     int64_t nodes_y, double amplitude,
                                     uint32_t seed) {
  DisplacementField f;
  f.width = nodes_x;
  f.height = nodes_y;
  f.spacing_x = nodes_x > 1 ? static_cast<double>(w) / (nodes_x - 1) : 1.0;
  f.spacing_y = nodes_y > 1 ? static_cast<double>(h) / (nodes_y - 1) : 1.0;
  f.origin_x = -0.25 * f.spacing_x;
  f.origin_y = -0.25 * f.spacing_y;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 6.283);
  const double ax = u(rng), bx = u(rng), ay = u(rng), by = u(rng);
  f.dx.resize(nodes_x * nodes_y);
  f.dy.resize(nodes_x * nodes_y);
  std::uniform_real_distribution<double> jitter(-0.05, 0.05);
  for (int64_t y = 0; y < nodes_y; ++y) {
    for (int64_t x = 0; x < nodes_x; ++x) {
      const double u1 =
          static_cast<double>(x) / std::max<int64_t>(1, nodes_x - 1);
      const double v1 =
          static_cast<double>(y) / std::max<int64_t>(1, nodes_y - 1);
      f.dx[y * nodes_x + x] =
          static_cast<float>(amplitude * (0.6 * std::sin(6.0 * u1 + ax) +
                                          0.4 * std::cos(5.0 * v1 + bx)) +
                             jitter(rng));
      f.dy[y * nodes_x + x] =
          static_cast<float>(amplitude * (0.5 * std::sin(4.0 * v1 + ay) +
                                          0.5 * std::cos(7.0 * u1 + by)) +
                             jitter(rng));
    }
  }
  return f;
}

inline DisplacementField ConstantField(float dx, float dy) {
  DisplacementField f;
  f.width = 3;
  f.height = 2;
  f.spacing_x = 50.0;
  f.spacing_y = 70.0;
  f.dx.assign(6, dx);
  f.dy.assign(6, dy);
  return f;
}

// Warps and assembles the tiles into one image; checks that the tiles are
// row-major, disjoint and cover the output.
inline absl::StatusOr<Image> WarpToImage(Warper& warper, const Image& moving,
                                         const DisplacementField& field,
                                         int64_t out_w, int64_t out_h,
                                         const WarpOptions& options,
                                         WarpStats* stats_out = nullptr,
                                         RegionSource* regions = nullptr) {
  ImageSpec spec = moving.spec();
  spec.width = out_w;
  spec.height = out_h;
  absl::StatusOr<Image> out = Image::Allocate(spec);
  if (!out.ok()) return out.status();
  std::vector<uint8_t> covered(static_cast<size_t>(out_w * out_h), 0);
  bool bad = false;
  // `regions` set: the same image read by region (Warper::WarpRegions).
  const TileCallback assemble = [&](const TileRect& r,
                                    const Image& tile) -> absl::Status {
    if (tile.width() != r.w || tile.height() != r.h ||
        tile.channels() != moving.channels() || tile.type() != moving.type()) {
      bad = true;
    }
    for (int64_t y = 0; y < r.h; ++y) {
      std::memcpy(out->row(r.y + y) + r.x * spec.bytes_per_pixel(), tile.row(y),
                  tile.row_bytes());
      for (int64_t x = 0; x < r.w; ++x) {
        if (covered[(r.y + y) * out_w + r.x + x]++) bad = true;
      }
    }
    return absl::OkStatus();
  };
  absl::StatusOr<WarpStats> stats =
      regions != nullptr
          ? warper.WarpRegions(regions, field, out_w, out_h, options, assemble)
          : warper.Warp(moving, field, out_w, out_h, options, assemble);
  if (!stats.ok()) return stats.status();
  for (uint8_t c : covered) {
    if (c != 1) bad = true;
  }
  if (bad)
    return absl::InternalError("tiles do not cover the output exactly once");
  if (stats_out != nullptr) *stats_out = *stats;
  return out;
}

// Naive scalar reference in double precision.
inline double RefSample(const Image& m, int64_t x, int64_t y, int c) {
  x = std::min<int64_t>(std::max<int64_t>(x, 0), m.width() - 1);
  y = std::min<int64_t>(std::max<int64_t>(y, 0), m.height() - 1);
  const int64_t k = (y * m.width() + x) * m.channels() + c;
  switch (m.type()) {
    case SampleType::kUInt8:
      return m.as<uint8_t>()[k];
    case SampleType::kUInt16:
      return m.as<uint16_t>()[k];
    case SampleType::kFloat32:
      return m.as<float>()[k];
  }
  return 0;
}

inline double RefCubicWeight(double t) {  // Keys a = -0.5, |t| <= 2
  const double a = -0.5;
  t = std::fabs(t);
  if (t <= 1) return (a + 2) * t * t * t - (a + 3) * t * t + 1;
  if (t < 2) return a * t * t * t - 5 * a * t * t + 8 * a * t - 4 * a;
  return 0;
}

// Returns the reference value of channel c of output pixel (i, j), unrounded;
// *inside tells whether the fill value applies instead.
inline double RefPixel(const Image& m, const DisplacementField& f,
                       const WarpOptions& o, int64_t i, int64_t j, int c,
                       bool* inside) {
  const double px = o.output_origin_x + i * o.output_spacing_x;
  const double py = o.output_origin_y + j * o.output_spacing_y;
  double gx = (px - f.origin_x) / f.spacing_x;
  double gy = (py - f.origin_y) / f.spacing_y;
  gx = std::min(std::max(gx, 0.0), static_cast<double>(f.width - 1));
  gy = std::min(std::max(gy, 0.0), static_cast<double>(f.height - 1));
  const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(gx),
                                       std::max<int64_t>(f.width - 2, 0));
  const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(gy),
                                       std::max<int64_t>(f.height - 2, 0));
  const int64_t x1 = std::min<int64_t>(x0 + 1, f.width - 1);
  const int64_t y1 = std::min<int64_t>(y0 + 1, f.height - 1);
  const double tx = gx - x0, ty = gy - y0;
  auto bil = [&](const std::vector<float>& v) {
    return (1 - ty) *
               ((1 - tx) * v[y0 * f.width + x0] + tx * v[y0 * f.width + x1]) +
           ty * ((1 - tx) * v[y1 * f.width + x0] + tx * v[y1 * f.width + x1]);
  };
  const double sx = px + bil(f.dx);
  const double sy = py + bil(f.dy);
  *inside =
      sx >= -0.5 && sx < m.width() - 0.5 && sy >= -0.5 && sy < m.height() - 0.5;
  if (!*inside) return 0;
  switch (o.interpolation) {
    case Interpolation::kNearest:
      return RefSample(m, static_cast<int64_t>(std::floor(sx + 0.5)),
                       static_cast<int64_t>(std::floor(sy + 0.5)), c);
    case Interpolation::kLinear: {
      const int64_t ix = static_cast<int64_t>(std::floor(sx));
      const int64_t iy = static_cast<int64_t>(std::floor(sy));
      const double ax = sx - ix, ay = sy - iy;
      return (1 - ay) * ((1 - ax) * RefSample(m, ix, iy, c) +
                         ax * RefSample(m, ix + 1, iy, c)) +
             ay * ((1 - ax) * RefSample(m, ix, iy + 1, c) +
                   ax * RefSample(m, ix + 1, iy + 1, c));
    }
    case Interpolation::kCubic: {
      const int64_t ix = static_cast<int64_t>(std::floor(sx));
      const int64_t iy = static_cast<int64_t>(std::floor(sy));
      double acc = 0;
      for (int64_t yy = iy - 1; yy <= iy + 2; ++yy) {
        for (int64_t xx = ix - 1; xx <= ix + 2; ++xx) {
          acc += RefCubicWeight(sx - xx) * RefCubicWeight(sy - yy) *
                 RefSample(m, xx, yy, c);
        }
      }
      return acc;
    }
  }
  return 0;
}

// Largest |out - reference| over all samples, after rounding/clamping the
// reference like the output type (fill value for outside pixels).
inline double MaxErrorVsReference(const Image& out, const Image& m,
                                  const DisplacementField& f,
                                  const WarpOptions& o) {
  double worst = 0;
  for (int64_t j = 0; j < out.height(); ++j) {
    for (int64_t i = 0; i < out.width(); ++i) {
      for (int c = 0; c < m.channels(); ++c) {
        bool inside = false;
        double ref = RefPixel(m, f, o, i, j, c, &inside);
        if (!inside) ref = o.fill_value;
        double got = 0;
        const int64_t k = (j * out.width() + i) * out.channels() + c;
        switch (m.type()) {
          case SampleType::kUInt8:
            ref = std::min(255.0, std::max(0.0, std::floor(ref + 0.5)));
            got = out.as<uint8_t>()[k];
            break;
          case SampleType::kUInt16:
            ref = std::min(65535.0, std::max(0.0, std::floor(ref + 0.5)));
            got = out.as<uint16_t>()[k];
            break;
          case SampleType::kFloat32:
            got = out.as<float>()[k];
            break;
        }
        worst = std::max(worst, std::fabs(got - ref));
      }
    }
  }
  return worst;
}

inline bool SameBytes(const Image& a, const Image& b) {
  return a.spec().width == b.spec().width &&
         a.spec().height == b.spec().height &&
         a.size_bytes() == b.size_bytes() &&
         std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

}  // namespace warp_test
}  // namespace regserve

#endif  // REGSERVE_CORE_WARP_WARP_TEST_UTIL_H_
