// Copyright regserve authors.
//
// Quality map benchmark: a real photo is deformed by a known smooth map
// (about 1 degree of rotation about the centre, a shift, a bending of
// +-0.35% of the width); the registration copies are made as the pipeline
// makes them; EstimateQuality then judges fields whose error is known: the
// truth, the truth plus a 1.5 px shift, the truth plus a 3 px bump, the
// identity, and (with --elastix) elastix's own result. For each it prints
// the estimate, its time and peak RSS growth, and the estimate against the
// truth: per measured patch the true error (field minus truth, averaged
// over the patch), the share of patches estimated within a factor of two,
// and the true residual over the checked area and over the whole image.
//
//   apt-get download lomiri-wallpapers-20.04 && dpkg -x lomiri-*.deb /tmp/lw
//   build/tests/bench/quality_benchmark
//       --image=/tmp/lw/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg
//       --max_registration_mp=20 --elastix
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/image/image_io.h"
#include "core/quality/quality_map.h"
#include "core/registration/registration.h"

ABSL_FLAG(std::string, image, "", "the photo (required)");
ABSL_FLAG(double, max_registration_mp, 20.0,
          "registration copy cap (MP), as the planner's default");
ABSL_FLAG(int, threads, 2, "threads");
ABSL_FLAG(int, repeat, 1,
          "estimate each field this many times; the times printed are the "
          "fastest run's (the estimate is deterministic)");
ABSL_FLAG(bool, elastix, false,
          "also register with elastix (B-spline preset) and judge its field");

namespace regserve {
namespace {

constexpr double kPi = 3.14159265358979323846;

struct Vec {
  double x = 0, y = 0;
};
using FieldFn = std::function<Vec(double, double)>;

// The known deformation of the benchmark, in full-resolution px.
FieldFn SmoothTruth(int64_t w, int64_t h) {
  return [w, h](double x, double y) {
    const double a = 1.0 * kPi / 180, cx = w / 2.0, cy = h / 2.0;
    const double rx = std::cos(a) * (x - cx) - std::sin(a) * (y - cy) + cx;
    const double ry = std::sin(a) * (x - cx) + std::cos(a) * (y - cy) + cy;
    const double bend = 0.0035 * w * std::sin(2 * kPi * x / w);
    return Vec{rx - x + 0.004 * w, ry - y - 0.003 * h + bend};
  };
}

int64_t ReadStatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + strlen(key));
  }
  return 0;
}
// Resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
void ResetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

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

// M(p + d(p)) = F(p): M(q) = F(p) with p + d(p) = q (fixed-point).
Image Deform(const Image& fixed, const FieldFn& d) {
  Image m = *Image::Allocate(fixed.spec());
  float* out = m.as<float>();
  for (int64_t y = 0; y < m.height(); ++y) {
    for (int64_t x = 0; x < m.width(); ++x) {
      double px = x, py = y;
      for (int it = 0; it < 12; ++it) {
        const Vec v = d(px, py);
        px = x - v.x;
        py = y - v.y;
      }
      out[y * m.width() + x] = Bilinear(fixed, px, py);
    }
  }
  return m;
}

DisplacementField Sampled(const FieldFn& d, int64_t cw, int64_t ch, int64_t fw,
                          int64_t fh) {
  DisplacementField f;
  f.width = cw;
  f.height = ch;
  f.spacing_x = static_cast<double>(fw) / cw;
  f.spacing_y = static_cast<double>(fh) / ch;
  f.origin_x = (f.spacing_x - 1) / 2;
  f.origin_y = (f.spacing_y - 1) / 2;
  f.dx.resize(cw * ch);
  f.dy.resize(cw * ch);
  for (int64_t j = 0; j < ch; ++j) {
    for (int64_t i = 0; i < cw; ++i) {
      const Vec v =
          d(f.origin_x + i * f.spacing_x, f.origin_y + j * f.spacing_y);
      f.dx[j * cw + i] = static_cast<float>(v.x);
      f.dy[j * cw + i] = static_cast<float>(v.y);
    }
  }
  return f;
}

// The field's error (field - truth) at a grid node.
Vec NodeError(const DisplacementField& f, const FieldFn& truth, int64_t i,
              int64_t j) {
  const double x = f.origin_x + i * f.spacing_x;
  const double y = f.origin_y + j * f.spacing_y;
  const Vec t = truth(x, y);
  return {f.dx[j * f.width + i] - t.x, f.dy[j * f.width + i] - t.y};
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1)))];
}
double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

// The estimate against the truth, per patch (the field is on the copy's
// grid, as the pipeline's is).
void Compare(const QualityGrid& g, const DisplacementField& f,
             const FieldFn& truth) {
  std::vector<double> true_checked, true_all;
  int within = 0, large = 0, small_ok = 0, small = 0;
  std::vector<double> abs_diff;
  for (int r = 0; r < g.rows; ++r) {
    for (int c = 0; c < g.cols; ++c) {
      Vec sum;
      int n = 0;
      for (int y = 0; y < g.patch_size; y += 4) {
        for (int x = 0; x < g.patch_size; x += 4) {
          const Vec e = NodeError(f, truth, g.x0[c] + x, g.y0[r] + y);
          sum.x += e.x;
          sum.y += e.y;
          ++n;
        }
      }
      const double t = std::hypot(sum.x / n, sum.y / n);
      const size_t k = static_cast<size_t>(r) * g.cols + c;
      true_all.push_back(t);
      if (g.state[k] != PatchState::kUnknown) true_checked.push_back(t);
      if (g.state[k] != PatchState::kMeasured) continue;
      abs_diff.push_back(std::abs(g.error_px[k] - t));
      if (t > 0.5) {
        ++large;
        within += g.error_px[k] >= t / 2 && g.error_px[k] <= 2 * t;
      } else if (t < 0.1) {
        ++small;
        small_ok += g.error_px[k] < 0.3;
      }
    }
  }
  std::printf(
      "    truth over checked patches: mean %.2f px, p95 %.2f px; over all "
      "patches: mean %.2f, p95 %.2f\n",
      Mean(true_checked), Percentile(true_checked, 0.95), Mean(true_all),
      Percentile(true_all, 0.95));
  std::printf(
      "    |estimate - truth| per measured patch: mean %.3f px, p95 %.3f px; "
      "within x2 where truth > 0.5 px: %d of %d; < 0.3 px where truth < 0.1 "
      "px: %d of %d\n",
      Mean(abs_diff), Percentile(abs_diff, 0.95), within, large, small_ok,
      small);
}

