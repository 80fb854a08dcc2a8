// Copyright regserve authors.
//
// Registration: runs elastix (and transformix for the field) on the
// grayscale copies, then keeps a self-contained copy of the transform files
// in the job directory. After an initial alignment H, elastix registers the
// fixed copy against the moving copy pre-warped by H (on the fixed grid),
// and the field kept is the total map x -> H(x + d(x)); the stored
// TransformParameters then describe d alone. Unless H alone fits better by
// the quality map's estimate (field_choice.h): then the field is H's and
// the plan says so. Memory: Plan::registration.
#include <algorithm>
#include <filesystem>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/image/field_ops.h"
#include "core/image/image_io.h"
#include "core/jobs/field_choice.h"
#include "core/jobs/stage_runner.h"

namespace regserve {
namespace {

namespace fs = std::filesystem;

class RegistrationStage final : public PipelineStage {
 public:
  explicit RegistrationStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return Stage::kRegistration; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    const JobRecord& rec = run->rec;
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(Lane::kCpu, rec.info.plan.registration.ram_bytes, 0,
                      "registration"));
    host->Started(Stage::kRegistration);
    const absl::Time start = absl::Now();
    RegistrationRequest req = Request(*run, r.threads());
    Image elastix_fixed, elastix_moving;  // elastix's pooled copies, if any
    REGSERVE_RETURN_IF_ERROR(PoolForElastix(*run, r.threads(), &elastix_fixed,
                                            &elastix_moving, &req));
    RemoveAllQuietly(req.work_dir);
    // Cancelled with the job; waited for (the future's destructor) on every
    // path out of this function.
    std::future<absl::StatusOr<StartAlone>> early =
        StartAloneBesideElastix(*run, req, r);
    req.on_progress = [host](const RegistrationProgress& p) {
      host->Progress(Stage::kRegistration, p.fraction, p.message, &p,
                     /*force=*/false);
    };
    absl::StatusOr<RegistrationResult> result = s_.register_fn(req, s_.elastix);
    if (!result.ok()) {
      const absl::Status s =
          WithoutPath(result.status(), run->dir.path(), "the job directory");
      return absl::Status(s.code(),
                          absl::StrCat("registration: ", s.message()));
    }
    run->reg = *std::move(result);
    // The grayscale copies stay for the later stages (quality frees them).
    REGSERVE_RETURN_IF_ERROR(ComposeWithInitial(run, r.threads(), host));
    const absl::Time choice_start = absl::Now();
    REGSERVE_RETURN_IF_ERROR(KeepTheBetterOfStartAndElastix(
        run, r.threads(), early.valid() ? &early : nullptr, host));
    host->AddPlanReason(absl::StrFormat(
        "registration: elastix %.2f s (CPU %.2f s), transformix %.2f s, the "
        "choice between the start and start + elastix %.2f s",
        run->reg.elastix_seconds, run->reg.elastix_cpu_seconds,
        run->reg.transformix_seconds,
        absl::ToDoubleSeconds(absl::Now() - choice_start)));
    std::vector<std::string> copied;
    REGSERVE_RETURN_IF_ERROR(
        CopyTransformFiles(req.work_dir, run->transform_dir,
                           run->reg.transform_parameter_files, &copied));
    RemoveAllQuietly(req.work_dir);
    host->Registered(run->transform_dir, std::move(copied), run->reg);
    host->Progress(
        Stage::kRegistration, 1.0,
        absl::StrFormat("registered: final metric %.6g, %d iterations",
                        run->reg.final_metric, run->reg.iterations));
    host->Finished(Stage::kRegistration, start);
    return absl::OkStatus();
  }

 private:
  // After an initial alignment the field is elastix's d on the pre-warped
  // copy: the total map is H(x + d(x)). The pre-warped copy goes.
  absl::Status ComposeWithInitial(JobRun* run, int threads,
                                  StageHost* host) const {
    if (run->moving_prewarped.empty()) return absl::OkStatus();
    run->moving_prewarped = Image();
    const Homography& h = run->initial.fixed_to_moving;
    absl::StatusOr<DisplacementField> total =
        ComposeHomographyField(h, run->reg.field, threads);
    if (!total.ok()) {
      return absl::Status(
          total.status().code(),
          absl::StrCat("registration: composing the field with the initial "
                       "alignment: ",
                       total.status().message()));
    }
    run->reg.field = *std::move(total);
    host->AddPlanReason(absl::StrFormat(
        "registration: the stored TransformParameters map the fixed image to "
        "the moving image pre-warped by the initial alignment; the whole "
        "fixed -> moving map (full-resolution pixels) is H(T(x)) with H = "
        "[%.9g %.9g %.9g; %.9g %.9g %.9g; %.9g %.9g %.9g]",
        h.m[0], h.m[1], h.m[2], h.m[3], h.m[4], h.m[5], h.m[6], h.m[7],
        h.m[8]));
    return absl::OkStatus();
  }

