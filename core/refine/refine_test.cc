// Copyright regserve authors.
//
// RefineField on a real photo (tests/data/photos/seeding_5312x2988.jpg
// reduced to 1.06 MP, registration copies of 0.26 MP at half size) with a
// known smooth map, started from the map plus a known smooth error; the same
// under a strong perspective with its homography as the prior; the box
// filter against avg_pool2d; options, errors and cancellation.
#include "core/refine/refine.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/image/image_io.h"
#include "core/refine/box_filter.h"
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

RefineOptions BaseOptions() {
  RefineOptions o;
  o.fixed_full_width = o.moving_full_width = kFullW;
  o.fixed_full_height = o.moving_full_height = kFullH;
  o.threads = 2;
  return o;
}

// The photo's scene under a 0.5 degree rotation, a shift and a bending of
// 0.35% of the width (about 5 px), with registration copies at half size.
class RefineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<refine_test::Copies> c =
        refine_test::MakeSeedingCopies(Map(), kMargin, kCopyW, kCopyH);
    ASSERT_TRUE(c.ok()) << c.status();
    fixed_ = new Image(std::move(c->fixed));
    moving_ = new Image(std::move(c->moving));
  }
  static void TearDownTestSuite() {
    delete fixed_;
    delete moving_;
  }

  static KnownMap Map() {
    return KnownMap(kFullW, kFullH, 0.5, 3.2, -2.1, 0.0035);
  }
  static RefineOptions Options() { return BaseOptions(); }
  // The map plus a 2.5 px bump and a (0.8, -0.6) px shift, on the copy grid.
  static DisplacementField Start() {
    return MapField(Map(), CopyGridField(kFullW, kFullH, kCopyW, kCopyH), 2.5,
                    0.8, -0.6);
  }

  static Image* fixed_;
  static Image* moving_;
};
Image* RefineTest::fixed_ = nullptr;
Image* RefineTest::moving_ = nullptr;

TEST_F(RefineTest, RemovesAKnownSmoothErrorToSubpixel) {
  const DisplacementField start = Start();
  const FieldError before = ErrorOf(start, Map());
  ASSERT_GT(before.mean, 1.0);
  std::vector<RefineProgress> progress;
  RefineOptions o = Options();
  o.on_progress = [&](const RefineProgress& p) { progress.push_back(p); };
  absl::StatusOr<RefineResult> r = RefineField(*fixed_, *moving_, start, o);
  ASSERT_TRUE(r.ok()) << r.status();
  const FieldError after = ErrorOf(r->field, Map());
  std::printf(
      "refine: error mean %.3f p95 %.3f max %.3f -> mean %.3f p95 %.3f max "
      "%.3f px in %.2f s (LNCC %.4f -> %.4f)\n",
      before.mean, before.p95, before.max, after.mean, after.p95, after.max,
      r->seconds, r->initial_ncc, r->final_ncc);
  EXPECT_TRUE(r->improved);
  EXPECT_LT(after.mean, 0.25);
  EXPECT_LT(after.p95, 0.6);
  EXPECT_GT(r->final_ncc, r->initial_ncc);
  // The same grid comes back.
  EXPECT_EQ(r->field.width, start.width);
  EXPECT_EQ(r->field.height, start.height);
  EXPECT_EQ(r->field.spacing_x, start.spacing_x);
  EXPECT_EQ(r->field.origin_y, start.origin_y);
  EXPECT_EQ(r->work_width, kCopyW);
  EXPECT_EQ(r->device, "cpu");
  // Progress: every step, coarsest level first, fraction rising to 1.
  ASSERT_EQ(static_cast<int>(progress.size()), r->iterations);
  EXPECT_EQ(r->iterations, r->levels * o.iterations);
  EXPECT_EQ(progress.front().level, 0);
  EXPECT_EQ(progress.back().level, r->levels - 1);
  EXPECT_DOUBLE_EQ(progress.back().fraction, 1.0);
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GE(progress[i].fraction, progress[i - 1].fraction);
  }
}

TEST_F(RefineTest, ReducedWorkingSizeStillHelps) {
  const DisplacementField start = Start();
  RefineOptions o = Options();
  o.max_pixels = 70'000;  // the 0.26 MP copy pooled by 2
  absl::StatusOr<RefineResult> r = RefineField(*fixed_, *moving_, start, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->work_width, kCopyW / 2);
  EXPECT_EQ(r->work_height, kCopyH / 2);
  const FieldError after = ErrorOf(r->field, Map());
  EXPECT_LT(after.mean, 0.5);
  EXPECT_LT(after.mean, ErrorOf(start, Map()).mean / 3);
}

