// Copyright regserve authors.
#include "core/image/compression.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace regserve {

absl::string_view CompressionName(Compression c) {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kDeflate:
      return "deflate";
    case Compression::kZstd:
      return "zstd";
    case Compression::kJpeg:
      return "jpeg";
  }
  return "unknown";
}

absl::StatusOr<Compression> ParseCompression(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "none") return Compression::kNone;
  if (n == "deflate" || n == "zip") return Compression::kDeflate;
  if (n == "zstd") return Compression::kZstd;
  if (n == "jpeg") return Compression::kJpeg;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown compression \"", name, "\"; use none, deflate, zstd or jpeg"));
}

absl::Status CheckCompression(Compression c, int jpeg_quality,
                              const ImageSpec& pixel,
                              absl::string_view option) {
  if (static_cast<int>(c) < 0 || static_cast<int>(c) > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(option, " is not a known compression"));
  }
  if (c != Compression::kJpeg) return absl::OkStatus();
  if (jpeg_quality < 1 || jpeg_quality > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat(option, "=jpeg needs a jpeg_quality from 1 to 100, not ",
                     jpeg_quality));
  }
  if (pixel.type != SampleType::kUInt8 ||
      (pixel.channels != 1 && pixel.channels != 3)) {
    return absl::InvalidArgumentError(absl::StrCat(
        option, "=jpeg stores 8-bit grey or RGB images only, and this one is ",
        pixel.channels, "-channel ", SampleTypeName(pixel.type),
        "; use deflate or zstd (lossless) instead"));
  }
  return absl::OkStatus();
}

}  // namespace regserve
