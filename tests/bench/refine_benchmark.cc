// Copyright regserve authors.
//
// Refinement benchmark: a real photo is deformed by a known smooth map
// (rotation about the centre, a shift, and a gentle bending in x and y);
// elastix registers the planned copies, then RefineField refines elastix's
// field on each requested device. Prints, against the known truth, the
// residual (mean, median, p95, max over a grid of fixed points whose truth
// lands inside the moving image; also split into textured and smooth
// areas), the time, and the process's peak RSS growth during refinement;
// with both devices, also CUDA at the CPU's working size, and how far the
// two refined fields differ there.
//
//   apt-get download lomiri-wallpapers-20.04 && dpkg -x lomiri-*.deb /tmp/lw
//   build/tests/bench/refine_benchmark
//       --image=/tmp/lw/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg
//       --max_registration_mp=5 --devices=cpu,cuda
//
// The CPU refinement runs at the working size the planner picks for this
// machine's budgets (--refine_mp=-1) unless told otherwise; CUDA at the
// registration copy's size.
//
// --truth=homography uses the strong homography instead (60
// degrees, scale 0.9, keystone): the robust start runs first, elastix
// registers against the moving copy pre-warped by it, and the refinement
// takes the start's homography as its prior (--no_prior: the identity);
// --robust_start does the same for the smooth map. As the job does
// (--as_job, the default), the start alone replaces start + elastix, and
// the refined field its input, only when the quality map's estimate prefers
// it; the "job's field" row is what the job would keep.
//
// --field_cache=FILE keeps elastix's field (and its time) in FILE, so that
// tuning runs, or a machine without elastix, skip the registration. The
// field depends on every flag before the refinement: one file per case.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/image/field_ops.h"
#include "core/image/image_io.h"
#include "core/jobs/field_choice.h"
#include "core/plan/plan.h"
#include "core/quality/quality_map.h"
#include "core/refine/refine.h"
#include "core/registration/registration.h"
#include "core/registration/robust_start.h"
#include "core/warp/warp.h"
#include "tests/bench/strong_homography.h"

ABSL_FLAG(std::string, image, "", "the photo (required)");
ABSL_FLAG(double, max_registration_mp, 5.0, "registration copy cap (MP)");
ABSL_FLAG(int, threads, 2, "elastix and LibTorch CPU threads");
ABSL_FLAG(std::string, devices, "cpu",
          "refinement devices: cpu, cuda, cpu,cuda or both (= cpu,cuda)");
ABSL_FLAG(double, refine_mp, -1,
          "working size of the CPU refinement (MP); 0 = the copy's size; "
          "-1 = as the planner plans it (2-core budgets)");
ABSL_FLAG(double, cuda_refine_mp, 0.0, "same for CUDA; 0 = the copy's size");
ABSL_FLAG(int, levels, regserve::RefineOptions().levels,
          "pyramid levels (0 = automatic)");
ABSL_FLAG(int, iterations, regserve::RefineOptions().iterations,
          "Adam steps per level");
ABSL_FLAG(double, smoothness, regserve::RefineOptions().smoothness,
          "bending weight");
ABSL_FLAG(double, learning_rate, regserve::RefineOptions().learning_rate,
          "Adam step (level px)");
ABSL_FLAG(double, control_spacing, regserve::RefineOptions().control_spacing,
          "control grid spacing (level px)");
ABSL_FLAG(int, ncc_window, regserve::RefineOptions().ncc_window,
          "LNCC window (level px)");
ABSL_FLAG(double, ncc_epsilon, regserve::RefineOptions().ncc_epsilon,
          "LNCC epsilon");
ABSL_FLAG(double, texture_variance, regserve::RefineOptions().texture_variance,
          "LNCC texture weight");
ABSL_FLAG(std::string, error_map, "",
          "writes the refined field's error (0..2 px, grey) to this PNG");
ABSL_FLAG(bool, verbose, false, "print the loss during refinement");
ABSL_FLAG(std::string, truth, "smooth",
          "smooth (rotation, shift, bend) or homography (the issue's strong "
          "homography; the field to refine is then the robust start + "
          "elastix, composed, as the job makes it)");
