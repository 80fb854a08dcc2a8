// Copyright regserve authors.
#include "core/image/field_coarsen.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <system_error>
#include <thread>
#include <vector>

namespace regserve {
namespace {

// Bilinear, border-clamped value of `f` at node coordinates (gx, gy), as
// the warp's FieldAt computes it (in double here).
void Sample(const DisplacementField& f, double gx, double gy, double* dx,
            double* dy) {
  gx = std::clamp(gx, 0.0, static_cast<double>(f.width - 1));
  gy = std::clamp(gy, 0.0, static_cast<double>(f.height - 1));
  const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(gx), f.width - 1);
  const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(gy), f.height - 1);
  const int64_t x1 = std::min(x0 + 1, f.width - 1);
  const int64_t y1 = std::min(y0 + 1, f.height - 1);
  const double tx = gx - static_cast<double>(x0);
  const double ty = gy - static_cast<double>(y0);
  auto lerp2 = [&](const std::vector<float>& v) {
    const double a = v[y0 * f.width + x0], b = v[y0 * f.width + x1];
    const double c = v[y1 * f.width + x0], d = v[y1 * f.width + x1];
    return (a + tx * (b - a)) + ty * ((c + tx * (d - c)) - (a + tx * (b - a)));
  };
  *dx = lerp2(f.dx);
  *dy = lerp2(f.dy);
}

bool AllFinite(const DisplacementField& f) {
  for (const std::vector<float>* v : {&f.dx, &f.dy}) {
    for (float x : *v) {
      if (!std::isfinite(x)) return false;
    }
  }
  return true;
}

// Coarse nodes per axis for `n` fine nodes.
int64_t CoarseNodes(int64_t n, int factor) {
  return std::max<int64_t>(2, (n - 1 + factor - 1) / factor + 1);
}

// Linear interpolation along one axis from `from` nodes to the positions
// of `to` nodes spanning the same extent: node k of `to` lies between
// `from` nodes index[k] and index[k] + 1, at weight[k] from the first.
struct AxisMap {
  std::vector<int64_t> index;
  std::vector<double> weight;
};
AxisMap MapAxis(int64_t from, int64_t to) {
  AxisMap m;
  const double ratio =
      static_cast<double>(from - 1) / static_cast<double>(to - 1);
  for (int64_t k = 0; k < to; ++k) {
    const double t = std::min(static_cast<double>(from - 1), k * ratio);
    const int64_t i = std::min<int64_t>(static_cast<int64_t>(t), from - 2);
    m.index.push_back(i);
    m.weight.push_back(t - static_cast<double>(i));
  }
  return m;
}

double Sq(double x, double y) { return x * x + y * y; }

// Runs fn(row) for rows [0, n) on `threads` threads; stops early once
// `stop` is set.
template <typename Fn>
void ForRows(int64_t n, int threads, const std::atomic<bool>& stop, Fn fn) {
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t r = next++; r < n && !stop.load(); r = next++) fn(r);
  };
  std::vector<std::thread> pool;
  try {
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads: the calling thread takes the rest.
  }
  work();
  for (std::thread& th : pool) th.join();
}

