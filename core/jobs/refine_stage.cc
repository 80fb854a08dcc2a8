// Copyright regserve authors.
//
// Refine: improves the registration's field on the grayscale copies in two
// steps, and replaces run->reg.field with each result the quality map's
// estimate confirms.
//  1. The shift correction (correction_passes.h), on the CPU (after step 2
//     where a GPU refines and Plan::shift_correction_after_refine): rounds of
//     the quality map's measured patch shifts composed into the field
//     (Plan::shift_correction_passes), each kept only when the estimate
//     improved. One or two quality estimates per pass.
//  2. The LibTorch refinement (core/refine), on the device and at the
//     working size the plan chose. After a robust start, the start's
//     homography is the bending penalty's prior. On the CPU under
//     refine=auto it is skipped when the field is already estimated good.
// The plan's reasons say when either is skipped (refine=off, a rigid or
// affine job, a CPU too slow) and then that step does nothing. Both are
// improvements, not requirements: when one fails (other than by
// cancellation) the job goes on with the field it had, and says so. The
// stored TransformParameters stay elastix's. Memory: Plan::shift_correction
// and Plan::refine, one reservation after the other.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/jobs/correction_passes.h"
#include "core/jobs/field_choice.h"
#include "core/jobs/stage_runner.h"
#include "core/refine/refine.h"

namespace regserve {
namespace {

// refine=auto on the CPU skips the refinement when the field it would
// start from is already estimated within this p95 (full-resolution pixels)
// with at most kMaxUnmatched of the checked patches unmatched. On the
// strong-homography case of docs/benchmarks.md ("Whole-job accuracy on real
// cases") the start alone was estimated at p95 0.14 px (true 0.11); the
// refinement on the CPU then took 10.5 s, 41% of the job, and was dropped by
// the estimate. On a GPU it always runs: at the copy's full size it took
// 2.2 s there and brought the same case to 0.009 / 0.018 px (mean / p95).
constexpr double kGoodEnoughP95 = 0.25;
constexpr double kMaxUnmatched = 0.01;

class RefineStage final : public PipelineStage {
 public:
  explicit RefineStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return Stage::kRefine; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    const Plan& plan = run->rec.info.plan;
    if (!plan.refine_enabled && plan.shift_correction_passes <= 0) {
      return absl::OkStatus();
    }
    if (run->fixed_gray.empty() || run->moving_gray.empty() ||
        run->reg.field.empty()) {
      host->AddPlanReason(
          "refinement skipped: the registration copies or the field are gone");
      return absl::OkStatus();
    }
    Timing timing;
    if (plan.shift_correction_after_refine) {
      REGSERVE_RETURN_IF_ERROR(RefineWithLibTorch(run, host, &timing));
      REGSERVE_RETURN_IF_ERROR(CorrectShifts(run, host, &timing));
    } else {
      REGSERVE_RETURN_IF_ERROR(CorrectShifts(run, host, &timing));
      REGSERVE_RETURN_IF_ERROR(RefineWithLibTorch(run, host, &timing));
    }
    if (timing.started) {
      host->Progress(Stage::kRefine, 1.0, "refinement done");
      host->Finished(Stage::kRefine, timing.start);
    }
    return absl::OkStatus();
  }

 private:
  // The stage starts at its first reservation.
  struct Timing {
    bool started = false;
    absl::Time start;
  };
  static void Start(StageHost* host, Timing* t) {
    if (t->started) return;
    t->started = true;
    t->start = absl::Now();
    host->Started(Stage::kRefine);
  }

  QualityOptions Quality(const JobRun& run, int threads) const {
    QualityOptions q;
    q.fixed_full_width = run.rec.fixed_spec.width;
    q.fixed_full_height = run.rec.fixed_spec.height;
    q.moving_full_width = run.rec.moving_spec.width;
    q.moving_full_height = run.rec.moving_spec.height;
    q.threads = threads;
    q.cancel = run.cancel;
    return q;
  }

