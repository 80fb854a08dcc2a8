// Copyright regserve authors.
//
// CandidateIsBetter on the figures the benchmark measured
// (docs/benchmarks.md, "Refinement after a robust start").
#include "core/jobs/field_choice.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

QualitySummary Estimate(double mean, double p95, int measured, int unmatched) {
  QualitySummary s;
  s.computed = true;
  s.mean_px = mean;
  s.p95_px = p95;
  s.measured = measured;
  s.unmatched = unmatched;
  return s;
}

TEST(CandidateIsBetter, TheStartAloneOverElastixThatMadeItWorse) {
  // 4 MP copies: start + elastix, then the start alone.
  EXPECT_TRUE(CandidateIsBetter(Estimate(0.40, 1.44, 2225, 50),
                                Estimate(0.19, 0.31, 2272, 3)));
  // 5 MP copies, where elastix helped: the start alone is not better.
  EXPECT_FALSE(CandidateIsBetter(Estimate(0.18, 0.47, 2788, 3),
                                 Estimate(0.28, 0.74, 2786, 5)));
}

TEST(CandidateIsBetter, ALowerP95WithManyMoreUnmatchedPatchesIsNot) {
  // The refinement after elastix (true p95 1.75 -> 1.93 px).
  EXPECT_FALSE(CandidateIsBetter(Estimate(0.40, 1.44, 2225, 50),
                                 Estimate(0.32, 1.17, 2179, 96)));
  // The smooth case's refinement (true p95 14.0 -> 0.58 px).
  EXPECT_TRUE(CandidateIsBetter(Estimate(2.81, 13.40, 4171, 32),
                                Estimate(0.16, 0.62, 4187, 9)));
}

TEST(CandidateIsBetter, WithoutMeasuredPatchesTheCurrentFieldStays) {
  EXPECT_FALSE(
      CandidateIsBetter(Estimate(0.5, 1.0, 100, 0), Estimate(0, 0, 0, 0)));
  EXPECT_FALSE(
      CandidateIsBetter(Estimate(0, 0, 0, 0), Estimate(0.1, 0.2, 100, 0)));
  // Equal estimates (elastix found nothing to add): the current one stays.
  EXPECT_FALSE(CandidateIsBetter(Estimate(0.2, 0.4, 100, 1),
                                 Estimate(0.2, 0.4, 100, 1)));
}

}  // namespace
}  // namespace regserve
