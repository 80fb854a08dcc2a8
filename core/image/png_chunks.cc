// Copyright regserve authors.
#include "core/image/png_chunks.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
constexpr size_t kWindow = 64 * 1024;
// Length, type, then the data, then a 4-byte CRC.
constexpr uint64_t kHeader = 8;
constexpr uint64_t kCrc = 4;
// The PNG specification caps a chunk's length at 2^31 - 1.
constexpr uint64_t kMaxChunkLength = (uint64_t{1} << 31) - 1;

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string ChunkName(const uint8_t* type) {
  std::string name;
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>(type[i]);
    if (absl::ascii_isalpha(static_cast<unsigned char>(c))) {
      name.push_back(c);
    } else {
      absl::StrAppend(&name, "\\x", absl::Hex(type[i], absl::kZeroPad2));
    }
  }
  return name;
}

}  // namespace

absl::Status CheckPngChunkLengths(uint64_t size, ReadAtFn read_at) {
  uint8_t signature[sizeof(kSignature)];
  if (size < sizeof(kSignature) ||
      read_at(0, sizeof(signature), signature) != sizeof(signature) ||
      std::memcmp(signature, kSignature, sizeof(kSignature)) != 0) {
    return absl::OkStatus();  // not a PNG; other readers check their own
  }
  std::vector<uint8_t> window(kWindow);
  uint64_t window_start = 0;
  size_t window_len = 0;
  uint64_t offset = sizeof(kSignature);
  while (offset + kHeader <= size) {
    if (offset < window_start || offset + kHeader > window_start + window_len) {
      window_start = offset;
      window_len = read_at(offset, window.size(), window.data());
      if (window_len < kHeader) break;  // short read: let libpng report it
    }
    const uint8_t* header = window.data() + (offset - window_start);
    // libpng streams IDAT and OpenImageIO stops reading at the image data,
    // so only the chunks before the first IDAT are buffered whole.
    if (std::memcmp(header + 4, "IDAT", 4) == 0 ||
        std::memcmp(header + 4, "IEND", 4) == 0) {
      break;
    }
    const uint64_t length = BigEndian32(header);
    const uint64_t left = size - offset - kHeader;
    if (length > kMaxChunkLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PNG chunk \"", ChunkName(header + 4), "\" at byte ", offset,
          " declares ", length,
          " bytes of data, above the PNG limit of 2^31-1. The file is corrupt; "
          "re-export it"));
    }
    if (length + kCrc > left) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PNG chunk \"", ChunkName(header + 4), "\" at byte ", offset,
          " declares ", length, " bytes of data and a 4-byte CRC but only ",
          left,
          " bytes follow its header. The file is truncated or corrupt; "
          "re-export it"));
    }
    offset += kHeader + length + kCrc;
  }
  return absl::OkStatus();
}

}  // namespace regserve
