// Copyright regserve authors.
//
// The on-disk form of a job: data_dir/jobs/<id>/{spec,state}. Both files are
// "key=value" lines; values escape '\\', '\n' and '\r' as \\, \n, \r, so any
// text (parameter files, error messages) round-trips. `spec` is written once
// at submission; `state` is rewritten atomically on every state change.
//
//   JobRecord rec;  ...
//   std::string text = EncodeJobState(rec);
//   JobRecord back;  REGSERVE_RETURN_IF_ERROR(DecodeJobState(text, &back));
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_JOBS_JOB_STORE_H_
#define REGSERVE_CORE_JOBS_JOB_STORE_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/image/image.h"
#include "core/jobs/job_types.h"

namespace regserve {

// Everything the manager persists about a job.
struct JobRecord {
  JobInfo info;           // id, principal, spec, state, plan, result...
  uint64_t sequence = 0;  // submission order (FIFO within a priority)
  // Runs ended by a graceful shutdown (checkpointed and re-queued). They
  // count in info.attempts but not against max_attempts, which limits the
  // runs lost to crashes.
  int checkpointed_runs = 0;
  // Input files actually decoded: uploads under the job dir, or the resolved
  // server-side paths (re-resolved under input_root before decoding).
  std::string fixed_input;
  std::string moving_input;
  bool have_input_specs = false;
  ImageSpec fixed_spec;
  ImageSpec moving_spec;
};

// spec: id, principal, sequence, created, the JobSpec.
std::string EncodeJobSpec(const JobRecord& record);
// state: everything else.
std::string EncodeJobState(const JobRecord& record);
// Fill the corresponding fields of *record. InvalidArgument (DataLoss for a
// truncated file) naming the bad key.
absl::Status DecodeJobSpec(absl::string_view text, JobRecord* record);
absl::Status DecodeJobState(absl::string_view text, JobRecord* record);

// The escaping used by both files, exposed for tests.
std::string EscapeValue(absl::string_view value);
absl::StatusOr<std::string> UnescapeValue(absl::string_view value);

// A 128-bit random id from /dev/urandom, as 32 lowercase hex digits.
absl::StatusOr<std::string> NewJobId();
// True for strings NewJobId could return (guards paths built from ids).
bool IsValidJobId(absl::string_view id);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_STORE_H_