  // Step 1. Leaves run->reg_quality the estimate of the field that goes on.
  absl::Status CorrectShifts(JobRun* run, StageHost* host,
                             Timing* timing) const {
    const int passes = run->rec.info.plan.shift_correction_passes;
    if (passes <= 0) return absl::OkStatus();
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(Lane::kCpu, run->rec.info.plan.shift_correction.ram_bytes,
                      0, "shift correction"));
    Start(host, timing);
    const absl::Time start = absl::Now();
    const std::string before = run->reg_quality.has_value()
                                   ? ChoiceFigures(run->reg_quality->summary)
                                   : std::string("not estimated");
    CorrectionSchedule schedule;
    schedule.passes = passes;
    // One pass of 64 px patches asks for one of 32 px: after a GPU
    // refinement (its default) that holds the 283.6 MP job within its time
    // (docs/benchmarks.md, "The quality estimate's cost").
    schedule.fine_passes = std::min(schedule.fine_passes, passes);
    // After a GPU refinement the leftovers are small and local: the narrow
    // smoothing it was measured with (docs/benchmarks.md).
    if (run->rec.info.plan.shift_correction_after_refine) schedule.sigma = 1.0;
    CorrectionOutcome out;
    const absl::Status s = RunShiftCorrection(
        run->fixed_gray, run->moving_gray,
        run->reg_quality.has_value() ? &*run->reg_quality : nullptr,
        Quality(*run, r.threads()), schedule,
        [host](const std::string& what) {
          host->Progress(Stage::kRefine, 0.0, what);
        },
        &run->reg.field, &out);
    if (absl::IsCancelled(s) || absl::IsDeadlineExceeded(s)) return s;
    run->reg_quality = std::move(out.estimate);
    host->AddPlanReason(absl::StrFormat(
        "shift correction in %.2f s: %s; before %s, after %s",
        absl::ToDoubleSeconds(absl::Now() - start), out.summary, before,
        run->reg_quality.has_value()
            ? ChoiceFigures(run->reg_quality->summary)
            : absl::StrCat("not estimated (", s.message(), ")")));
    return absl::OkStatus();
  }