TEST_F(RefineTest, NothingToGainLeavesTheFieldUnchanged) {
  // Flat images: no texture anywhere, and the start (a pure shift) has no
  // bending, so no step can lower the loss.
  Image flat = Image::Allocate(fixed_->spec()).value();
  std::fill_n(flat.as<float>(), flat.width() * flat.height(), 0.5f);
  DisplacementField start = CopyGridField(kFullW, kFullH, kCopyW, kCopyH);
  std::fill(start.dx.begin(), start.dx.end(), 1.5f);
  RefineOptions o = Options();
  o.iterations = 5;
  absl::StatusOr<RefineResult> r = RefineField(flat, flat, start, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->improved);
  EXPECT_EQ(r->field.dx, start.dx);
  EXPECT_EQ(r->field.dy, start.dy);
}

TEST_F(RefineTest, RefusesBadInputs) {
  const DisplacementField start = Start();
  Image rgb = Image::Allocate({.width = 64,
                               .height = 64,
                               .channels = 3,
                               .type = SampleType::kUInt8})
                  .value();
  EXPECT_TRUE(absl::IsInvalidArgument(
      RefineField(rgb, *moving_, start, Options()).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      RefineField(*fixed_, *moving_, DisplacementField(), Options()).status()));
  RefineOptions o = Options();
  o.ncc_window = 8;
  EXPECT_TRUE(absl::IsInvalidArgument(
      RefineField(*fixed_, *moving_, start, o).status()));
  o = Options();
  o.fixed_full_width = kCopyW - 1;  // smaller than the copy
  EXPECT_TRUE(absl::IsInvalidArgument(
      RefineField(*fixed_, *moving_, start, o).status()));
  o = Options();
  o.max_pixels = 100;  // a working level below 24 px
  EXPECT_TRUE(absl::IsInvalidArgument(
      RefineField(*fixed_, *moving_, start, o).status()));
}

TEST_F(RefineTest, CancelStopsIt) {
  CancelToken cancel;
  cancel.Cancel("client cancelled");
  RefineOptions o = Options();
  o.cancel = &cancel;
  absl::Status s = RefineField(*fixed_, *moving_, Start(), o).status();
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
}

#if !REGSERVE_HAVE_CUDA
TEST_F(RefineTest, CudaIsUnavailableInACpuBuild) {
  RefineOptions o = Options();
  o.device = WarpDevice::kCuda;
  EXPECT_TRUE(
      absl::IsUnavailable(RefineField(*fixed_, *moving_, Start(), o).status()));
}
#endif

// A strong perspective: a keystone about the centre that moves the
// corners by up to 113 px (the far side about 10% shorter), and a start
// that is the map plus the known smooth error.
class RefinePriorTest : public ::testing::Test {
 protected:
  static constexpr int64_t kPerspectiveMargin = 120;
  static void SetUpTestSuite() {
    absl::StatusOr<refine_test::Copies> c = refine_test::MakeSeedingCopies(
        Map(), kPerspectiveMargin, kCopyW, kCopyH);
    ASSERT_TRUE(c.ok()) << c.status();
    fixed_ = new Image(std::move(c->fixed));
    moving_ = new Image(std::move(c->moving));
  }
  static void TearDownTestSuite() {
    delete fixed_;
    delete moving_;
  }
  static HomographyMap Map() {
    const double cx = (kFullW - 1) / 2.0, cy = (kFullH - 1) / 2.0;
    const double p = 0.15 / kFullW, q = -0.1 / kFullH;
    return HomographyMap(
        kFullW, kFullH,
        {1 + p * cx, q * cx, -cx * (p * cx + q * cy), p * cy, 1 + q * cy,
         -cy * (p * cx + q * cy), p, q, 1 - p * cx - q * cy});
  }
  // The map plus RefineTest's known smooth error.
  static DisplacementField Start() {
    return MapField(Map(), CopyGridField(kFullW, kFullH, kCopyW, kCopyH), 2.5,
                    0.8, -0.6);
  }
  static FieldError Refined(bool prior, RefineResult* result) {
    RefineOptions o = BaseOptions();
    o.threads = 1;  // as the stage runs it
    if (prior) o.prior = Map().m;
    absl::StatusOr<RefineResult> r = RefineField(*fixed_, *moving_, Start(), o);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return FieldError{1e9, 1e9, 1e9};
    *result = *std::move(r);
    return ErrorOf(result->field, Map());
  }
  static Image* fixed_;
  static Image* moving_;
};
Image* RefinePriorTest::fixed_ = nullptr;
Image* RefinePriorTest::moving_ = nullptr;

