// Copyright regserve authors.
//
// The whole job on real cases with a known truth (docs/benchmarks.md,
// "Whole-job accuracy on real cases (CPU)"). scripts/whole_job_benchmark.sh
// drives it around a real regserved and regctl; this program does the parts
// that need the engine's code:
//
//   make --case=smooth|homography|big|graffiti --photo=P --dir=D
//       writes D/fixed.tif and D/moving.tif (or, for graffiti, names the
//       PNGs) and D/case.txt, the truth's description.
//   replay --dir=D [--inputs=D]
//       the same job again in this process through a JobManager built as
//       regserved builds it with its default flags (system probe, resource
//       config, default options and spec); the warper factory is wrapped so
//       that the field the warp stage receives (the job's final field) is
//       kept. Prints how far its result is from the daemon's (D/result.tif,
//       what regctl wrote): identical results mean the field measured is the
//       daemon's. Then the residual of that field against the truth, and the
//       job's quality estimate beside it.
//   params --dir=D   elastix's parameter files of the B-spline preset (what
//       core/registration writes: affine, then B-spline) for the fixed
//       image's full size: D/p0.txt, D/p1.txt, for elastix run by hand.
//   field --dir=D --def=deformationField.mhd
//       the residual of transformix's field (elastix by hand) against the
//       truth.
//
// The residual is |p + field(p) - T(p)| over fixed points p every --step px
// (0: about 1500 across) whose true image T(p) lies inside the moving image
// (graffiti: and on the painted wall, where H1to3p holds), in full-resolution
// pixels.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/hardware/hardware.h"
#include "core/image/field_coarsen.h"
#include "core/image/field_ops.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_manager.h"
#include "core/plan/resources.h"
#include "core/refine/refine.h"
#include "core/registration/metaimage.h"
#include "core/registration/registration.h"
#include "core/scheduler/scheduler.h"
#include "core/warp/warp.h"
#include "server/flag_util.h"
#include "tests/bench/local_contrast.h"
#include "tests/bench/strong_homography.h"

ABSL_FLAG(std::string, dir, "", "the case's directory");
ABSL_FLAG(std::string, inputs, "",
          "the made case (case.txt, fixed.tif, moving.tif), when not in --dir");
ABSL_FLAG(std::string, refine, "",
          "replay: as regctl --refine auto|off|on (empty: not set)");
ABSL_FLAG(double, max_registration_mp, 0,
          "replay: as regctl --max-registration-megapixels (0: not set)");
ABSL_FLAG(std::string, kind, "smooth",
          "make: smooth, homography, big, graffiti");
ABSL_FLAG(std::string, photo, "", "make: the source photo");
ABSL_FLAG(std::string, graffiti, "tests/data/graffiti", "make: graffiti dir");
ABSL_FLAG(int64_t, margin, -1,
          "make: the fixed image is the photo (big: the upscaled photo) less "
          "this margin on each side; -1: 128 px, and for big the least margin "
          "that gives the moving image real content everywhere");
ABSL_FLAG(int64_t, big_width, 18960, "make --kind=big: fixed width");
ABSL_FLAG(int64_t, big_height, 14960, "make --kind=big: fixed height");
ABSL_FLAG(int, threads, 2, "threads for making the images");
ABSL_FLAG(double, gpu_refine_elastix_megapixels, 2.0,
          "replay: as regserved's flag of that name");
ABSL_FLAG(double, gpu_refine_elastix_iterations, 0.5,
          "replay: as regserved's flag of that name");
ABSL_FLAG(bool, gpu_refine_elastix_affine, false,
          "replay: as regserved's flag of that name");
ABSL_FLAG(double, correction_elastix_megapixels, 0.5,
          "replay: as regserved's flag of that name");
ABSL_FLAG(double, correction_elastix_iterations, 0.25,
          "replay: as regserved's flag of that name");
ABSL_FLAG(bool, correction_elastix_affine, true,
          "replay: as regserved's flag of that name");
ABSL_FLAG(int, shift_correction_passes, 2,
          "replay: as regserved's flag of that name");
ABSL_FLAG(int, gpu_refine_correction_passes, 1,
          "replay: as regserved's flag of that name");
ABSL_FLAG(int64_t, max_image_pixels, 1000ll * 1000 * 1000,
          "replay: as regserved's flag of that name");
