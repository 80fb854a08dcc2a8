// Copyright regserve authors.
//
// Quality: estimates the residual misalignment of the registration's field
// on the grayscale copies (core/quality), keeps the summary and the map
// (with a thumbnail of the fixed copy) for the completed event, and frees
// the copies. The map is kept on disk (JobDir::quality_map): a finished job
// holds it in memory only until its terminal event is out. The estimate is
// advice: when it cannot be made the job goes on, and says so. Memory:
// Plan::quality.
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/common/file_util.h"
#include "core/common/status_macros.h"
#include "core/jobs/stage_runner.h"
#include "core/quality/quality_map_io.h"

namespace regserve {
namespace {

// The thumbnail's longer edge: 1024 px of 8-bit grey is at most 1 MiB,
// which keeps the completed event well within gRPC's 4 MiB.
constexpr int kThumbnailEdge = 1024;

class QualityStage final : public PipelineStage {
 public:
  explicit QualityStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return Stage::kQuality; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    const Plan& plan = run->rec.info.plan;
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(Lane::kCpu, plan.quality.ram_bytes, 0, "quality"));
    host->Started(Stage::kQuality);
    const absl::Time start = absl::Now();
    host->Progress(Stage::kQuality, 0.0,
                   "estimating the residual misalignment");
    QualityOptions options;
    options.fixed_full_width = run->rec.fixed_spec.width;
    options.fixed_full_height = run->rec.fixed_spec.height;
    options.moving_full_width = run->rec.moving_spec.width;
    options.moving_full_height = run->rec.moving_spec.height;
    options.threads = r.threads();
    options.cancel = run->cancel;
    // The registration or refine stage may have estimated this very field.
    absl::StatusOr<QualityReport> report =
        run->reg_quality.has_value()
            ? *std::move(run->reg_quality)
            : EstimateQuality(run->fixed_gray, run->moving_gray, run->reg.field,
                              options);
    run->reg_quality.reset();
    if (!report.ok() && IsStop(report.status())) return report.status();
    auto map = std::make_shared<QualityMap>();
    QualitySummary summary;
    if (report.ok()) {
      summary = report->summary;
      map->grid = std::move(report->grid);
      absl::StatusOr<Image> thumb =
          MakeQualityThumbnail(run->fixed_gray, kThumbnailEdge);
      if (thumb.ok()) map->thumbnail = *std::move(thumb);
      const absl::Status stored =
          s_.fs->WriteFileAtomic(run->quality_map, EncodeQualityMap(*map));
      if (!stored.ok()) {  // then only the live readers get the map
        host->AddPlanReason(
            absl::StrCat("quality map: not stored: ", stored.message()));
      }
    } else {
      summary.warning = absl::StrCat("the residual could not be estimated: ",
                                     report.status().message());
      host->AddPlanReason(absl::StrCat("quality map: ", summary.warning));
    }
    // The copies are not needed after this stage (see JobRun).
    run->fixed_gray = Image();
    run->moving_gray = Image();
    host->QualityEstimated(summary, std::move(map));
    r.Release();
    host->Progress(
        Stage::kQuality, 1.0,
        summary.computed ? QualitySummaryLine(summary) : summary.warning);
    host->Finished(Stage::kQuality, start);
    return absl::OkStatus();
  }

 private:
  static bool IsStop(const absl::Status& s) {
    return s.code() == absl::StatusCode::kCancelled ||
           s.code() == absl::StatusCode::kDeadlineExceeded;
  }

  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeQualityStage(const StageServices* services) {
  return std::make_unique<QualityStage>(services);
}

absl::StatusOr<std::shared_ptr<const QualityMap>> ReadStoredQualityMap(
    const JobDir& dir) {
  absl::StatusOr<std::string> bytes = ReadFileToString(dir.quality_map());
  if (!bytes.ok()) {
    return absl::NotFoundError("the job has no stored quality map");
  }
  REGSERVE_ASSIGN_OR_RETURN(QualityMap map, DecodeQualityMap(*bytes));
  return std::make_shared<const QualityMap>(std::move(map));
}

}  // namespace regserve
