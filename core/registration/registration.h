// Copyright regserve authors.
//
// Registration of two grayscale registration copies with the elastix and
// transformix programs, run as child processes in a per-job work directory
// (Debian ships only the programs, no library).
//
//   RegistrationRequest req;
//   req.work_dir = "/var/lib/regserve/jobs/ab12/registration";  // absolute
//   req.fixed = &fixed_gray;  // float32, 1 channel
//   req.moving = &moving_gray;
//   req.fixed_full_width = 18960;  // full-resolution sizes
//   ...
//   req.transform = TransformKind::kBSpline;
//   REGSERVE_ASSIGN_OR_RETURN(RegistrationResult r,
//                             Register(req, ElastixConfig{}));
//   // r.field is in full-resolution pixels (see displacement_field.h).
//
// The registration copies are written as MetaImages whose spacing is the
// downsampling factor and whose origin is (factor - 1) / 2, so elastix's
// physical coordinates are full-resolution pixel coordinates and the
// displacement field comes out in full-resolution pixels.
//
// Thread safety: Register is thread-safe for distinct work directories.
#ifndef REGSERVE_CORE_REGISTRATION_REGISTRATION_H_
#define REGSERVE_CORE_REGISTRATION_REGISTRATION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/common/cancel.h"
#include "core/common/types.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"

namespace regserve {

struct ElastixConfig {
  std::string elastix_path = "elastix";  // looked up in PATH if relative
  std::string transformix_path = "transformix";
};

struct RegistrationProgress {
  int stage = 0;  // 0-based parameter file index
  int num_stages = 1;
  int resolution = 0;  // 0-based
  int num_resolutions = 1;
  int iteration = 0;  // within the resolution
  int max_iterations = 0;
  double metric = 0.0;
  double fraction = 0.0;  // overall 0..1
  // e.g. "stage 2/2 (bspline), resolution 3/4, iteration 120/500,
  // metric -0.81"
  std::string message;
};

// How much of the preset elastix runs: a refinement that follows on the GPU
// does the fine work, so elastix may run a lighter schedule before it
// (Plan::elastix_*). Ignored for custom parameter files.
struct PresetSchedule {
  // kBSpline: the affine stage before the B-spline one. Without it the
  // B-spline starts from the initial alignment (or the images' centres).
  bool linear_stage = true;
  // Each stage's MaximumNumberOfIterations times this (at least 16).
  double iteration_scale = 1.0;
};

struct RegistrationRequest {
  std::string work_dir;           // absolute; created if missing
  const Image* fixed = nullptr;   // float32, 1 channel registration copy
  const Image* moving = nullptr;  // float32, 1 channel registration copy
  int64_t fixed_full_width = 0;   // full-resolution sizes, for the spacing
  int64_t fixed_full_height = 0;
  int64_t moving_full_width = 0;
  int64_t moving_full_height = 0;
  TransformKind transform = TransformKind::kBSpline;
  // Custom elastix parameter files (their text). When non-empty they replace
  // the preset, run in order. Validated with ValidateParameterText.
  std::vector<std::string> custom_parameters;
  PresetSchedule schedule;
  int threads = 1;                          // elastix -threads
  absl::Duration timeout = absl::Hours(2);  // whole registration
  const CancelToken* cancel = nullptr;      // may be null
  // May be null. Called serially from an internal thread (the one reading
  // elastix's output), at most ~10 times a second plus at every stage or
  // resolution change, and once with fraction 1 on success. Keep it short:
  // elastix stalls while it runs.
  std::function<void(const RegistrationProgress&)> on_progress;
};

struct RegistrationResult {
  // Absolute paths of TransformParameters.<i>.txt in the work directory.
  std::vector<std::string> transform_parameter_files;
  DisplacementField field;  // on the fixed registration grid
  double final_metric = 0.0;
  int64_t iterations = 0;  // total over stages and resolutions
  double elastix_seconds = 0.0;
  double transformix_seconds = 0.0;
  double elastix_cpu_seconds = 0.0;  // user + system (ProcessResult)
  // Peak resident memory of the elastix / transformix child (its sampled
  // VmHWM; see ProcessResult::peak_rss_bytes).
  int64_t elastix_peak_rss_bytes = 0;
  int64_t transformix_peak_rss_bytes = 0;
};

// Errors: InvalidArgument (bad request or parameters), FailedPrecondition
// ("images do not overlap" and other elastix failures, with elastix's own
// message), Cancelled, DeadlineExceeded (timeout; the process group is
// killed), Unavailable (elastix program missing).
absl::StatusOr<RegistrationResult> Register(const RegistrationRequest& request,
                                            const ElastixConfig& config);

class ProcessRunner;  // core/registration/process.h
// Same, running the programs through `runner` (not owned; tests pass a fake).
absl::StatusOr<RegistrationResult> Register(const RegistrationRequest& request,
                                            const ElastixConfig& config,
                                            ProcessRunner* runner);

// The preset parameter files for `kind`, scaled to a registration copy of
// width x height (B-spline grid spacing, sample counts). kBSpline gives two
// files (affine, then B-spline; only the B-spline one without
// schedule.linear_stage); the others give one.
std::vector<std::string> PresetParameters(TransformKind kind, int64_t width,
                                          int64_t height,
                                          const PresetSchedule& schedule = {});

// Validates a user-supplied elastix parameter file: well-formed
// "(Name value ...)" lines, known-safe keys only for anything that names
// files or directories, no output paths outside the work directory, and no
// components this elastix build lacks. InvalidArgument names the bad line.
absl::Status ValidateParameterText(absl::string_view text);

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_REGISTRATION_H_
