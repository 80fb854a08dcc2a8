// Copyright regserve authors.
//
// Reads rectangles of a stored result (a tiled TIFF written by
// TiledTiffWriter) with OpenImageIO, for event streams that replay tiles.
//
//   REGSERVE_ASSIGN_OR_RETURN(auto reader, ResultReader::Open(path));
//   REGSERVE_ASSIGN_OR_RETURN(std::string raw, reader->ReadRegion(rect));
//
// Ownership: a reader owns one open OIIO ImageInput. Not thread-safe: one
// reader per thread. Errors never throw: NotFound (no file), DataLoss (the
// file is unreadable or shorter than its header says), OutOfRange (rect
// outside the image).
#ifndef REGSERVE_CORE_JOBS_RESULT_READER_H_
#define REGSERVE_CORE_JOBS_RESULT_READER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/image/image.h"
#include "core/warp/warp.h"

namespace regserve {

class ResultReader {
 public:
  virtual ~ResultReader() = default;
  static absl::StatusOr<std::unique_ptr<ResultReader>> Open(
      const std::string& path);
  // The stored image's size, channels and sample type.
  virtual const ImageSpec& spec() const = 0;
  // The pixels of `rect`, interleaved, row-major, native (little-endian)
  // byte order: rect.w * rect.h * spec().bytes_per_pixel() bytes.
  virtual absl::StatusOr<std::string> ReadRegion(const TileRect& rect) = 0;
};

// Convenience: opens `path`, reads `rect` into an Image.
absl::StatusOr<Image> ReadImageRegion(const std::string& path,
                                      const TileRect& rect);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_RESULT_READER_H_
