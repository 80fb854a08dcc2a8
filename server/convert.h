// Copyright regserve authors.
//
// Conversions between the regserve.v1 protocol messages and the core types
// of core/jobs. No validation of spec contents happens here, and no daemon
// default is applied (both are JobManager's job, in CreateJob); the only
// errors are for values the protocol cannot express in core terms (unknown
// enum values).
//
//   REGSERVE_ASSIGN_OR_RETURN(JobSpec spec, SpecFromProto(request.spec()));
//   v1::JobEvent out;
//   EventToProto(event, /*transform_files=*/{}, &out);
//
// Thread safety: pure functions.
#ifndef REGSERVE_SERVER_CONVERT_H_
#define REGSERVE_SERVER_CONVERT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/hardware/hardware.h"
#include "core/jobs/job_manager.h"
#include "core/scheduler/scheduler.h"
#include "regserve/v1/regserve.pb.h"

namespace regserve {

// Converts only: DEVICE_UNSPECIFIED becomes DevicePreference::kUnspecified
// and a max_registration_megapixels of 0 stays 0 (the core applies the
// daemon's defaults when it validates the spec); the other UNSPECIFIED enum
// values become the protocol's documented defaults (B-spline, full
// resolution, linear). InvalidArgument names the field of an unknown enum
// value by its proto path ("spec.transform").
absl::StatusOr<JobSpec> SpecFromProto(const v1::JobSpec& proto);

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
v1::TileEncoding TileEncodingToProto(TileEncoding encoding);
// A request's tile encoding: UNSPECIFIED and RAW are kRaw; InvalidArgument
// naming `field` and the choices for unknown values.
absl::StatusOr<TileEncoding> TileEncodingFromProto(int encoding,
                                                   absl::string_view field);
// code, code name and message of a non-OK status.
void FailureToProto(const absl::Status& status, v1::Failed* out);

// JobInfo -> JobStatus. `transform_files` are the files' texts (from
// JobManager::ReadTransformFiles; this function does no I/O).
void JobInfoToProto(const JobInfo& info,
                    const std::vector<TransformFile>& transform_files,
                    v1::JobStatus* out);

// Cancel's answer: the job's state after the request, and why it ended
// when it is failed or cancelled.
void CancelResponseFromInfo(const JobInfo& info, v1::CancelResponse* out);

// Converts one event. A tile's geometry (rectangle, image size, tile edge
// and count) comes from the event's own TileGrid. For kCompleted,
// `transform_files` fills Completed.transform_files; it is ignored for other
// kinds.
void EventToProto(const JobEvent& event,
                  const std::vector<TransformFile>& transform_files,
                  v1::JobEvent* out);

// Submit's first event: the job exists. `upload_bytes` is the sum of the
// spec's declared uploads.
void CreatedEventToProto(const std::string& job_id, uint64_t upload_bytes,
                         v1::JobEvent* out);

// GetServerInfo's answer from the three sources. `hardware` may be an error
// (the hardware fields are then left 0).
void ServerInfoToProto(const absl::StatusOr<HardwareSnapshot>& hardware,
                       const SchedulerStats& scheduler,
                       const SchedulerConfig& scheduler_config,
                       const JobManager::Stats& jobs,
                       const JobManager::Options& options,
                       int64_t max_message_bytes, v1::ServerInfo* out);

// Fleet mode: this replica's name and the fleet's replicas.
void FleetToProto(const std::string& self,
                  const std::vector<JobManager::FleetReplica>& replicas,
                  absl::Time now, v1::ServerInfo* out);

}  // namespace regserve

#endif  // REGSERVE_SERVER_CONVERT_H_