ABSL_FLAG(bool, robust_start, false,
          "run the robust start first, as the job does, also for "
          "--truth=smooth (--truth=homography always does)");
ABSL_FLAG(bool, as_job, true,
          "choose as the job does (core/jobs/field_choice.h): the start alone "
          "over start + elastix, and the refined field over its input, by "
          "the quality map's estimate; prints the job's field");
ABSL_FLAG(bool, no_prior, false,
          "refine without the robust start's homography as the prior");
ABSL_FLAG(double, rotation_deg, 1.0, "known rotation (degrees)");
ABSL_FLAG(double, shift_x, 14.3, "known shift x (px)");
ABSL_FLAG(double, shift_y, -9.6, "known shift y (px)");
ABSL_FLAG(double, bend, 0.0035, "bending amplitude (fraction of the width)");
ABSL_FLAG(int64_t, margin, 128,
          "the fixed image is the photo less this margin on every side");
ABSL_FLAG(std::string, field_cache, "", "file keeping elastix's field");
ABSL_FLAG(std::string, initial, "elastix",
          "the field to refine: elastix, start (--truth=homography: the "
          "robust start alone), or truth (the known map) plus --error_px of "
          "smooth error");
ABSL_FLAG(double, error_px, 0.0,
          "a smooth bump of this many px added to the truth");
ABSL_FLAG(double, error_shift_x, 0.0, "a shift added to the truth (px)");
ABSL_FLAG(double, error_shift_y, 0.0, "a shift added to the truth (px)");

namespace regserve {
namespace {

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

uint64_t RssBytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::strtoull(line.c_str() + std::strlen(key), nullptr, 10) * 1024;
    }
  }
  return 0;
}

// The known map T from fixed to moving full-resolution positions: bend in y
// (by x), then in x (by y), then rotate about the centre and shift. Each
// step inverts in closed form. --truth=homography: StrongHomography.
struct Truth {
  double w, h, cx, cy, c, s, tx, ty, a;
  // --truth=homography: the strong homography instead.
  bool homography = false;
  Homography hf, hi;
  Truth(int64_t width, int64_t height) {
    w = static_cast<double>(width);
    h = static_cast<double>(height);
    cx = (w - 1) / 2;
    cy = (h - 1) / 2;
    const double th = absl::GetFlag(FLAGS_rotation_deg) * M_PI / 180;
    c = std::cos(th);
    s = std::sin(th);
    tx = absl::GetFlag(FLAGS_shift_x);
    ty = absl::GetFlag(FLAGS_shift_y);
    a = absl::GetFlag(FLAGS_bend) * w;
    homography = absl::GetFlag(FLAGS_truth) == "homography";
    hf = StrongHomography(width, height);
    hf.Inverse(&hi);
  }
  void Forward(double x, double y, double* X, double* Y) const {
    if (homography) {
      if (!hf.Apply(x, y, X, Y)) *X = *Y = -1e9;
      return;
    }
    y += a * std::sin(2 * M_PI * x / w);
    x += a * std::sin(2 * M_PI * y / h);
    const double u = x - cx, v = y - cy;
    *X = cx + c * u - s * v + tx;
    *Y = cy + s * u + c * v + ty;
  }
  void Inverse(double X, double Y, double* x, double* y) const {
    if (homography) {
      if (!hi.Apply(X, Y, x, y)) *x = *y = -1e9;
      return;
    }
    const double u = X - tx - cx, v = Y - ty - cy;
    double xx = cx + c * u + s * v, yy = cy - s * u + c * v;
    xx -= a * std::sin(2 * M_PI * yy / h);
    yy -= a * std::sin(2 * M_PI * xx / w);
    *x = xx;
    *y = yy;
  }
};

// The field that makes the moving image: moving(q) = fixed(T^-1(q)).
DisplacementField InverseField(const Truth& t, int64_t w, int64_t h,
                               double margin) {
  DisplacementField f;
  f.spacing_x = f.spacing_y = 8;
  f.width = (w - 1) / 8 + 2;
  f.height = (h - 1) / 8 + 2;
  f.dx.resize(f.width * f.height);
  f.dy.resize(f.dx.size());
  for (int64_t j = 0; j < f.height; ++j) {
    for (int64_t i = 0; i < f.width; ++i) {
      double x, y;
      t.Inverse(i * 8.0, j * 8.0, &x, &y);
      f.dx[j * f.width + i] = static_cast<float>(x + margin - i * 8.0);
      f.dy[j * f.width + i] = static_cast<float>(y + margin - j * 8.0);
    }
  }
  return f;
}

