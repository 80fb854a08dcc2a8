// Copyright regserve authors.
//
// The local contrast of an image for the accuracy benchmarks: the standard
// deviation of its grey values (0..1) over a square window of about
// `window` full-resolution pixels around a point, computed on a grey copy
// of at most 4 MP. A point where it is below ~0.01 lies in an area without
// signal (a saturated sky, a flat wall): no registration can see where it
// goes there, and local phase correlation on patches of that size (how
// issue 11 measured its "patches") gets nothing from it either.
#ifndef REGSERVE_TESTS_BENCH_LOCAL_CONTRAST_H_
#define REGSERVE_TESTS_BENCH_LOCAL_CONTRAST_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/common/status_macros.h"
#include "core/image/image_io.h"

namespace regserve {

class LocalContrast {
 public:
  static absl::StatusOr<LocalContrast> Of(const std::string& path,
                                          double window, int threads) {
    REGSERVE_ASSIGN_OR_RETURN(Image full, ReadImageFile(path));
    const double k = std::max(
        1.0,
        std::sqrt(static_cast<double>(full.width() * full.height()) / 4e6));
    LocalContrast c;
    c.w_ = std::max<int64_t>(1, static_cast<int64_t>(full.width() / k));
    c.h_ = std::max<int64_t>(1, static_cast<int64_t>(full.height() / k));
    c.kx_ = static_cast<double>(full.width()) / c.w_;
    c.ky_ = static_cast<double>(full.height()) / c.h_;
    REGSERVE_ASSIGN_OR_RETURN(Image g,
                              MakeGrayscaleCopy(full, c.w_, c.h_, threads));
    full = Image();
    c.Compute(g, std::max<int64_t>(1, std::lround(window / (2 * k))));
    return c;
  }

  // At a full-resolution position (clamped to the image).
  double At(double x, double y) const {
    const int64_t i =
        std::clamp<int64_t>(static_cast<int64_t>(x / kx_), 0, w_ - 1);
    const int64_t j =
        std::clamp<int64_t>(static_cast<int64_t>(y / ky_), 0, h_ - 1);
    return std_[j * w_ + i];
  }

 private:
  // Window statistics from summed-area tables of g and g^2; r: half size.
  void Compute(const Image& g, int64_t r) {
    const int64_t w = w_, h = h_, W = w + 1;
    std::vector<double> s((h + 1) * W, 0.0), q((h + 1) * W, 0.0);
    for (int64_t y = 0; y < h; ++y) {
      const float* row = reinterpret_cast<const float*>(g.row(y));
      for (int64_t x = 0; x < w; ++x) {
        const double v = row[x];
        s[(y + 1) * W + x + 1] =
            v + s[y * W + x + 1] + s[(y + 1) * W + x] - s[y * W + x];
        q[(y + 1) * W + x + 1] =
            v * v + q[y * W + x + 1] + q[(y + 1) * W + x] - q[y * W + x];
      }
    }
    std_.assign(w * h, 0.0f);
    for (int64_t y = 0; y < h; ++y) {
      const int64_t y0 = std::max<int64_t>(0, y - r);
      const int64_t y1 = std::min(h, y + r + 1);
      for (int64_t x = 0; x < w; ++x) {
        const int64_t x0 = std::max<int64_t>(0, x - r);
        const int64_t x1 = std::min(w, x + r + 1);
        const double n = static_cast<double>((y1 - y0) * (x1 - x0));
        auto box = [&](const std::vector<double>& t) {
          return t[y1 * W + x1] - t[y0 * W + x1] - t[y1 * W + x0] +
                 t[y0 * W + x0];
        };
        const double m = box(s) / n;
        std_[y * w + x] =
            static_cast<float>(std::sqrt(std::max(0.0, box(q) / n - m * m)));
      }
    }
  }

  std::vector<float> std_;
  int64_t w_ = 1, h_ = 1;
  double kx_ = 1, ky_ = 1;
};

}  // namespace regserve

#endif  // REGSERVE_TESTS_BENCH_LOCAL_CONTRAST_H_
