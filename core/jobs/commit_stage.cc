// Copyright regserve authors.
//
// Commit: makes the written result durable under its final name (fsync,
// rename, fsync of the directory entry) before the job is reported
// completed. Part of the warp stage as far as progress and hooks go.
#include <cerrno>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/jobs/stage_runner.h"

namespace regserve {
namespace {

class CommitStage final : public PipelineStage {
 public:
  explicit CommitStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return std::nullopt; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    if (!run->result_written) return absl::InternalError("no result written");
    const std::string partial = run->dir.partial_result();
    const std::string final_path = run->dir.result();
    absl::Status s = s_.fs->SyncFile(partial);
    if (s.ok() && rename(partial.c_str(), final_path.c_str()) != 0) {
      s = WriteErrnoToStatus(errno, "renaming", partial);
    }
    // The rename itself, before the state says completed.
    if (s.ok()) s = s_.fs->SyncFile(final_path);
    if (!s.ok()) {
      RemoveQuietly(partial);
      s = WithoutPath(WithoutPath(s, partial, "the result"), final_path,
                      "the result");
      return absl::Status(s.code(),
                          absl::StrCat("writing the result: ", s.message()));
    }
    host->Committed(final_path);
    return absl::OkStatus();
  }

 private:
  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeCommitStage(const StageServices* services) {
  return std::make_unique<CommitStage>(services);
}

}  // namespace regserve
