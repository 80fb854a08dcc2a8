// Copyright regserve authors.
//
// The grayscale registration copy of an image file, decoded in strips so
// that the source is never held whole: bit for bit the copy that
// ReadImageFile + MakeGrayscaleCopy make (image_io.h), in
// O(ImageSpec::stream_rows x width) of source pixels plus the output
// (StreamedGrayscaleWorkBytes in image.h). Strips are read in the file's own
// chunking (whole strips or rows of tiles of a TIFF), or a bounded number of
// rows in order for single-strip TIFFs and sequential formats (JPEG, PNG).
//
//   StreamedGrayOptions o;
//   o.threads = 8;
//   o.metadata = &meta;
//   REGSERVE_ASSIGN_OR_RETURN(Image gray,
//                             ReadGrayscaleCopyFile(path, 4473, 3154, o));
//
// Thread safety: thread-safe (OIIO errors are per thread and per input).
#ifndef REGSERVE_CORE_IMAGE_STREAMED_GRAY_H_
#define REGSERVE_CORE_IMAGE_STREAMED_GRAY_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/image.h"

namespace regserve {

struct StreamedGrayOptions {
  // Workers reducing rows (and OpenImageIO's decoding threads).
  int threads = 1;
  // Refuse (InvalidArgument) images with more pixels than this.
  int64_t max_pixels = INT64_MAX;
  // Refuse (ResourceExhausted), before decoding, a streamed working set
  // (StreamedGrayscaleWorkBytes) plus output above this many bytes.
  uint64_t max_bytes = UINT64_MAX;
  // Decoded bytes of source rows read at a time (0: 16 MiB), rounded to whole
  // strips or rows of tiles; smaller holds less and decodes in more steps.
  uint64_t chunk_bytes = 0;
  // When set, filled with the file's ICC profile, resolution and orientation.
  ImageMetadata* metadata = nullptr;
  // When set, called with the header's spec before any pixel is decoded;
  // a non-OK status stops the read and is returned as is.
  std::function<absl::Status(const ImageSpec&)> check_spec;
  // When set, called between strips; a non-OK status (e.g. a cancelled job)
  // stops the read and is returned as is.
  std::function<absl::Status()> check_cancel;
  // When set, called with each chunk of decoded source rows, in order: `n`
  // rows from row `y0`, the first rows of `rows` (the source's channels and
  // type), e.g. to spill the image for region reads (file_region_source.h)
  // in the same pass. A non-OK status stops the read and is returned as is.
  std::function<absl::Status(const Image& rows, int64_t y0, int64_t n)> on_rows;
};

// Area-averaged float32 grayscale copy of the first subimage of `path` at
// target_width x target_height, as MakeGrayscaleCopy(ReadImageFile(path))
// gives it. Errors: those of ReadImageFile for the file and its header,
// InvalidArgument for a target size outside 1..source size, InvalidArgument
// naming the rows for truncated or corrupt pixel data, ResourceExhausted
// above max_bytes or when memory runs out.
absl::StatusOr<Image> ReadGrayscaleCopyFile(
    const std::string& path, int64_t target_width, int64_t target_height,
    const StreamedGrayOptions& options = {});

// The header's spec with the stream_* fields as ReadGrayscaleCopyFile will
// use them for options.chunk_bytes (ReadImageSpecFile gives the default's).
absl::StatusOr<ImageSpec> ReadGrayscaleLayout(
    const std::string& path, const StreamedGrayOptions& options);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_STREAMED_GRAY_H_
