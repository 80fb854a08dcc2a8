// Copyright regserve authors.
#include "core/quality/quality_map.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "core/common/status_macros.h"
#include "core/quality/phase_correlation.h"
#include "opencv2/core.hpp"
#include "opencv2/imgproc.hpp"

namespace regserve {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Below this many copy pixels a patch has too few samples to correlate.
constexpr int kMinPatch = 16;
// A texture floor relative to the image's contrast squared: a structure
// tensor eigenvalue of 4e-6 is a gradient of 0.2% of the contrast per pixel,
// below what survives the copies' noise.
constexpr double kTextureFloor = 4e-6;
// The floor for faint texture (QualityOptions::faint_texture): a patch of
// the out-of-focus ground of the Kleiber benchmark photo lies near 1e-7,
// and its shift is measured to hundredths of a pixel there; an image
// constant over the patch (a saturated sky) stays below it.
constexpr double kFaintFloor = 1e-8;
// Sub-pixel refinement: Gauss-Newton steps until the correction is below
// this (copy pixels), at most kMaxRefinements of them.
constexpr double kConverged = 0.01;
constexpr int kMaxRefinements = 5;
// Above this first estimate (copy px) the shift is re-estimated by phase
// correlation before the Gauss-Newton steps, whose reach is a pixel or two.
constexpr double kLargeShift = 1.5;
// Phase-correlation peak (the share of the correlation energy within 5x5
// of the peak) below which even a good NCC is not trusted: random patches
// reach about 0.2.
constexpr double kMinPeak = 0.1;
// A patch the overlap's edge crosses is measured over its valid part when
// that keeps at least this share of the window's weight; the mask's edge
// is tapered over kMaskTaper px.
constexpr double kMinKept = 0.4;
constexpr float kMaskTaper = 4.0f;

// Runs fn(begin, end) over [0, n) split among `threads` threads.
template <typename Fn>
void ParallelFor(int n, int threads, const Fn& fn) {
  threads = std::max(1, std::min(threads, n));
  if (threads == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    const int begin = static_cast<int>(static_cast<int64_t>(n) * t / threads);
    const int end =
        static_cast<int>(static_cast<int64_t>(n) * (t + 1) / threads);
    workers.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  for (std::thread& w : workers) w.join();
}

// Collects the first error of several threads.
class FirstError {
 public:
  void Set(absl::Status s) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(s);
  }
  bool failed() {
    absl::MutexLock lock(&mu_);
    return !status_.ok();
  }
  absl::Status Get() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

absl::Status ValidateInputs(const Image& fixed, const Image& moving,
                            const DisplacementField& field,
                            const QualityOptions& o) {
  for (const Image* img : {&fixed, &moving}) {
    if (img->empty() || img->channels() != 1 ||
        img->type() != SampleType::kFloat32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "quality: the ", img == &fixed ? "fixed" : "moving",
          " registration copy must be a non-empty 1-channel float32 image"));
    }
  }
  if (field.empty() ||
      field.dx.size() != static_cast<size_t>(field.width * field.height) ||
      field.dy.size() != field.dx.size() || !(field.spacing_x > 0) ||
      !(field.spacing_y > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("quality: the field (", field.width, "x", field.height,
                     " nodes) is empty or inconsistent"));
  }
  if (o.fixed_full_width < fixed.width() ||
      o.fixed_full_height < fixed.height() ||
      o.moving_full_width < moving.width() ||
      o.moving_full_height < moving.height()) {
    return absl::InvalidArgumentError(
        "quality: fixed/moving_full_width/height must be the images' "
        "full-resolution sizes");
  }
  if (o.patch_size < kMinPatch || o.patch_size > 256 ||
      (o.patch_size & (o.patch_size - 1)) != 0 || o.max_patches < 1) {
    return absl::InvalidArgumentError(
        "quality: patch_size must be a power of two in 16..256 and "
        "max_patches positive");
  }
  return absl::OkStatus();
}

