// Copyright regserve authors.
//
// Shift correction: a displacement field corrected by the residual shifts
// the quality map measured (core/quality: phase correlation of 64 px
// patches of the fixed copy against the moving copy warped through the
// field). The measured shifts are cleaned of outliers (a patch far from the
// median of its neighbours), smoothed into a correction field by
// normalised convolution over the patch grid (a narrow Gaussian where
// patches were measured, a wide one filling the gaps between them, nothing
// far from every measurement), and composed with the field: the corrected
// map at p is the old map at p + c(p). Patches without texture give no
// measurement, so the correction there comes only from their neighbours;
// where no patch can be measured (a border strip whose true counterpart
// lies outside the moving image, wide areas without texture) the field is
// as good as what came before.
//
// Why: phase correlation measures a textured patch's shift to a few
// hundredths of a copy pixel, including in out-of-focus areas where
// elastix's MI metric drifts (docs/benchmarks.md, "Shift correction"), and
// one pass costs one quality estimate. The job's loop (core/jobs) estimates
// again after each pass and keeps a pass only when the estimate improved.
//
//   REGSERVE_ASSIGN_OR_RETURN(QualityReport q, EstimateQuality(...field...));
//   ShiftCorrectionStats stats;
//   REGSERVE_ASSIGN_OR_RETURN(DisplacementField corrected,
//       CorrectMeasuredShifts(field, q.grid, ShiftCorrectionOptions(),
//       &stats));
//
// Thread safety: a pure function.
#ifndef REGSERVE_CORE_REFINE_SHIFT_CORRECTION_H_
#define REGSERVE_CORE_REFINE_SHIFT_CORRECTION_H_

#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/quality/quality_map.h"

namespace regserve {

struct ShiftCorrectionOptions {
  // Gaussian widths over the patch grid, in patch strides: the smoothing of
  // the measured shifts, and the fill between measured patches (weighted by
  // fill_weight, so that it only decides where nothing was measured near).
  double smoothing_sigma = 1.0;
  double fill_sigma = 6.0;
  double fill_weight = 0.05;
  // A measured patch is an outlier when its shift lies further than this
  // (registration-copy pixels) or three times the neighbours' median
  // absolute deviation, whichever is more, from the median of its measured
  // neighbours (5x5 patches).
  double outlier_copy_px = 1.0;
  int threads = 1;
};

struct ShiftCorrectionStats {
  int used = 0;      // measured patches that entered the correction
  int rejected = 0;  // measured patches dropped as outliers
  double mean_correction_px = 0.0;  // over the field's nodes, full-res px
  double max_correction_px = 0.0;
};

// The field corrected by the grid's measured shifts, on the field's own
// grid. `grid` must be the quality map of `field`. InvalidArgument: an
// empty or inconsistent field or grid; FailedPrecondition: no patch of
// the grid was measured (nothing to correct by).
absl::StatusOr<DisplacementField> CorrectMeasuredShifts(
    const DisplacementField& field, const QualityGrid& grid,
    const ShiftCorrectionOptions& options, ShiftCorrectionStats* stats);

}  // namespace regserve

#endif  // REGSERVE_CORE_REFINE_SHIFT_CORRECTION_H_
