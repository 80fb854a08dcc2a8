// Copyright regserve authors.
//
// The registration issue's strong homography, shared by the benchmarks that
// make cases from a photo (robust_start_benchmark, refine_benchmark,
// whole_job_benchmark): 60 degrees about the centre, scale 0.9, a keystone
// that shrinks the far side by about 20%, a shift of 1% of the size; fixed
// full-resolution -> moving full-resolution positions of a w x h image.
#ifndef REGSERVE_TESTS_BENCH_STRONG_HOMOGRAPHY_H_
#define REGSERVE_TESTS_BENCH_STRONG_HOMOGRAPHY_H_

#include <cmath>
#include <cstdint>

#include "core/image/field_ops.h"

namespace regserve {

inline Homography StrongHomography(int64_t w, int64_t h) {
  const double cx = (w - 1) / 2.0, cy = (h - 1) / 2.0;
  const double a = 60 * M_PI / 180, s = 0.9;
  const double c = s * std::cos(a), n = s * std::sin(a);
  Homography rot;
  rot.m = {c, -n, cx - c * cx + n * cy + 0.01 * w,
           n, c,  cy - n * cx - c * cy - 0.01 * h,
           0, 0,  1};
  // w' = 1 + p (x - cx) + q (y - cy) in the moving frame: the far side
  // shrinks by about 20%.
  const double p = 0.35 / w, q = -0.25 / h;
  Homography key;
  key.m = {1 + p * cx, q * cx,     -cx * (p * cx + q * cy),
           p * cy,     1 + q * cy, -cy * (p * cx + q * cy),
           p,          q,          1 - p * cx - q * cy};
  return rot.Then(key);
}

}  // namespace regserve

#endif  // REGSERVE_TESTS_BENCH_STRONG_HOMOGRAPHY_H_