absl::StatusOr<Image> WarpWhole(const Image& src,
                                const DisplacementField& field, int64_t w,
                                int64_t h, int threads) {
  REGSERVE_ASSIGN_OR_RETURN(auto warper, Warper::Create(WarpDevice::kCpu));
  ImageSpec spec = src.spec();
  spec.width = w;
  spec.height = h;
  REGSERVE_ASSIGN_OR_RETURN(Image out, Image::Allocate(spec));
  WarpOptions o;
  o.tile_size = 2048;
  o.cpu_threads = threads;
  o.interpolation = Interpolation::kCubic;
  const size_t bpp = src.spec().bytes_per_pixel();
  REGSERVE_RETURN_IF_ERROR(
      warper
          ->Warp(src, field, w, h, o,
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

// Bilinear, border-clamped, as the warp reads a field.
void SampleField(const DisplacementField& f, double x, double y, double* dx,
                 double* dy) {
  double gx = std::clamp((x - f.origin_x) / f.spacing_x, 0.0,
                         static_cast<double>(f.width - 1));
  double gy = std::clamp((y - f.origin_y) / f.spacing_y, 0.0,
                         static_cast<double>(f.height - 1));
  const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(gx),
                                       f.width - 2 < 0 ? 0 : f.width - 2);
  const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(gy),
                                       f.height - 2 < 0 ? 0 : f.height - 2);
  const int64_t x1 = std::min(x0 + 1, f.width - 1),
                y1 = std::min(y0 + 1, f.height - 1);
  const double ax = gx - x0, ay = gy - y0;
  auto at = [&](const std::vector<float>& v) {
    return (1 - ay) *
               ((1 - ax) * v[y0 * f.width + x0] + ax * v[y0 * f.width + x1]) +
           ay * ((1 - ax) * v[y1 * f.width + x0] + ax * v[y1 * f.width + x1]);
  };
  *dx = at(f.dx);
  *dy = at(f.dy);
}

struct Stats {
  size_t n = 0;
  double mean = 0, median = 0, p95 = 0, max = 0;
};

Stats Summarise(std::vector<double> e) {
  Stats s;
  s.n = e.size();
  if (e.empty()) return s;
  std::sort(e.begin(), e.end());
  double sum = 0;
  for (double v : e) sum += v;
  s.mean = sum / e.size();
  s.median = e[e.size() / 2];
  s.p95 = e[std::min(e.size() - 1, static_cast<size_t>(0.95 * e.size()))];
  s.max = e.back();
  return s;
}

// Residual of `field` against the truth at fixed points every 4 px whose
// image lies inside the moving image; `smooth` (per point, same order)
// splits them by texture.
struct Residual {
  Stats all, textured, smooth;
};

Residual Measure(const DisplacementField& field, const Truth& t, int64_t w,
                 int64_t h, const Image& texture_map, double texture_scale) {
  std::vector<double> all, tex, smooth;
  for (int64_t y = 0; y < h; y += 4) {
    for (int64_t x = 0; x < w; x += 4) {
      double X, Y;
      t.Forward(x, y, &X, &Y);
      if (X < 0 || Y < 0 || X > w - 1 || Y > h - 1) continue;
      double dx, dy;
      SampleField(field, x, y, &dx, &dy);
      const double e = std::hypot(dx - (X - x), dy - (Y - y));
      all.push_back(e);
      const int64_t tx = std::min<int64_t>(
          texture_map.width() - 1, static_cast<int64_t>(x / texture_scale));
      const int64_t ty = std::min<int64_t>(
          texture_map.height() - 1, static_cast<int64_t>(y / texture_scale));
      (texture_map.as<float>()[ty * texture_map.width() + tx] > 0.5f ? tex
                                                                     : smooth)
          .push_back(e);
    }
  }
  return {Summarise(all), Summarise(tex), Summarise(smooth)};
}

// 1 where the local standard deviation of `gray` (5x5 window) is above
// 2/255, else 0.
Image TextureMap(const Image& gray) {
  Image m = Image::AllocateZeroed(gray.spec()).value();
  const int64_t w = gray.width(), h = gray.height();
  const float* g = gray.as<float>();
  for (int64_t y = 2; y + 2 < h; ++y) {
    for (int64_t x = 2; x + 2 < w; ++x) {
      double s = 0, s2 = 0;
      for (int j = -2; j <= 2; ++j)
        for (int i = -2; i <= 2; ++i) {
          const double v = g[(y + j) * w + x + i];
          s += v;
          s2 += v * v;
        }
      const double var = s2 / 25 - (s / 25) * (s / 25);
      m.as<float>()[y * w + x] = var > (2.0 / 255) * (2.0 / 255) ? 1.f : 0.f;
    }
  }
  return m;
}

void PrintRow(const char* name, const Residual& r, double seconds) {
  auto one = [](const Stats& s) {
    std::printf(" | %6.3f %6.3f %6.3f %7.2f", s.mean, s.median, s.p95, s.max);
  };
  std::printf("%-28s %7.1f", name, seconds);
  one(r.all);
  one(r.textured);
  one(r.smooth);
  std::printf("\n");
}

bool SaveField(const std::string& path, const DisplacementField& f,
               double seconds) {
  std::ofstream o(path, std::ios::binary);
  const int64_t hdr[2] = {f.width, f.height};
  const double geo[5] = {f.origin_x, f.origin_y, f.spacing_x, f.spacing_y,
                         seconds};
  o.write(reinterpret_cast<const char*>(hdr), sizeof(hdr));
  o.write(reinterpret_cast<const char*>(geo), sizeof(geo));
  o.write(reinterpret_cast<const char*>(f.dx.data()), f.dx.size() * 4);
  o.write(reinterpret_cast<const char*>(f.dy.data()), f.dy.size() * 4);
  return static_cast<bool>(o);
}

bool LoadField(const std::string& path, DisplacementField* f, double* seconds) {
  std::ifstream in(path, std::ios::binary);
  int64_t hdr[2];
  double geo[5];
  if (!in.read(reinterpret_cast<char*>(hdr), sizeof(hdr)) ||
      !in.read(reinterpret_cast<char*>(geo), sizeof(geo))) {
    return false;
  }
  f->width = hdr[0];
  f->height = hdr[1];
  f->origin_x = geo[0];
  f->origin_y = geo[1];
  f->spacing_x = geo[2];
  f->spacing_y = geo[3];
  *seconds = geo[4];
  f->dx.resize(f->width * f->height);
  f->dy.resize(f->dx.size());
  in.read(reinterpret_cast<char*>(f->dx.data()), f->dx.size() * 4);
  in.read(reinterpret_cast<char*>(f->dy.data()), f->dy.size() * 4);
  return static_cast<bool>(in);
}

// elastix on the copies, or its field from --field_cache.
// --truth=homography or --robust_start: the robust start, as the job runs
// it (its homography is also the refinement's prior); nullopt otherwise.
absl::StatusOr<std::optional<InitialAlignment>> RobustStart(const Image& fg,
                                                            const Image& mg,
                                                            int64_t w,
                                                            int64_t h) {
  if (absl::GetFlag(FLAGS_truth) != "homography" &&
      !absl::GetFlag(FLAGS_robust_start)) {
    return std::nullopt;
  }
  RobustStartOptions ro;
  ro.fixed_full_width = ro.moving_full_width = w;
  ro.fixed_full_height = ro.moving_full_height = h;
  ro.threads = absl::GetFlag(FLAGS_threads);
  REGSERVE_ASSIGN_OR_RETURN(InitialAlignment a,
                            EstimateInitialAlignment(fg, mg, ro));
  std::printf("initial alignment: %s\n", a.reason.c_str());
  return a;
}

// elastix on the copies (after the robust start when there is one, against
// the moving copy pre-warped by it, and composed with it), or its field
// from --field_cache.
absl::StatusOr<DisplacementField> ElastixField(
    const Image& fg, const Image& mg, int64_t w, int64_t h,
    const std::optional<InitialAlignment>& start, double* seconds) {
  const std::string cache = absl::GetFlag(FLAGS_field_cache);
  DisplacementField field;
  if (!cache.empty() && LoadField(cache, &field, seconds)) {
    std::printf("elastix field read from %s\n", cache.c_str());
    return field;
  }
  RegistrationRequest req;
  req.work_dir = std::filesystem::temp_directory_path() /
                 ("regserve_refine_bench_" + std::to_string(getpid()));
  req.fixed = &fg;
  req.moving = &mg;
  req.fixed_full_width = req.moving_full_width = w;
  req.fixed_full_height = req.moving_full_height = h;
  req.threads = absl::GetFlag(FLAGS_threads);
  const double t0 = Now();
  Image prewarped;
  if (start.has_value() && start->found) {
    const GridGeometry grid = RegistrationGrid(fg.width(), fg.height(), w, h);
    Image valid;
    REGSERVE_ASSIGN_OR_RETURN(
        prewarped, WarpByHomography(mg, grid, start->fixed_to_moving, grid,
                                    0.0f, &valid, req.threads));
    REGSERVE_RETURN_IF_ERROR(FillInvalid(valid, fg, &prewarped));
    req.moving = &prewarped;
  }
  REGSERVE_ASSIGN_OR_RETURN(RegistrationResult reg,
                            Register(req, ElastixConfig{}));
  if (start.has_value() && start->found) {
    REGSERVE_ASSIGN_OR_RETURN(
        reg.field,
        ComposeHomographyField(start->fixed_to_moving, reg.field, req.threads));
  }
  *seconds = Now() - t0;
  std::filesystem::remove_all(req.work_dir);
  if (!cache.empty()) SaveField(cache, reg.field, *seconds);
  return std::move(reg.field);
}

RefineOptions OptionsFor(WarpDevice device, int64_t w, int64_t h,
                         const Plan& plan) {
  RefineOptions o;
  o.fixed_full_width = o.moving_full_width = w;
  o.fixed_full_height = o.moving_full_height = h;
  o.device = device;
  o.threads = absl::GetFlag(FLAGS_threads);
  const double mp = device == WarpDevice::kCpu
                        ? absl::GetFlag(FLAGS_refine_mp)
                        : absl::GetFlag(FLAGS_cuda_refine_mp);
  o.max_pixels =
      mp < 0 ? plan.refine_max_pixels : static_cast<int64_t>(mp * 1e6);
  o.levels = absl::GetFlag(FLAGS_levels);
  o.iterations = absl::GetFlag(FLAGS_iterations);
  o.smoothness = absl::GetFlag(FLAGS_smoothness);
  o.learning_rate = absl::GetFlag(FLAGS_learning_rate);
  o.control_spacing = absl::GetFlag(FLAGS_control_spacing);
  o.ncc_window = absl::GetFlag(FLAGS_ncc_window);
  o.ncc_epsilon = absl::GetFlag(FLAGS_ncc_epsilon);
  o.texture_variance = absl::GetFlag(FLAGS_texture_variance);
  if (absl::GetFlag(FLAGS_verbose)) {
    o.on_progress = [](const RefineProgress& p) {
      if (p.iteration == 1 || p.iteration == p.iterations ||
          p.iteration % 10 == 0) {
        std::printf("    level %d/%d iteration %d/%d loss %.5f\n", p.level + 1,
                    p.num_levels, p.iteration, p.iterations, p.loss);
      }
    };
  }
  return o;
}

// The known map on `like`'s grid, plus a smooth error of `error` px (a
// shift and a bump).
DisplacementField TruthField(const Truth& t, const DisplacementField& like,
                             double error) {
  DisplacementField f = like;
  for (int64_t j = 0; j < f.height; ++j) {
    for (int64_t i = 0; i < f.width; ++i) {
      const double x = f.origin_x + i * f.spacing_x;
      const double y = f.origin_y + j * f.spacing_y;
      double X, Y;
      t.Forward(x, y, &X, &Y);
      const double bump =
          std::exp(-(std::pow((x - 0.3 * t.w) / (0.1 * t.w), 2) +
                     std::pow((y - 0.6 * t.h) / (0.1 * t.w), 2)));
      f.dx[j * f.width + i] = static_cast<float>(
          X - x + absl::GetFlag(FLAGS_error_shift_x) + error * bump);
      f.dy[j * f.width + i] =
          static_cast<float>(Y - y + absl::GetFlag(FLAGS_error_shift_y));
    }
  }
  return f;
}

// The error of `field` every 8 px as 8-bit grey, 0..2 px -> 0..255.
void WriteErrorMap(const std::string& path, const DisplacementField& field,
                   const Truth& t, int64_t w, int64_t h) {
  Image img = Image::AllocateZeroed({.width = w / 8,
                                     .height = h / 8,
                                     .channels = 1,
                                     .type = SampleType::kUInt8})
                  .value();
  for (int64_t j = 0; j < img.height(); ++j) {
    for (int64_t i = 0; i < img.width(); ++i) {
      double X, Y, dx, dy;
      t.Forward(i * 8.0, j * 8.0, &X, &Y);
      SampleField(field, i * 8.0, j * 8.0, &dx, &dy);
      const double e = std::hypot(dx - (X - i * 8.0), dy - (Y - j * 8.0));
      img.row(j)[i] = static_cast<uint8_t>(std::min(255.0, e * 127.5));
    }
  }
  (void)WriteImageFile(path, img);
}

// Largest and mean distance between two fields on the same grid.
void DiffFields(const DisplacementField& a, const DisplacementField& b) {
  double mx = 0, sum = 0;
  for (size_t k = 0; k < a.dx.size(); ++k) {
    const double d = std::hypot(a.dx[k] - b.dx[k], a.dy[k] - b.dy[k]);
    mx = std::max(mx, d);
    sum += d;
  }
  std::printf(
      "cpu vs cuda, same input and options: the refined fields differ by "
      "%.4f px on average, %.4f px at most\n",
      sum / std::max<size_t>(1, a.dx.size()), mx);
}

// The quality map's estimate of `field` (what the job could know without
// the truth).
void PrintQuality(const char* name, const Image& fg, const Image& mg,
                  const DisplacementField& field, int64_t w, int64_t h) {
  QualityOptions q;
  q.fixed_full_width = q.moving_full_width = w;
  q.fixed_full_height = q.moving_full_height = h;
  q.threads = absl::GetFlag(FLAGS_threads);
  absl::StatusOr<QualityReport> r = EstimateQuality(fg, mg, field, q);
  if (!r.ok()) {
    std::printf("  %s: %s\n", name, r.status().ToString().c_str());
    return;
  }
  std::printf("  %s: %s (%d measured, %d unmatched)\n", name,
              QualitySummaryLine(r->summary).c_str(), r->summary.measured,
              r->summary.unmatched);
}

// As the job: `candidate` instead of `current` when the quality map's
// estimate prefers it (CompareFields, core/jobs/field_choice.h).
bool JobTakes(const char* what, const Image& fg, const Image& mg,
              const DisplacementField& current,
              const DisplacementField& candidate, int64_t w, int64_t h) {
  QualityOptions q;
  q.fixed_full_width = q.moving_full_width = w;
  q.fixed_full_height = q.moving_full_height = h;
  q.threads = absl::GetFlag(FLAGS_threads);
  const double t0 = Now();
  absl::StatusOr<FieldChoice> c =
      CompareFields(fg, mg, current, nullptr, candidate, q);
  const bool take = c.ok() && c->candidate_better;
  std::printf("job: %s %s (two estimates in %.2f s)\n", what,
              take ? "taken" : "not taken", Now() - t0);
  return take;
}

// What one refinement needs besides its options.
struct RunInputs {
  const Image* fixed;
  const Image* moving;
  const DisplacementField* field;
  const Truth* truth;
  const Image* texture;
  int64_t w, h;
};

// Refines once, prints its residual row, time and memory; the field.
absl::StatusOr<DisplacementField> RefineOnce(const RunInputs& in,
                                             const RefineOptions& o,
                                             const std::string& tag) {
  ResetPeakRss();
  const uint64_t rss0 = RssBytes("VmRSS:");
  absl::StatusOr<RefineResult> r =
      RefineField(*in.fixed, *in.moving, *in.field, o);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return r.status();
  }
  const uint64_t peak = RssBytes("VmHWM:");
  const std::string name =
      absl::StrCat(absl::GetFlag(FLAGS_initial), " + refine (", r->device, ")");
  PrintRow(name.c_str(),
           Measure(r->field, *in.truth, in.w, in.h, *in.texture, 4.0),
           r->seconds);
  std::printf(
      "  %s: work %lldx%lld, %d levels, %d steps, loss %.4f -> %.4f, LNCC "
      "%.4f -> %.4f%s; RSS growth %.0f MB; peak device %.0f MB\n",
      r->device.c_str(), static_cast<long long>(r->work_width),
      static_cast<long long>(r->work_height), r->levels, r->iterations,
      r->initial_loss, r->final_loss, r->initial_ncc, r->final_ncc,
      r->improved ? "" : " (not improved: field kept)",
      (peak - std::min(peak, rss0)) / 1e6, r->peak_device_bytes / 1e6);
  PrintQuality("refined", *in.fixed, *in.moving, r->field, in.w, in.h);
  const std::string map = absl::GetFlag(FLAGS_error_map);
  if (!map.empty()) {
    WriteErrorMap(absl::StrCat(map, "_", tag, ".png"), r->field, *in.truth,
                  in.w, in.h);
    WriteErrorMap(absl::StrCat(map, "_initial.png"), *in.field, *in.truth, in.w,
                  in.h);
  }
  return std::move(r->field);
}

