// Copyright regserve authors.
//
// The quality map as people read it: a one-line summary of the estimated
// residual, and a heat map drawn over the grey thumbnail of the fixed image
// that Completed.quality_map carries (green: good, yellow to red: worse,
// red: a patch that did not match, no tint: not checked).
//
//   std::printf("%s\n", QualitySummaryText(completed.quality()).c_str());
//   REGSERVE_ASSIGN_OR_RETURN(Image rgb,
//                             RenderQualityMap(completed.quality_map()));
//   REGSERVE_RETURN_IF_ERROR(WriteImageFile("map.png", rgb));
//
// Thread safety: pure functions.
#ifndef REGSERVE_CLIENT_QUALITY_MAP_IMAGE_H_
#define REGSERVE_CLIENT_QUALITY_MAP_IMAGE_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/image/image.h"
#include "regserve/v1/regserve.pb.h"

namespace regserve {

// "quality: est. mean 0.21 px, p95 0.60 px, max 1.10 px, checked 83% of the
// area", with " (poor)" / " (unchecked)" unless the verdict is good, or
// "quality: not estimated" (with the server's reason).
std::string QualitySummaryText(const v1::QualitySummary& summary);

// The heat colour of an estimated error: green up to 0.5 px, through
// yellow at 1 px to red from 2 px on.
std::array<uint8_t, 3> ErrorColour(double error_px);

// An 8-bit RGB image of the thumbnail's size (or, without a thumbnail, of
// the image's aspect ratio with its longer edge 1024 px on a grey ground)
// with each patch's cell (the patch centre's share of the image) tinted.
// InvalidArgument for an inconsistent map (sizes that do not agree).
absl::StatusOr<Image> RenderQualityMap(const v1::QualityMap& map);

}  // namespace regserve

#endif  // REGSERVE_CLIENT_QUALITY_MAP_IMAGE_H_
