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

QualityOptions MeasureOptions(const Phase& p, const QualityOptions& judge) {
  QualityOptions measure = judge;
  measure.patch_size = p.patch;
  const int ratio = std::max(1, judge.patch_size / p.patch);
  measure.max_patches = judge.max_patches * ratio * ratio;
  return measure;
}

ShiftCorrectionOptions CorrectionOptions(const Phase& p,
                                         const QualityOptions& judge) {
  ShiftCorrectionOptions o;
  o.threads = judge.threads;
  o.smoothing_sigma = p.sigma;
  return o;
}

void Report(const Phase& p, int kept, const std::vector<std::string>& p95s,
            const std::string& stop, std::vector<std::string>* done) {
  done->push_back(absl::StrFormat(
      "%d of %d passes with %d px patches kept (est. p95 %s px)%s", kept,
      p.passes, p.patch, absl::StrJoin(p95s, " -> "), stop));
}

void Progress(const Phase& p, int pass,
              const std::function<void(const std::string&)>& progress) {
  if (!progress) return;
  progress(absl::StrFormat("shift correction, %d px patches, pass %d/%d",
                           p.patch, pass + 1, p.passes));
}

// The judge's own patches: the current estimate is each pass's
// measurement, and the next one's judge. `current` is the estimate of
// `*field` with `judge` and stays so.
absl::Status RunJudgedPhase(
    const Phase& p, const QualityOptions& judge,
    const std::function<void(const std::string&)>& progress,
    QualityReport* current, DisplacementField* field,
    std::vector<std::string>* done) {
  const ShiftCorrectionOptions o = CorrectionOptions(p, judge);
  int kept = 0;
  std::vector<std::string> p95s = {
      absl::StrFormat("%.2f", current->summary.p95_px)};
  std::string stop;
  absl::Status status;
  for (int pass = 0; pass < p.passes; ++pass) {
    Progress(p, pass, progress);
    absl::StatusOr<DisplacementField> next =
        CorrectMeasuredShifts(*field, current->grid, o, nullptr);
    if (!next.ok()) {
      stop = absl::StrCat(", stopped: ", next.status().message());
      break;
    }
    absl::StatusOr<FieldChoice> c =
        CompareFields(*p.fixed, *p.moving, *field, current, *next, judge);
    if (!c.ok()) {
      status = c.status();
      stop = ", stopped: an estimate failed";
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
  Report(p, kept, p95s, stop, done);
  return status;
}

// Smaller patches: each pass measures on its own patches, which also say
// (like for like) whether the pass before helped; the judge's patches
// decide once, at the end, falling back pass by pass to earlier fields.
// One judge estimate instead of one per pass (docs/benchmarks.md), for one
// more field held.
absl::Status RunFinePhase(
    const Phase& p, const QualityOptions& judge,
    const std::function<void(const std::string&)>& progress,
    QualityReport* current, DisplacementField* field,
    std::vector<std::string>* done) {
  const QualityOptions measure = MeasureOptions(p, judge);
  const ShiftCorrectionOptions o = CorrectionOptions(p, judge);
  std::vector<DisplacementField> candidates;  // after pass 1, 2, ...
  std::vector<std::string> p95s;
  std::string stop;
  absl::StatusOr<QualityReport> m;
  for (int pass = 0; pass < p.passes; ++pass) {
    const DisplacementField& from = pass == 0 ? *field : candidates.back();
    absl::StatusOr<QualityReport> next_m =
        EstimateQuality(*p.fixed, *p.moving, from, measure);
    if (!next_m.ok()) {
      Report(p, 0, p95s, ", stopped: an estimate failed", done);
      return next_m.status();
    }
    p95s.push_back(absl::StrFormat("%.2f", next_m->summary.p95_px));
    if (pass > 0 && !CandidateIsBetter(m->summary, next_m->summary)) {
      candidates.pop_back();
      stop = absl::StrFormat(", pass %d not better on its own patches", pass);
      break;
    }
    m = std::move(next_m);
    Progress(p, pass, progress);
    absl::StatusOr<DisplacementField> next =
        CorrectMeasuredShifts(from, m->grid, o, nullptr);
    if (!next.ok()) {
      stop = absl::StrCat(", stopped: ", next.status().message());
      break;
    }
    candidates.push_back(*std::move(next));
  }
  const std::string before = absl::StrFormat("%.2f", current->summary.p95_px);
  while (!candidates.empty()) {
    absl::StatusOr<FieldChoice> c = CompareFields(
        *p.fixed, *p.moving, *field, current, candidates.back(), judge);
    if (!c.ok()) {
      Report(p, 0, p95s, ", stopped: an estimate failed", done);
      return c.status();
    }
    if (c->candidate_better) {
      *field = std::move(candidates.back());
      *current = std::move(c->candidate);
      break;
    }
    stop += absl::StrFormat(", pass %d not kept (%s)",
                            static_cast<int>(candidates.size()),
                            ChoiceFigures(c->candidate.summary));
    candidates.pop_back();
  }
  Report(
      p, static_cast<int>(candidates.size()), p95s,
      absl::StrFormat("; judged on %d px patches: p95 %s -> %.2f px%s",
                      judge.patch_size, before, current->summary.p95_px, stop),
      done);
  return absl::OkStatus();
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
  REGSERVE_RETURN_IF_ERROR(
      finish(RunJudgedPhase({&fixed_gray, &moving_gray, options.patch_size,
                             schedule.passes, schedule.sigma},
                            options, progress, &current, field, &done)));
  REGSERVE_RETURN_IF_ERROR(finish(RunFinePhase(
      {&fixed_gray, &moving_gray, kFinePatch, schedule.fine_passes, kFineSigma},
      options, progress, &current, field, &done)));
  out->estimate = std::move(current);
  return finish(absl::OkStatus());
}

}  // namespace regserve