int Run() {
  const int threads = absl::GetFlag(FLAGS_threads);
  absl::StatusOr<Image> photo = ReadImageFile(absl::GetFlag(FLAGS_image));
  if (!photo.ok()) {
    std::fprintf(stderr, "%s\n", photo.status().ToString().c_str());
    return 1;
  }
  // The fixed image is the photo without a margin; the moving one is made
  // from the whole photo, so that real content, not fill, lies wherever the
  // known map sends the fixed image's border.
  const int64_t m = absl::GetFlag(FLAGS_margin);
  const int64_t w = photo->width() - 2 * m, h = photo->height() - 2 * m;
  const Truth truth(w, h);
  absl::StatusOr<Image> moving = WarpWhole(
      *photo, InverseField(truth, w, h, static_cast<double>(m)), w, h, threads);
  DisplacementField crop;
  crop.width = crop.height = 1;
  crop.dx = {static_cast<float>(m)};
  crop.dy = {static_cast<float>(m)};
  absl::StatusOr<Image> fixed = WarpWhole(*photo, crop, w, h, threads);
  if (!moving.ok() || !fixed.ok()) return 1;
  photo = Image();
  JobOptions jo;
  jo.max_registration_megapixels = absl::GetFlag(FLAGS_max_registration_mp);
  Budgets b;
  b.ram_bytes = 16ull << 30;
  b.cpu_threads = threads;
  absl::StatusOr<Plan> plan = MakePlan(fixed->spec(), moving->spec(), jo, b);
  if (!plan.ok()) return 1;
  for (const std::string& r : plan->reasons) {
    if (absl::StrContains(r, "refin")) std::printf("plan: %s\n", r.c_str());
  }
  auto fg = MakeGrayscaleCopy(*fixed, plan->registration_fixed_width,
                              plan->registration_fixed_height, threads);
  auto mg = MakeGrayscaleCopy(*moving, plan->registration_moving_width,
                              plan->registration_moving_height, threads);
  auto tg = MakeGrayscaleCopy(*fixed, w / 4, h / 4, threads);
  if (!fg.ok() || !mg.ok() || !tg.ok()) return 1;
  const Image texture = TextureMap(*tg);
  std::printf(
      "refine benchmark: %s %lldx%lld, rotation %g deg, shift (%g, %g), bend "
      "%g of the width; registration copy %lldx%lld, %d threads\n",
      absl::GetFlag(FLAGS_image).c_str(), static_cast<long long>(w),
      static_cast<long long>(h), absl::GetFlag(FLAGS_rotation_deg), truth.tx,
      truth.ty, absl::GetFlag(FLAGS_bend), static_cast<long long>(fg->width()),
      static_cast<long long>(fg->height()), threads);
  double elastix_s = 0;
  absl::StatusOr<std::optional<InitialAlignment>> start =
      RobustStart(*fg, *mg, w, h);
  if (!start.ok()) {
    std::fprintf(stderr, "%s\n", start.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<DisplacementField> field =
      ElastixField(*fg, *mg, w, h, *start, &elastix_s);
  if (!field.ok()) {
    std::fprintf(stderr, "%s\n", field.status().ToString().c_str());
    return 1;
  }
  std::printf("%-28s %7s | %-27s | %-27s | %-27s\n", "residual (px)", "s",
              "all: mean median p95 max", "textured", "smooth");
  const bool found = start->has_value() && (*start)->found;
  if (found) {
    // The start alone, on elastix's grid (the fixed copy's).
    absl::StatusOr<DisplacementField> alone = HomographyField(
        (*start)->fixed_to_moving,
        RegistrationGrid(fg->width(), fg->height(), w, h), threads);
    if (!alone.ok()) return 1;
    PrintRow("start", Measure(*alone, truth, w, h, texture, 4.0),
             (*start)->seconds);
    PrintRow("start + elastix", Measure(*field, truth, w, h, texture, 4.0),
             elastix_s);
    PrintQuality("start", *fg, *mg, *alone, w, h);
    PrintQuality("start + elastix", *fg, *mg, *field, w, h);
    if (absl::GetFlag(FLAGS_initial) == "start") {
      *field = *alone;
    } else if (absl::GetFlag(FLAGS_as_job) &&
               JobTakes("the start alone over start + elastix", *fg, *mg,
                        *field, *alone, w, h)) {
      *field = *alone;
    }
  }
  if (absl::GetFlag(FLAGS_initial) == "truth") {
    *field = TruthField(truth, *field, absl::GetFlag(FLAGS_error_px));
    elastix_s = 0;
  }
  if (!found || absl::GetFlag(FLAGS_initial) != "elastix") {
    PrintRow(absl::GetFlag(FLAGS_initial).c_str(),
             Measure(*field, truth, w, h, texture, 4.0), elastix_s);
    PrintQuality(absl::GetFlag(FLAGS_initial).c_str(), *fg, *mg, *field, w, h);
  }
  const RunInputs in{&*fg, &*mg, &*field, &truth, &texture, w, h};
  std::string devices = absl::GetFlag(FLAGS_devices);
  if (devices == "both") devices = "cpu,cuda";
  std::vector<absl::string_view> list = absl::StrSplit(devices, ',');
  std::optional<DisplacementField> cpu_field;
  RefineOptions cpu_options;
  for (absl::string_view d : list) {
    const WarpDevice device =
        d == "cuda" ? WarpDevice::kCuda : WarpDevice::kCpu;
    RefineOptions o = OptionsFor(device, w, h, *plan);
    // As the stage: the robust start's homography is the bending's prior.
    if (found && !absl::GetFlag(FLAGS_no_prior)) {
      o.prior = (*start)->fixed_to_moving.m;
    }
    absl::StatusOr<DisplacementField> r = RefineOnce(in, o, std::string(d));
    if (!r.ok()) return 1;
    if (absl::GetFlag(FLAGS_as_job)) {
      const bool take =
          JobTakes("the refined field", *fg, *mg, *field, *r, w, h);
      PrintRow(absl::StrCat("job's field (", d, ")").c_str(),
               Measure(take ? *r : *field, truth, w, h, texture, 4.0), 0.0);
    }
    if (device == WarpDevice::kCpu) {
      cpu_field = *std::move(r);
      cpu_options = o;
    } else if (cpu_field.has_value()) {
      // The same input and options on both devices: how far apart they end.
      RefineOptions same = cpu_options;
      same.device = WarpDevice::kCuda;
      absl::StatusOr<DisplacementField> c =
          same.max_pixels == o.max_pixels
              ? std::move(r)
              : RefineOnce(in, same, "cuda_same_as_cpu");
      if (!c.ok()) return 1;
      DiffFields(*cpu_field, *c);
    }
  }
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return regserve::Run();
}
