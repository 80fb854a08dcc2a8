// Copyright regserve authors.
//
// JobDir: the on-disk layout of one job, and the only place that builds its
// paths. Under data_dir/jobs/<id>/:
//
//   spec                   JobSpec, principal, sequence (written once)
//   state                  everything else (atomic rewrite)
//   inputs/<role>.<ext>    uploads (server-side inputs are referenced)
//   registration/          elastix work dir (removed after the stage)
//   registration/child.pid the running elastix/transformix, for recovery
//   transform/             TransformParameters.<i>.txt (self-contained)
//   result.partial.tif     the result while it is written
//   result.tif             the finished result (a tiled TIFF)
//   quality_map.bin        the quality stage's map (core/quality_map_io.h)
//   moving.spill           the moving image's raw tiles, when it is read by
//                          region and its file reads only in order
//   tiles/                 fleet mode: live result tiles for readers on
//                          other replicas (core/jobs/tile_spool.h)
//   *.lease-<token>*       fleet mode: each run's own registration work
//                          dir, partial result, quality map and transform
//                          dir (core/jobs/stage_runner.h, JobRun)
//
//   JobDir dir(jobs_dir, id);
//   fs->WriteFileAtomic(dir.state(), EncodeJobState(rec));
//   dir.RemoveWorkFiles(/*delete_uploads=*/true, /*keep_result=*/false);
//
// Thread safety: a value type; the Remove* methods touch only this job's
// files and may run concurrently with other jobs'.
#ifndef REGSERVE_CORE_JOBS_JOB_DIR_H_
#define REGSERVE_CORE_JOBS_JOB_DIR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/jobs/job_types.h"

namespace regserve {

class JobDir {
 public:
  // `jobs_dir` is data_dir/jobs (absolute); `id` a valid job id.
  JobDir(const std::string& jobs_dir, const std::string& id);

  const std::string& path() const { return path_; }
  std::string spec() const { return path_ + "/spec"; }
  std::string state() const { return path_ + "/state"; }
  std::string inputs() const { return path_ + "/inputs"; }
  // The upload of `role`, with the extension of the client's file name.
  std::string upload(ImageRole role, absl::string_view extension) const;
  std::string registration() const { return path_ + "/registration"; }
  std::string child_pid() const { return registration() + "/child.pid"; }
  std::string transform() const { return path_ + "/transform"; }
  std::string partial_result() const { return path_ + "/result.partial.tif"; }
  std::string result() const { return path_ + "/result.tif"; }
  std::string quality_map() const { return path_ + "/quality_map.bin"; }
  std::string spill() const { return path_ + "/moving.spill"; }
  std::string tile_spool() const { return path_ + "/tiles"; }

  // A path recorded inside this job's directory when the data directory
  // was elsewhere ("<old data_dir>/jobs/<id>/..."), moved under path().
  // Other paths (server-side inputs) are returned unchanged.
  std::string Rebase(const std::string& recorded) const;

  // Removes what a job no longer needs: the registration work dir, the
  // spill, the tile spool and a partial result always, the uploads if
  // `delete_uploads`, and the result, transform and quality map unless
  // `keep_result`. Errors are ignored (best effort).
  void RemoveWorkFiles(bool delete_uploads, bool keep_result) const;
  // The whole directory; the state file first, since a directory without
  // one is debris to recovery.
  void RemoveAll() const;

 private:
  std::string id_;
  std::string path_;
};

// `status` with every mention of `path` (a file on the server) replaced by
// `name` ("the fixed image"): messages go to remote clients, who must not
// learn where the daemon keeps its files.
absl::Status WithoutPath(const absl::Status& status, const std::string& path,
                         absl::string_view name);

// Best-effort removal of a file or a tree; errors are ignored.
void RemoveQuietly(const std::string& path);
void RemoveAllQuietly(const std::string& path);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_DIR_H_