ABSL_FLAG(std::string, ram_budget, "",
          "replay: as regserved's flag of that name; empty: 80% of the "
          "available RAM");
ABSL_FLAG(int, step, 0, "residual grid step (px); 0 = about 1500 across");
ABSL_FLAG(std::string, def, "", "field: transformix's deformationField.mhd");
ABSL_FLAG(std::string, error_map, "",
          "replay: also write the residual's largest value per 8x8 points as "
          "an 8-bit PGM (255 = 2 px or more; 0 where no point counts)");

namespace regserve {
namespace {

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// H1to3p.xml of the graffiti set: graf1 pixel coordinates -> graf3.
Homography GraffitiHomography() {
  Homography h;
  h.m = {7.6285898e-01, -2.9922929e-01, 2.2567123e+02,
         3.3443473e-01, 1.0143901e+00,  -7.6999973e+01,
         3.4663091e-04, -1.4364524e-05, 1.0};
  return h;
}

// The known map T from fixed to moving full-resolution positions. smooth
// (also big): bend in y (by x), then in x (by y), amplitude 0.35% of the
// width, then 1 degree about the centre and a shift of (14.3, -9.6) px, as
// tests/bench/refine_benchmark.cc. homography, graffiti: a homography.
struct Truth {
  std::string kind;
  int64_t fw = 0, fh = 0, mw = 0, mh = 0;  // fixed and moving sizes
  double cx = 0, cy = 0, c = 1, s = 0, tx = 14.3, ty = -9.6, a = 0;
  Homography hf, hi;
  bool homography() const { return kind == "homography" || kind == "graffiti"; }