// Bilinear sample of a float image at (u, v) in pixel coordinates; NaN
// outside [-0.5, size - 0.5] (the copy's footprint). Borders clamp.
inline float Sample(const float* img, int64_t w, int64_t h, double u,
                    double v) {
  if (!(u >= -0.5 && u <= w - 0.5 && v >= -0.5 && v <= h - 0.5)) return kNaN;
  u = std::clamp(u, 0.0, static_cast<double>(w - 1));
  v = std::clamp(v, 0.0, static_cast<double>(h - 1));
  const int64_t x =
      std::min<int64_t>(static_cast<int64_t>(u), std::max<int64_t>(0, w - 2));
  const int64_t y =
      std::min<int64_t>(static_cast<int64_t>(v), std::max<int64_t>(0, h - 2));
  const int64_t x1 = std::min(x + 1, w - 1);
  const int64_t y1 = std::min(y + 1, h - 1);
  const float fx = static_cast<float>(u - x);
  const float fy = static_cast<float>(v - y);
  const float a = img[y * w + x], b = img[y * w + x1];
  const float c = img[y1 * w + x], d = img[y1 * w + x1];
  return (a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy;
}

// A copy's pixel k lies at full resolution (s - 1) / 2 + k * s, with s the
// copy's spacing (full size / copy size) along that axis.
struct CopyAxis {
  double origin, spacing;
  CopyAxis(int64_t full, int64_t copy)
      : origin((static_cast<double>(full) / copy - 1) / 2),
        spacing(static_cast<double>(full) / copy) {}
};

// One row of the field at full-resolution y, interpolated between node rows
// (clamped to the border rows), so that a pixel interpolates only along x.
void FieldRow(const DisplacementField& f, double py, std::vector<float>* dx,
              std::vector<float>* dy) {
  const double v = std::clamp((py - f.origin_y) / f.spacing_y, 0.0,
                              static_cast<double>(f.height - 1));
  const int64_t y = std::min<int64_t>(static_cast<int64_t>(v),
                                      std::max<int64_t>(0, f.height - 2));
  const int64_t y1 = std::min(y + 1, f.height - 1);
  const float fy = static_cast<float>(v - y);
  dx->resize(f.width);
  dy->resize(f.width);
  for (int64_t i = 0; i < f.width; ++i) {
    const float a = f.dx[y * f.width + i], c = f.dx[y1 * f.width + i];
    const float b = f.dy[y * f.width + i], d = f.dy[y1 * f.width + i];
    (*dx)[i] = a + (c - a) * fy;
    (*dy)[i] = b + (d - b) * fy;
  }
}

// Where each fixed-copy column falls between the field's node columns: the
// same for every row, so computed once.
struct ColumnTaps {
  std::vector<int32_t> node;  // left node (the right one is node + 1)
  std::vector<float> frac;    // weight of the right node
  std::vector<double> u;      // the column's moving-copy x without the field
};

ColumnTaps MakeColumnTaps(int64_t width, const CopyAxis& fx, const CopyAxis& mx,
                          const DisplacementField& f) {
  ColumnTaps t;
  t.node.resize(width);
  t.frac.resize(width);
  t.u.resize(width);
  const int64_t n = f.width;
  for (int64_t i = 0; i < width; ++i) {
    const double px = fx.origin + i * fx.spacing;
    // Clamped to the border nodes.
    const double u = std::clamp((px - f.origin_x) / f.spacing_x, 0.0,
                                static_cast<double>(n - 1));
    const int64_t x =
        std::min<int64_t>(static_cast<int64_t>(u), std::max<int64_t>(0, n - 2));
    t.node[i] = static_cast<int32_t>(x);
    t.frac[i] = n > 1 ? static_cast<float>(u - x) : 0.f;
    t.u[i] = (px - mx.origin) / mx.spacing;
  }
  return t;
}

// One warped row: the field row interpolated at each column's taps, then
// the moving copy sampled bilinearly (Sample() where the sample is near
// or beyond the copy's edge).
void WarpRow(const ColumnTaps& taps, const std::vector<float>& row_dx,
             const std::vector<float>& row_dy, double v0, double inv_sx,
             double inv_sy, const float* src, int64_t w, int64_t h,
             float* dst) {
  const int64_t n = static_cast<int64_t>(row_dx.size());
  const int64_t width = static_cast<int64_t>(taps.u.size());
  for (int64_t i = 0; i < width; ++i) {
    const int32_t x = taps.node[i];
    const int32_t x1 = n > 1 ? x + 1 : x;
    const float fr = taps.frac[i];
    const float dx = row_dx[x] + (row_dx[x1] - row_dx[x]) * fr;
    const float dy = row_dy[x] + (row_dy[x1] - row_dy[x]) * fr;
    const double u = taps.u[i] + dx * inv_sx, v = v0 + dy * inv_sy;
    if (u >= 0 && v >= 0 && u < w - 1 && v < h - 1) {
      const int64_t sx = static_cast<int64_t>(u), sy = static_cast<int64_t>(v);
      const float fx = static_cast<float>(u - sx);
      const float fy = static_cast<float>(v - sy);
      const float* r0 = src + sy * w + sx;
      const float* r1 = r0 + w;
      dst[i] = (r0[0] + (r0[1] - r0[0]) * fx) * (1 - fy) +
               (r1[0] + (r1[1] - r1[0]) * fx) * fy;
    } else {
      dst[i] = Sample(src, w, h, u, v);
    }
  }
}

// The moving copy warped through the field onto the fixed copy's grid
// (NaN where the field leaves the moving copy). The field is bilinear
// between nodes, clamped to the border nodes outside the grid.
absl::StatusOr<Image> WarpToFixedGrid(const Image& fixed, const Image& moving,
                                      const DisplacementField& f,
                                      const QualityOptions& o) {
  REGSERVE_ASSIGN_OR_RETURN(Image out, Image::Allocate(fixed.spec()));
  const CopyAxis fx(o.fixed_full_width, fixed.width());
  const CopyAxis fy(o.fixed_full_height, fixed.height());
  const CopyAxis mx(o.moving_full_width, moving.width());
  const CopyAxis my(o.moving_full_height, moving.height());
  const ColumnTaps taps = MakeColumnTaps(fixed.width(), fx, mx, f);
  const float* src = moving.as<float>();
  float* dst = out.as<float>();
  ParallelFor(static_cast<int>(fixed.height()), o.threads, [&](int j0, int j1) {
    std::vector<float> row_dx, row_dy;
    for (int64_t j = j0; j < j1; ++j) {
      const double py = fy.origin + j * fy.spacing;
      FieldRow(f, py, &row_dx, &row_dy);
      WarpRow(taps, row_dx, row_dy, (py - my.origin) / my.spacing,
              1.0 / mx.spacing, 1.0 / my.spacing, src, moving.width(),
              moving.height(), dst + j * fixed.width());
    }
  });
  return out;
}

struct Layout {
  int patch = 0;
  int stride = 0;
  std::vector<int> x0, y0;
};

std::vector<int> Origins(int64_t size, int patch, int stride) {
  std::vector<int> out;
  const int64_t n = (size - patch + stride - 1) / stride + 1;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(
        static_cast<int>(std::min<int64_t>(i * stride, size - patch)));
  }
  return out;
}

