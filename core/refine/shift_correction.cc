// Copyright regserve authors.
#include "core/refine/shift_correction.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace regserve {
namespace {

// Values over the patch grid, row-major cols x rows.
struct GridValues {
  int cols = 0, rows = 0;
  std::vector<double> x, y, w;
};

absl::Status Validate(const DisplacementField& f, const QualityGrid& g) {
  const size_t nodes = static_cast<size_t>(f.width * f.height);
  if (f.empty() || f.dx.size() != nodes || f.dy.size() != nodes ||
      !(f.spacing_x > 0) || !(f.spacing_y > 0)) {
    return absl::InvalidArgumentError(
        "shift correction: the field is empty or inconsistent");
  }
  const size_t patches = static_cast<size_t>(g.cols) * g.rows;
  if (g.cols < 1 || g.rows < 1 || g.x0.size() != static_cast<size_t>(g.cols) ||
      g.y0.size() != static_cast<size_t>(g.rows) || g.state.size() != patches ||
      g.dx.size() != patches || g.dy.size() != patches || !(g.scale_x > 0) ||
      !(g.scale_y > 0)) {
    return absl::InvalidArgumentError(
        "shift correction: the quality grid is empty or inconsistent");
  }
  return absl::OkStatus();
}

// Full-resolution centres of the patches along one axis (the copy's pixel
// k lies at (s - 1) / 2 + k * s).
std::vector<double> Centres(const std::vector<int>& origins, int patch,
                            double scale) {
  std::vector<double> c;
  c.reserve(origins.size());
  for (int o : origins) {
    c.push_back((scale - 1) / 2 + (o + (patch - 1) / 2.0) * scale);
  }
  return c;
}

GridValues Measured(const QualityGrid& g) {
  GridValues v;
  v.cols = g.cols;
  v.rows = g.rows;
  const size_t n = g.state.size();
  v.x.assign(n, 0.0);
  v.y.assign(n, 0.0);
  v.w.assign(n, 0.0);
  for (size_t k = 0; k < n; ++k) {
    if (g.state[k] != PatchState::kMeasured || !std::isfinite(g.dx[k]) ||
        !std::isfinite(g.dy[k])) {
      continue;
    }
    v.x[k] = g.dx[k];
    v.y[k] = g.dy[k];
    v.w[k] = 1.0;
  }
  return v;
}

double Median(std::vector<double>* v) {
  const size_t mid = v->size() / 2;
  std::nth_element(v->begin(), v->begin() + mid, v->end());
  return (*v)[mid];
}

// Drops measured patches far from the median of their measured 5x5
// neighbours; returns how many.
int RejectOutliers(double threshold_px, GridValues* v) {
  std::vector<double> keep = v->w;
  int rejected = 0;
  std::vector<double> nx, ny, dev;
  for (int r = 0; r < v->rows; ++r) {
    for (int c = 0; c < v->cols; ++c) {
      const size_t k = static_cast<size_t>(r) * v->cols + c;
      if (v->w[k] == 0) continue;
      nx.clear();
      ny.clear();
      for (int j = std::max(0, r - 2); j <= std::min(v->rows - 1, r + 2); ++j) {
        for (int i = std::max(0, c - 2); i <= std::min(v->cols - 1, c + 2);
             ++i) {
          const size_t n = static_cast<size_t>(j) * v->cols + i;
          if (n == k || v->w[n] == 0) continue;
          nx.push_back(v->x[n]);
          ny.push_back(v->y[n]);
        }
      }
      if (nx.size() < 3) continue;  // too few to call it an outlier
      dev.clear();
      const double mx = Median(&nx), my = Median(&ny);
      for (size_t i = 0; i < nx.size(); ++i) {
        dev.push_back(std::hypot(nx[i] - mx, ny[i] - my));
      }
      const double mad = Median(&dev);
      const double off = std::hypot(v->x[k] - mx, v->y[k] - my);
      if (off > std::max(threshold_px, 3.0 * 1.4826 * mad)) {
        keep[k] = 0;
        ++rejected;
      }
    }
  }
  v->w = std::move(keep);
  return rejected;
}

std::vector<double> Kernel(double sigma) {
  const int radius = std::max(1, static_cast<int>(std::ceil(3 * sigma)));
  std::vector<double> k(2 * radius + 1);
  for (int i = -radius; i <= radius; ++i) {
    k[i + radius] = std::exp(-0.5 * i * i / (sigma * sigma));
  }
  return k;
}

// Separable Gaussian over the grid, zero outside it.
std::vector<double> Blur(const std::vector<double>& in, int cols, int rows,
                         double sigma) {
  const std::vector<double> k = Kernel(sigma);
  const int radius = static_cast<int>(k.size() / 2);
  std::vector<double> tmp(in.size(), 0.0), out(in.size(), 0.0);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      double s = 0;
      for (int i = std::max(0, c - radius); i <= std::min(cols - 1, c + radius);
           ++i) {
        s += k[i - c + radius] * in[static_cast<size_t>(r) * cols + i];
      }
      tmp[static_cast<size_t>(r) * cols + c] = s;
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      double s = 0;
      for (int j = std::max(0, r - radius); j <= std::min(rows - 1, r + radius);
           ++j) {
        s += k[j - r + radius] * tmp[static_cast<size_t>(j) * cols + c];
      }
      out[static_cast<size_t>(r) * cols + c] = s;
    }
  }
  return out;
}

