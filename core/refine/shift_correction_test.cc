// Copyright regserve authors.
//
// CorrectMeasuredShifts on a real photo (the seeding photo reduced to
// 1400x756, registration copies at half size) under a known smooth map:
// the field handed in is the map plus a known smooth error, the quality
// map measures it, and the corrected field must lie near the truth; under
// a strong perspective (a Jacobian far from the identity) too. Bad inputs
// and a grid with nothing measured are refused.
#include "core/refine/shift_correction.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/refine/refine_test_util.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using refine_test::CopyGridField;
using refine_test::ErrorOf;
using refine_test::FieldError;
using refine_test::HomographyMap;
using refine_test::KnownMap;
using refine_test::MapField;

constexpr int64_t kFullW = 1400, kFullH = 756, kMargin = 36;
constexpr int64_t kCopyW = 700, kCopyH = 378;

using refine_test::Copies;

template <typename Map>
Copies MakeCopies(const Map& map, int64_t margin) {
  absl::StatusOr<Copies> c =
      refine_test::MakeSeedingCopies(map, margin, kCopyW, kCopyH);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : Copies();
}

QualityOptions Quality() {
  QualityOptions q;
  q.fixed_full_width = q.moving_full_width = kFullW;
  q.fixed_full_height = q.moving_full_height = kFullH;
  q.threads = 2;
  return q;
}

// `passes` rounds of estimate + correction, as the job's loop runs them.
DisplacementField Corrected(const Copies& c, DisplacementField field,
                            int passes) {
  for (int p = 0; p < passes; ++p) {
    absl::StatusOr<QualityReport> q =
        EstimateQuality(c.fixed, c.moving, field, Quality());
    EXPECT_TRUE(q.ok()) << q.status();
    if (!q.ok()) return field;
    ShiftCorrectionStats stats;
    ShiftCorrectionOptions o;
    o.threads = 2;
    absl::StatusOr<DisplacementField> next =
        CorrectMeasuredShifts(field, q->grid, o, &stats);
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok()) return field;
    EXPECT_GT(stats.used, 100);
    field = *std::move(next);
  }
  return field;
}

TEST(ShiftCorrection, RemovesAKnownSmoothErrorOnARealPhoto) {
  const KnownMap map(kFullW, kFullH, 0.5, 3.2, -2.1, 0.0035);
  const Copies c = MakeCopies(map, kMargin);
  ASSERT_FALSE(c.fixed.empty());
  // The map plus a 2.5 px bump and a (0.8, -0.6) px shift.
  const DisplacementField start = MapField(
      map, CopyGridField(kFullW, kFullH, kCopyW, kCopyH), 2.5, 0.8, -0.6);
  const FieldError before = ErrorOf(start, map);
  const FieldError one = ErrorOf(Corrected(c, start, 1), map);
  const FieldError three = ErrorOf(Corrected(c, start, 3), map);
  std::printf(
      "shift correction: mean %.3f p95 %.3f max %.3f -> 1 pass %.3f / %.3f "
      "/ %.3f -> 3 passes %.3f / %.3f / %.3f px\n",
      before.mean, before.p95, before.max, one.mean, one.p95, one.max,
      three.mean, three.p95, three.max);
  ASSERT_GT(before.mean, 1.0);
  EXPECT_LT(one.mean, 0.5 * before.mean);
  EXPECT_LT(three.mean, 0.2);
  EXPECT_LT(three.p95, 0.5);
}

// 25 degrees about the centre, scale 0.92, then a keystone that moves the
// corners by up to about 110 px.
HomographyMap Perspective() {
  const double cx = (kFullW - 1) / 2.0, cy = (kFullH - 1) / 2.0;
  const double a = 25 * M_PI / 180, s = 0.92;
  const double r0 = s * std::cos(a), r1 = -s * std::sin(a);
  const double r3 = s * std::sin(a), r4 = s * std::cos(a);
  const std::array<double, 9> sim = {
      r0, r1, cx - r0 * cx - r1 * cy, r3, r4, cy - r3 * cx - r4 * cy, 0, 0, 1};
  const double p = 0.15 / kFullW, q = -0.1 / kFullH;
  const std::array<double, 9> key = {
      1 + p * cx, q * cx,     -cx * (p * cx + q * cy),
      p * cy,     1 + q * cy, -cy * (p * cx + q * cy),
      p,          q,          1 - p * cx - q * cy};
  std::array<double, 9> m{};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      for (int k = 0; k < 3; ++k)
        m[3 * i + j] += key[3 * i + k] * sim[3 * k + j];
    }
  }
  return HomographyMap(kFullW, kFullH, m);
}

TEST(ShiftCorrection, FollowsAStrongPerspective) {
  // The residual is measured in the fixed frame; the correction must carry
  // it into the moving frame through the map's Jacobian.
  const HomographyMap map = Perspective();
  const Copies c = MakeCopies(map, 420);
  ASSERT_FALSE(c.fixed.empty());
  const DisplacementField start = MapField(
      map, CopyGridField(kFullW, kFullH, kCopyW, kCopyH), 2.0, -1.2, 0.9);
  const FieldError before = ErrorOf(start, map);
  const FieldError after = ErrorOf(Corrected(c, start, 3), map);
  std::printf("perspective: mean %.3f p95 %.3f -> %.3f / %.3f px\n",
              before.mean, before.p95, after.mean, after.p95);
  EXPECT_LT(after.mean, 0.25 * before.mean);
  EXPECT_LT(after.p95, 0.6);
}

TEST(ShiftCorrection, NothingMeasuredIsRefused) {
  DisplacementField f = CopyGridField(kFullW, kFullH, 70, 38);
  QualityGrid g;
  g.cols = 2;
  g.rows = 1;
  g.patch_size = 64;
  g.stride = 32;
  g.x0 = {0, 32};
  g.y0 = {0};
  g.state.assign(2, PatchState::kUnknown);
  g.dx.assign(2, 0.f);
  g.dy.assign(2, 0.f);
  absl::StatusOr<DisplacementField> r =
      CorrectMeasuredShifts(f, g, ShiftCorrectionOptions(), nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  g.dx.pop_back();  // inconsistent
  EXPECT_EQ(CorrectMeasuredShifts(f, g, ShiftCorrectionOptions(), nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CorrectMeasuredShifts(DisplacementField(), g,
                                  ShiftCorrectionOptions(), nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace regserve
