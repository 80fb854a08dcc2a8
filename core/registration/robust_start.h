// Copyright regserve authors.
//
// The robust start: a global fixed -> moving map found from local features
// before elastix runs, so that registration holds under any rotation,
// scale changes of 0.5-2x and strong perspective, where elastix's own
// start (the image centres) fails.
//
// On small 8-bit copies of the two grayscale registration copies (about
// 1.5 MP each), SIFT keypoints (ORB when SIFT finds too few) are matched
// with Lowe's ratio test and a cross-check, then a similarity, an affine
// map and a homography are fitted robustly (RANSAC; MAGSAC++ was tried and
// settles on compromises where part of the scene is off the main plane).
// The simplest model wins unless a richer one clearly fits better. The result
// is a homography between FULL-RESOLUTION pixel coordinates
// (core/image/displacement_field.h's convention).
//
//   RobustStartOptions o;
//   o.fixed_full_width = 18960;   // the copies' full-resolution sizes
//   o.fixed_full_height = 14960;
//   o.moving_full_width = 18960;
//   o.moving_full_height = 14960;
//   REGSERVE_ASSIGN_OR_RETURN(InitialAlignment a,
//       EstimateInitialAlignment(fixed_gray, moving_gray, o));
//   if (a.found) {
//     // a.fixed_to_moving maps fixed full-res (x, y) to moving full-res.
//   } else {
//     std::cout << a.reason;  // "too few matches (7)": start from the centres
//   }
//
// Too few reliable matches is a result (found = false, with the reason),
// not an error: the caller falls back to elastix's centre initialisation.
//
// Thread safety: thread-safe. OpenCV's thread count is process-wide; each
// call sets it to options.threads.
#ifndef REGSERVE_CORE_REGISTRATION_ROBUST_START_H_
#define REGSERVE_CORE_REGISTRATION_ROBUST_START_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/common/cancel.h"
#include "core/image/field_ops.h"
#include "core/image/image.h"

namespace regserve {

// Ordered from the simplest: a richer model is tried only up to the
// options' max_model.
enum class AlignmentModel {
  kNone = 0,
  kSimilarity = 1,  // rotation, uniform scale, shift (4 parameters)
  kAffine = 2,      // 6 parameters
  kHomography = 3,  // 8 parameters
};

absl::string_view AlignmentModelName(AlignmentModel model);  // "similarity"

struct RobustStartOptions {
  // Full-resolution sizes of the images the copies were made from (the
  // copies' spacing is full / copy, origin (spacing - 1) / 2); 0: the copy
  // is the full-resolution image.
  int64_t fixed_full_width = 0;
  int64_t fixed_full_height = 0;
  int64_t moving_full_width = 0;
  int64_t moving_full_height = 0;
  // The richest model tried (a rigid job asks for no more than a
  // similarity).
  AlignmentModel max_model = AlignmentModel::kHomography;
  // Also tries the horizontally flipped moving image (a mirrored scan).
  bool allow_mirror = false;
  // Each copy is area-downsampled to about this size for detection.
  double detection_megapixels = 1.5;
  int max_features = 6000;
  double ratio = 0.8;                // Lowe's ratio test
  double inlier_threshold_px = 3.0;  // in detection pixels
  // Reliability: at least this many inliers, and this fraction of the
  // cross-checked matches.
  int min_inliers = 15;
  double min_inlier_fraction = 0.1;
  int threads = 1;
  const CancelToken* cancel = nullptr;  // may be null
};

struct InitialAlignment {
  bool found = false;
  AlignmentModel model = AlignmentModel::kNone;
  // Fixed full-resolution position -> moving full-resolution position.
  // The identity when nothing was found.
  Homography fixed_to_moving;
  bool mirrored = false;  // found on the flipped moving image
  std::string detector;   // "SIFT" or "ORB"
  int fixed_keypoints = 0;
  int moving_keypoints = 0;
  int matches = 0;      // after the ratio test and the cross-check
  int inliers = 0;      // of the chosen model
  double rms_px = 0.0;  // inlier residual, moving full-res pixels
  double seconds = 0.0;
  // What was found or why nothing was: "homography from 412 SIFT inliers
  // of 950 matches (rms 0.8 px)", "too few matches (7)".
  std::string reason;
};

// Errors: InvalidArgument (a copy that is not float32 grey, or smaller than
// 16 px on a side), Cancelled, Internal (OpenCV failed; its message).
absl::StatusOr<InitialAlignment> EstimateInitialAlignment(
    const Image& fixed_gray, const Image& moving_gray,
    const RobustStartOptions& options);

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_ROBUST_START_H_