// The correction on the patch grid: normalised convolution of the kept
// measurements, narrow where they are dense, wide to fill between them.
GridValues Smooth(const GridValues& v, const ShiftCorrectionOptions& o) {
  std::vector<double> wx(v.w.size()), wy(v.w.size());
  for (size_t k = 0; k < v.w.size(); ++k) {
    wx[k] = v.w[k] * v.x[k];
    wy[k] = v.w[k] * v.y[k];
  }
  const auto blur = [&](const std::vector<double>& a, double s) {
    return Blur(a, v.cols, v.rows, s);
  };
  const std::vector<double> w1 = blur(v.w, o.smoothing_sigma);
  const std::vector<double> x1 = blur(wx, o.smoothing_sigma);
  const std::vector<double> y1 = blur(wy, o.smoothing_sigma);
  const std::vector<double> w2 = blur(v.w, o.fill_sigma);
  const std::vector<double> x2 = blur(wx, o.fill_sigma);
  const std::vector<double> y2 = blur(wy, o.fill_sigma);
  GridValues c = v;
  for (size_t k = 0; k < v.w.size(); ++k) {
    const double a = o.fill_weight;
    const double w = w1[k] + a * w2[k];
    const bool any = w > 1e-3 * a;  // nothing measured within reach: 0
    c.x[k] = any ? (x1[k] + a * x2[k]) / w : 0.0;
    c.y[k] = any ? (y1[k] + a * y2[k]) / w : 0.0;
    c.w[k] = any ? 1.0 : 0.0;
  }
  return c;
}

// Fractional index of `p` among increasing `centres`. Beyond the outer
// centres it continues at the outer spacing, up to one more spacing: the
// correction is extrapolated linearly into the half-patch strip along the
// borders that no patch centre reaches, rather than held constant. (On the
// Kleiber benchmark that alone changed little: most of the border strip's
// error lies where no patch can be measured at all, which the 32 px passes
// of correction_passes.h narrow.)
double IndexOf(const std::vector<double>& centres, double p) {
  const size_t n = centres.size();
  if (n < 2) return 0.0;
  if (p <= centres.front()) {
    const double step = centres[1] - centres[0];
    return std::max(-1.0, (p - centres.front()) / step);
  }
  if (p >= centres.back()) {
    const double step = centres[n - 1] - centres[n - 2];
    return std::min(static_cast<double>(n),
                    (n - 1) + (p - centres.back()) / step);
  }
  const size_t hi =
      std::upper_bound(centres.begin(), centres.end(), p) - centres.begin();
  const size_t lo = hi - 1;
  return lo + (p - centres[lo]) / (centres[hi] - centres[lo]);
}

// Bilinear inside the grid, linear beyond it along the edge cells (u, t
// may lie up to one cell outside).
double Bilinear(const std::vector<double>& v, int cols, int rows, double u,
                double t) {
  const int x0 =
      std::clamp(static_cast<int>(std::floor(u)), 0, std::max(0, cols - 2));
  const int y0 =
      std::clamp(static_cast<int>(std::floor(t)), 0, std::max(0, rows - 2));
  const int x1 = std::min(x0 + 1, cols - 1), y1 = std::min(y0 + 1, rows - 1);
  const double fx = cols > 1 ? u - x0 : 0.0, fy = rows > 1 ? t - y0 : 0.0;
  const auto at = [&](int x, int y) {
    return v[static_cast<size_t>(y) * cols + x];
  };
  return (at(x0, y0) * (1 - fx) + at(x1, y0) * fx) * (1 - fy) +
         (at(x0, y1) * (1 - fx) + at(x1, y1) * fx) * fy;
}

