// Copyright regserve authors.
//
// Choosing between two displacement fields of one job without the truth:
// the quality map's estimate (core/quality) of each on the registration
// copies. The registration stage uses it to keep the robust start alone
// when elastix after it made the fit worse, and the refine stage to keep
// its input when the refinement did.
//
// Why the quality map and not the LNCC: on the Kleiber photo under the
// issue's strong homography (4 MP copies, docs/benchmarks.md, "Refinement
// after a robust start") elastix after the start took the true residual
// from 0.11 / 0.22 px (mean / p95) to 0.40 / 1.75 px while the LNCC rose
// (0.9193 -> 0.9206); the estimate went from 0.19 / 0.31 to 0.40 / 1.44 px
// with 50 unmatched patches instead of 3. On the same photo at 5 MP, where
// elastix helped (0.22 / 0.66 -> 0.14 / 0.36 px), it said so too (0.28 /
// 0.74 -> 0.18 / 0.47 px).
//
//   REGSERVE_ASSIGN_OR_RETURN(FieldChoice c,
//       CompareFields(fixed_gray, moving_gray, current, candidate, opts));
//   if (c.candidate_better) current = candidate;
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_JOBS_FIELD_CHOICE_H_
#define REGSERVE_CORE_JOBS_FIELD_CHOICE_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"
#include "core/quality/quality_map.h"

namespace regserve {

struct FieldChoice {
  QualityReport current;
  QualityReport candidate;
  bool candidate_better = false;
};

// Whether `candidate` is estimated to fit better than `current`: a lower
// estimated p95, and not more unmatched patches (textured, but no
// correlation peak: misaligned beyond what a patch can measure) than
// `current` has plus 1% of the checked patches. On the benchmark the
// refinement after elastix took the p95 estimate from 1.44 to 1.17 px while
// its unmatched patches went from 50 to 96 of about 2,275, and the true
// error rose (p95 1.75 -> 1.93 px). Without measured patches for either,
// `current` stays.
bool CandidateIsBetter(const QualitySummary& current,
                       const QualitySummary& candidate);

// Estimates both fields (EstimateQuality with `options`; `current_report`,
// when not null, is the estimate of `current` already made) and applies
// CandidateIsBetter. Errors: those of EstimateQuality.
absl::StatusOr<FieldChoice> CompareFields(const Image& fixed_gray,
                                          const Image& moving_gray,
                                          const DisplacementField& current,
                                          const QualityReport* current_report,
                                          const DisplacementField& candidate,
                                          const QualityOptions& options);

// "est. mean 0.19 px, p95 0.31 px, 3 unmatched of 2275" (checked patches),
// for the plan's reasons.
std::string ChoiceFigures(const QualitySummary& s);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_FIELD_CHOICE_H_
