// Copyright regserve authors.
//
// Initial alignment: the robust start (core/registration/robust_start)
// between decode and registration. When it finds a fixed -> moving
// homography, the moving registration copy is pre-warped onto the fixed
// copy's grid (run->moving_prewarped) and the homography kept in
// run->initial, so that elastix only has to find what is left; the
// registration stage composes the two. When it finds none (too few reliable
// matches, or OpenCV failed) the job goes on from elastix's own start (the
// image centres) and the plan says why. Memory: Plan::initial_alignment.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/image/field_ops.h"
#include "core/jobs/stage_runner.h"

namespace regserve {
namespace {

// The richest start the job's transform can use: a rigid job does not get
// a shear or a perspective from its start.
AlignmentModel MaxModelFor(TransformKind kind) {
  switch (kind) {
    case TransformKind::kRigid:
      return AlignmentModel::kSimilarity;
    case TransformKind::kAffine:
      return AlignmentModel::kAffine;
    case TransformKind::kBSpline:
      return AlignmentModel::kHomography;
  }
  return AlignmentModel::kHomography;
}

class InitialAlignmentStage final : public PipelineStage {
 public:
  explicit InitialAlignmentStage(const StageServices* services)
      : s_(*services) {}
  std::optional<Stage> stage() const override {
    return Stage::kInitialAlignment;
  }

  absl::Status Run(JobRun* run, StageHost* host) override {
    const JobRecord& rec = run->rec;
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(Lane::kCpu, rec.info.plan.initial_alignment.ram_bytes, 0,
                      "initial alignment"));
    host->Started(Stage::kInitialAlignment);
    const absl::Time start = absl::Now();
    host->Progress(Stage::kInitialAlignment, 0.0,
                   "matching features between the registration copies");
    RobustStartOptions o;
    o.fixed_full_width = rec.fixed_spec.width;
    o.fixed_full_height = rec.fixed_spec.height;
    o.moving_full_width = rec.moving_spec.width;
    o.moving_full_height = rec.moving_spec.height;
    o.max_model = MaxModelFor(rec.info.spec.options.transform);
    o.threads = r.threads();
    o.cancel = run->cancel;
    absl::StatusOr<InitialAlignment> a =
        s_.align_fn
            ? s_.align_fn(run->fixed_gray, run->moving_gray, o)
            : EstimateInitialAlignment(run->fixed_gray, run->moving_gray, o);
    REGSERVE_RETURN_IF_ERROR(run->cancel->Check());
    std::string reason;
    if (!a.ok()) {
      // The start is an aid: without it registration runs as before.
      reason = absl::StrCat("failed (", a.status().message(), ")");
    } else if (!a->found) {
      reason = a->reason;
    } else {
      host->Progress(
          Stage::kInitialAlignment, 0.8,
          absl::StrCat("found a ", a->reason, "; pre-warping the moving copy"));
      REGSERVE_RETURN_IF_ERROR(PreWarp(*a, r.threads(), run));
      run->initial = *a;
    }
    const std::string line =
        run->initial.found
            ? absl::StrFormat(
                  "initial alignment: %s in %.1f s; elastix registers the "
                  "fixed copy against the moving copy pre-warped by it",
                  run->initial.reason, run->initial.seconds)
            : absl::StrCat("initial alignment: ", reason,
                           "; elastix starts from the image centres");
    host->AddPlanReason(line);
    r.Release();
    host->Progress(Stage::kInitialAlignment, 1.0, line);
    host->Finished(Stage::kInitialAlignment, start);
    return absl::OkStatus();
  }

 private:
  // The moving copy resampled onto the fixed copy's grid through H. Where
  // the fixed copy sees no moving data it is filled with the fixed copy
  // itself: a black outside would be an edge elastix tries to align (photo
  // with a strong homography: residual p95 7.8 px after elastix with black,
  // 2.4 px with the fixed copy; docs/benchmarks.md, "Robust start").
  absl::Status PreWarp(const InitialAlignment& a, int threads,
                       JobRun* run) const {
    const JobRecord& rec = run->rec;
    const GridGeometry fixed_grid =
        RegistrationGrid(run->fixed_gray.width(), run->fixed_gray.height(),
                         rec.fixed_spec.width, rec.fixed_spec.height);
    const GridGeometry moving_grid =
        RegistrationGrid(run->moving_gray.width(), run->moving_gray.height(),
                         rec.moving_spec.width, rec.moving_spec.height);
    Image valid;
    absl::StatusOr<Image> warped =
        WarpByHomography(run->moving_gray, moving_grid, a.fixed_to_moving,
                         fixed_grid, 0.0f, &valid, threads);
    absl::Status s = warped.status();
    if (s.ok()) s = FillInvalid(valid, run->fixed_gray, &*warped);
    if (!s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("initial alignment: pre-warping the moving "
                                 "copy: ",
                                 s.message()));
    }
    run->moving_prewarped = *std::move(warped);
    return absl::OkStatus();
  }

  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeInitialAlignmentStage(
    const StageServices* services) {
  return std::make_unique<InitialAlignmentStage>(services);
}

}  // namespace regserve