// Patches of the largest power of two up to options.patch_size that fits
// the copy, overlapping by half unless that makes too many.
Layout MakeLayout(int64_t w, int64_t h, const QualityOptions& o) {
  Layout l;
  int p = o.patch_size;
  while (p > kMinPatch && (p > w || p > h)) p /= 2;
  if (p > w || p > h) return l;
  l.patch = p;
  l.stride = p / 2;
  for (;;) {
    l.x0 = Origins(w, p, l.stride);
    l.y0 = Origins(h, p, l.stride);
    if (static_cast<int64_t>(l.x0.size()) * l.y0.size() <=
        static_cast<size_t>(o.max_patches)) {
      break;
    }
    l.stride += std::max(1, l.stride / 4);
  }
  return l;
}

// The smaller eigenvalue of the patch's windowed structure tensor, per
// pixel: large only where the patch has structure in two directions (a
// single edge leaves the shift along it unmeasurable).
double Texture(const cv::Mat& patch, const cv::Mat& window) {
  double sxx = 0, syy = 0, sxy = 0, sw = 0;
  const int n = patch.cols - 1;
  for (int y = 1; y + 1 < patch.rows; ++y) {
    const float* r = patch.ptr<float>(y);
    const float* up = patch.ptr<float>(y - 1);
    const float* dn = patch.ptr<float>(y + 1);
    const float* wr = window.ptr<float>(y);
    float rxx = 0, ryy = 0, rxy = 0, rw = 0;  // rows in float: see Sums
#pragma omp simd reduction(+ : rxx, ryy, rxy, rw)
    for (int x = 1; x < n; ++x) {
      const float gx = 0.5f * (r[x + 1] - r[x - 1]);
      const float gy = 0.5f * (dn[x] - up[x]);
      rxx += wr[x] * gx * gx;
      ryy += wr[x] * gy * gy;
      rxy += wr[x] * gx * gy;
      rw += wr[x];
    }
    sxx += rxx;
    syy += ryy;
    sxy += rxy;
    sw += rw;
  }
  if (sw <= 0) return 0;
  sxx /= sw;
  syy /= sw;
  sxy /= sw;
  return 0.5 *
         (sxx + syy - std::sqrt((sxx - syy) * (sxx - syy) + 4 * sxy * sxy));
}

// The 1st and 99th percentiles of a float image (sampled).
std::pair<float, float> Percentiles(const Image& img) {
  const float* p = img.as<float>();
  const size_t n = static_cast<size_t>(img.width() * img.height());
  const size_t step = std::max<size_t>(1, n / 200000);
  std::vector<float> v;
  for (size_t i = 0; i < n; i += step) {
    if (std::isfinite(p[i])) v.push_back(p[i]);
  }
  if (v.empty()) return {0.f, 1.f};
  auto at = [&v](double q) {
    const size_t k = static_cast<size_t>(q * (v.size() - 1));
    std::nth_element(v.begin(), v.begin() + k, v.end());
    return v[k];
  };
  const float lo = at(0.01), hi = at(0.99);
  return {lo, hi};
}