// Largest |coarse - fine| over the vertices of the overlay of the two
// grids (every fine node, and every crossing of a fine grid line with a
// coarse one; at the coarse nodes the two agree by construction), computed
// separably. Stops early, returning a value above `stop_above`, once one
// exceeds it.
double MaxDeviation(const DisplacementField& f, const DisplacementField& c,
                    double stop_above, int threads) {
  const int64_t nx = f.width, ny = f.height, mx = c.width, my = c.height;
  const AxisMap cx = MapAxis(mx, nx), cy = MapAxis(my, ny);  // coarse->fine
  const AxisMap fx = MapAxis(nx, mx), fy = MapAxis(ny, my);  // fine->coarse
  auto lerp = [](double a, double b, double w) { return a + w * (b - a); };
  const double stop2 = stop_above * stop_above;  // squared from here on
  // Coarse row j interpolated at the fine columns (both planes), made per
  // row where needed so that no whole-field buffer is held.
  auto coarse_row = [&](int64_t j, std::vector<double>* rx,
                        std::vector<double>* ry) {
    rx->resize(static_cast<size_t>(nx));
    ry->resize(static_cast<size_t>(nx));
    for (int64_t a = 0; a < nx; ++a) {
      const int64_t at = j * mx + cx.index[a];
      (*rx)[a] = lerp(c.dx[at], c.dx[at + 1], cx.weight[a]);
      (*ry)[a] = lerp(c.dy[at], c.dy[at + 1], cx.weight[a]);
    }
  };
  std::atomic<bool> over{false};
  std::vector<double> worst(static_cast<size_t>(ny + my), 0.0);
  // Fine rows: every fine node, and the coarse columns' crossings.
  ForRows(ny, threads, over, [&](int64_t b) {
    const int64_t j = cy.index[b];
    const double w = cy.weight[b];
    thread_local std::vector<double> r0x, r0y, r1x, r1y;
    coarse_row(j, &r0x, &r0y);
    coarse_row(j + 1, &r1x, &r1y);
    double e = 0;
    for (int64_t a = 0; a < nx; ++a) {
      const double gx = lerp(r0x[a], r1x[a], w);
      const double gy = lerp(r0y[a], r1y[a], w);
      e = std::max(e, Sq(gx - f.dx[b * nx + a], gy - f.dy[b * nx + a]));
    }
    for (int64_t i = 0; i < mx; ++i) {
      const int64_t a = fx.index[i];
      const double t = fx.weight[i];
      const double vx = lerp(f.dx[b * nx + a], f.dx[b * nx + a + 1], t);
      const double vy = lerp(f.dy[b * nx + a], f.dy[b * nx + a + 1], t);
      const double gx = lerp(c.dx[j * mx + i], c.dx[(j + 1) * mx + i], w);
      const double gy = lerp(c.dy[j * mx + i], c.dy[(j + 1) * mx + i], w);
      e = std::max(e, Sq(gx - vx, gy - vy));
    }
    worst[b] = e;
    if (e > stop2) over = true;
  });
  // Coarse rows: their crossings with the fine columns.
  ForRows(my, threads, over, [&](int64_t j) {
    const int64_t b = fy.index[j];
    const double t = fy.weight[j];
    thread_local std::vector<double> rx, ry;
    coarse_row(j, &rx, &ry);
    double e = 0;
    for (int64_t a = 0; a < nx; ++a) {
      const double vx = lerp(f.dx[b * nx + a], f.dx[(b + 1) * nx + a], t);
      const double vy = lerp(f.dy[b * nx + a], f.dy[(b + 1) * nx + a], t);
      e = std::max(e, Sq(rx[a] - vx, ry[a] - vy));
    }
    worst[ny + j] = e;
    if (e > stop2) over = true;
  });
  return std::sqrt(*std::max_element(worst.begin(), worst.end()));
}

// CoarsenField, its measurement stopped once the deviation passes
// `stop_above`.
FieldCoarsening Coarsen(const DisplacementField& field, int factor, int threads,
                        double stop_above) {
  FieldCoarsening r;
  if (factor < 2 || field.width < 3 || field.height < 3 ||
      field.dx.size() != static_cast<size_t>(field.width * field.height) ||
      field.dy.size() != field.dx.size() || !AllFinite(field)) {
    return r;  // factor 1: nothing to gain, or fill pixels would move
  }
  DisplacementField& c = r.field;
  c.width = CoarseNodes(field.width, factor);
  c.height = CoarseNodes(field.height, factor);
  c.origin_x = field.origin_x;
  c.origin_y = field.origin_y;
  const double rx =
      static_cast<double>(field.width - 1) / static_cast<double>(c.width - 1);
  const double ry =
      static_cast<double>(field.height - 1) / static_cast<double>(c.height - 1);
  c.spacing_x = field.spacing_x * rx;
  c.spacing_y = field.spacing_y * ry;
  c.dx.resize(static_cast<size_t>(c.width * c.height));
  c.dy.resize(c.dx.size());
  for (int64_t j = 0; j < c.height; ++j) {
    for (int64_t i = 0; i < c.width; ++i) {
      double dx, dy;
      Sample(field, i * rx, j * ry, &dx, &dy);
      c.dx[j * c.width + i] = static_cast<float>(dx);
      c.dy[j * c.width + i] = static_cast<float>(dy);
    }
  }
  r.factor = factor;
  r.max_error_px = MaxDeviation(field, c, stop_above, threads);
  return r;
}

}  // namespace

FieldCoarsening CoarsenField(const DisplacementField& field, int factor,
                             int threads) {
  return Coarsen(field, factor, threads, HUGE_VAL);
}

FieldCoarsening CoarsestFieldWithin(const DisplacementField& field,
                                    double tolerance_px, int max_factor,
                                    int threads) {
  // From the coarsest down: a smooth field (the usual case) costs one
  // measurement, a rough one a few rows of each.
  int top = 2;
  while (top * 2 <= max_factor) top *= 2;
  for (int factor = top; factor >= 2; factor /= 2) {
    FieldCoarsening c = Coarsen(field, factor, threads, tolerance_px);
    if (c.factor == factor && c.max_error_px <= tolerance_px) return c;
  }
  return FieldCoarsening();
}

}  // namespace regserve