void Judge(const std::string& name, const Image& fixed, const Image& moving,
           const DisplacementField& field, const FieldFn& truth, int64_t full_w,
           int64_t full_h) {
  QualityOptions o;
  o.fixed_full_width = o.moving_full_width = full_w;
  o.fixed_full_height = o.moving_full_height = full_h;
  o.threads = absl::GetFlag(FLAGS_threads);
  ResetPeak();
  const int64_t rss0 = ReadStatusKb("VmRSS:");
  absl::StatusOr<QualityReport> q;
  double s = 1e30, cpu = 0;
  for (int r = 0; r < std::max(1, absl::GetFlag(FLAGS_repeat)); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();
    q = EstimateQuality(fixed, moving, field, o);
    const double c = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    if (t < s) s = t, cpu = c;
  }
  const int64_t peak = ReadStatusKb("VmHWM:") - rss0;
  if (!q.ok()) {
    std::printf("%s: %s\n", name.c_str(), q.status().ToString().c_str());
    return;
  }
  std::printf("%s: %s; %d measured, %d unmatched, %d unknown patches\n",
              name.c_str(), QualitySummaryLine(q->summary).c_str(),
              q->summary.measured, q->summary.unmatched, q->summary.unknown);
  std::printf(
      "    %.2f s (%.2f s CPU, %d threads), peak RSS +%.1f MB (%.2f B per copy "
      "pixel)\n",
      s, cpu, o.threads, peak / 1024.0,
      peak * 1024.0 / (fixed.width() * fixed.height()));
  Compare(q->grid, field, truth);
}

FieldFn Plus(FieldFn a, FieldFn b) {
  return [a, b](double x, double y) {
    const Vec u = a(x, y), v = b(x, y);
    return Vec{u.x + v.x, u.y + v.y};
  };
}

int Run() {
  absl::StatusOr<Image> photo =
      ReadImageFile(absl::GetFlag(FLAGS_image), ReadOptions{});
  if (!photo.ok()) {
    std::fprintf(stderr, "%s\n", photo.status().ToString().c_str());
    return 1;
  }
  const int64_t w = photo->width(), h = photo->height();
  const int threads = absl::GetFlag(FLAGS_threads);
  const double f = std::max(
      1.0, std::sqrt(w * h / (absl::GetFlag(FLAGS_max_registration_mp) * 1e6)));
  const int64_t cw = static_cast<int64_t>(w / f),
                ch = static_cast<int64_t>(h / f);
  const FieldFn truth = SmoothTruth(w, h);
  Image fixed, moving;
  {
    Image full = *MakeGrayscaleCopy(*photo, w, h, threads);
    *photo = Image();
    Image deformed = Deform(full, truth);
    fixed = *MakeGrayscaleCopy(full, cw, ch, threads);
    moving = *MakeGrayscaleCopy(deformed, cw, ch, threads);
  }
  std::printf("photo %lldx%lld, registration copies %lldx%lld (1/%.2f)\n",
              static_cast<long long>(w), static_cast<long long>(h),
              static_cast<long long>(cw), static_cast<long long>(ch), f);
  const FieldFn zero = [](double, double) { return Vec{}; };
  const FieldFn shift = [](double, double) { return Vec{1.5, 0.0}; };
  const FieldFn bump = [w, h](double x, double y) {
    const double s = 0.05 * w;
    const double r2 =
        (x - 0.5 * w) * (x - 0.5 * w) + (y - 0.5 * h) * (y - 0.5 * h);
    const double a = 3.0 * std::exp(-r2 / (2 * s * s));
    return Vec{0.6 * a, 0.8 * a};
  };
  Judge("truth", fixed, moving, Sampled(truth, cw, ch, w, h), truth, w, h);
  Judge("truth + 1.5 px shift", fixed, moving,
        Sampled(Plus(truth, shift), cw, ch, w, h), truth, w, h);
  Judge("truth + 3 px bump", fixed, moving,
        Sampled(Plus(truth, bump), cw, ch, w, h), truth, w, h);
  Judge("identity", fixed, moving, Sampled(zero, cw, ch, w, h), truth, w, h);
  if (absl::GetFlag(FLAGS_elastix)) {
    RegistrationRequest req;
    req.work_dir = absl::StrCat("/tmp/quality_benchmark_", getpid());
    req.fixed = &fixed;
    req.moving = &moving;
    req.fixed_full_width = req.moving_full_width = w;
    req.fixed_full_height = req.moving_full_height = h;
    req.threads = threads;
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<RegistrationResult> r = Register(req, ElastixConfig{});
    if (!r.ok()) {
      std::printf("elastix: %s\n", r.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "elastix (B-spline preset): %.1f s\n",
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count());
    Judge("elastix", fixed, moving, r->field, truth, w, h);
  }
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_image).empty()) {
    std::fprintf(stderr, "quality_benchmark: --image=PHOTO is required\n");
    return 2;
  }
  return regserve::Run();
}
