// Copyright regserve authors.
//
// A (Big)TIFF file written through libtiff from tiles that are already
// compressed (TIFFWriteRawTile): one directory (image file directory) per
// pyramid level, each described by a TiffLevel. libtiff's messages are
// caught per file (TIFFOpenExt's handlers), never printed.
//
//   REGSERVE_ASSIGN_OR_RETURN(auto tiff, TiffContainer::Create(path, big));
//   REGSERVE_RETURN_IF_ERROR(tiff->SetLevel(level0));  // tags first
//   REGSERVE_RETURN_IF_ERROR(tiff->WriteRawTile(0, bytes.data(), n));
//   ...
//   REGSERVE_RETURN_IF_ERROR(tiff->WriteDirectory());  // next level follows
//   REGSERVE_RETURN_IF_ERROR(tiff->Close());
//
// Thread safety: none; one thread at a time.
#ifndef REGSERVE_CORE_IMAGE_TIFF_CONTAINER_H_
#define REGSERVE_CORE_IMAGE_TIFF_CONTAINER_H_

#include <cstdarg>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/image/image.h"
#include "core/image/tile_codec.h"

struct tiff;  // libtiff's TIFF

namespace regserve {

struct TiffLevel {
  int64_t width = 0;
  int64_t height = 0;
  TileFormat format;
  // 0: the full-resolution image; k: the k-th reduced level
  // (NewSubfileType "reduced resolution").
  int level = 0;
  // On the full-resolution directory only: this many SubIFDs follow (the
  // next directories written become them) instead of further pages.
  int sub_ifds = 0;
  // Written on every level, the resolution divided by the level's scale.
  const ImageMetadata* metadata = nullptr;
};

class TiffContainer {
 public:
  // Creates (truncates) `path`, little-endian, BigTIFF when `bigtiff`.
  static absl::StatusOr<std::unique_ptr<TiffContainer>> Create(
      const std::string& path, bool bigtiff);
  // Abandons an unclosed file without writing a directory (TIFFCleanup).
  ~TiffContainer();

  // The tags of the directory being written. Call before its tiles.
  absl::Status SetLevel(const TiffLevel& level);
  // Appends tile `index` (row-major within the current level).
  absl::Status WriteRawTile(uint32_t index, const uint8_t* data, size_t size);
  // Writes the current directory; the next one starts empty.
  absl::Status WriteDirectory();
  // Flushes and closes the file; the object is then spent.
  absl::Status Close();

 private:
  explicit TiffContainer(std::string path) : path_(std::move(path)) {}
  static int OnMessage(struct tiff*, void* self, const char* module,
                       const char* fmt, va_list ap);
  absl::Status Failed(const std::string& what);

  const std::string path_;
  struct tiff* tif_ = nullptr;
  absl::Mutex mu_;
  std::string errors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_TIFF_CONTAINER_H_
