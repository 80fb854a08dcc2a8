// Copyright regserve authors.
//
// Commit: makes the written result durable under its final name (fsync,
// rename, fsync of the directory entry) and copies it to the spec's output
// path, if any, before the job is reported completed. Part of the warp
// stage as far as progress and hooks go.
#include <cerrno>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/jobs/stage_runner.h"

namespace regserve {
namespace {

class CommitStage final : public PipelineStage {
 public:
  explicit CommitStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return std::nullopt; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    if (!run->result_written) return absl::InternalError("no result written");
    REGSERVE_RETURN_IF_ERROR(host->MayCommit());
    const std::string partial = run->partial_result;
    const std::string final_path = run->dir.result();
    absl::Status s = s_.fs->SyncFile(partial);
    if (s.ok() && rename(partial.c_str(), final_path.c_str()) != 0) {
      s = WriteErrnoToStatus(errno, "renaming", partial);
    }
    // The rename itself, before the state says completed.
    if (s.ok()) s = s_.fs->SyncFile(final_path);
    // A fleet run's quality map, where readers of the finished job look.
    if (s.ok() && run->quality_map != run->dir.quality_map()) {
      (void)rename(run->quality_map.c_str(), run->dir.quality_map().c_str());
    }
    if (!s.ok()) {
      RemoveQuietly(partial);
      s = WithoutPath(WithoutPath(s, partial, "the result"), final_path,
                      "the result");
      return absl::Status(s.code(),
                          absl::StrCat("writing the result: ", s.message()));
    }
    std::string output;
    REGSERVE_ASSIGN_OR_RETURN(output,
                              WriteOutput(run->rec.info.spec, final_path));
    host->Committed(final_path, output);
    return absl::OkStatus();
  }

 private:
  // The stored result copied to spec.output_path; "" when it names none.
  // The path is resolved again: the tree under the output root may have
  // changed since the job was submitted.
  absl::StatusOr<std::string> WriteOutput(const JobSpec& spec,
                                          const std::string& result) {
    if (spec.output_path.empty()) return std::string();
    absl::StatusOr<std::string> target = s_.output_root->Resolve(
        "spec.output_path", spec.output_path, spec.overwrite_output);
    absl::Status s = target.status();
    if (s.ok()) s = CopyFileAtomically(result, *target, spec.overwrite_output);
    if (!s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat("writing the output: ", s.message()));
    }
    return *target;
  }

  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeCommitStage(const StageServices* services) {
  return std::make_unique<CommitStage>(services);
}

}  // namespace regserve
