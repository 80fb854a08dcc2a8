// Copyright regserve authors.
//
// Compresses one TIFF tile the way the tiled TIFF writer stores it: full
// tile x tile pixels, interleaved; deflate (libdeflate, level 1, zlib
// stream) and zstd (level 3) after TIFF's horizontal predictor for integer
// samples; baseline JPEG through libjpeg-turbo (YCbCr 4:2:0 for RGB, every
// tile a complete JPEG stream with its own tables). The bytes are what
// TIFFWriteRawTile takes for the matching Compression/Predictor/Photometric
// tags (TiffTagsFor says which).
//
//   TileFormat f{.tile = 512, .channels = 3, .type = SampleType::kUInt8,
//                .compression = Compression::kZstd};
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<TileEncoder> enc,
//                             TileEncoder::Create(f));
//   std::vector<uint8_t> out;
//   REGSERVE_RETURN_IF_ERROR(enc->Encode(&pixels, &out));  // pixels: tile^2
//
// Thread safety: a TileEncoder holds its codec's state; use one per thread.
#ifndef REGSERVE_CORE_IMAGE_TILE_CODEC_H_
#define REGSERVE_CORE_IMAGE_TILE_CODEC_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/compression.h"
#include "core/image/image.h"

namespace regserve {

struct TileFormat {
  int tile = 512;  // edge in pixels
  int channels = 3;
  SampleType type = SampleType::kUInt8;
  Compression compression = Compression::kDeflate;
  int jpeg_quality = kDefaultJpegQuality;

  size_t bytes_per_pixel() const {
    return static_cast<size_t>(channels) * SampleSize(type);
  }
  size_t tile_bytes() const {
    return static_cast<size_t>(tile) * static_cast<size_t>(tile) *
           bytes_per_pixel();
  }
};

// The TIFF tag values that describe tiles encoded for `f`.
struct TiffTileTags {
  int compression = 1;  // COMPRESSION_NONE
  int predictor = 1;    // PREDICTOR_NONE
  int photometric = 1;  // MINISBLACK
  bool ycbcr = false;   // JPEG RGB: YCbCr 2x2 subsampled
};
TiffTileTags TiffTagsFor(const TileFormat& f);

class TileEncoder {
 public:
  // InvalidArgument for a format the codec cannot store (CheckCompression),
  // ResourceExhausted if the codec's state cannot be allocated.
  static absl::StatusOr<std::unique_ptr<TileEncoder>> Create(
      const TileFormat& format);
  virtual ~TileEncoder() = default;
  // Encodes `*pixels` (tile_bytes(), interleaved) into `*out`. The pixels
  // are consumed: the predictor works in place, and kNone moves them.
  virtual absl::Status Encode(std::vector<uint8_t>* pixels,
                              std::vector<uint8_t>* out) = 0;
};

// A bound on Encode's output size for `f` (for memory estimates).
size_t MaxEncodedTileBytes(const TileFormat& f);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_TILE_CODEC_H_
