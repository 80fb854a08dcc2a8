// Copyright regserve authors.
#include "core/jobs/correction_passes.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/jobs/field_choice.h"
#include "core/refine/shift_correction.h"

namespace regserve {
namespace {

// The 32 px passes' smoothing, in strides (ShiftCorrectionOptions).
constexpr int kFinePatch = 32;
constexpr double kFineSigma = 2.0;

// One phase: the copies, the patches that measure, how many passes.
struct Phase {
  const Image* fixed;
  const Image* moving;
  int patch;
  int passes;
  double sigma;
};

// Runs the phase's passes; `current` is the estimate of `*field` on the
// phase's copies with `judge` and stays so.
absl::Status RunPhase(const Phase& p, const QualityOptions& judge,
                      const std::function<void(const std::string&)>& progress,
                      QualityReport* current, DisplacementField* field,
                      std::vector<std::string>* done) {
  QualityOptions measure = judge;
  measure.patch_size = p.patch;
  const int ratio = std::max(1, judge.patch_size / p.patch);
  measure.max_patches = judge.max_patches * ratio * ratio;
  ShiftCorrectionOptions o;
  o.threads = judge.threads;
  o.smoothing_sigma = p.sigma;
  int kept = 0;
  std::vector<std::string> p95s = {
      absl::StrFormat("%.2f", current->summary.p95_px)};
  std::string stop;
  absl::Status status;
  for (int pass = 0; pass < p.passes; ++pass) {
    if (progress) {
      progress(absl::StrFormat("shift correction, %d px patches, pass %d/%d",
                               p.patch, pass + 1, p.passes));
    }
    // On the judge's own patches the current estimate is the measurement.
    absl::StatusOr<QualityReport> other;
    if (p.patch != judge.patch_size) {
      other = EstimateQuality(*p.fixed, *p.moving, *field, measure);
      if (!other.ok()) {
        status = other.status();
        break;
      }
    }
    const QualityGrid& grid =
        p.patch == judge.patch_size ? current->grid : other->grid;
    absl::StatusOr<DisplacementField> next =
        CorrectMeasuredShifts(*field, grid, o, nullptr);
    if (!next.ok()) {
      stop = absl::StrCat(", stopped: ", next.status().message());
      break;
    }
    absl::StatusOr<FieldChoice> c =
        CompareFields(*p.fixed, *p.moving, *field, current, *next, judge);
    if (!c.ok()) {
      status = c.status();
      break;
    }
    if (!c->candidate_better) {
      stop = absl::StrFormat(", pass %d not kept (%s)", pass + 1,
                             ChoiceFigures(c->candidate.summary));
      break;
    }
    *field = *std::move(next);
    *current = std::move(c->candidate);
    ++kept;
    p95s.push_back(absl::StrFormat("%.2f", current->summary.p95_px));
  }
  if (!status.ok()) stop = ", stopped: an estimate failed";
  done->push_back(absl::StrFormat(
      "%d of %d passes with %d px patches kept (est. p95 %s px)%s", kept,
      p.passes, p.patch, absl::StrJoin(p95s, " -> "), stop));
  return status;
}

}  // namespace

absl::Status RunShiftCorrection(
    const Image& fixed_gray, const Image& moving_gray,
    const QualityReport* known, const QualityOptions& options,
    const CorrectionSchedule& schedule,
    const std::function<void(const std::string&)>& progress,
    DisplacementField* field, CorrectionOutcome* out) {
  std::vector<std::string> done;
  const auto finish = [&](absl::Status s) {
    out->summary = absl::StrJoin(done, "; ");
    return s;
  };
  QualityReport current;
  if (known != nullptr) {
    current = *known;
  } else {
    absl::StatusOr<QualityReport> full =
        EstimateQuality(fixed_gray, moving_gray, *field, options);
    if (!full.ok()) return finish(full.status());
    current = *std::move(full);
  }
  REGSERVE_RETURN_IF_ERROR(finish(RunPhase(
      {&fixed_gray, &moving_gray, options.patch_size, schedule.passes, 1.0},
      options, progress, &current, field, &done)));
  REGSERVE_RETURN_IF_ERROR(finish(RunPhase(
      {&fixed_gray, &moving_gray, kFinePatch, schedule.fine_passes, kFineSigma},
      options, progress, &current, field, &done)));
  out->estimate = std::move(current);
  return finish(absl::OkStatus());
}

}  // namespace regserve