TEST_F(RefinePriorTest, TheStartsHomographyKeepsAStrongPerspective) {
  RefineResult r;
  const FieldError before = ErrorOf(Start(), Map());
  const FieldError after = Refined(/*prior=*/true, &r);
  std::printf(
      "perspective: error mean %.3f p95 %.3f max %.3f -> mean %.3f p95 %.3f "
      "max %.3f px in %.2f s (LNCC %.4f -> %.4f)\n",
      before.mean, before.p95, before.max, after.mean, after.p95, after.max,
      r.seconds, r.initial_ncc, r.final_ncc);
  EXPECT_TRUE(r.improved);
  // Without the prior (the identity) the bending penalty pulls the
  // perspective towards an affine map where the photo has little texture:
  // mean 0.126, p95 0.455, max 8.7 px, against 0.029, 0.074 and 0.28 px
  // with it (LNCC 0.9856 either way).
  EXPECT_LT(after.mean, 0.08);
  EXPECT_LT(after.p95, 0.2);
  EXPECT_LT(after.max, 1.0);
}

TEST(RefineWorkSize, SmallestWholeFactorThatFits) {
  EXPECT_EQ(RefineWorkSizeFor(700, 378, 0).pool, 1);
  EXPECT_EQ(RefineWorkSizeFor(700, 378, 264'600).pool, 1);
  const RefineWorkSize s = RefineWorkSizeFor(700, 378, 264'599);
  EXPECT_EQ(s.pool, 2);
  EXPECT_EQ(s.width, 350);
  EXPECT_EQ(s.height, 189);
  const RefineWorkSize t = RefineWorkSizeFor(2981, 1677, 1'000'000);
  EXPECT_EQ(t.pool, 3);
  EXPECT_LE(t.width * t.height, 1'000'000);
}

TEST(RefineLevels, AutomaticUntilTheCoarsestIsSmall) {
  EXPECT_EQ(RefineLevelsFor(5772, 3135, 0), 7);  // coarsest 90x48
  EXPECT_EQ(RefineLevelsFor(1490, 838, 0), 5);   // 93x52
  EXPECT_EQ(RefineLevelsFor(700, 378, 0), 4);    // at least 4
  EXPECT_EQ(RefineLevelsFor(181, 217, 0), 3);    // a 4th would be 22 px
  EXPECT_EQ(RefineLevelsFor(40, 40, 0), 1);
  EXPECT_EQ(RefineLevelsFor(5772, 3135, 3), 3);  // as asked
  EXPECT_EQ(RefineLevelsFor(181, 217, 6), 3);    // but never below 24 px
}

TEST(BoxMean, MatchesAvgPoolValuesAndGradients) {
  at::manual_seed(7);
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{1, 3, 37, 53}, std::vector<int64_t>{2, 1, 5, 4}}) {
    for (int64_t win : {1, 3, 9}) {
      const at::Tensor x = at::rand(shape, at::kFloat);
      const at::Tensor a = x.clone().set_requires_grad(true);
      const at::Tensor b = x.clone().set_requires_grad(true);
      const at::Tensor ours = refine_internal::BoxMean(a, win);
      const at::Tensor ref = at::avg_pool2d(b, {win, win}, {1, 1},
                                            {win / 2, win / 2}, false, false);
      EXPECT_TRUE(at::allclose(ours, ref, 1e-5, 1e-6))
          << "win " << win << " max diff "
          << (ours - ref).abs().max().item<double>();
      const at::Tensor w = at::rand(shape, at::kFloat);
      (ours * w).sum().backward();
      (ref * w).sum().backward();
      EXPECT_TRUE(at::allclose(a.grad(), b.grad(), 1e-5, 1e-6))
          << "win " << win;
    }
  }
}

}  // namespace
}  // namespace regserve