  void Init() {
    cx = (fw - 1) / 2.0;
    cy = (fh - 1) / 2.0;
    c = std::cos(M_PI / 180);
    s = std::sin(M_PI / 180);
    a = 0.0035 * fw;
    if (kind == "homography") hf = StrongHomography(fw, fh);
    if (kind == "graffiti") hf = GraffitiHomography();
    hf.Inverse(&hi);
  }
  bool Forward(double x, double y, double* X, double* Y) const {
    if (homography()) return hf.Apply(x, y, X, Y);
    y += a * std::sin(2 * M_PI * x / fw);
    x += a * std::sin(2 * M_PI * y / fh);
    const double u = x - cx, v = y - cy;
    *X = cx + c * u - s * v + tx;
    *Y = cy + s * u + c * v + ty;
    return true;
  }
  bool Inverse(double X, double Y, double* x, double* y) const {
    if (homography()) return hi.Apply(X, Y, x, y);
    const double u = X - tx - cx, v = Y - ty - cy;
    double xx = cx + c * u + s * v, yy = cy - s * u + c * v;
    xx -= a * std::sin(2 * M_PI * yy / fh);
    yy -= a * std::sin(2 * M_PI * xx / fw);
    *x = xx;
    *y = yy;
    return true;
  }
};

std::string InputDir() {
  const std::string in = absl::GetFlag(FLAGS_inputs);
  return in.empty() ? absl::GetFlag(FLAGS_dir) : in;
}

absl::StatusOr<Truth> ReadTruth() {
  const std::string dir = InputDir();
  std::ifstream f(dir + "/case.txt");
  Truth t;
  if (!(f >> t.kind >> t.fw >> t.fh >> t.mw >> t.mh)) {
    return absl::NotFoundError("no case.txt in " + dir + " (run make first)");
  }
  t.Init();
  return t;
}

// Points of graf1 inside the painted wall, the plane H1to3p describes
// (graf1 is 800x640): above the car roof (y > 465 at the right edge) and
// the receding lower part (below y = 520), 20 px from the borders.
bool OnGraffitiWall(double x, double y) {
  return x >= 20 && x <= 780 && y >= 20 && y <= 450;
}

// ------------------------------------------------------------ make

// Source position of canvas position (x, y) + margin: the canvas is the
// source resampled by (kx, ky) (pixel centres kept), 1 when not resized.
struct Canvas {
  double kx = 1, ky = 1, margin = 0;
  void Source(double x, double y, double* sx, double* sy) const {
    *sx = (x + margin + 0.5) * kx - 0.5;
    *sy = (y + margin + 0.5) * ky - 0.5;
  }
};

// The least margin around the fixed frame for which every moving pixel
// samples the source (T^-1 of the frame's border, which bounds the map's
// reach for the smooth map, plus 16 px for the cubic kernel at the
// upscaled size): the moving image then has real content everywhere, as a
// scan of the same object would, and no fill a fixed image lacks.
int64_t ContentMargin(const Truth& t) {
  double over = 0;
  auto at = [&](double x, double y) {
    double sx = 0, sy = 0;
    t.Inverse(x, y, &sx, &sy);
    over = std::max({over, -sx, -sy, sx - (t.fw - 1.0), sy - (t.fh - 1.0)});
  };
  for (int64_t x = 0; x < t.fw; x += 4) {
    at(x, 0);
    at(x, t.fh - 1.0);
  }
  for (int64_t y = 0; y < t.fh; y += 4) {
    at(0, y);
    at(t.fw - 1.0, y);
  }
  return static_cast<int64_t>(std::ceil(over)) + 16;
}

// The field that makes an image of w x h from the source: output p samples
// the source at Source(T^-1(p)) (moving) or Source(p) (fixed).
DisplacementField MakingField(const Truth* t, const Canvas& cv, int64_t w,
                              int64_t h) {
  DisplacementField f;
  f.spacing_x = f.spacing_y = 8;
  f.width = (w - 1) / 8 + 2;
  f.height = (h - 1) / 8 + 2;
  f.dx.resize(f.width * f.height);
  f.dy.resize(f.dx.size());
  for (int64_t j = 0; j < f.height; ++j) {
    for (int64_t i = 0; i < f.width; ++i) {
      double x = i * 8.0, y = j * 8.0, sx = 0, sy = 0;
      if (t != nullptr && !t->Inverse(i * 8.0, j * 8.0, &x, &y)) x = y = -1e9;
      cv.Source(x, y, &sx, &sy);
      f.dx[j * f.width + i] = static_cast<float>(sx - i * 8.0);
      f.dy[j * f.width + i] = static_cast<float>(sy - j * 8.0);
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
  const size_t bpp = spec.bytes_per_pixel();
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

int Make() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  Truth t;
  t.kind = absl::GetFlag(FLAGS_kind);
  if (t.kind == "graffiti") {
    const std::string g = absl::GetFlag(FLAGS_graffiti);
    auto g1 = ReadImageSpecFile(g + "/graf1.png");
    auto g3 = ReadImageSpecFile(g + "/graf3.png");
    if (!g1.ok() || !g3.ok()) return 1;
    std::ofstream(dir + "/case.txt")
        << "graffiti " << g1->width << " " << g1->height << " " << g3->width
        << " " << g3->height << "\n";
    std::printf("graffiti: fixed %s/graf1.png, moving %s/graf3.png\n",
                g.c_str(), g.c_str());
    return 0;
  }
  const double t0 = Now();
  absl::StatusOr<Image> photo = ReadImageFile(absl::GetFlag(FLAGS_photo));
  if (!photo.ok()) {
    std::fprintf(stderr, "%s\n", photo.status().ToString().c_str());
    return 1;
  }
  Canvas cv;
  const int64_t margin = absl::GetFlag(FLAGS_margin);
  if (t.kind == "big") {
    // The photo upscaled so that the fixed image plus the margin fills it.
    t.fw = absl::GetFlag(FLAGS_big_width);
    t.fh = absl::GetFlag(FLAGS_big_height);
    t.Init();
    cv.margin = static_cast<double>(margin >= 0 ? margin : ContentMargin(t));
    cv.kx = photo->width() / (t.fw + 2 * cv.margin);
    cv.ky = photo->height() / (t.fh + 2 * cv.margin);
  } else {
    cv.margin = static_cast<double>(margin >= 0 ? margin : 128);
    t.fw = photo->width() - 2 * static_cast<int64_t>(cv.margin);
    t.fh = photo->height() - 2 * static_cast<int64_t>(cv.margin);
  }
  t.mw = t.fw;
  t.mh = t.fh;
  t.Init();
  std::printf("%s: margin %.0f px (source %gx%g px per canvas px)\n",
              t.kind.c_str(), cv.margin, cv.kx, cv.ky);
  const int threads = absl::GetFlag(FLAGS_threads);
  for (const bool moving : {false, true}) {
    const DisplacementField f =
        MakingField(moving ? &t : nullptr, cv, t.fw, t.fh);
    absl::StatusOr<Image> img = WarpWhole(*photo, f, t.fw, t.fh, threads);
    const std::string path = dir + (moving ? "/moving.tif" : "/fixed.tif");
    absl::Status st = img.ok() ? WriteImageFile(path, *img) : img.status();
    if (!st.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), st.ToString().c_str());
      return 1;
    }
  }
  std::ofstream(dir + "/case.txt") << t.kind << " " << t.fw << " " << t.fh
                                   << " " << t.mw << " " << t.mh << "\n";
  std::printf("%s: %lldx%lld fixed and moving in %s (%.1f s)\n", t.kind.c_str(),
              static_cast<long long>(t.fw), static_cast<long long>(t.fh),
              dir.c_str(), Now() - t0);
  return 0;
}

// ------------------------------------------------------------ residual

// Bilinear sample of `f` at full-resolution (x, y), clamped to the grid, as
// the warp reads it.
void SampleField(const DisplacementField& f, double x, double y, double* dx,
                 double* dy) {
  const double u = std::clamp((x - f.origin_x) / f.spacing_x, 0.0,
                              static_cast<double>(f.width - 1));
  const double v = std::clamp((y - f.origin_y) / f.spacing_y, 0.0,
                              static_cast<double>(f.height - 1));
  const int64_t i = std::min<int64_t>(static_cast<int64_t>(u),
                                      std::max<int64_t>(f.width - 2, 0));
  const int64_t j = std::min<int64_t>(static_cast<int64_t>(v),
                                      std::max<int64_t>(f.height - 2, 0));
  const int64_t i1 = std::min(i + 1, f.width - 1);
  const int64_t j1 = std::min(j + 1, f.height - 1);
  const double a = u - i, b = v - j;
  auto at = [&](const std::vector<float>& c, int64_t ii, int64_t jj) {
    return static_cast<double>(c[jj * f.width + ii]);
  };
  for (int k = 0; k < 2; ++k) {
    const std::vector<float>& c = k == 0 ? f.dx : f.dy;
    const double top = at(c, i, j) + a * (at(c, i1, j) - at(c, i, j));
    const double bot = at(c, i, j1) + a * (at(c, i1, j1) - at(c, i, j1));
    (k == 0 ? *dx : *dy) = top + b * (bot - top);
  }
}

// Figures of a set of residuals (full-resolution px).
struct Summary {
  double mean = 0, median = 0, p95 = 0, max = 0, over1 = 0, over2 = 0;
  size_t points = 0;
};

Summary Summarize(std::vector<double> e) {
  Summary r;
  r.points = e.size();
  if (e.empty()) return r;
  std::sort(e.begin(), e.end());
  double sum = 0;
  for (double v : e) {
    sum += v;
    r.over1 += v > 1;
    r.over2 += v > 2;
  }
  r.mean = sum / e.size();
  r.median = e[e.size() / 2];
  r.p95 = e[std::min(e.size() - 1, static_cast<size_t>(0.95 * e.size()))];
  r.max = e.back();
  r.over1 /= e.size();
  r.over2 /= e.size();
  return r;
}

struct Residual {
  Summary all;
  // Where the points over 2 px lie: by their distance (full-resolution px)
  // to the nearer border of the fixed or of the moving image, and the
  // residual of the interior (both distances >= kInterior).
  static constexpr double kInterior = 256;
  size_t over2_near[4] = {0, 0, 0, 0};  // < 64, < 256, < 1024, >= 1024 px
  Summary interior;
  // By the fixed image's local contrast (local_contrast.h): points with
  // signal around them, and those in flat areas (below kFlat).
  static constexpr double kFlat = 0.01;
  static constexpr double kContrastWindow = 64;
  bool has_contrast = false;
  Summary textured, flat;
};

// Bucket of a border distance for Residual::over2_near.
int BorderBucket(double d) {
  return d < 64 ? 0 : d < 256 ? 1 : d < 1024 ? 2 : 3;
}

// The residual's largest value per cell of 8x8 points (step px apart) as
// a PGM: where the error lies, to look at.
void WriteErrorMap(const DisplacementField& field, const Truth& t, int step,
                   const std::string& path) {
  const int64_t cell = 8 * static_cast<int64_t>(step);
  const int64_t w = (t.fw + cell - 1) / cell, h = (t.fh + cell - 1) / cell;
  std::vector<uint8_t> px(static_cast<size_t>(w * h), 0);
  for (int64_t y = 0; y < t.fh; y += step) {
    for (int64_t x = 0; x < t.fw; x += step) {
      double tx = 0, ty = 0, dx = 0, dy = 0;
      if (!t.Forward(x, y, &tx, &ty)) continue;
      if (tx < 0 || ty < 0 || tx > t.mw - 1 || ty > t.mh - 1) continue;
      SampleField(field, x, y, &dx, &dy);
      const double err = std::hypot(x + dx - tx, y + dy - ty);
      uint8_t& v = px[(y / cell) * w + x / cell];
      v = std::max<uint8_t>(
          v, static_cast<uint8_t>(std::clamp(1 + err * 127, 1.0, 255.0)));
    }
  }
  std::ofstream f(path, std::ios::binary);
  f << "P5\n" << w << " " << h << "\n255\n";
  f.write(reinterpret_cast<const char*>(px.data()), px.size());
}

// `contrast` of the fixed image may be null.
Residual Measure(const DisplacementField& field, const Truth& t,
                 const LocalContrast* contrast) {
  int step = absl::GetFlag(FLAGS_step);
  if (step <= 0) step = static_cast<int>(std::max<int64_t>(4, t.fw / 1500));
  if (t.kind == "graffiti") step = 2;
  std::vector<double> e, interior, textured, flat;
  Residual r;
  for (int64_t y = 0; y < t.fh; y += step) {
    for (int64_t x = 0; x < t.fw; x += step) {
      if (t.kind == "graffiti" && !OnGraffitiWall(x, y)) continue;
      double tx = 0, ty = 0;
      if (!t.Forward(x, y, &tx, &ty)) continue;
      if (tx < 0 || ty < 0 || tx > t.mw - 1 || ty > t.mh - 1) continue;
      double dx = 0, dy = 0;
      SampleField(field, x, y, &dx, &dy);
      const double err = std::hypot(x + dx - tx, y + dy - ty);
      e.push_back(err);
      const double border = std::min(
          {static_cast<double>(std::min({x, y, t.fw - 1 - x, t.fh - 1 - y})),
           std::min({tx, ty, t.mw - 1 - tx, t.mh - 1 - ty})});
      if (err > 2) ++r.over2_near[BorderBucket(border)];
      if (border >= Residual::kInterior) interior.push_back(err);
      if (contrast != nullptr) {
        (contrast->At(x, y) >= Residual::kFlat ? textured : flat)
            .push_back(err);
      }
    }
  }
  if (!absl::GetFlag(FLAGS_error_map).empty()) {
    WriteErrorMap(field, t, step, absl::GetFlag(FLAGS_error_map));
  }
  r.all = Summarize(std::move(e));
  r.interior = Summarize(std::move(interior));
  r.has_contrast = contrast != nullptr;
  r.textured = Summarize(std::move(textured));
  r.flat = Summarize(std::move(flat));
  return r;
}

std::string Figures(const Summary& s) {
  return absl::StrFormat(
      "mean=%.3f median=%.3f p95=%.3f max=%.3f >1px=%.2f%% >2px=%.2f%% "
      "points=%zu",
      s.mean, s.median, s.p95, s.max, 100 * s.over1, 100 * s.over2, s.points);
}

void PrintResidual(const char* what, const Truth& t, const Residual& r) {
  std::printf("TRUE %s case=%s %s\n", what, t.kind.c_str(),
              Figures(r.all).c_str());
  std::printf(
      "WHERE %s case=%s over2px_by_border_distance: <64px=%zu <256px=%zu "
      "<1024px=%zu >=1024px=%zu; interior (>=%.0f px from every border): "
      "mean=%.3f p95=%.3f max=%.3f points=%zu\n",
      what, t.kind.c_str(), r.over2_near[0], r.over2_near[1], r.over2_near[2],
      r.over2_near[3], Residual::kInterior, r.interior.mean, r.interior.p95,
      r.interior.max, r.interior.points);
  if (!r.has_contrast) return;
  const double n = std::max<double>(1, r.all.points);
  std::printf(
      "CONTRAST %s case=%s (fixed image's grey std over %.0f px): with "
      "signal (>= %.2f, %.1f%% of the points): %s\n",
      what, t.kind.c_str(), Residual::kContrastWindow, Residual::kFlat,
      100 * r.textured.points / n, Figures(r.textured).c_str());
  std::printf("CONTRAST %s case=%s flat (< %.2f, %.1f%%): %s\n", what,
              t.kind.c_str(), Residual::kFlat, 100 * r.flat.points / n,
              Figures(r.flat).c_str());
}

// The fixed image's local contrast, or null (with a note) when it cannot
// be read.
std::unique_ptr<LocalContrast> FixedContrast(const std::string& fixed) {
  absl::StatusOr<LocalContrast> c = LocalContrast::Of(
      fixed, Residual::kContrastWindow, absl::GetFlag(FLAGS_threads));
  if (!c.ok()) {
    std::printf("CONTRAST not measured: %s\n", c.status().ToString().c_str());
    return nullptr;
  }
  return std::make_unique<LocalContrast>(*std::move(c));
}

// ------------------------------------------------------------ replay

// The real warper, keeping a copy of the field it is handed.
class KeepingWarper final : public Warper {
 public:
  KeepingWarper(std::unique_ptr<Warper> inner, DisplacementField* kept,
                std::mutex* mu)
      : inner_(std::move(inner)), kept_(kept), mu_(mu) {}
  absl::StatusOr<WarpStats> Warp(const Image& moving,
                                 const DisplacementField& field,
                                 int64_t out_width, int64_t out_height,
                                 const WarpOptions& options,
                                 const TileCallback& on_tile) override {
    {
      std::lock_guard<std::mutex> l(*mu_);
      *kept_ = field;
    }
    return inner_->Warp(moving, field, out_width, out_height, options, on_tile);
  }
  WarpDevice device() const override { return inner_->device(); }
  uint64_t retained_device_bytes() const override {
    return inner_->retained_device_bytes();
  }

