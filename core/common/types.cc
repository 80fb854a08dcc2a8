// Copyright regserve authors.
#include "core/common/types.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace regserve {

absl::string_view StageName(Stage stage) {
  switch (stage) {
    case Stage::kUpload:
      return "upload";
    case Stage::kDecode:
      return "decode";
    case Stage::kRegistration:
      return "registration";
    case Stage::kWarp:
      return "warp";
    case Stage::kStream:
      return "stream";
    case Stage::kQuality:
      return "quality";
    case Stage::kInitialAlignment:
      return "initial_alignment";
    case Stage::kRefine:
      return "refine";
  }
  return "unknown";
}

absl::string_view TransformKindName(TransformKind kind) {
  switch (kind) {
    case TransformKind::kRigid:
      return "rigid";
    case TransformKind::kAffine:
      return "affine";
    case TransformKind::kBSpline:
      return "bspline";
  }
  return "unknown";
}

absl::string_view InterpolationName(Interpolation interp) {
  switch (interp) {
    case Interpolation::kLinear:
      return "linear";
    case Interpolation::kCubic:
      return "cubic";
    case Interpolation::kNearest:
      return "nearest";
  }
  return "unknown";
}

absl::string_view WarpDeviceName(WarpDevice device) {
  return device == WarpDevice::kCuda ? "cuda" : "cpu";
}

absl::string_view DevicePreferenceName(DevicePreference d) {
  switch (d) {
    case DevicePreference::kAuto:
      return "auto";
    case DevicePreference::kCpu:
      return "cpu";
    case DevicePreference::kCuda:
      return "cuda";
    case DevicePreference::kUnspecified:
      return "unspecified";
  }
  return "unknown";
}

namespace {
template <typename E, size_t N>
absl::StatusOr<E> ParseName(absl::string_view what, absl::string_view name,
                            const E (&values)[N],
                            absl::string_view (*namer)(E)) {
  std::string choices;
  for (E v : values) {
    if (namer(v) == name) return v;
    absl::StrAppend(&choices, choices.empty() ? "" : "|", namer(v));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", name, "'; use one of ", choices));
}
}  // namespace

absl::StatusOr<TransformKind> ParseTransformKind(absl::string_view name) {
  static constexpr TransformKind kAll[] = {
      TransformKind::kRigid, TransformKind::kAffine, TransformKind::kBSpline};
  return ParseName("transform", name, kAll, &TransformKindName);
}

absl::StatusOr<Interpolation> ParseInterpolation(absl::string_view name) {
  static constexpr Interpolation kAll[] = {
      Interpolation::kLinear, Interpolation::kCubic, Interpolation::kNearest};
  return ParseName("interpolation", name, kAll, &InterpolationName);
}

absl::StatusOr<DevicePreference> ParseDevicePreference(absl::string_view name) {
  static constexpr DevicePreference kAll[] = {
      DevicePreference::kAuto, DevicePreference::kCpu, DevicePreference::kCuda};
  return ParseName("device", name, kAll, &DevicePreferenceName);
}

absl::StatusOr<DeviceSelection> ParseDeviceSelection(absl::string_view text) {
  DeviceSelection sel;
  absl::string_view list = text;
  if (absl::ConsumePrefix(&list, "cuda:")) {
    sel.preference = DevicePreference::kCuda;
    for (absl::string_view item : absl::StrSplit(list, ',')) {
      int ordinal = -1;
      if (!absl::SimpleAtoi(item, &ordinal) || ordinal < 0 || ordinal > 1023) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad GPU ordinal '", item, "' in device '", text,
                         "'; use e.g. cuda:0 or cuda:0,2"));
      }
      for (int g : sel.gpus) {
        if (g == ordinal) {
          return absl::InvalidArgumentError(absl::StrCat(
              "GPU ", ordinal, " is listed twice in device '", text, "'"));
        }
      }
      sel.gpus.push_back(ordinal);
    }
    return sel;
  }
  absl::StatusOr<DevicePreference> pref = ParseDevicePreference(text);
  if (!pref.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown device '", text, "'; use auto, cpu, cuda or cuda:0,2,..."));
  }
  sel.preference = *pref;
  return sel;
}

}  // namespace regserve
