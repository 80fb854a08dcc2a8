// Copyright regserve authors.
//
// Golden test on a real photo of at least 15 MP: a known smooth deformation
// is applied to the fixed image to make the moving image; regserve's engine
// (grayscale copy -> elastix at the planned size -> full-resolution warp)
// must undo it. The residual is measured at full resolution by local patch
// matching (normalised cross-correlation with sub-pixel peak fitting) between
// the fixed image and the output.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/image/image_io.h"
#include "core/plan/plan.h"
#include "core/registration/registration.h"
#include "core/warp/warp.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

std::string DataPath(const std::string& rel) {
  const char* dir = std::getenv("REGSERVE_TEST_DATA");
  return std::string(dir != nullptr ? dir : "tests/data") + "/" + rel;
}

// Luma of an interleaved uint8 image as floats (full resolution).
std::vector<float> Luma(const Image& img) {
  std::vector<float> out(static_cast<size_t>(img.width() * img.height()));
  const uint8_t* p = img.data();
  const int c = img.channels();
  for (size_t i = 0; i < out.size(); ++i, p += c) {
    out[i] = c >= 3 ? 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2] : p[0];
  }
  return out;
}

struct Shift {
  double dx, dy;
  bool ok;
};

// Finds where the patch of `a` at (x, y) lies in `b` (integer NCC search in
// +-radius, parabolic sub-pixel refinement).
Shift MatchPatch(const std::vector<float>& a, const std::vector<float>& b,
                 int64_t w, int64_t x, int64_t y, int size, int radius) {
  double mean_a = 0, var_a = 0;
  for (int j = 0; j < size; ++j)
    for (int i = 0; i < size; ++i) mean_a += a[(y + j) * w + x + i];
  mean_a /= size * size;
  for (int j = 0; j < size; ++j)
    for (int i = 0; i < size; ++i) {
      const double d = a[(y + j) * w + x + i] - mean_a;
      var_a += d * d;
    }
  if (var_a / (size * size) < 25.0) return {0, 0, false};  // no texture
  const int n = 2 * radius + 1;
  std::vector<double> score(n * n, -2);
  for (int sy = -radius; sy <= radius; ++sy) {
    for (int sx = -radius; sx <= radius; ++sx) {
      double mean_b = 0;
      for (int j = 0; j < size; ++j)
        for (int i = 0; i < size; ++i)
          mean_b += b[(y + sy + j) * w + x + sx + i];
      mean_b /= size * size;
      double cov = 0, var_b = 0;
      for (int j = 0; j < size; ++j)
        for (int i = 0; i < size; ++i) {
          const double da = a[(y + j) * w + x + i] - mean_a;
          const double db = b[(y + sy + j) * w + x + sx + i] - mean_b;
          cov += da * db;
          var_b += db * db;
        }
      score[(sy + radius) * n + sx + radius] =
          var_b > 0 ? cov / std::sqrt(var_a * var_b) : -2;
    }
  }
  const int best = static_cast<int>(
      std::max_element(score.begin(), score.end()) - score.begin());
  const int bx = best % n, by = best / n;
  if (score[best] < 0.6 || bx == 0 || by == 0 || bx == n - 1 || by == n - 1) {
    return {0, 0, false};
  }
  auto refine = [](double l, double c, double r) {
    const double d = l - 2 * c + r;
    return d < 0 ? 0.5 * (l - r) / d : 0.0;
  };
  const double fx = refine(score[by * n + bx - 1], score[by * n + bx],
                           score[by * n + bx + 1]);
  const double fy = refine(score[(by - 1) * n + bx], score[by * n + bx],
                           score[(by + 1) * n + bx]);
  return {bx - radius + fx, by - radius + fy, true};
}

// Mean displacement magnitude between two same-size images over a grid of
// textured patches; *count gets the number of patches used.
double MeanResidual(const Image& a, const Image& b, int radius, int* count) {
  const std::vector<float> la = Luma(a), lb = Luma(b);
  const int64_t w = a.width(), h = a.height();
  const int size = 48;
  double sum = 0;
  *count = 0;
  const int64_t margin = radius + 200;  // away from fill at the borders
  for (int64_t y = margin; y + size + margin < h; y += (h - 2 * margin) / 9) {
    for (int64_t x = margin; x + size + margin < w;
         x += (w - 2 * margin) / 12) {
      Shift s = MatchPatch(la, lb, w, x, y, size, radius);
      if (!s.ok) continue;
      sum += std::hypot(s.dx, s.dy);
      ++*count;
    }
  }
  return *count > 0 ? sum / *count : 1e9;
}