 private:
  std::unique_ptr<Warper> inner_;
  DisplacementField* kept_;
  std::mutex* mu_;
};

// How far two result images are apart: the largest sample difference and
// the fraction of samples that differ.
void CompareResults(const std::string& a, const std::string& b) {
  absl::StatusOr<Image> x = ReadImageFile(a);
  absl::StatusOr<Image> y = ReadImageFile(b);
  if (!x.ok() || !y.ok()) {
    std::printf("SAME-AS-DAEMON unknown (%s / %s)\n",
                x.status().ToString().c_str(), y.status().ToString().c_str());
    return;
  }
  if (x->spec().width != y->spec().width ||
      x->spec().height != y->spec().height ||
      x->spec().channels != y->spec().channels ||
      x->spec().type != y->spec().type) {
    std::printf("SAME-AS-DAEMON no (different image specs)\n");
    return;
  }
  const size_t n = x->size_bytes();
  size_t differ = 0;
  int maxd = 0;
  for (size_t i = 0; i < n; ++i) {
    const int d = std::abs(int{x->data()[i]} - int{y->data()[i]});
    differ += d != 0;
    maxd = std::max(maxd, d);
  }
  std::printf("SAME-AS-DAEMON %s: %zu of %zu bytes differ, max %d\n",
              differ == 0 ? "yes" : "no", differ, n, maxd);
}

struct ReplayInputs {
  std::string fixed, moving;
};

ReplayInputs InputsOf(const Truth& t, const std::string& dir) {
  if (t.kind == "graffiti") {
    const std::string g = absl::GetFlag(FLAGS_graffiti);
    return {g + "/graf1.png", g + "/graf3.png"};
  }
  return {dir + "/fixed.tif", dir + "/moving.tif"};
}

// --ram_budget's bytes, parsed as regserved parses it (0 when empty or
// unreadable: the default budget).
uint64_t RamBudgetFlag() {
  const std::string text = absl::GetFlag(FLAGS_ram_budget);
  if (text.empty()) return 0;
  const absl::StatusOr<uint64_t> bytes = ParseByteSize(text);
  if (!bytes.ok()) {
    std::fprintf(stderr, "--ram_budget: %s\n",
                 std::string(bytes.status().message()).c_str());
    return 0;
  }
  return *bytes;
}

// The job, built as regserved builds its JobManager with its default flags.
absl::StatusOr<JobInfo> RunReplay(const ReplayInputs& in,
                                  const std::string& data_dir,
                                  DisplacementField* kept) {
  std::unique_ptr<HardwareProbe> probe = NewSystemProbe();
  REGSERVE_ASSIGN_OR_RETURN(HardwareSnapshot hw, probe->Probe());
  ResourceFlags flags;
  flags.ram_bytes = RamBudgetFlag();
  REGSERVE_ASSIGN_OR_RETURN(ResourceConfig rc, MakeResourceConfig(hw, flags));
  ResourceScheduler scheduler(ToSchedulerConfig(rc), probe.get());
  JobManager::Options o;
  o.data_dir = data_dir;
  o.input_root = std::filesystem::absolute(in.fixed).parent_path().string();
  o.device = rc.flags.devices.preference;
  o.budget_overrides.ram_bytes = rc.flags.ram_bytes;
  o.max_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  // As regserved's --gpu_refine_elastix_* flags (same defaults).
  o.elastix_before_gpu_refine.max_megapixels =
      absl::GetFlag(FLAGS_gpu_refine_elastix_megapixels);
  o.elastix_before_gpu_refine.iteration_scale =
      absl::GetFlag(FLAGS_gpu_refine_elastix_iterations);
  o.elastix_before_gpu_refine.linear_stage =
      absl::GetFlag(FLAGS_gpu_refine_elastix_affine);
  o.shift_correction_passes = absl::GetFlag(FLAGS_shift_correction_passes);
  o.gpu_correction_passes = absl::GetFlag(FLAGS_gpu_refine_correction_passes);
  o.elastix_before_cpu_correction.max_megapixels =
      absl::GetFlag(FLAGS_correction_elastix_megapixels);
  o.elastix_before_cpu_correction.iteration_scale =
      absl::GetFlag(FLAGS_correction_elastix_iterations);
  o.elastix_before_cpu_correction.linear_stage =
      absl::GetFlag(FLAGS_correction_elastix_affine);
  std::mutex mu;
  JobManagerEnv env;
  env.create_warper = [kept, &mu](
                          WarpDevice d,
                          int cuda) -> absl::StatusOr<std::unique_ptr<Warper>> {
    REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Warper> w,
                              Warper::Create(d, cuda));
    return std::unique_ptr<Warper>(
        std::make_unique<KeepingWarper>(std::move(w), kept, &mu));
  };
  REGSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<JobManager> m,
      CreateJobManagerWithEnv(o, &scheduler, probe.get(), std::move(env)));
  JobSpec spec;  // regctl submit's defaults: nothing set
  const double mp = absl::GetFlag(FLAGS_max_registration_mp);
  if (mp > 0) spec.options.max_registration_megapixels = mp;
  if (!absl::GetFlag(FLAGS_refine).empty()) {
    REGSERVE_ASSIGN_OR_RETURN(spec.options.refine,
                              ParseRefineMode(absl::GetFlag(FLAGS_refine)));
  }
  spec.fixed.path = std::filesystem::absolute(in.fixed).string();
  spec.moving.path = std::filesystem::absolute(in.moving).string();
  const double t0 = Now();
  REGSERVE_ASSIGN_OR_RETURN(std::string id, m->CreateJob(spec, ""));
  JobInfo info;
  do {
    absl::SleepFor(absl::Milliseconds(100));
    REGSERVE_ASSIGN_OR_RETURN(info, m->GetJob(id, ""));
  } while (!IsTerminal(info.state));
  std::printf("replay: %s in %.1f s\n",
              std::string(JobStateName(info.state)).c_str(), Now() - t0);
  for (const StageTiming& s : info.timings) {
    std::printf("  stage %-18s %7.2f s\n",
                std::string(StageName(s.stage)).c_str(), s.seconds);
  }
  for (const std::string& r : info.plan.reasons) {
    std::printf("  reason: %s\n", r.c_str());
  }
  m->Shutdown();
  return info;
}

