// Copyright regserve authors.
//
// The seams of the JobManager: the file system it writes its job store
// through, the registration and warper factories, and test hooks. The daemon
// uses DefaultJobFileSystem() and the real Register/Warper::Create; tests
// inject failures (a full disk) and fakes (a registration that blocks).
//
//   JobManagerEnv env;
//   env.fs = &failing_fs;                 // not owned
//   env.pipeline_threads = 0;             // queue only, never run
//   REGSERVE_ASSIGN_OR_RETURN(auto m,      // core/jobs/job_manager.h
//       CreateJobManagerWithEnv(opts, &scheduler, &probe, std::move(env)));
//
// Thread safety: JobFileSystem implementations must be thread-safe; the hooks
// are called from pipeline threads concurrently.
#ifndef REGSERVE_CORE_JOBS_JOB_ENV_H_
#define REGSERVE_CORE_JOBS_JOB_ENV_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/registration/registration.h"
#include "core/registration/robust_start.h"
#include "core/warp/warp.h"

namespace regserve {

// The writes the job store makes. Errors: ResourceExhausted when the disk is
// full (ENOSPC/EDQUOT), with the path and what to do; Internal otherwise.
class JobFileSystem {
 public:
  virtual ~JobFileSystem() = default;
  // Writes `contents` to a temporary file beside `path`, fsyncs it, renames it
  // over `path` and fsyncs the directory. On error `path` is unchanged and the
  // temporary file is removed.
  virtual absl::Status WriteFileAtomic(const std::string& path,
                                       absl::string_view contents) = 0;
  // Appends to `path` (created if missing). On error the file may hold a
  // prefix of `bytes`; callers discard the whole file.
  virtual absl::Status AppendToFile(const std::string& path,
                                    absl::Span<const uint8_t> bytes) = 0;
  // fsyncs `path` (a file written by AppendToFile, or a directory), then its
  // directory, so that a new or renamed entry survives a power loss too.
  virtual absl::Status SyncFile(const std::string& path) = 0;
};

// POSIX implementation. Process-wide, thread-safe, never null.
JobFileSystem* DefaultJobFileSystem();

// Converts an errno from a write into a Status naming `what`.
absl::Status WriteErrnoToStatus(int err, absl::string_view what,
                                absl::string_view path);

using RegisterFunction = std::function<absl::StatusOr<RegistrationResult>(
    const RegistrationRequest&, const ElastixConfig&)>;
using AlignFunction = std::function<absl::StatusOr<InitialAlignment>(
    const Image& fixed_gray, const Image& moving_gray,
    const RobustStartOptions& options)>;
using WarperFactory = std::function<absl::StatusOr<std::unique_ptr<Warper>>(
    WarpDevice device, int cuda_device)>;

struct JobManagerEnv {
  JobFileSystem* fs = nullptr;   // null: DefaultJobFileSystem()
  RegisterFunction register_fn;  // empty: regserve::Register
  AlignFunction align_fn;        // empty: EstimateInitialAlignment
  WarperFactory create_warper;   // empty: Warper::Create
  // -1: from Options (0 there means automatic); 0 here: no pipeline threads,
  // jobs are only queued (restart tests).
  int pipeline_threads = -1;
  // Called on the pipeline thread before a stage acquires its resources.
  std::function<void(const std::string& job_id, Stage stage)> before_stage;
  // Free bytes of the file system holding `dir` (a spill must fit there
  // before its job is accepted); empty: std::filesystem::space. Nullopt
  // when unknown (the check is then skipped).
  std::function<std::optional<uint64_t>(const std::string& dir)>
      free_disk_bytes;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_ENV_H_