// Copies a patch of a float image into `out` (mean removed); false when it
// holds a NaN (outside the overlap).
bool ExtractPatch(const Image& img, int x0, int y0, int p, cv::Mat* out) {
  out->create(p, p, CV_32F);
  const float* src = img.as<float>();
  double sum = 0;
  for (int y = 0; y < p; ++y) {
    const float* r = src + static_cast<size_t>(y0 + y) * img.width() + x0;
    float* d = out->ptr<float>(y);
    float row_sum = 0;  // a NaN or infinity anywhere makes it non-finite
#pragma omp simd reduction(+ : row_sum)
    for (int x = 0; x < p; ++x) {
      d[x] = r[x];
      row_sum += r[x];
    }
    if (!std::isfinite(row_sum)) return false;
    sum += row_sum;
  }
  *out -= static_cast<float>(sum / (p * p));
  return true;
}

// The warped image's patch at (x0, y0) re-sampled at an offset (copy px).
// The offset is the same for every pixel, so away from the image's edges
// the bilinear weights are too; near them each pixel is sampled (clamped).
bool ShiftedPatch(const Image& img, int x0, int y0, int p, cv::Point2d t,
                  cv::Mat* out) {
  out->create(p, p, CV_32F);
  const float* src = img.as<float>();
  const int64_t w = img.width(), h = img.height();
  const double ox = std::floor(t.x), oy = std::floor(t.y);
  const int64_t ix = x0 + static_cast<int64_t>(ox);
  const int64_t iy = y0 + static_cast<int64_t>(oy);
  double sum = 0;
  if (ix >= 0 && iy >= 0 && ix + p < w && iy + p < h) {
    const float fx = static_cast<float>(t.x - ox);
    const float fy = static_cast<float>(t.y - oy);
    for (int y = 0; y < p; ++y) {
      const float* r0 = src + (iy + y) * w + ix;
      const float* r1 = r0 + w;
      float* d = out->ptr<float>(y);
      float row_sum = 0;
#pragma omp simd reduction(+ : row_sum)
      for (int x = 0; x < p; ++x) {
        const float v = (r0[x] + (r0[x + 1] - r0[x]) * fx) * (1 - fy) +
                        (r1[x] + (r1[x + 1] - r1[x]) * fx) * fy;
        d[x] = v;
        row_sum += v;
      }
      if (!std::isfinite(row_sum)) return false;
      sum += row_sum;
    }
  } else {
    for (int y = 0; y < p; ++y) {
      float* d = out->ptr<float>(y);
      for (int x = 0; x < p; ++x) {
        const float v = Sample(src, w, h, x0 + x + t.x, y0 + y + t.y);
        if (!std::isfinite(v)) return false;
        d[x] = v;
        sum += v;
      }
    }
  }
  *out -= static_cast<float>(sum / (p * p));
  return true;
}

struct PatchResult {
  PatchState state = PatchState::kUnknown;
  cv::Point2d shift;  // copy px: warped(x + shift) ~ fixed(x)
  double response = 0;
  // A partial patch (part of it outside the overlap): the texture of its
  // valid part, not normalised (Texture()).
  bool partial = false;
  double texture = 0;
};

// Windowed sums over two patches: sum w*a*a, w*b*b, w*a*b.
//
// The per-pixel loops here sum each row in float, in any order (omp simd:
// vectorised), and the rows in double: a row's 16-256 terms lose nothing
// that matters at the 0.01 px convergence, and the estimate's loops are
// the CPU job's largest cost after elastix (docs/benchmarks.md).
struct WindowedSums {
  double aa = 0, bb = 0, ab = 0;
};
WindowedSums Sums(const cv::Mat& a, const cv::Mat& b, const cv::Mat& w) {
  WindowedSums s;
  for (int y = 0; y < a.rows; ++y) {
    const float* pa = a.ptr<float>(y);
    const float* pb = b.ptr<float>(y);
    const float* pw = w.ptr<float>(y);
    float aa = 0, bb = 0, ab = 0;
#pragma omp simd reduction(+ : aa, bb, ab)
    for (int x = 0; x < a.cols; ++x) {
      aa += pw[x] * pa[x] * pa[x];
      bb += pw[x] * pb[x] * pb[x];
      ab += pw[x] * pa[x] * pb[x];
    }
    s.aa += aa;
    s.bb += bb;
    s.ab += ab;
  }
  return s;
}