  // The initial alignment's homography alone as a field, and its estimate.
  struct StartAlone {
    DisplacementField field;
    QualityReport report;
  };

  static QualityOptions ChoiceOptions(const JobRun& run, int threads) {
    const JobRecord& rec = run.rec;
    QualityOptions q;
    q.fixed_full_width = rec.fixed_spec.width;
    q.fixed_full_height = rec.fixed_spec.height;
    q.moving_full_width = rec.moving_spec.width;
    q.moving_full_height = rec.moving_spec.height;
    q.threads = threads;
    q.cancel = run.cancel;
    return q;
  }

  static absl::StatusOr<StartAlone> EstimateStartAlone(const JobRun& run,
                                                       const GridGeometry& g,
                                                       int threads) {
    StartAlone a;
    REGSERVE_ASSIGN_OR_RETURN(
        a.field, HomographyField(run.initial.fixed_to_moving, g, threads));
    REGSERVE_ASSIGN_OR_RETURN(
        a.report, EstimateQuality(run.fixed_gray, run.moving_gray, a.field,
                                  ChoiceOptions(run, threads)));
    return a;
  }

  // elastix on a pooled copy leaves most of the reservation and some of a
  // core unused (it keeps 1.6 of 2 busy: docs/benchmarks.md, "The CPU
  // job's time"): the start alone is estimated meanwhile on one thread, on
  // the grid elastix's field will have (its fixed copy's). Not started
  // (invalid future) without a start, on one core, or where the
  // reservation does not hold elastix and the estimate together.
  static std::future<absl::StatusOr<StartAlone>> StartAloneBesideElastix(
      const JobRun& run, const RegistrationRequest& req, const Reservation& r) {
    const Plan& plan = run.rec.info.plan;
    if (!run.initial.found || r.threads() < 2 ||
        plan.elastix_fixed_width <= 0) {
      return {};
    }
    const int64_t elastix_px =
        std::max(req.fixed->width() * req.fixed->height(),
                 req.moving->width() * req.moving->height());
    const uint64_t both =
        RegistrationRamBytes(elastix_px) +
        QualityRamBytes(run.fixed_gray.width() * run.fixed_gray.height()) +
        2 * sizeof(float) * static_cast<uint64_t>(elastix_px);
    if (both > RegistrationRamBytes(plan.registration_fixed_width *
                                    plan.registration_fixed_height)) {
      return {};
    }
    const GridGeometry grid =
        RegistrationGrid(req.fixed->width(), req.fixed->height(),
                         req.fixed_full_width, req.fixed_full_height);
    return std::async(std::launch::async, [&run, grid] {
      return EstimateStartAlone(run, grid, 1);
    });
  }

  // elastix's B-spline after a good start can make the fit worse where the
  // images give its MI metric little to hold (field_choice.h: on the
  // benchmark the true p95 went from 0.22 to 1.75 px); the quality map's
  // estimates of the start alone and of start + elastix decide which field
  // goes on. `early`, when not null, is the start alone estimated beside
  // elastix. Memory: within the stage's reservation, elastix having exited
  // (QualityRamBytes and one more field are below RegistrationRamBytes).
  absl::Status KeepTheBetterOfStartAndElastix(
      JobRun* run, int threads, std::future<absl::StatusOr<StartAlone>>* early,
      StageHost* host) const {
    run->reg_quality.reset();
    if (!run->initial.found || run->reg.field.empty()) {
      return absl::OkStatus();
    }
    const DisplacementField& total = run->reg.field;
    absl::StatusOr<QualityReport> with = EstimateQuality(
        run->fixed_gray, run->moving_gray, total, ChoiceOptions(*run, threads));
    absl::StatusOr<StartAlone> alone =
        early != nullptr
            ? early->get()
            : EstimateStartAlone(*run,
                                 GridGeometry{total.width, total.height,
                                              total.origin_x, total.origin_y,
                                              total.spacing_x, total.spacing_y},
                                 threads);
    absl::StatusOr<FieldChoice> c;
    if (!with.ok() || !alone.ok()) {
      c = with.ok() ? alone.status() : with.status();
    } else {
      const bool better =
          CandidateIsBetter(with->summary, alone->report.summary);
      c = FieldChoice{*std::move(with), std::move(alone->report), better};
    }
    if (!c.ok()) {
      if (absl::IsCancelled(c.status()) ||
          absl::IsDeadlineExceeded(c.status())) {
        return c.status();
      }
      host->AddPlanReason(absl::StrCat(
          "registration: the initial alignment alone and with elastix could "
          "not be compared (",
          c.status().message(), "); elastix's field after it is used"));
      return absl::OkStatus();
    }
    if (!c->candidate_better) {
      host->AddPlanReason(absl::StrCat(
          "registration: elastix after the initial alignment kept (",
          ChoiceFigures(c->current.summary), "; the initial alignment alone: ",
          ChoiceFigures(c->candidate.summary), ")"));
      run->reg_quality = std::move(c->current);
      return absl::OkStatus();
    }
    run->reg.field = std::move(alone->field);
    run->reg_quality = std::move(c->candidate);
    host->AddPlanReason(absl::StrCat(
        "registration: the initial alignment alone is used (",
        ChoiceFigures(c->candidate.summary),
        "; with elastix after it: ", ChoiceFigures(c->current.summary),
        "): elastix made the fit worse, so the stored TransformParameters "
        "are not part of the result's map, which is the initial alignment's "
        "homography"));
    return absl::OkStatus();
  }