int Replay() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  absl::StatusOr<Truth> t = ReadTruth();
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    return 1;
  }
  const std::string data_dir = dir + "/replay_data";
  std::filesystem::remove_all(data_dir);
  DisplacementField kept;
  absl::StatusOr<JobInfo> info =
      RunReplay(InputsOf(*t, InputDir()), data_dir, &kept);
  if (!info.ok() || info->state != JobState::kCompleted || kept.empty()) {
    std::fprintf(stderr, "replay failed: %s %s\n",
                 info.ok() ? info->failure.ToString().c_str()
                           : info.status().ToString().c_str(),
                 kept.empty() ? "(no field)" : "");
    return 1;
  }
  CompareResults(info->result_path, dir + "/result.tif");
  const std::unique_ptr<LocalContrast> contrast =
      FixedContrast(InputsOf(*t, InputDir()).fixed);
  const Residual r = Measure(kept, *t, contrast.get());
  PrintResidual("job", *t, r);
  const QualitySummary& q = info->quality;
  std::printf(
      "EST job est_mean=%.3f est_p95=%.3f est_max=%.3f checked=%.0f%% "
      "unmatched=%d verdict=%s ratio_mean=%.2f ratio_p95=%.2f\n",
      q.mean_px, q.p95_px, q.max_px, 100 * q.checked_fraction, q.unmatched,
      q.warning.empty() ? "good" : "poor",
      r.all.mean > 0 ? q.mean_px / r.all.mean : 0,
      r.all.p95 > 0 ? q.p95_px / r.all.p95 : 0);
  std::printf("FIELD job %lldx%lld nodes, spacing %.3f x %.3f px\n",
              static_cast<long long>(kept.width),
              static_cast<long long>(kept.height), kept.spacing_x,
              kept.spacing_y);
  int64_t non_finite = 0;
  for (size_t k = 0; k < kept.dx.size(); ++k) {
    non_finite += !std::isfinite(kept.dx[k]) || !std::isfinite(kept.dy[k]);
  }
  std::printf(
      "FIELD job %lld non-finite nodes; at 1/2, 1/4, 1/8 of its nodes "
      "it would move pixels by up to",
      static_cast<long long>(non_finite));
  for (int factor : {2, 4, 8}) {
    const FieldCoarsening c = CoarsenField(kept, factor, 2);
    std::printf(" %.4f", c.factor == factor ? c.max_error_px : -1.0);
  }
  std::printf(" px\n");
  std::filesystem::remove_all(data_dir);
  return 0;
}