// One Gauss-Newton (Lucas-Kanade) step: the residual shift e with
// moved(x) ~ fixed(x - e), from the mean of both patches' gradients (which
// converges in two or three steps). Also returns the windowed NCC of the
// two patches as given.
cv::Point2d LucasKanadeStep(const cv::Mat& fixed, const cv::Mat& moved,
                            const cv::Mat& w, double* ncc) {
  const WindowedSums s = Sums(fixed, moved, w);
  *ncc = s.aa > 0 && s.bb > 0 ? s.ab / std::sqrt(s.aa * s.bb) : 0.0;
  // The moving patch's contrast scaled to the fixed one's.
  const float gain = s.bb > 0 ? static_cast<float>(std::sqrt(s.aa / s.bb)) : 1;
  double a = 0, b = 0, c = 0, bx = 0, by = 0;
  const int n = fixed.cols - 1;
  for (int y = 1; y + 1 < fixed.rows; ++y) {
    const float* f = fixed.ptr<float>(y);
    const float* fu = fixed.ptr<float>(y - 1);
    const float* fd = fixed.ptr<float>(y + 1);
    const float* m = moved.ptr<float>(y);
    const float* mu = moved.ptr<float>(y - 1);
    const float* md = moved.ptr<float>(y + 1);
    const float* wr = w.ptr<float>(y);
    float ra = 0, rb = 0, rc = 0, rx = 0, ry = 0;
#pragma omp simd reduction(+ : ra, rb, rc, rx, ry)
    for (int x = 1; x < n; ++x) {
      const float gx =
          0.25f * (f[x + 1] - f[x - 1] + gain * (m[x + 1] - m[x - 1]));
      const float gy = 0.25f * (fd[x] - fu[x] + gain * (md[x] - mu[x]));
      const float diff = f[x] - gain * m[x];
      ra += wr[x] * gx * gx;
      rb += wr[x] * gx * gy;
      rc += wr[x] * gy * gy;
      rx += wr[x] * gx * diff;
      ry += wr[x] * gy * diff;
    }
    a += ra;
    b += rb;
    c += rc;
    bx += rx;
    by += ry;
  }
  const double det = a * c - b * b;
  if (!(det > 1e-20)) return {0, 0};
  return {(c * bx - b * by) / det, (a * by - b * bx) / det};
}

// The result of a converged patch: measured when both its NCC and its
// phase-correlation peak are clear, else as it stood (unmatched).
PatchResult Judged(PatchResult res, cv::Point2d shift, double ncc, double peak,
                   double min_response) {
  res.response = ncc;
  res.shift = shift;
  if (ncc >= min_response && peak >= kMinPeak) {
    res.state = PatchState::kMeasured;
  }
  return res;
}

// The warped image's patch at (x0, y0) re-sampled at an offset (copy px),
// where part of it may lie outside the overlap: those pixels are 0 and 0 in
// `valid` (CV_8U, 1 elsewhere). Returns the number of valid pixels.
int MaskedPatch(const Image& img, int x0, int y0, int p, cv::Point2d t,
                cv::Mat* out, cv::Mat* valid) {
  out->create(p, p, CV_32F);
  valid->create(p, p, CV_8U);
  const float* src = img.as<float>();
  int n = 0;
  for (int y = 0; y < p; ++y) {
    float* d = out->ptr<float>(y);
    uint8_t* m = valid->ptr<uint8_t>(y);
    for (int x = 0; x < p; ++x) {
      const float v =
          Sample(src, img.width(), img.height(), x0 + x + t.x, y0 + y + t.y);
      m[x] = std::isfinite(v) ? 1 : 0;
      d[x] = m[x] ? v : 0.f;
      n += m[x];
    }
  }
  return n;
}

// The window restricted to the valid pixels whose neighbours are valid too
// (the gradients need them), tapered over kMaskTaper px so that the mask's
// edge, common to both patches, does not pull phase correlation to zero.
cv::Mat MaskedWindow(const cv::Mat& valid, const cv::Mat& window) {
  cv::Mat dist;
  cv::distanceTransform(valid, dist, cv::DIST_L2, 3, CV_32F);
  cv::Mat taper = (dist - 1.0f) * (1.0f / kMaskTaper);
  cv::threshold(taper, taper, 1.0, 1.0, cv::THRESH_TRUNC);
  cv::threshold(taper, taper, 0.0, 0.0, cv::THRESH_TOZERO);
  return window.mul(taper);
}

// `patch` less its mean under the weights w.
cv::Mat LessWeightedMean(const cv::Mat& patch, const cv::Mat& w) {
  const double sw = cv::sum(w)[0];
  const double mean = sw > 0 ? patch.dot(w) / sw : 0.0;
  return patch - mean;
}

// One sample of a partial patch at shift t: the moved patch and the
// fixed one, both less their means under the masked window `w`, and the
// share of the full window's weight that w keeps.
struct MaskedSample {
  cv::Mat fixed, moved, w;
  double kept = 0;
};
MaskedSample SampleMasked(const cv::Mat& fixed_patch, const Image& warped,
                          int x0, int y0, cv::Point2d t,
                          const cv::Mat& window) {
  MaskedSample s;
  cv::Mat raw, valid;
  MaskedPatch(warped, x0, y0, fixed_patch.rows, t, &raw, &valid);
  s.w = MaskedWindow(valid, window);
  s.kept = cv::sum(s.w)[0] / std::max(1e-12, cv::sum(window)[0]);
  s.fixed = LessWeightedMean(fixed_patch, s.w);
  s.moved = LessWeightedMean(raw, s.w);
  return s;
}