// A smooth known deformation on a coarse grid: translation + two
// sinusoidal bends, up to ~16 px.
DisplacementField KnownField(int64_t w, int64_t h) {
  DisplacementField f;
  f.width = 65;
  f.height = 49;
  f.spacing_x = static_cast<double>(w - 1) / (f.width - 1);
  f.spacing_y = static_cast<double>(h - 1) / (f.height - 1);
  f.dx.resize(f.width * f.height);
  f.dy.resize(f.width * f.height);
  for (int64_t gy = 0; gy < f.height; ++gy) {
    for (int64_t gx = 0; gx < f.width; ++gx) {
      const double u = static_cast<double>(gx) / (f.width - 1);
      const double v = static_cast<double>(gy) / (f.height - 1);
      f.dx[gy * f.width + gx] =
          static_cast<float>(7.0 + 6.0 * std::sin(2 * M_PI * v));
      f.dy[gy * f.width + gx] =
          static_cast<float>(-4.0 + 5.0 * std::cos(M_PI * u));
    }
  }
  return f;
}

absl::StatusOr<Image> WarpAll(Warper& warper, const Image& src,
                              const DisplacementField& field) {
  absl::StatusOr<Image> out = Image::Allocate(src.spec());
  if (!out.ok()) return out.status();
  WarpOptions opts;
  opts.tile_size = 2048;
  opts.cpu_threads = 2;
  absl::StatusOr<WarpStats> st = warper.Warp(
      src, field, src.width(), src.height(), opts,
      [&](const TileRect& r, const Image& tile) {
        for (int64_t j = 0; j < r.h; ++j) {
          std::copy_n(tile.row(j), tile.row_bytes(),
                      out->row(r.y + j) + r.x * src.spec().bytes_per_pixel());
        }
        return absl::OkStatus();
      });
  if (!st.ok()) return st.status();
  return out;
}

TEST(PhotoGolden, RecoversKnownSmoothDeformationWithinOnePixel) {
  absl::StatusOr<Image> fixed =
      ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"));
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  ASSERT_GE(fixed->width() * fixed->height(), 15'000'000);
  auto warper = Warper::Create(WarpDevice::kCpu);
  ASSERT_TRUE(warper.ok()) << warper.status();

  absl::StatusOr<Image> moving =
      WarpAll(**warper, *fixed, KnownField(fixed->width(), fixed->height()));
  ASSERT_TRUE(moving.ok()) << moving.status();

  // Plan as the daemon would, but cap the registration copy at 1.5 MP so the
  // test stays fast on a 2-core CI machine.
  JobOptions options;
  options.max_registration_megapixels = 1.5;
  Budgets budgets;
  budgets.ram_bytes = 8ull << 30;
  absl::StatusOr<Plan> plan =
      MakePlan(fixed->spec(), moving->spec(), options, budgets);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto fixed_gray = MakeGrayscaleCopy(*fixed, plan->registration_fixed_width,
                                      plan->registration_fixed_height, 2);
  auto moving_gray = MakeGrayscaleCopy(*moving, plan->registration_moving_width,
                                       plan->registration_moving_height, 2);
  ASSERT_TRUE(fixed_gray.ok() && moving_gray.ok());

  const std::string work =
      std::filesystem::temp_directory_path() /
      ("regserve_photo_golden_" + std::to_string(getpid()));
  RegistrationRequest req;
  req.work_dir = work;
  req.fixed = &*fixed_gray;
  req.moving = &*moving_gray;
  req.fixed_full_width = fixed->width();
  req.fixed_full_height = fixed->height();
  req.moving_full_width = moving->width();
  req.moving_full_height = moving->height();
  req.transform = TransformKind::kBSpline;
  req.threads = 2;
  absl::StatusOr<RegistrationResult> reg = Register(req, ElastixConfig{});
  ASSERT_TRUE(reg.ok()) << reg.status();

  absl::StatusOr<Image> out = WarpAll(**warper, *moving, reg->field);
  ASSERT_TRUE(out.ok()) << out.status();

  int before_n = 0, after_n = 0;
  const double before = MeanResidual(*fixed, *moving, 24, &before_n);
  const double after = MeanResidual(*fixed, *out, 24, &after_n);
  std::printf(
      "photo golden: %d/%d patches, mean residual before %.2f px, after %.3f "
      "px\n",
      before_n, after_n, before, after);
  EXPECT_GE(before_n, 20);
  EXPECT_GE(after_n, 20);
  EXPECT_GT(before, 4.0);  // the measurement sees the deformation...
  EXPECT_LE(after, 1.0);   // ...and the engine removes it at full resolution
  std::filesystem::remove_all(work);
}

}  // namespace
}  // namespace regserve