  // elastix's own copies when the plan pools the registration copies for it
  // (Plan::elastix_*, before a GPU refinement): `req` then points at them.
  absl::Status PoolForElastix(const JobRun& run, int threads, Image* fixed,
                              Image* moving, RegistrationRequest* req) const {
    const Plan& plan = run.rec.info.plan;
    if (plan.elastix_fixed_width <= 0 ||
        plan.elastix_fixed_width >= req->fixed->width()) {
      return absl::OkStatus();
    }
    // The pre-warped moving copy lies on the fixed grid.
    const bool on_fixed_grid = !run.moving_prewarped.empty();
    absl::StatusOr<Image> f =
        MakeGrayscaleCopy(*req->fixed, plan.elastix_fixed_width,
                          plan.elastix_fixed_height, threads);
    absl::StatusOr<Image> m = MakeGrayscaleCopy(
        *req->moving,
        on_fixed_grid ? plan.elastix_fixed_width : plan.elastix_moving_width,
        on_fixed_grid ? plan.elastix_fixed_height : plan.elastix_moving_height,
        threads);
    if (!f.ok() || !m.ok()) {
      const absl::Status& s = f.ok() ? m.status() : f.status();
      return absl::Status(
          s.code(),
          absl::StrCat("registration: elastix's copy: ", s.message()));
    }
    *fixed = *std::move(f);
    *moving = *std::move(m);
    req->fixed = fixed;
    req->moving = moving;
    return absl::OkStatus();
  }

  RegistrationRequest Request(const JobRun& run, int threads) const {
    const JobRecord& rec = run.rec;
    // The pre-warped copy lies on the fixed grid: its full-resolution frame
    // is the fixed image's.
    const bool prewarped = !run.moving_prewarped.empty();
    RegistrationRequest req;
    req.work_dir = run.registration_dir;
    req.fixed = &run.fixed_gray;
    req.moving = prewarped ? &run.moving_prewarped : &run.moving_gray;
    req.fixed_full_width = rec.fixed_spec.width;
    req.fixed_full_height = rec.fixed_spec.height;
    req.moving_full_width =
        prewarped ? rec.fixed_spec.width : rec.moving_spec.width;
    req.moving_full_height =
        prewarped ? rec.fixed_spec.height : rec.moving_spec.height;
    req.transform = rec.info.spec.options.transform;
    req.custom_parameters = rec.info.spec.custom_parameters;
    req.schedule.iteration_scale = rec.info.plan.elastix_iteration_scale;
    req.schedule.linear_stage =
        rec.info.plan.elastix_linear_stage || !run.initial.found;
    req.threads = threads;
    req.timeout = s_.registration_timeout;
    req.cancel = run.cancel;
    return req;
  }

  // Chained files name their predecessor by absolute path: the copies point
  // at each other, so the transform directory stands alone.
  absl::Status CopyTransformFiles(const std::string& work_dir,
                                  const std::string& transform_dir,
                                  const std::vector<std::string>& files,
                                  std::vector<std::string>* copied) const {
    std::error_code ec;
    fs::remove_all(transform_dir, ec);
    fs::create_directories(transform_dir, ec);
    if (ec) return WriteErrnoToStatus(ec.value(), "creating", transform_dir);
    for (const std::string& file : files) {
      REGSERVE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
      text = absl::StrReplaceAll(text, {{work_dir + "/", transform_dir + "/"}});
      const std::string dest =
          absl::StrCat(transform_dir, "/", fs::path(file).filename().string());
      REGSERVE_RETURN_IF_ERROR(s_.fs->WriteFileAtomic(dest, text));
      copied->push_back(dest);
    }
    return absl::OkStatus();
  }

  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeRegistrationStage(
    const StageServices* services) {
  return std::make_unique<RegistrationStage>(services);
}

}  // namespace regserve