// A patch that the overlap's edge crosses (the border strip where the
// moving image ends), measured as MeasurePatch does, over its valid part,
// when that keeps at least kMinKept of the window's weight. Its texture is
// that of the fixed patch's valid part.
PatchResult MeasurePartialPatch(PhaseCorrelator& pc, const cv::Mat& fixed_patch,
                                const Image& warped, int x0, int y0,
                                const cv::Mat& window, double min_response) {
  PatchResult res;
  res.partial = true;
  MaskedSample s = SampleMasked(fixed_patch, warped, x0, y0, {0, 0}, window);
  if (s.kept < kMinKept) return res;
  res.texture = Texture(s.fixed, s.w);
  res.state = PatchState::kUnmatched;
  double peak = 0;
  cv::Point2d t = pc.Correlate(s.fixed, s.moved, s.w, &peak);
  if (std::hypot(t.x, t.y) > kLargeShift) {
    s = SampleMasked(fixed_patch, warped, x0, y0, t, window);
    if (s.kept < kMinKept) return res;
    t += pc.Correlate(s.fixed, s.moved, s.w, &peak);
  }
  double ncc = 0;
  for (int i = 0; i < kMaxRefinements; ++i) {
    if (std::hypot(t.x, t.y) > fixed_patch.rows / 2.0) return res;
    s = SampleMasked(fixed_patch, warped, x0, y0, t, window);
    if (s.kept < kMinKept) return res;
    const cv::Point2d step = LucasKanadeStep(s.fixed, s.moved, s.w, &ncc);
    t += step;
    if (std::hypot(step.x, step.y) < kConverged) break;
  }
  return Judged(res, t, ncc, peak, min_response);
}

// Phase correlation finds the shift (robust to large shifts and contrast);
// its peak's centroid is biased towards whole pixels, so the warped patch
// is then re-sampled at the shift found and corrected by Gauss-Newton
// steps (after one more phase correlation when the shift is large). The
// response is the windowed NCC of the aligned patches.
PatchResult MeasurePatch(PhaseCorrelator& pc, const cv::Mat& fixed_patch,
                         const Image& warped, int x0, int y0,
                         const cv::Mat& window, double min_response) {
  PatchResult res;
  const int p = fixed_patch.rows;
  cv::Mat moved;
  const auto partial = [&] {
    return MeasurePartialPatch(pc, fixed_patch, warped, x0, y0, window,
                               min_response);
  };
  if (!ExtractPatch(warped, x0, y0, p, &moved)) return partial();
  res.state = PatchState::kUnmatched;
  double peak = 0;
  cv::Point2d t = pc.Correlate(fixed_patch, moved, window, &peak);
  if (std::hypot(t.x, t.y) > kLargeShift) {
    if (!ShiftedPatch(warped, x0, y0, p, t, &moved)) return partial();
    t += pc.Correlate(fixed_patch, moved, window, &peak);
  }
  double ncc = 0;
  for (int i = 0; i < kMaxRefinements; ++i) {
    if (std::hypot(t.x, t.y) > p / 2.0) return res;  // no sensible peak
    if (!ShiftedPatch(warped, x0, y0, p, t, &moved)) return partial();
    const cv::Point2d step = LucasKanadeStep(fixed_patch, moved, window, &ncc);
    t += step;
    if (std::hypot(step.x, step.y) < kConverged) break;
  }
  return Judged(res, t, ncc, peak, min_response);
}

void SizeGrid(const Layout& l, double scale_x, double scale_y, QualityGrid* g) {
  g->cols = static_cast<int>(l.x0.size());
  g->rows = static_cast<int>(l.y0.size());
  g->patch_size = l.patch;
  g->stride = l.stride;
  g->x0 = l.x0;
  g->y0 = l.y0;
  g->scale_x = scale_x;
  g->scale_y = scale_y;
  const size_t n = static_cast<size_t>(g->cols) * g->rows;
  g->state.assign(n, PatchState::kUnknown);
  g->dx.assign(n, kNaN);
  g->dy.assign(n, kNaN);
  g->error_px.assign(n, kNaN);
  g->response.assign(n, 0.f);
}

// The fixed copy's contrast squared (1st to 99th percentile), by which
// textures are normalised.
double Contrast2(const Image& fixed) {
  const auto [lo, hi] = Percentiles(fixed);
  return std::max(1e-12, static_cast<double>(hi - lo) * (hi - lo));
}

// Texture of every patch of the fixed copy, normalised by contrast2.
std::vector<double> PatchTextures(const Image& fixed, const Layout& l,
                                  const cv::Mat& window, double contrast2,
                                  int threads) {
  const int cols = static_cast<int>(l.x0.size());
  std::vector<double> tex(l.x0.size() * l.y0.size(), 0.0);
  ParallelFor(static_cast<int>(l.y0.size()), threads, [&](int r0, int r1) {
    cv::Mat patch;
    for (int r = r0; r < r1; ++r) {
      for (int c = 0; c < cols; ++c) {
        if (ExtractPatch(fixed, l.x0[c], l.y0[r], l.patch, &patch)) {
          tex[static_cast<size_t>(r) * cols + c] =
              Texture(patch, window) / contrast2;
        }
      }
    }
  });
  return tex;
}

