// Copyright regserve authors.
#include "core/jobs/stage_runner.h"

#include "core/common/status_macros.h"
#include "core/jobs/spec_validation.h"

namespace regserve {

std::vector<std::unique_ptr<PipelineStage>> DefaultPipeline(
    const StageServices* services) {
  std::vector<std::unique_ptr<PipelineStage>> stages;
  stages.push_back(MakeDecodeStage(services));
  stages.push_back(MakeInitialAlignmentStage(services));
  stages.push_back(MakeRegistrationStage(services));
  stages.push_back(MakeRefineStage(services));
  stages.push_back(MakeQualityStage(services));
  stages.push_back(MakeWarpStage(services));
  stages.push_back(MakeCommitStage(services));
  return stages;
}

absl::Status RunPipeline(
    const std::vector<std::unique_ptr<PipelineStage>>& stages,
    const StageServices& services, JobRun* run, StageHost* host) {
  if (!run->rec.info.has_plan || !run->rec.have_input_specs) {
    return absl::InternalError("job has no plan");
  }
  for (const auto& stage : stages) {
    const std::optional<Stage> id = stage->stage();
    if (id.has_value() && services.before_stage) {
      services.before_stage(run->rec.info.id, *id);
    }
    REGSERVE_RETURN_IF_ERROR(run->cancel->Check());
    REGSERVE_RETURN_IF_ERROR(stage->Run(run, host));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> InputPathFor(const StageServices& services,
                                         const JobRecord& rec, ImageRole role) {
  const ImageSource& src =
      role == ImageRole::kFixed ? rec.info.spec.fixed : rec.info.spec.moving;
  if (!src.path.empty()) {
    return services.input_root->Resolve(
        absl::StrCat(SourceField(role), ".server_path"), src.path);
  }
  return role == ImageRole::kFixed ? rec.fixed_input : rec.moving_input;
}

}  // namespace regserve
