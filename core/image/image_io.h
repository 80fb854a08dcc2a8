// Copyright regserve authors.
//
// Image decoding and encoding through OpenImageIO, plus the grayscale
// registration copy. Every OIIO error is turned into an absl::Status; nothing
// here throws.
//
//   ReadOptions opts;
//   opts.max_bytes = budget;            // checked BEFORE allocating
//   REGSERVE_ASSIGN_OR_RETURN(Image img, ReadImageFile("/in/a.tif", opts));
//   REGSERVE_ASSIGN_OR_RETURN(Image gray, MakeGrayscaleCopy(img, 4473, 3154));
//
// Thread safety: all functions are thread-safe (OIIO errors are per thread).
#ifndef REGSERVE_CORE_IMAGE_IMAGE_IO_H_
#define REGSERVE_CORE_IMAGE_IMAGE_IO_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/image/image.h"
#include "core/image/tiled_tiff_writer.h"

namespace regserve {

struct ReadOptions {
  // Refuse (ResourceExhausted) any image whose decoded size would exceed this
  // many bytes. The check uses the header's declared size, before any pixel
  // buffer is allocated.
  uint64_t max_bytes = UINT64_MAX;
  // Refuse (InvalidArgument) images with more pixels than this.
  int64_t max_pixels = INT64_MAX;
  // Threads OIIO may use for decoding (0 = 1 thread; we size pools on purpose).
  int threads = 1;
  // Where pixel memory comes from (nullptr = default malloc allocator).
  HostAllocator* allocator = nullptr;
  // When set, filled with what the file says beside the pixels: its ICC
  // profile, resolution and orientation (ImageMetadata; absent ones empty).
  ImageMetadata* metadata = nullptr;
};

// Header only: dimensions, channels and the sample type we would decode to
// (uint8 stays uint8; 16-bit integer -> uint16; anything else -> float32).
// Errors: NotFound (no such file), InvalidArgument (not an image, corrupt
// header, unsupported channel count, impossible dimensions).
absl::StatusOr<ImageSpec> ReadImageSpecFile(const std::string& path);
absl::StatusOr<ImageSpec> ReadImageSpecMemory(absl::Span<const uint8_t> bytes,
                                              const std::string& name_hint);

// Decodes the first subimage at full resolution. Truncated or corrupt pixel
// data gives InvalidArgument with OIIO's message; a declared size above the
// limits gives ResourceExhausted/InvalidArgument before allocation.
// Also refused before allocation: a decoded size above the machine's physical
// RAM (ResourceExhausted) and, by OIIO 2.4 itself, above 32 GiB
// (InvalidArgument). Pixels are returned as stored: alpha is not
// premultiplied, EXIF orientation is not applied, and for EXR the data window
// is returned. max_bytes counts the image only: OIIO also decodes through a
// scratch buffer, as large as the image below 64 MiB and about 64 MiB above
// it (MakePlan reserves it), and a TIFF stored as a single strip needs a
// whole second copy. PNG chunk lengths are checked against the data before
// libpng sees it (png_chunks.h).
absl::StatusOr<Image> ReadImageFile(const std::string& path,
                                    const ReadOptions& options = {});
// name_hint: a file name whose extension helps OIIO pick the format; if that
// reader refuses the bytes (or the hint is empty or unknown), every reader is
// tried, so e.g. PNG bytes named "x.jpg" decode as PNG.
absl::StatusOr<Image> ReadImageMemory(absl::Span<const uint8_t> bytes,
                                      const std::string& name_hint,
                                      const ReadOptions& options = {});

// Area-averaged (box filter over the exact fractional footprint) grayscale
// float32 copy of `image` at target_width x target_height. Colour is reduced
// with Rec.601 luma weights (alpha ignored); values are normalised to [0, 1]
// for integer inputs. Target size must be >= 1 and <= the source size.
absl::StatusOr<Image> MakeGrayscaleCopy(const Image& image,
                                        int64_t target_width,
                                        int64_t target_height, int threads = 1);

// Writes a whole image; the format follows the extension. Files above 4 GiB
// written as .tif use BigTIFF. TIFF is deflate ("zip") compressed; alpha
// (channel 2 of 2, or 4 of 4) is written unassociated. Errors:
// InvalidArgument (no or unknown extension, or OIIO cannot create the file
// for this spec, e.g. a missing directory),
// Internal (I/O failure, with OIIO's message).
absl::Status WriteImageFile(const std::string& path, const Image& image);

// The tiled (Big)TIFF writer of stored results lives in tiled_tiff_writer.h
// (included above for its users).

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_IMAGE_IO_H_