double TextureThreshold(std::vector<double> tex, double fraction,
                        double floor) {
  if (tex.empty()) return floor;
  const size_t k = static_cast<size_t>(0.9 * (tex.size() - 1));
  std::nth_element(tex.begin(), tex.begin() + k, tex.end());
  return std::max(floor, fraction * tex[k]);
}

// Measures every textured patch into the grid.
absl::Status MeasurePatches(const Image& fixed, const Image& warped,
                            const Layout& l, const QualityOptions& o,
                            QualityGrid* g) {
  const cv::Mat window = [&] {
    cv::Mat w;
    cv::createHanningWindow(w, cv::Size(l.patch, l.patch), CV_32F);
    return w;
  }();
  const double contrast2 = Contrast2(fixed);
  const std::vector<double> tex =
      PatchTextures(fixed, l, window, contrast2, o.threads);
  const double textured = TextureThreshold(tex, o.min_texture, kTextureFloor);
  const double faint =
      std::min(textured, TextureThreshold(tex, o.faint_texture, kFaintFloor));
  FirstError error;
  ParallelFor(g->rows, o.threads, [&](int r0, int r1) {
    absl::StatusOr<PhaseCorrelator> pc = PhaseCorrelator::Create(l.patch);
    if (!pc.ok()) {
      error.Set(pc.status());
      return;
    }
    cv::Mat patch;
    for (int r = r0; r < r1; ++r) {
      if (o.cancel != nullptr) {
        absl::Status s = o.cancel->Check();
        if (!s.ok()) error.Set(std::move(s));
      }
      if (error.failed()) return;
      try {
        for (int c = 0; c < g->cols; ++c) {
          const size_t k = static_cast<size_t>(r) * g->cols + c;
          if (tex[k] < faint ||
              !ExtractPatch(fixed, l.x0[c], l.y0[r], l.patch, &patch)) {
            continue;
          }
          const PatchResult m = MeasurePatch(*pc, patch, warped, l.x0[c],
                                             l.y0[r], window, o.min_response);
          // A partial patch is judged by the texture of its valid part.
          const double texture = m.partial ? m.texture / contrast2 : tex[k];
          if (texture < faint) continue;
          // A faint patch that does not match says nothing either way.
          if (m.state == PatchState::kUnmatched && texture < textured) continue;
          g->state[k] = m.state;
          g->response[k] = static_cast<float>(m.response);
          if (m.state != PatchState::kMeasured) continue;
          // The field lies off the truth by minus the shift that aligns.
          g->dx[k] = static_cast<float>(-m.shift.x * g->scale_x);
          g->dy[k] = static_cast<float>(-m.shift.y * g->scale_y);
          g->error_px[k] = std::hypot(g->dx[k], g->dy[k]);
        }
      } catch (const cv::Exception& e) {
        error.Set(absl::InternalError(absl::StrCat(
            "quality: OpenCV phase correlation failed: ", e.what())));
      }
    }
  });
  return error.Get();
}

QualitySummary Summarize(const QualityGrid& g, const QualityOptions& o) {
  QualitySummary s;
  s.computed = true;
  std::vector<float> errors;
  for (size_t k = 0; k < g.state.size(); ++k) {
    switch (g.state[k]) {
      case PatchState::kMeasured:
        ++s.measured;
        errors.push_back(g.error_px[k]);
        break;
      case PatchState::kUnmatched:
        ++s.unmatched;
        break;
      case PatchState::kUnknown:
        ++s.unknown;
        break;
    }
  }
  const int checked = s.measured + s.unmatched;
  const size_t total = g.state.size();
  s.checked_fraction = total > 0 ? static_cast<double>(checked) / total : 0;
  s.unmatched_fraction =
      checked > 0 ? static_cast<double>(s.unmatched) / checked : 0;
  if (!errors.empty()) {
    std::sort(errors.begin(), errors.end());
    double sum = 0;
    for (float e : errors) sum += e;
    s.mean_px = sum / errors.size();
    const size_t rank = static_cast<size_t>(std::ceil(
                            0.95 * static_cast<double>(errors.size()))) -
                        1;
    s.p95_px = errors[std::min(rank, errors.size() - 1)];
    s.max_px = errors.back();
  }
  JudgeQuality(o, &s);
  return s;
}

}  // namespace

absl::string_view QualityVerdictName(QualityVerdict v) {
  switch (v) {
    case QualityVerdict::kGood:
      return "good";
    case QualityVerdict::kPoor:
      return "poor";
    case QualityVerdict::kUnchecked:
      return "unchecked";
  }
  return "unknown";
}