// ------------------------------------------------------------ by hand

int Params() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  absl::StatusOr<Truth> t = ReadTruth();
  if (!t.ok()) return 1;
  const std::vector<std::string> p =
      PresetParameters(TransformKind::kBSpline, t->fw, t->fh);
  for (size_t i = 0; i < p.size(); ++i) {
    std::ofstream(dir + "/p" + std::to_string(i) + ".txt") << p[i];
  }
  std::printf("%zu parameter files for %lldx%lld in %s\n", p.size(),
              static_cast<long long>(t->fw), static_cast<long long>(t->fh),
              dir.c_str());
  return 0;
}

int Field() {
  absl::StatusOr<Truth> t = ReadTruth();
  if (!t.ok()) return 1;
  absl::StatusOr<DisplacementField> f =
      ReadDisplacementField(absl::GetFlag(FLAGS_def));
  if (!f.ok()) {
    std::fprintf(stderr, "%s\n", f.status().ToString().c_str());
    return 1;
  }
  const std::unique_ptr<LocalContrast> contrast =
      FixedContrast(InputsOf(*t, InputDir()).fixed);
  PrintResidual("by_hand", *t, Measure(*f, *t, contrast.get()));
  return 0;
}

int Main(int argc, char** argv) {
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  const std::string cmd = rest.size() > 1 ? rest[1] : "";
  if (absl::GetFlag(FLAGS_dir).empty()) {
    std::fprintf(stderr, "--dir is required\n");
    return 2;
  }
  if (cmd == "make") return Make();
  if (cmd == "replay") return Replay();
  if (cmd == "params") return Params();
  if (cmd == "field") return Field();
  std::fprintf(stderr, "usage: whole_job_benchmark make|replay|params|field\n");
  return 2;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
