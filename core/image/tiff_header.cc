// Copyright regserve authors.
#include "core/image/tiff_header.h"

#include <vector>

namespace regserve {
namespace {

constexpr uint16_t kRowsPerStrip = 278;
constexpr uint16_t kShort = 3, kLong = 4, kLong8 = 16;
// More IFD entries than any real first image has; bounds the read.
constexpr uint64_t kMaxEntries = 4096;

class Bytes {
 public:
  Bytes(const uint8_t* p, bool big_endian) : p_(p), big_(big_endian) {}
  uint64_t Get(size_t at, int n) const {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
      const uint64_t b = p_[at + (big_ ? i : n - 1 - i)];
      v = (v << 8) | b;
    }
    return v;
  }

 private:
  const uint8_t* p_;
  bool big_;
};

}  // namespace

std::optional<uint64_t> ReadTiffRowsPerStrip(uint64_t size, ReadAtFn read_at) {
  uint8_t head[16];
  if (size < 8 || read_at(0, 16, head) < 8) return std::nullopt;
  bool big_endian;
  if (head[0] == 'I' && head[1] == 'I') {
    big_endian = false;
  } else if (head[0] == 'M' && head[1] == 'M') {
    big_endian = true;
  } else {
    return std::nullopt;
  }
  const Bytes h(head, big_endian);
  const uint64_t magic = h.Get(2, 2);
  bool bigtiff;
  uint64_t ifd;
  if (magic == 42) {
    bigtiff = false;
    ifd = h.Get(4, 4);
  } else if (magic == 43 && size >= 16 && h.Get(4, 2) == 8) {
    bigtiff = true;
    ifd = h.Get(8, 8);
  } else {
    return std::nullopt;
  }
  const int count_bytes = bigtiff ? 8 : 2;
  const uint64_t entry_bytes = bigtiff ? 20 : 12;
  uint8_t count_buf[8];
  if (ifd >= size || size - ifd < static_cast<uint64_t>(count_bytes) ||
      read_at(ifd, count_bytes, count_buf) !=
          static_cast<size_t>(count_bytes)) {
    return std::nullopt;
  }
  const uint64_t entries = Bytes(count_buf, big_endian).Get(0, count_bytes);
  if (entries == 0 || entries > kMaxEntries) return std::nullopt;
  const uint64_t first = ifd + count_bytes;
  if (first > size || (size - first) / entry_bytes < entries) {
    return std::nullopt;
  }
  std::vector<uint8_t> table(entries * entry_bytes);
  if (read_at(first, table.size(), table.data()) != table.size()) {
    return std::nullopt;
  }
  const Bytes t(table.data(), big_endian);
  for (uint64_t i = 0; i < entries; ++i) {
    const size_t e = i * entry_bytes;
    if (t.Get(e, 2) != kRowsPerStrip) continue;
    const uint64_t type = t.Get(e + 2, 2);
    const uint64_t count = t.Get(e + 4, bigtiff ? 8 : 4);
    const size_t value = e + (bigtiff ? 12 : 8);
    if (count != 1) return std::nullopt;
    if (type == kShort) return t.Get(value, 2);
    if (type == kLong) return t.Get(value, 4);
    if (type == kLong8 && bigtiff) return t.Get(value, 8);
    return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace regserve
