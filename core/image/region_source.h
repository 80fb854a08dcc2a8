// Copyright regserve authors.
//
// RegionSource: an image that is read by rectangle instead of held whole.
// The warp of an image larger than the memory budget reads, for each output
// tile, only the source rectangle the field maps it to. Implementations:
// ImageRegionSource (an Image in RAM, for tests and comparisons) here, and
// the file-backed sources of file_region_source.h (the input file itself
// when it allows random access, else a spill file written in one pass).
//
//   std::unique_ptr<RegionSource> src = ...;
//   Image region = ...;  // w x h, src->spec()'s channels and type
//   REGSERVE_RETURN_IF_ERROR(
//       src->ReadRegion(x, y, w, h, region.data(), region.row_bytes()));
//
// This header has no OpenImageIO: the warp (core/warp) and the planner
// (core/plan) use it.
//
// Thread safety: ReadRegion may be called from several threads at once;
// each implementation documents how it serialises its reads.
#ifndef REGSERVE_CORE_IMAGE_REGION_SOURCE_H_
#define REGSERVE_CORE_IMAGE_REGION_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "core/image/image.h"

namespace regserve {

class RegionSource {
 public:
  virtual ~RegionSource() = default;
  // The whole image's size, channels and sample type.
  virtual const ImageSpec& spec() const = 0;
  // Copies the pixels of the rectangle at (x, y) of w x h (inside the
  // image, w and h >= 1) into `dst`, interleaved, `stride` bytes per row.
  // Errors: InvalidArgument (rectangle outside the image), those of the
  // storage (InvalidArgument for corrupt data, Internal for I/O failures).
  virtual absl::Status ReadRegion(int64_t x, int64_t y, int64_t w, int64_t h,
                                  uint8_t* dst, size_t stride) = 0;
};

// InvalidArgument unless the rectangle is non-empty and inside `spec`.
absl::Status CheckRegion(const ImageSpec& spec, int64_t x, int64_t y, int64_t w,
                         int64_t h);

// `image` (not owned; must outlive the source) read by region: plain
// copies, thread-safe.
std::unique_ptr<RegionSource> MakeImageRegionSource(const Image* image);

// The spill file of an image that can only be read in order
// (file_region_source.h): raw tiles of kSpillTile x kSpillTile pixels in
// row-major tile order, edge tiles padded to the full tile.
inline constexpr int64_t kSpillTile = 256;
uint64_t SpillFileBytes(const ImageSpec& spec);
// RAM of the spill's writer: a band of kSpillTile full-width rows and one
// tile being written.
uint64_t SpillWriterRamBytes(const ImageSpec& spec);

// RAM a file-backed region source needs beside the caller's region buffer:
// its chunk cache (`cache_bytes`, at least two chunks) and, when it reads a
// spill, nothing else; when it reads the input file, one chunk of the
// decoder's scratch. `spec` carries the file's region chunk
// (ImageSpec::region_chunk_*), 0 for a spill.
uint64_t RegionSourceRamBytes(const ImageSpec& spec, uint64_t cache_bytes);
// The cached chunk of `spec`: its tile, its strips grouped to at least 64
// rows of the full width, or (no region chunk: a spill) a spill tile.
void RegionChunkOf(const ImageSpec& spec, int64_t* width, int64_t* height);
uint64_t RegionChunkBytes(const ImageSpec& spec);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_REGION_SOURCE_H_
