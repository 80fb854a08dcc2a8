// Copyright regserve authors.
//
// Conversions between the regserve.v1 protocol messages and the core types
// of core/jobs. No validation of spec contents happens here (that is
// JobManager's job); the only errors are for values the protocol cannot
// express in core terms (unknown enum values).
//
//   REGSERVE_ASSIGN_OR_RETURN(JobSpec spec,
//       SpecFromProto(request.spec(), manager->options()));
//   v1::JobEvent out;
//   EventToProto(event, tile_context, &out);
//
// Thread safety: pure functions.
#ifndef REGSERVE_SERVER_CONVERT_H_
#define REGSERVE_SERVER_CONVERT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/hardware/hardware.h"
#include "core/jobs/job_manager.h"
#include "core/scheduler/scheduler.h"
#include "regserve/v1/regserve.pb.h"

namespace regserve {

// UNSPECIFIED enum values and a zero max_registration_megapixels take the
// daemon defaults from `defaults`. InvalidArgument names the field of an
// unknown enum value.
absl::StatusOr<JobSpec> SpecFromProto(const v1::JobSpec& proto,
                                      const JobManager::Options& defaults);

// FIXED / MOVING; InvalidArgument for UNSPECIFIED or unknown values.
absl::StatusOr<ImageRole> RoleFromProto(int role);

v1::Stage StageToProto(Stage stage);
v1::JobState JobStateToProto(JobState state);
v1::SampleType SampleTypeToProto(SampleType type);
v1::TransformKind TransformToProto(TransformKind kind);

void PlanToProto(const Plan& plan, v1::Plan* out);
// The quality stage's summary, and its map with the thumbnail (patch
// rectangles in full-resolution pixels).
void QualitySummaryToProto(const QualitySummary& summary,
                           v1::QualitySummary* out);
void QualityMapToProto(const QualityMap& map, v1::QualityMap* out);
// code, code name and message of a non-OK status.
void FailureToProto(const absl::Status& status, v1::Failed* out);

// A TransformParameters file: base name and text.
using TransformFileText = std::pair<std::string, std::string>;

// JobInfo -> JobStatus. `transform_files` are the files' texts (read by the
// caller, which may do I/O; this function does none).
void JobInfoToProto(const JobInfo& info,
                    const std::vector<TransformFileText>& transform_files,
                    v1::JobStatus* out);

// What a tile message repeats about the whole output.
struct TileContext {
  int64_t image_width = 0;
  int64_t image_height = 0;
  int64_t tile_size = 0;
  int64_t tile_count = 0;
};

// Converts one event. For kCompleted, `transform_files` fills
// Completed.transform_files; it is ignored for other kinds.
void EventToProto(const JobEvent& event, const TileContext& tiles,
                  const std::vector<TransformFileText>& transform_files,
                  v1::JobEvent* out);

// GetServerInfo's answer from the three sources. `hardware` may be an error
// (the hardware fields are then left 0).
void ServerInfoToProto(const absl::StatusOr<HardwareSnapshot>& hardware,
                       const SchedulerStats& scheduler,
                       const SchedulerConfig& scheduler_config,
                       const JobManager::Stats& jobs,
                       const JobManager::Options& options,
                       int64_t max_message_bytes, v1::ServerInfo* out);

}  // namespace regserve

#endif  // REGSERVE_SERVER_CONVERT_H_
