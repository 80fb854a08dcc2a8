// Copyright regserve authors.
//
// How a stored result's tiles are compressed: the job option
// (JobOptions::compression, with jpeg_quality) and the tiled TIFF writer's
// codec. No dependencies, so the planner and the job store can use it.
//
//   REGSERVE_ASSIGN_OR_RETURN(Compression c, ParseCompression("zstd"));
//   std::string name(CompressionName(c));  // "zstd"
//   if (!CompressionSupports(c, spec)) ...  // jpeg: uint8 grey or RGB only
#ifndef REGSERVE_CORE_IMAGE_COMPRESSION_H_
#define REGSERVE_CORE_IMAGE_COMPRESSION_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/image/image.h"

namespace regserve {

// Lossless: kNone, kDeflate (TIFF "AdobeDeflate", zip), kZstd. Lossy: kJpeg
// (baseline JPEG, YCbCr 4:2:0 for RGB), for uint8 images of 1 or 3 channels.
enum class Compression { kNone = 0, kDeflate = 1, kZstd = 2, kJpeg = 3 };

// JPEG quality when a job names none (libjpeg's scale, 1..100).
constexpr int kDefaultJpegQuality = 90;

// "none", "deflate", "zstd", "jpeg".
absl::string_view CompressionName(Compression c);
// The names above ("zip" is accepted for deflate); InvalidArgument otherwise,
// listing the choices.
absl::StatusOr<Compression> ParseCompression(absl::string_view name);

// OK when `c` (with `jpeg_quality`, checked for kJpeg only) can store images
// of `pixel`'s channels and sample type; otherwise InvalidArgument that names
// `option` (e.g. "options.compression") and says what would work.
absl::Status CheckCompression(Compression c, int jpeg_quality,
                              const ImageSpec& pixel, absl::string_view option);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_COMPRESSION_H_
