// Copyright regserve authors.
//
// registration_benchmark: time and peak memory of elastix + transformix for
// the B-spline preset at several registration sizes, made from one photo.
//
//   registration_benchmark [photo.jpg] [threads] [MP ...]
//   registration_benchmark tests/data/photos/seeding_5312x2988.jpg 2 1 4
//
// For each size the photo is box-downsampled by an integer factor to about
// that many megapixels (the fixed copy); the moving copy is the fixed one
// deformed by a known smooth map (rotation, shift and a sine wave). Register()
// runs with spacing = factor, so the field is in full-resolution pixels, and
// the error against the known map is reported in those pixels too.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/registration/registration.h"
#include "core/registration/testutil.h"

namespace regserve {
namespace {

int Main(int argc, char** argv) {
  std::string photo =
      argc > 1 ? argv[1] : "tests/data/photos/seeding_5312x2988.jpg";
  int threads = 2;
  if (argc > 2 && !absl::SimpleAtoi(argv[2], &threads)) threads = 2;
  std::vector<double> sizes;
  for (int i = 3; i < argc; ++i) {
    double mp;
    if (absl::SimpleAtod(argv[i], &mp) && mp > 0) sizes.push_back(mp);
  }
  if (sizes.empty()) sizes = {1.0, 4.0};

  auto full = testutil::ReadGrayFloat(photo);
  if (!full.ok()) {
    std::fprintf(stderr, "cannot read %s: %s\n", photo.c_str(),
                 std::string(full.status().message()).c_str());
    return 1;
  }
  std::printf("photo %s: %lldx%lld, elastix -threads %d\n", photo.c_str(),
              static_cast<long long>(full->width()),
              static_cast<long long>(full->height()), threads);
  std::printf("%8s %11s %6s %9s %9s %10s %10s %8s %9s\n", "MP", "copy",
              "factor", "elastix_s", "transf_s", "elx_rss_MB", "trx_rss_MB",
              "B/px", "err_px");
  double prev_mp = 0, prev_rss = 0;
  for (double mp : sizes) {
    double full_mp = full->spec().pixels() / 1e6;
    int factor =
        std::max(1, static_cast<int>(std::lround(std::sqrt(full_mp / mp))));
    Image fixed = testutil::DownsampleBox(*full, factor);
    const double cx = fixed.width() / 2.0, cy = fixed.height() / 2.0;
    const double angle = 0.5 * 3.14159265358979 / 180;
    const double amp = 0.004 * fixed.width();  // sine amplitude, copy pixels
    // moving(p) = fixed(g(p)), so the registration should find g^-1.
    auto g = [&](double x, double y) -> std::array<double, 2> {
      double rx = cx + std::cos(angle) * (x - cx) - std::sin(angle) * (y - cy);
      double ry = cy + std::sin(angle) * (x - cx) + std::cos(angle) * (y - cy);
      return {rx + 0.01 * fixed.width() +
                  amp * std::sin(2 * 3.14159265358979 * y / fixed.height()),
              ry - 0.005 * fixed.height() +
                  amp * std::sin(2 * 3.14159265358979 * x / fixed.width())};
    };
    Image moving = testutil::WarpWithMap(fixed, g);
    RegistrationRequest req;
    req.work_dir = absl::StrCat("/tmp/regserve_registration_benchmark_",
                                getpid(), "/", mp);
    req.fixed = &fixed;
    req.moving = &moving;
    req.fixed_full_width = req.moving_full_width = fixed.width() * factor;
    req.fixed_full_height = req.moving_full_height = fixed.height() * factor;
    req.transform = TransformKind::kBSpline;
    req.threads = threads;
    auto r = Register(req, ElastixConfig{});
    if (!r.ok()) {
      std::fprintf(stderr, "%.1f MP: %s\n", mp,
                   std::string(r.status().message()).c_str());
      return 1;
    }
    // Error against g^-1 at interior nodes, in full-resolution pixels.
    double err = 0;
    int64_t count = 0;
    const DisplacementField& f = r->field;
    for (int64_t j = f.height / 10; j < f.height * 9 / 10; j += 4) {
      for (int64_t i = f.width / 10; i < f.width * 9 / 10; i += 4) {
        double x = i, y = j;    // copy pixels
        double ux = x, uy = y;  // solve g(u) = x by fixed-point iteration
        for (int it = 0; it < 50; ++it) {
          std::array<double, 2> q = g(ux, uy);
          ux += x - q[0];
          uy += y - q[1];
        }
        double tx = (ux - x) * factor, ty = (uy - y) * factor;
        double ex = f.dx[j * f.width + i] - tx, ey = f.dy[j * f.width + i] - ty;
        err += std::sqrt(ex * ex + ey * ey);
        ++count;
      }
    }
    double pixels = fixed.spec().pixels();
    double rss = static_cast<double>(r->elastix_peak_rss_bytes);
    std::printf(
        "%8.2f %5lldx%-5lld %6d %9.2f %9.2f %10.1f %10.1f %8.1f %9.2f\n",
        pixels / 1e6, static_cast<long long>(fixed.width()),
        static_cast<long long>(fixed.height()), factor, r->elastix_seconds,
        r->transformix_seconds, rss / 1e6, r->transformix_peak_rss_bytes / 1e6,
        rss / pixels, err / std::max<int64_t>(1, count));
    if (prev_mp > 0) {
      std::printf(
          "    marginal elastix memory %.1f B per registration pixel "
          "(between %.2f and %.2f MP)\n",
          (rss - prev_rss) / ((pixels / 1e6 - prev_mp) * 1e6), prev_mp,
          pixels / 1e6);
    }
    prev_mp = pixels / 1e6;
    prev_rss = rss;
    std::error_code ec;
    std::filesystem::remove_all(req.work_dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
