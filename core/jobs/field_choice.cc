// Copyright regserve authors.
//
// CompareFields: see field_choice.h.
#include "core/jobs/field_choice.h"

#include "absl/strings/str_format.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace {

// Unmatched patches `candidate` may add, as a fraction of the checked ones.
constexpr double kUnmatchedSlack = 0.01;

}  // namespace

bool CandidateIsBetter(const QualitySummary& current,
                       const QualitySummary& candidate) {
  if (candidate.measured == 0) return false;
  if (current.measured == 0) return false;
  const double checked = current.measured + current.unmatched;
  return candidate.p95_px < current.p95_px &&
         candidate.unmatched <= current.unmatched + kUnmatchedSlack * checked;
}

absl::StatusOr<FieldChoice> CompareFields(const Image& fixed_gray,
                                          const Image& moving_gray,
                                          const DisplacementField& current,
                                          const QualityReport* current_report,
                                          const DisplacementField& candidate,
                                          const QualityOptions& options) {
  FieldChoice c;
  if (current_report != nullptr) {
    c.current = *current_report;
  } else {
    REGSERVE_ASSIGN_OR_RETURN(
        c.current, EstimateQuality(fixed_gray, moving_gray, current, options));
  }
  REGSERVE_ASSIGN_OR_RETURN(
      c.candidate,
      EstimateQuality(fixed_gray, moving_gray, candidate, options));
  c.candidate_better =
      CandidateIsBetter(c.current.summary, c.candidate.summary);
  return c;
}

std::string ChoiceFigures(const QualitySummary& s) {
  return absl::StrFormat("est. mean %.2f px, p95 %.2f px, %d unmatched of %d",
                         s.mean_px, s.p95_px, s.unmatched,
                         s.measured + s.unmatched);
}

}  // namespace regserve
