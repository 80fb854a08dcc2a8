// Copyright regserve authors.
//
// The job vocabulary: roles, states, the spec a client submits, the snapshot
// a client reads, and the events a client watches. The job store, the
// pipeline stages and the server include this, not the manager.
//
//   JobSpec spec;
//   spec.fixed.path = "scans/a.tif";          // under --input_root
//   spec.moving.upload_bytes = 1 << 20;       // uploaded
//   spec.moving.upload_name = "b.png";
//
// Thread safety: plain values.
#ifndef REGSERVE_CORE_JOBS_JOB_TYPES_H_
#define REGSERVE_CORE_JOBS_JOB_TYPES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/common/tile_grid.h"
#include "core/common/types.h"
#include "core/image/image.h"
#include "core/image/tile_wire_codec.h"
#include "core/plan/plan.h"
#include "core/quality/quality_map.h"
#include "core/registration/registration.h"

namespace regserve {

enum class ImageRole { kFixed = 0, kMoving = 1 };
// "fixed" or "moving": the proto's field names.
const char* RoleName(ImageRole role);

enum class JobState {
  kUploading = 0,
  kQueued = 1,
  kRunning = 2,  // see JobInfo::stage
  kCompleted = 3,
  kFailed = 4,
  kCancelled = 5,
};
absl::string_view JobStateName(JobState state);
inline bool IsTerminal(JobState s) {
  return s == JobState::kCompleted || s == JobState::kFailed ||
         s == JobState::kCancelled;
}

// Where an input image comes from.
struct ImageSource {
  // Server-side path, relative to (or absolute under) input_root. Empty when
  // the image is uploaded.
  std::string path;
  // For uploads: the exact byte size the client will send, and a file name
  // whose extension names the format ("scan.tif").
  uint64_t upload_bytes = 0;
  std::string upload_name;
};

struct JobSpec {
  ImageSource fixed;
  ImageSource moving;
  JobOptions options;                          // transform, max MP, device, ...
  std::vector<std::string> custom_parameters;  // elastix parameter texts
  int priority = 0;                            // higher runs first; FIFO within
  double fill_value = 0.0;
  std::string client_label;  // free text, shown in ListJobs
  // Where the commit also writes the stored result: relative to (or
  // absolute under) the daemon's output_root; empty = nowhere. Validated
  // and resolved at CreateJob (OutputRoot), and stored resolved.
  std::string output_path;
  bool overwrite_output = false;  // replace a file already there
};

struct StageTiming {
  Stage stage;
  double seconds = 0.0;
};

// A snapshot of a job, safe to copy.
struct JobInfo {
  std::string id;
  std::string principal;
  JobSpec spec;
  JobState state = JobState::kQueued;
  Stage stage = Stage::kUpload;  // current or last stage
  double stage_fraction = 0.0;
  std::string stage_detail;  // e.g. elastix progress message
  int queue_position = 0;    // 1-based while queued, else 0
  bool has_plan = false;
  Plan plan;
  absl::Status failure;  // kFailed / kCancelled: why
  std::vector<StageTiming> timings;
  double registration_metric = 0.0;
  // The quality stage's estimate of the residual (quality.computed is false
  // until it ran), and its per-patch map with a thumbnail for the completed
  // event. The map is held here until the job's terminal event is out; the
  // job directory keeps it for later readers (JobDir::quality_map), also
  // across restarts.
  QualitySummary quality;
  std::shared_ptr<const QualityMap> quality_map;
  // Result (kCompleted).
  ImageSpec output;         // width, height, channels, type (set with the plan)
  std::string result_path;  // absolute path of result.tif
  std::string output_path;  // spec.output_path as written (kCompleted)
  std::string transform_dir;  // absolute dir of TransformParameters.*.txt
  std::vector<std::string> transform_files;
  // The stored and streamed result's tiles (set with the plan; a finished
  // job keeps the edge it was written with across restarts).
  TileGrid tiles;
  int attempts = 0;
  absl::Time created;
  absl::Time finished;  // InfinitePast while not terminal
};

struct JobEvent {
  enum class Kind { kAccepted, kQueued, kProgress, kTile, kCompleted, kFailed };
  Kind kind = Kind::kProgress;
  std::string job_id;
  // kAccepted: info.plan holds the plan and its reasons.
  // kCompleted / kFailed: info holds the final snapshot (failure for kFailed,
  // which also covers cancellation with code CANCELLED).
  JobInfo info;
  // kQueued
  int queue_position = 0;
  // kProgress
  Stage stage = Stage::kUpload;
  double fraction = 0.0;  // of this stage, 0..1
  std::string detail;
  RegistrationProgress registration;  // valid for Stage::kRegistration
  // kTile: tile `tile_index` of `grid` (row-major), its rectangle, and its
  // samples, interleaved in the image's channel order, little-endian, in
  // `encoding` (the core makes kRaw; the server encodes for its caller).
  int64_t tile_index = 0;
  TileGrid grid;
  TileRect rect;
  int channels = 0;
  SampleType sample_type = SampleType::kUInt8;
  TileEncoding encoding = TileEncoding::kRaw;
  std::string data;
};

// Whether a reader of a running job takes live result tile i (JobEvents::
// Demand): kNow, a reader waits for it; kLater, a reader's next tile is i but
// it holds as many unread tiles as it may (it takes i once it reads one, or
// gets it from the stored result later); kNone, no reader will take it live.
enum class TileDemand { kNone, kLater, kNow };

// A TransformParameters file of a finished job: its base name and text.
struct TransformFile {
  std::string name;
  std::string text;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_TYPES_H_
