// Copyright regserve authors.
//
// Small vocabulary types shared by the planner, registration, warp, the
// scheduler and the service layers, with their names and parsers.
#ifndef REGSERVE_CORE_COMMON_TYPES_H_
#define REGSERVE_CORE_COMMON_TYPES_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace regserve {

// elastix transform presets. kBSpline runs affine, then B-spline.
enum class TransformKind { kRigid = 0, kAffine = 1, kBSpline = 2 };
enum class Interpolation { kLinear = 0, kCubic = 1, kNearest = 2 };
// Where a warp runs.
enum class WarpDevice { kCpu = 0, kCuda = 1 };
// What a job asks for: auto picks CUDA when it is available and fits.
// kUnspecified: the client did not say; spec validation replaces it with the
// daemon's default before anything else sees it (never persisted or planned).
enum class DevicePreference {
  kAuto = 0,
  kCpu = 1,
  kCuda = 2,
  kUnspecified = 3
};

// The stages of a job. kStream is the sending of result tiles. The values
// are stable ids, not the order: kQuality runs after registration and
// before the warp.
enum class Stage {
  kUpload = 0,
  kDecode = 1,
  kRegistration = 2,
  kWarp = 3,
  kStream = 4,
  kQuality = 5,  // the estimated residual (core/quality)
  // The robust start (core/registration/robust_start), between decode and
  // registration.
  kInitialAlignment = 6,
  // The LibTorch refinement of the field (core/refine), between
  // registration and quality.
  kRefine = 7,
};

absl::string_view StageName(Stage stage);  // "upload", "decode", ...
absl::string_view TransformKindName(TransformKind kind);     // "rigid"...
absl::string_view InterpolationName(Interpolation interp);   // "linear"...
absl::string_view WarpDeviceName(WarpDevice device);         // "cpu"/"cuda"
absl::string_view DevicePreferenceName(DevicePreference d);  // "auto"...

// Parsers accept exactly the names above; InvalidArgument lists the choices.
absl::StatusOr<TransformKind> ParseTransformKind(absl::string_view name);
absl::StatusOr<Interpolation> ParseInterpolation(absl::string_view name);
absl::StatusOr<DevicePreference> ParseDevicePreference(absl::string_view name);

// A daemon's --device flag: "auto", "cpu", "cuda" (every visible GPU) or
// "cuda:0,2" (the listed CUDA ordinals, each once, in the given order).
struct DeviceSelection {
  DevicePreference preference = DevicePreference::kAuto;
  std::vector<int> gpus;  // empty: every visible GPU
};
absl::StatusOr<DeviceSelection> ParseDeviceSelection(absl::string_view text);

}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_TYPES_H_
