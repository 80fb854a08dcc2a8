// Copyright regserve authors.
//
// The refine stage's shift correction as a schedule of passes over the
// registration copies (core/refine/shift_correction.h does one pass):
//  1. up to `passes` on the quality map's own patches (64 px), their
//     shifts smoothed over `sigma` strides;
//  2. `fine_passes` on patches of half the size, which reach twice as close
//     to the borders where the field's counterpart leaves the moving image
//     and no 64 px patch fits. Their shifts are noisier and are smoothed
//     over two strides.
// A pass is kept only when the quality estimate (the options' patches, on
// the copies) improves (field_choice.h). The 64 px phase judges each pass
// and stops at its first pass not kept; the 32 px phase measures each pass
// on its own patches, stops when that is not better, and is judged once at
// the end, falling back to an earlier pass's field. (Running the first passes
// on half-size copies was tried: no faster on the 18 MP and 283.6 MP
// benchmarks, and less accurate.)
//
//   CorrectionOutcome out;
//   REGSERVE_RETURN_IF_ERROR(RunShiftCorrection(
//       fixed_gray, moving_gray, known_estimate_or_null, quality_options,
//       CorrectionSchedule(), progress_fn, &field, &out));
//   // field corrected; out.estimate is its estimate on the copies.
//
// Thread safety: a pure function of its arguments (`options.threads`
// threads of its own).
#ifndef REGSERVE_CORE_JOBS_CORRECTION_PASSES_H_
#define REGSERVE_CORE_JOBS_CORRECTION_PASSES_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"
#include "core/quality/quality_map.h"

namespace regserve {

struct CorrectionSchedule {
  int passes = 2;
  int fine_passes = 2;
  // The 64 px passes' smoothing, in patch strides: a wide one converges
  // in fewer passes on the registration's leftovers (docs/benchmarks.md,
  // "The correction's smoothing and pass count").
  double sigma = 2.5;
};

struct CorrectionOutcome {
  std::string summary;  // what was done, for the plan's reasons
  // The estimate of the returned field on the copies with `options`;
  // empty when the last estimate could not be made.
  std::optional<QualityReport> estimate;
};

// Corrects `*field` (see the header comment). `known`, when not null, is
// the estimate of `*field` on the copies with `options`. On an error (an
// estimate failed, or options.cancel stopped it) `*field` holds the passes
// kept so far and `out->summary` says how far it got.
absl::Status RunShiftCorrection(
    const Image& fixed_gray, const Image& moving_gray,
    const QualityReport* known, const QualityOptions& options,
    const CorrectionSchedule& schedule,
    const std::function<void(const std::string&)>& progress,
    DisplacementField* field, CorrectionOutcome* out);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_CORRECTION_PASSES_H_