// The field's displacement at a full-resolution position (bilinear,
// clamped to the border nodes, as the warp reads it).
void FieldAt(const DisplacementField& f, double px, double py, double* dx,
             double* dy) {
  const double u = std::clamp((px - f.origin_x) / f.spacing_x, 0.0,
                              static_cast<double>(f.width - 1));
  const double v = std::clamp((py - f.origin_y) / f.spacing_y, 0.0,
                              static_cast<double>(f.height - 1));
  const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(u),
                                       std::max<int64_t>(0, f.width - 2));
  const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(v),
                                       std::max<int64_t>(0, f.height - 2));
  const int64_t x1 = std::min(x0 + 1, f.width - 1);
  const int64_t y1 = std::min(y0 + 1, f.height - 1);
  const double fx = u - x0, fy = v - y0;
  const auto lerp = [&](const std::vector<float>& a) {
    const auto at = [&](int64_t x, int64_t y) { return a[y * f.width + x]; };
    return (at(x0, y0) * (1 - fx) + at(x1, y0) * fx) * (1 - fy) +
           (at(x0, y1) * (1 - fx) + at(x1, y1) * fx) * fy;
  };
  *dx = lerp(f.dx);
  *dy = lerp(f.dy);
}

template <typename Fn>
void ParallelRows(int64_t rows, int threads, const Fn& fn) {
  threads = static_cast<int>(std::clamp<int64_t>(threads, 1, rows));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t j = t; j < rows; j += threads) fn(j);
    });
  }
  for (int64_t j = 0; j < rows; j += threads) fn(j);
  for (std::thread& th : pool) th.join();
}

}  // namespace

absl::StatusOr<DisplacementField> CorrectMeasuredShifts(
    const DisplacementField& field, const QualityGrid& grid,
    const ShiftCorrectionOptions& options, ShiftCorrectionStats* stats) {
  if (absl::Status s = Validate(field, grid); !s.ok()) return s;
  GridValues v = Measured(grid);
  ShiftCorrectionStats st;
  const double scale = std::max(grid.scale_x, grid.scale_y);
  st.rejected = RejectOutliers(options.outlier_copy_px * scale, &v);
  for (double w : v.w) st.used += w > 0 ? 1 : 0;
  if (st.used == 0) {
    return absl::FailedPreconditionError(
        "shift correction: no patch of the quality map was measured");
  }
  const GridValues c = Smooth(v, options);
  const std::vector<double> cx =
      Centres(grid.x0, grid.patch_size, grid.scale_x);
  const std::vector<double> cy =
      Centres(grid.y0, grid.patch_size, grid.scale_y);
  DisplacementField out = field;
  std::vector<double> row_sum(field.height, 0.0), row_max(field.height, 0.0);
  ParallelRows(field.height, options.threads, [&](int64_t j) {
    const double py = field.origin_y + j * field.spacing_y;
    const double t = IndexOf(cy, py);
    for (int64_t i = 0; i < field.width; ++i) {
      const double px = field.origin_x + i * field.spacing_x;
      const double u = IndexOf(cx, px);
      // The measured residual e says the field sends p where the truth
      // sends p - e; the truth at p is the field at p + e, less e.
      const double ex = -Bilinear(c.x, c.cols, c.rows, u, t);
      const double ey = -Bilinear(c.y, c.cols, c.rows, u, t);
      double dx, dy;
      FieldAt(field, px + ex, py + ey, &dx, &dy);
      const size_t k = static_cast<size_t>(j * field.width + i);
      out.dx[k] = static_cast<float>(dx + ex);
      out.dy[k] = static_cast<float>(dy + ey);
      const double moved =
          std::hypot(out.dx[k] - field.dx[k], out.dy[k] - field.dy[k]);
      row_sum[j] += moved;
      row_max[j] = std::max(row_max[j], moved);
    }
  });
  for (int64_t j = 0; j < field.height; ++j) {
    st.mean_correction_px += row_sum[j];
    st.max_correction_px = std::max(st.max_correction_px, row_max[j]);
  }
  st.mean_correction_px /= static_cast<double>(field.width * field.height);
  if (stats != nullptr) *stats = st;
  return out;
}

}  // namespace regserve
