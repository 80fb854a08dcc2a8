// Copyright regserve authors.
//
// Writes a tiled, optionally pyramidal (Big)TIFF incrementally, so that the
// whole image never has to be in memory, with its tiles compressed on
// `threads` threads. Regions arrive in any order; each full-resolution tile
// is compressed once all its pixels have been supplied (WriteRegion may be
// called with any rectangle; partially covered tiles are buffered).
//
//   TiledTiffOptions o;
//   o.tile = 512;
//   o.compression = Compression::kZstd;
//   o.threads = 8;
//   o.pyramid = true;               // halved levels down to one tile
//   o.metadata = moving_metadata;   // ICC profile, resolution, orientation
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<TiledTiffWriter> w,
//                             OpenTiledTiffWriter(path, spec, o));
//   for (...) REGSERVE_RETURN_IF_ERROR(w->WriteRegion(x, y, band));
//   REGSERVE_RETURN_IF_ERROR(w->Close());
//
// The file: libtiff writes it from tiles compressed here (tile_codec.h);
// full-resolution tiles go to the file in the order they were completed
// (the same bytes for any thread count), reduced levels are built from them
// as they complete (tile_pyramid.h) and held compressed in an unlinked
// scratch file beside the output until Close appends them in order. The
// full-resolution image is the first directory; the reduced levels follow
// as SubIFDs of it (PyramidLayout::kSubIfd, as OME-TIFF and QuPath read
// them) or as further pages marked reduced-resolution (kPages, as
// OpenSlide, libvips and OpenImageIO's subimages read them). BigTIFF when
// the file could exceed 4 GiB.
//
// Memory (core/plan ResultWriterRamBytes models it): the partly covered tiles,
// up to 2 x threads full-resolution tiles being compressed or waiting for
// their turn, and the reduced-level tiles still missing children (about one
// row of tiles per level when regions arrive in rows).
//
// Errors: a pixel may be supplied again while its tile is incomplete (last
// write wins); touching a tile already complete gives FailedPrecondition.
// After any error, or if Close finds unwritten pixels, Close removes the
// file and returns the error; so does destroying a writer not closed.
// Thread safety: WriteRegion and Close from one thread at a time.
#ifndef REGSERVE_CORE_IMAGE_TILED_TIFF_WRITER_H_
#define REGSERVE_CORE_IMAGE_TILED_TIFF_WRITER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/compression.h"
#include "core/image/image.h"

namespace regserve {

enum class PyramidLayout { kSubIfd = 0, kPages = 1 };

struct TiledTiffOptions {
  // A multiple of 16 in [16, 8192] (TIFF rule).
  int tile = 512;
  Compression compression = Compression::kDeflate;
  int jpeg_quality = kDefaultJpegQuality;
  // Compression threads; 1 compresses on the calling thread.
  int threads = 1;
  bool pyramid = false;
  PyramidLayout layout = PyramidLayout::kPages;
  ImageMetadata metadata;
};

struct TiledTiffStats {
  int levels = 1;               // full resolution + reduced levels
  uint64_t peak_ram_bytes = 0;  // the most pixel and tile bytes held at once
};

class TiledTiffWriter {
 public:
  virtual ~TiledTiffWriter() = default;
  // Copies the pixels of `region` (spec must match channels/type) to
  // position (x, y) of the output. May wait while 2 x threads tiles are in
  // flight.
  virtual absl::Status WriteRegion(int64_t x, int64_t y,
                                   const Image& region) = 0;
  // Waits for the compression threads, writes the reduced levels and the
  // directories, and closes the file. Must be called once.
  virtual absl::Status Close() = 0;
  virtual TiledTiffStats stats() const = 0;
};

// Errors: InvalidArgument (bad spec or tile size, a path not ending in .tif
// or .tiff, a compression this pixel type cannot use, a file that cannot be
// created), ResourceExhausted (threads or codecs cannot start).
absl::StatusOr<std::unique_ptr<TiledTiffWriter>> OpenTiledTiffWriter(
    const std::string& path, const ImageSpec& spec,
    const TiledTiffOptions& options);
// Deflate, one thread, no pyramid.
absl::StatusOr<std::unique_ptr<TiledTiffWriter>> OpenTiledTiffWriter(
    const std::string& path, const ImageSpec& spec, int tile_size = 512);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_TILED_TIFF_WRITER_H_
