// Copyright regserve authors.
#include "core/jobs/job_types.h"

namespace regserve {

const char* RoleName(ImageRole role) {
  return role == ImageRole::kFixed ? "fixed" : "moving";
}

absl::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kUploading:
      return "uploading";
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kCompleted:
      return "completed";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

}  // namespace regserve