  // Step 2.
  absl::Status RefineWithLibTorch(JobRun* run, StageHost* host,
                                  Timing* timing) const {
    const Plan& plan = run->rec.info.plan;
    if (!plan.refine_enabled) return absl::OkStatus();
    if (AlreadyGood(*run)) {
      const QualitySummary& q = run->reg_quality->summary;
      host->AddPlanReason(absl::StrFormat(
          "refinement skipped: the field is estimated at mean %.2f px, p95 "
          "%.2f px already (refine=auto on the CPU refines above p95 %.2f "
          "px; refine=on always)",
          q.mean_px, q.p95_px, kGoodEnoughP95));
      return absl::OkStatus();
    }
    const bool cuda = plan.refine_device == WarpDevice::kCuda;
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(cuda ? Lane::kGpu : Lane::kCpu, plan.refine.ram_bytes,
                      plan.refine.vram_bytes, "refine"));
    Start(host, timing);
    host->Progress(Stage::kRefine, 0.0, "refining the field");
    RefineOptions o = PlannedRefineOptions(plan);
    o.fixed_full_width = run->rec.fixed_spec.width;
    o.fixed_full_height = run->rec.fixed_spec.height;
    o.moving_full_width = run->rec.moving_spec.width;
    o.moving_full_height = run->rec.moving_spec.height;
    // One thread: more were no faster, and much slower on a busy machine
    // (RefineOptions::threads).
    o.threads = 1;
    o.cuda_device = cuda ? OrdinalOf(r) : 0;
    // The field follows the start's homography up to a smooth deviation:
    // bending measured from it, a strong perspective is not pulled towards
    // an affine map where the images have no texture (RefineOptions::prior).
    const bool prior = run->initial.found;
    if (prior) o.prior = run->initial.fixed_to_moving.m;
    o.cancel = run->cancel;
    o.on_progress = [host](const RefineProgress& p) {
      host->Progress(Stage::kRefine, p.fraction,
                     absl::StrFormat("level %d/%d, iteration %d/%d, loss %.4f",
                                     p.level + 1, p.num_levels, p.iteration,
                                     p.iterations, p.loss),
                     nullptr, /*force=*/false);
    };
    absl::StatusOr<RefineResult> result =
        RefineField(run->fixed_gray, run->moving_gray, run->reg.field, o);
    bool refined = false;
    if (result.ok()) {
      host->AddPlanReason(Outcome(*result, prior));
      // The estimate runs on the CPU within the reservation: the
      // refinement's own buffers are free again by now.
      REGSERVE_ASSIGN_OR_RETURN(
          refined, Confirmed(run, *result, std::max(1, r.threads()), host));
      if (refined) run->reg.field = std::move(result->field);
    }
    r.Release();
    if (!result.ok()) {
      const absl::StatusCode code = result.status().code();
      if (code == absl::StatusCode::kCancelled ||
          code == absl::StatusCode::kDeadlineExceeded) {
        return result.status();
      }
      host->AddPlanReason(absl::StrCat(
          "refinement failed on ", WarpDeviceName(plan.refine_device), ": ",
          result.status().message(), "; the field before it is used"));
    }
    host->Progress(
        Stage::kRefine, 1.0,
        refined ? "refined" : "the field before the refinement kept");
    return absl::OkStatus();
  }

  static bool AlreadyGood(const JobRun& run) {
    if (run.rec.info.spec.options.refine == RefineMode::kOn ||
        run.rec.info.plan.refine_device != WarpDevice::kCpu ||
        !run.reg_quality.has_value()) {
      return false;
    }
    const QualitySummary& q = run.reg_quality->summary;
    const int checked = q.measured + q.unmatched;
    return q.measured > 0 && q.p95_px <= kGoodEnoughP95 &&
           q.unmatched <= kMaxUnmatched * checked;
  }

  // Whether the refined field goes on: the LNCC rose (RefineResult::
  // improved) and the quality map's estimate agrees. The LNCC alone is not
  // enough: on the Kleiber photo under a strong homography (4 MP copies) the
  // refinement raised it from 0.9193 to 0.9241 while the true residual went
  // from 0.11 / 0.22 px (mean / p95) to 0.43 / 1.93 px; the estimate saw it
  // (p95 0.31 -> 1.16 px, unmatched patches 3 -> 96; field_choice.h). When
  // the estimate cannot be made, the LNCC decides.
  // Sets run->reg_quality to the estimate of the field that goes on, or
  // clears it when there is none.
  absl::StatusOr<bool> Confirmed(JobRun* run_ptr, const RefineResult& result,
                                 int threads, StageHost* host) const {
    if (!result.improved) return false;
    JobRun& run = *run_ptr;
    const QualityOptions q = Quality(run, threads);
    const QualityReport* known =
        run.reg_quality.has_value() ? &*run.reg_quality : nullptr;
    absl::StatusOr<FieldChoice> c = CompareFields(
        run.fixed_gray, run.moving_gray, run.reg.field, known, result.field, q);
    if (!c.ok()) {
      if (absl::IsCancelled(c.status()) ||
          absl::IsDeadlineExceeded(c.status())) {
        return c.status();
      }
      host->AddPlanReason(absl::StrCat(
          "refinement: the quality estimate failed (", c.status().message(),
          "); the refined field is used on the LNCC's word"));
      run.reg_quality.reset();
      return true;
    }
    host->AddPlanReason(absl::StrCat(
        c->candidate_better ? "refinement kept: " : "refinement dropped: ",
        "refined ", ChoiceFigures(c->candidate.summary), "; before ",
        ChoiceFigures(c->current.summary)));
    run.reg_quality =
        std::move(c->candidate_better ? c->candidate : c->current);
    return c->candidate_better;
  }

  static std::string Outcome(const RefineResult& r, bool prior) {
    return absl::StrFormat(
        "refinement on %s at %dx%d, %d levels, %d steps in %.1f s%s: LNCC "
        "%.4f -> %.4f%s",
        r.device, r.work_width, r.work_height, r.levels, r.iterations,
        r.seconds,
        prior ? ", bending measured from the initial alignment's homography"
              : "",
        r.initial_ncc, r.final_ncc,
        r.improved ? "; the stored TransformParameters are elastix's alone"
                   : " without a lower loss or a gain of 0.001 in LNCC; "
                     "the registration's field is kept");
  }

  int OrdinalOf(const Reservation& r) const {
    const auto& ordinals = s_.scheduler->config().gpu_ordinals;
    const int index = std::max(0, r.gpu());
    return index < static_cast<int>(ordinals.size()) ? ordinals[index] : index;
  }

  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeRefineStage(const StageServices* services) {
  return std::make_unique<RefineStage>(services);
}

}  // namespace regserve
