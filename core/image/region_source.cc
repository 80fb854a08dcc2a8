// Copyright regserve authors.
#include "core/image/region_source.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

// Strips are read in groups of at least this many rows: one read of a
// 1-row strip per output row would cost a call per row.
constexpr int64_t kMinStripRows = 64;

class ImageRegionSource final : public RegionSource {
 public:
  explicit ImageRegionSource(const Image* image) : image_(*image) {}
  const ImageSpec& spec() const override { return image_.spec(); }
  absl::Status ReadRegion(int64_t x, int64_t y, int64_t w, int64_t h,
                          uint8_t* dst, size_t stride) override {
    const absl::Status s = CheckRegion(image_.spec(), x, y, w, h);
    if (!s.ok()) return s;
    const size_t bpp = image_.spec().bytes_per_pixel();
    for (int64_t j = 0; j < h; ++j) {
      std::memcpy(dst + static_cast<size_t>(j) * stride,
                  image_.row(y + j) + static_cast<size_t>(x) * bpp,
                  static_cast<size_t>(w) * bpp);
    }
    return absl::OkStatus();
  }

 private:
  const Image& image_;
};

}  // namespace

absl::Status CheckRegion(const ImageSpec& spec, int64_t x, int64_t y, int64_t w,
                         int64_t h) {
  if (w < 1 || h < 1 || x < 0 || y < 0 || x > spec.width - w ||
      y > spec.height - h) {
    return absl::InvalidArgumentError(
        absl::StrCat("region ", w, "x", h, " at (", x, ", ", y,
                     ") is not inside the ", spec.DebugString(), " image"));
  }
  return absl::OkStatus();
}

std::unique_ptr<RegionSource> MakeImageRegionSource(const Image* image) {
  return std::make_unique<ImageRegionSource>(image);
}

uint64_t SpillFileBytes(const ImageSpec& spec) {
  const uint64_t tx =
      static_cast<uint64_t>((spec.width + kSpillTile - 1) / kSpillTile);
  const uint64_t ty =
      static_cast<uint64_t>((spec.height + kSpillTile - 1) / kSpillTile);
  return tx * ty * kSpillTile * kSpillTile * spec.bytes_per_pixel();
}

uint64_t SpillWriterRamBytes(const ImageSpec& spec) {
  return static_cast<uint64_t>(kSpillTile) * (spec.width + kSpillTile) *
         spec.bytes_per_pixel();
}

void RegionChunkOf(const ImageSpec& spec, int64_t* width, int64_t* height) {
  if (spec.region_chunk_width <= 0 || spec.region_chunk_height <= 0) {
    *width = *height = kSpillTile;
    return;
  }
  *width = spec.region_chunk_width;
  *height = spec.region_chunk_height;
  if (spec.region_chunk_width >= spec.width) {  // strips
    *height *= (kMinStripRows + *height - 1) / *height;
    *height = std::min(*height, spec.height);
  }
}

uint64_t RegionChunkBytes(const ImageSpec& spec) {
  int64_t w = 0, h = 0;
  RegionChunkOf(spec, &w, &h);
  return static_cast<uint64_t>(w) * static_cast<uint64_t>(h) *
         spec.bytes_per_pixel();
}

uint64_t RegionSourceRamBytes(const ImageSpec& spec, uint64_t cache_bytes) {
  const uint64_t chunk = RegionChunkBytes(spec);
  const uint64_t cache = std::max(cache_bytes, 2 * chunk);
  // The decoder's scratch: a chunk of compressed or converted samples.
  const bool file = spec.region_chunk_width > 0;
  return cache + (file ? chunk : 0);
}

}  // namespace regserve
