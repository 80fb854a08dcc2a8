// Copyright regserve authors.
//
// RunShiftCorrection's schedule on a real photo (the seeding photo at
// 1400x756, copies at half size) under a known smooth map, started from the
// map plus a known smooth error: the corrected field lies near the truth,
// the estimate handed back is that of the returned field, and the summary
// says what ran; with nothing to gain the field stays; a cancelled token
// stops it.
#include "core/jobs/correction_passes.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "core/common/cancel.h"
#include "core/refine/refine_test_util.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using refine_test::CopyGridField;
using refine_test::ErrorOf;
using refine_test::FieldError;
using refine_test::KnownMap;
using refine_test::MapField;

constexpr int64_t kFullW = 1400, kFullH = 756, kMargin = 36;
constexpr int64_t kCopyW = 700, kCopyH = 378;

class CorrectionPassesTest : public ::testing::Test {
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
  static QualityOptions Options() {
    QualityOptions q;
    q.fixed_full_width = q.moving_full_width = kFullW;
    q.fixed_full_height = q.moving_full_height = kFullH;
    q.threads = 2;
    return q;
  }
  // The map plus a 3.5 px bump and a (1.6, -1.2) px shift.
  static DisplacementField Start() {
    return MapField(Map(), CopyGridField(kFullW, kFullH, kCopyW, kCopyH), 3.5,
                    1.6, -1.2);
  }
  static Image* fixed_;
  static Image* moving_;
};
Image* CorrectionPassesTest::fixed_ = nullptr;
Image* CorrectionPassesTest::moving_ = nullptr;

TEST_F(CorrectionPassesTest, ReachesTheTruth) {
  const FieldError before = ErrorOf(Start(), Map());
  ASSERT_GT(before.mean, 1.5);
  DisplacementField field = Start();
  CorrectionOutcome out;
  int progress = 0;
  ASSERT_TRUE(RunShiftCorrection(
                  *fixed_, *moving_, nullptr, Options(), CorrectionSchedule(),
                  [&](const std::string&) { ++progress; }, &field, &out)
                  .ok());
  const FieldError after = ErrorOf(field, Map());
  std::printf("mean %.3f p95 %.3f -> %.3f / %.3f px (%s)\n", before.mean,
              before.p95, after.mean, after.p95, out.summary.c_str());
  EXPECT_LT(after.mean, 0.1);
  EXPECT_LT(after.p95, 0.3);
  EXPECT_GE(progress, 3);
  EXPECT_TRUE(absl::StrContains(out.summary, "with 64 px patches kept"));
  EXPECT_TRUE(absl::StrContains(out.summary, "with 32 px patches kept"));
  // The estimate handed back is that of the returned field.
  ASSERT_TRUE(out.estimate.has_value());
  absl::StatusOr<QualityReport> again =
      EstimateQuality(*fixed_, *moving_, field, Options());
  ASSERT_TRUE(again.ok());
  EXPECT_DOUBLE_EQ(out.estimate->summary.p95_px, again->summary.p95_px);
  EXPECT_LT(out.estimate->summary.p95_px, 0.3);
}

TEST_F(CorrectionPassesTest, NothingToGainKeepsTheField) {
  DisplacementField field =
      MapField(Map(), CopyGridField(kFullW, kFullH, kCopyW, kCopyH));
  const FieldError before = ErrorOf(field, Map());
  CorrectionOutcome out;
  ASSERT_TRUE(RunShiftCorrection(*fixed_, *moving_, nullptr, Options(),
                                 CorrectionSchedule(), nullptr, &field, &out)
                  .ok());
  // Passes are kept only on an estimated gain: the truth stays near.
  EXPECT_LT(ErrorOf(field, Map()).mean, before.mean + 0.05);
}

TEST_F(CorrectionPassesTest, CancelStopsIt) {
  CancelToken token;
  token.Cancel("test");
  QualityOptions q = Options();
  q.cancel = &token;
  DisplacementField field = Start();
  const DisplacementField start = field;
  CorrectionOutcome out;
  const absl::Status s =
      RunShiftCorrection(*fixed_, *moving_, nullptr, q, CorrectionSchedule(),
                         nullptr, &field, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_EQ(field.dx, start.dx);
  EXPECT_FALSE(out.estimate.has_value());
}

}  // namespace
}  // namespace regserve
