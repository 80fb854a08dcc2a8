// Copyright regserve authors.
//
// Image: an owned, interleaved (row-major, channels last) pixel buffer.
// This header has no dependency on OpenImageIO, so that the warp engine and
// the planner can use it on machines without OIIO; decoding and encoding live
// in core/image/image_io.h.
//
//   REGSERVE_ASSIGN_OR_RETURN(Image img,
//       Image::Allocate({.width = 640, .height = 480, .channels = 3,
//                        .type = SampleType::kUInt8}));
//   uint8_t* row = img.row(10);
//
// Thread safety: an Image is not synchronised; concurrent reads are fine,
// writes need external synchronisation (the warp writes disjoint tiles).
#ifndef REGSERVE_CORE_IMAGE_IMAGE_H_
#define REGSERVE_CORE_IMAGE_IMAGE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace regserve {

enum class SampleType { kUInt8 = 0, kUInt16 = 1, kFloat32 = 2 };

// Bytes per sample: 1, 2 or 4.
size_t SampleSize(SampleType type);
// "uint8", "uint16", "float32".
absl::string_view SampleTypeName(SampleType type);

struct ImageSpec {
  int64_t width = 0;
  int64_t height = 0;
  int channels = 0;  // 1..4
  SampleType type = SampleType::kUInt8;
  // Not part of the pixel layout: the RAM a file reader needs beside the
  // decoded pixels (OpenImageIO's scratch), as image_io's readers derive it
  // from the file's header. 0 when unknown (e.g. a spec built in memory).
  uint64_t decode_scratch_bytes = 0;
  // Also from the header: how the streamed grayscale reader (streamed_gray.h)
  // reads the file, `stream_rows` rows at a time (whole strips or rows of
  // tiles where the layout has them), while the decoder holds
  // `stream_scratch_bytes` beside those rows. 0 when unknown.
  int64_t stream_rows = 0;
  uint64_t stream_scratch_bytes = 0;
  // Also from the header: the file's unit of random access, for reading it
  // by region (region_source.h): a tile, or a strip of the full width
  // (region_chunk_width == width). 0: the file can only be read in order
  // (JPEG, PNG, a TIFF stored as one strip), so a region reader needs a
  // spill file.
  int64_t region_chunk_width = 0;
  int64_t region_chunk_height = 0;

  int64_t pixels() const { return width * height; }
  size_t bytes_per_pixel() const { return channels * SampleSize(type); }
  // Total bytes. Callers must have validated the spec (ValidateSpec) first,
  // which guarantees this does not overflow.
  size_t bytes() const {
    return static_cast<size_t>(pixels()) * bytes_per_pixel();
  }
  std::string DebugString() const;  // "640x480x3 uint8"
};

// What a file says about its pixels besides their values, carried from the
// inputs into the stored result (ReadOptions::metadata fills it; the tiled
// TIFF writer writes it). Empty / 0 means "not given".
enum class ResolutionUnit { kNone = 1, kInch = 2, kCentimeter = 3 };
struct ImageMetadata {
  std::string icc_profile;  // the ICC profile's bytes, as embedded
  // Pixels per `resolution_unit` (TIFF XResolution/YResolution, PNG pHYs,
  // JFIF density); 0: none given.
  double x_resolution = 0.0;
  double y_resolution = 0.0;
  ResolutionUnit resolution_unit = ResolutionUnit::kNone;
  // TIFF/EXIF orientation 1..8 (how to display the stored rows); 0: none.
  int orientation = 0;
};

// The RAM the streamed grayscale reader holds beside its target_width-wide
// output, for a source spec from image_io's readers (stream_rows and
// stream_scratch_bytes set) and `threads` workers: two chunks of decoded
// rows (one decoded while the other is reduced) and the measured overhead
// (a third chunk and 8 MiB), a chunk's rows reduced to the
// target width, one luma row per worker and the decoder's scratch. Without the
// stream fields: the whole image, as if read at once.
uint64_t StreamedGrayscaleWorkBytes(const ImageSpec& source,
                                    int64_t target_width, int threads);

// Checks 1 <= width, height <= 2^31-1, 1 <= channels <= 4, and that the byte
// size is representable. Returns InvalidArgument naming the bad field.
absl::Status ValidateSpec(const ImageSpec& spec);

// Memory for an Image. Lets the GPU code provide pinned host memory.
// Allocate returns nullptr on failure. Thread-safe implementations required.
class HostAllocator {
 public:
  virtual ~HostAllocator() = default;
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* p, size_t bytes) = 0;
  // The process-wide plain (pageable, malloc-backed) allocator.
  static HostAllocator* Default();
};

// Returns an Image's buffer to the allocator it came from.
struct ImageBufferDeleter {
  HostAllocator* allocator = nullptr;
  size_t bytes = 0;
  void operator()(uint8_t* p) const;
};

class Image {
 public:
  Image() = default;  // empty: width = height = 0, data() == nullptr
  Image(Image&&) noexcept = default;
  Image& operator=(Image&&) noexcept = default;
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;

  // Allocates an uninitialised buffer. Returns InvalidArgument for a bad spec
  // and ResourceExhausted if the allocation fails (never throws).
  static absl::StatusOr<Image> Allocate(const ImageSpec& spec,
                                        HostAllocator* allocator = nullptr);
  // Same, zero-filled.
  static absl::StatusOr<Image> AllocateZeroed(
      const ImageSpec& spec, HostAllocator* allocator = nullptr);

  const ImageSpec& spec() const { return spec_; }
  int64_t width() const { return spec_.width; }
  int64_t height() const { return spec_.height; }
  int channels() const { return spec_.channels; }
  SampleType type() const { return spec_.type; }
  bool empty() const { return data_ == nullptr; }

  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size_bytes() const { return spec_.bytes(); }
  size_t row_bytes() const {
    return static_cast<size_t>(spec_.width) * spec_.bytes_per_pixel();
  }
  uint8_t* row(int64_t y) {
    return data() + static_cast<size_t>(y) * row_bytes();
  }
  const uint8_t* row(int64_t y) const {
    return data() + static_cast<size_t>(y) * row_bytes();
  }

  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data());
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data());
  }

 private:
  ImageSpec spec_;
  std::unique_ptr<uint8_t[], ImageBufferDeleter> data_;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_IMAGE_H_
