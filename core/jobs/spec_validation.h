// Copyright regserve authors.
//
// The one place where a submitted JobSpec is validated and the daemon's
// defaults are applied to what the client left unset (device, registration
// megapixels). Messages name the protocol's field paths
// ("spec.fixed.upload.byte_size"), so a client can find what to fix.
//
//   SpecDefaults d;  d.device = DevicePreference::kCpu;  ...
//   REGSERVE_ASSIGN_OR_RETURN(JobSpec spec, ValidateJobSpec(in, d));
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_JOBS_SPEC_VALIDATION_H_
#define REGSERVE_CORE_JOBS_SPEC_VALIDATION_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/jobs/job_types.h"

namespace regserve {

// What the daemon fills in, and its limits on a spec.
struct SpecDefaults {
  DevicePreference device = DevicePreference::kAuto;
  double max_registration_megapixels = 20.0;
  uint64_t max_upload_bytes = 8ull << 30;
};

// The spec with defaults applied, or InvalidArgument naming the field.
absl::StatusOr<JobSpec> ValidateJobSpec(const JobSpec& spec,
                                        const SpecDefaults& defaults);

// "spec.fixed" or "spec.moving": the prefix of a role's field paths.
std::string SourceField(ImageRole role);

// The lower-case extension of a validated upload name ("tif").
std::string UploadExtension(absl::string_view upload_name);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_SPEC_VALIDATION_H_
