// Copyright regserve authors.
//
// The quality map: an estimate of how well a displacement field aligns the
// two registration copies, without knowing the truth. The moving copy is
// warped through the field onto the fixed copy's grid; on a grid of patches
// (64 px, overlapping by half) the residual misalignment of each patch is
// measured by phase correlation with iterative sub-pixel refinement. Patches
// without texture (a constant area, or a single edge), faint patches that
// do not match, and patches mostly outside the overlap are "unknown" (one
// the overlap's edge crosses is measured over its valid part); textured
// patches whose correlation has no clear peak are "unmatched" (they count
// against the result). The
// summary gives the estimated mean, p95 and max residual in FULL-RESOLUTION
// pixels (the patch shift times the registration factor), the fraction of
// the area that could be checked and a verdict.
//
//   QualityOptions opts;
//   opts.fixed_full_width = rec.fixed_spec.width;  // the copies' spacing
//   opts.fixed_full_height = rec.fixed_spec.height;
//   opts.moving_full_width = rec.moving_spec.width;
//   opts.moving_full_height = rec.moving_spec.height;
//   opts.threads = 2;
//   REGSERVE_ASSIGN_OR_RETURN(
//       QualityReport q,
//       EstimateQuality(fixed_gray, moving_gray, reg.field, opts));
//   if (q.summary.verdict != QualityVerdict::kGood) {
//     std::cerr << q.summary.warning << "\n";
//   }
//
// What it cannot see: errors in areas without texture, and errors finer
// than the registration copy resolves (the estimate's own noise is about
// 0.05 copy pixels, i.e. 0.05 * factor full-resolution pixels).
//
// Thread safety: EstimateQuality is a pure function; it runs
// `options.threads` worker threads of its own.
#ifndef REGSERVE_CORE_QUALITY_QUALITY_MAP_H_
#define REGSERVE_CORE_QUALITY_QUALITY_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/common/cancel.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"

namespace regserve {

struct QualityOptions {
  // Full-resolution sizes of the two images: with the copies' sizes they
  // give the copies' spacing (see registration.h). Required.
  int64_t fixed_full_width = 0;
  int64_t fixed_full_height = 0;
  int64_t moving_full_width = 0;
  int64_t moving_full_height = 0;
  // Patch edge in registration-copy pixels (a power of two, 16..256; smaller
  // for copies shorter than it). Patches overlap by half, unless that would
  // give more than max_patches; then the stride grows.
  int patch_size = 64;
  int max_patches = 8192;
  // A patch is textured when the smaller eigenvalue of its structure tensor
  // is at least this fraction of the 90th percentile over all patches (and
  // above a floor relative to the image's contrast).
  double min_texture = 0.03;
  // Fainter patches, down to this fraction (and a lower floor), are
  // measured too, but only count when they match: one that does not is
  // unknown, not unmatched. Out-of-focus areas hold such texture, and there
  // elastix's field drifts while phase correlation still measures the
  // shift (docs/benchmarks.md, "Faint texture and elastix's fixed costs").
  // faint_texture >= min_texture measures only textured patches.
  double faint_texture = 0.003;
  // The windowed normalised cross-correlation of the aligned patches that a
  // textured patch must reach to count as matched (its "response").
  double min_response = 0.6;
  // Verdict: good when the estimated mean and p95 (full-resolution px) are
  // within these, at most max_unmatched of the checked patches failed to
  // match, and at least min_checked of the area could be checked.
  double good_mean_px = 1.0;
  double good_p95_px = 2.0;
  double max_unmatched = 0.2;
  double min_checked = 0.05;
  int threads = 1;
  const CancelToken* cancel = nullptr;  // may be null
};

enum class PatchState : uint8_t {
  kUnknown = 0,    // too little texture, or outside the overlap
  kMeasured = 1,   // residual estimated
  kUnmatched = 2,  // textured, but no correlation peak: misaligned
};

enum class QualityVerdict {
  kGood = 0,
  kPoor = 1,
  kUnchecked = 2,  // too little of the area could be checked
};
absl::string_view QualityVerdictName(QualityVerdict v);  // "good", ...

// Per-patch estimates. Patch (c, r) covers copy pixels [x0[c], x0[c] +
// patch_size) x [y0[r], y0[r] + patch_size) of the fixed copy; `stride` is
// the spacing of patch origins (the last row/column is moved to end at the
// copy's edge). Row-major vectors of cols * rows.
struct QualityGrid {
  int cols = 0;
  int rows = 0;
  int patch_size = 0;   // copy pixels
  int stride = 0;       // copy pixels
  std::vector<int> x0;  // cols
  std::vector<int> y0;  // rows
  // Full-resolution pixels per fixed-copy pixel along x and y: patch
  // rectangles at full resolution are x0 * scale_x, ...
  double scale_x = 1.0;
  double scale_y = 1.0;
  std::vector<PatchState> state;
  // The residual of a measured patch in full-resolution pixels: the shift
  // by which the warped moving patch lies off the fixed patch (its
  // magnitude in error_px); NaN otherwise.
  std::vector<float> dx;
  std::vector<float> dy;
  std::vector<float> error_px;
  std::vector<float> response;  // NCC once aligned; 0 when unknown
};

struct QualitySummary {
  bool computed = false;  // false: no quality stage ran (older jobs)
  QualityVerdict verdict = QualityVerdict::kUnchecked;
  // Over measured patches, full-resolution pixels; 0 when none.
  double mean_px = 0.0;
  double p95_px = 0.0;
  double max_px = 0.0;
  // Fraction of all patches (= of the area) that could be checked
  // (measured or unmatched), and of those, the fraction unmatched.
  double checked_fraction = 0.0;
  double unmatched_fraction = 0.0;
  int measured = 0;
  int unmatched = 0;
  int unknown = 0;
  // Empty when good; else what is wrong, for the completed event.
  std::string warning;
};

struct QualityReport {
  QualitySummary summary;
  QualityGrid grid;
};

// What a client draws: the grid over an 8-bit grey thumbnail of the fixed
// copy (MakeQualityThumbnail), which spans the whole fixed image.
struct QualityMap {
  QualityGrid grid;
  Image thumbnail;
};

// Estimates the residual of `field` (full-resolution pixels on any grid,
// usually the fixed copy's; see displacement_field.h) between the two
// float32 single-channel registration copies. Errors: InvalidArgument
// (wrong image types, an empty or inconsistent field, missing full sizes),
// Cancelled / DeadlineExceeded from options.cancel, Internal (an OpenCV
// exception, with its message).
absl::StatusOr<QualityReport> EstimateQuality(const Image& fixed_gray,
                                              const Image& moving_gray,
                                              const DisplacementField& field,
                                              const QualityOptions& options);

// The verdict and warning of a summary whose figures are filled in.
void JudgeQuality(const QualityOptions& options, QualitySummary* summary);

// An 8-bit grey thumbnail of a float32 registration copy whose longer edge
// is at most `max_edge` (area-averaged; contrast stretched from the 1st to
// the 99th percentile). InvalidArgument for a wrong image type.
absl::StatusOr<Image> MakeQualityThumbnail(const Image& gray, int max_edge);

// "quality: est. mean 0.21 px, p95 0.6 px, max 1.1 px, checked 83% of the
// area" (plus the verdict when it is not good).
std::string QualitySummaryLine(const QualitySummary& s);

}  // namespace regserve

#endif  // REGSERVE_CORE_QUALITY_QUALITY_MAP_H_