void JudgeQuality(const QualityOptions& o, QualitySummary* s) {
  const std::string figures =
      absl::StrFormat("est. mean %.2f px, p95 %.2f px over %.0f%% of the area",
                      s->mean_px, s->p95_px, 100 * s->checked_fraction);
  s->warning.clear();
  if (s->checked_fraction < o.min_checked || s->measured + s->unmatched < 4) {
    s->verdict = QualityVerdict::kUnchecked;
    s->warning = absl::StrFormat(
        "the alignment could not be checked: only %.0f%% of the area has "
        "enough texture to measure the residual",
        100 * s->checked_fraction);
  } else if (s->unmatched_fraction > o.max_unmatched) {
    s->verdict = QualityVerdict::kPoor;
    s->warning = absl::StrFormat(
        "the registration looks poor: %.0f%% of the checked patches do not "
        "match the fixed image (%s)",
        100 * s->unmatched_fraction, figures);
  } else if (s->mean_px > o.good_mean_px || s->p95_px > o.good_p95_px) {
    s->verdict = QualityVerdict::kPoor;
    s->warning = absl::StrFormat(
        "the registration looks poor: %s (good: mean <= %g px, p95 <= %g px)",
        figures, o.good_mean_px, o.good_p95_px);
  } else {
    s->verdict = QualityVerdict::kGood;
  }
}

absl::StatusOr<QualityReport> EstimateQuality(const Image& fixed_gray,
                                              const Image& moving_gray,
                                              const DisplacementField& field,
                                              const QualityOptions& options) {
  REGSERVE_RETURN_IF_ERROR(
      ValidateInputs(fixed_gray, moving_gray, field, options));
  QualityReport report;
  const Layout layout =
      MakeLayout(fixed_gray.width(), fixed_gray.height(), options);
  SizeGrid(layout,
           static_cast<double>(options.fixed_full_width) / fixed_gray.width(),
           static_cast<double>(options.fixed_full_height) / fixed_gray.height(),
           &report.grid);
  if (layout.patch > 0) {
    REGSERVE_ASSIGN_OR_RETURN(
        Image warped, WarpToFixedGrid(fixed_gray, moving_gray, field, options));
    try {
      REGSERVE_RETURN_IF_ERROR(
          MeasurePatches(fixed_gray, warped, layout, options, &report.grid));
    } catch (const cv::Exception& e) {
      return absl::InternalError(
          absl::StrCat("quality: OpenCV failed: ", e.what()));
    }
  }
  report.summary = Summarize(report.grid, options);
  return report;
}

absl::StatusOr<Image> MakeQualityThumbnail(const Image& gray, int max_edge) {
  if (gray.empty() || gray.channels() != 1 ||
      gray.type() != SampleType::kFloat32 || max_edge < 1) {
    return absl::InvalidArgumentError(
        "quality thumbnail: needs a 1-channel float32 image and max_edge >= 1");
  }
  const double scale = std::min(1.0, static_cast<double>(max_edge) /
                                         std::max(gray.width(), gray.height()));
  const int tw =
      std::max(1, static_cast<int>(std::lround(gray.width() * scale)));
  const int th =
      std::max(1, static_cast<int>(std::lround(gray.height() * scale)));
  REGSERVE_ASSIGN_OR_RETURN(Image out,
                            Image::Allocate({.width = tw,
                                             .height = th,
                                             .channels = 1,
                                             .type = SampleType::kUInt8}));
  const auto [lo, hi] = Percentiles(gray);
  const double gain = hi > lo ? 255.0 / (hi - lo) : 0.0;
  try {
    const cv::Mat src(static_cast<int>(gray.height()),
                      static_cast<int>(gray.width()), CV_32F,
                      const_cast<uint8_t*>(gray.data()));
    cv::Mat small;
    cv::resize(src, small, cv::Size(tw, th), 0, 0, cv::INTER_AREA);
    cv::Mat dst(th, tw, CV_8U, out.data());
    small.convertTo(dst, CV_8U, gain, -lo * gain);  // saturating
  } catch (const cv::Exception& e) {
    return absl::InternalError(
        absl::StrCat("quality thumbnail: OpenCV failed: ", e.what()));
  }
  return out;
}

std::string QualitySummaryLine(const QualitySummary& s) {
  if (!s.computed) return "quality: not estimated";
  std::string line = absl::StrFormat(
      "quality: est. mean %.2f px, p95 %.2f px, max %.2f px, checked %.0f%% "
      "of the area",
      s.mean_px, s.p95_px, s.max_px, 100 * s.checked_fraction);
  if (s.verdict != QualityVerdict::kGood) {
    absl::StrAppend(&line, " (", QualityVerdictName(s.verdict), ")");
  }
  return line;
}

}  // namespace regserve
