// Copyright regserve authors.
#include "core/image/tiff_header.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace regserve {
namespace {

using Bytes = std::vector<uint8_t>;

void Put(Bytes* b, uint64_t v, int n, bool big_endian) {
  for (int i = 0; i < n; ++i) {
    const int shift = 8 * (big_endian ? n - 1 - i : i);
    b->push_back(static_cast<uint8_t>(v >> shift));
  }
}

struct Entry {
  uint16_t tag, type;
  uint64_t value;
};

// A header with one IFD right after it holding `entries` (count 1 each).
Bytes Tiff(bool big_endian, bool bigtiff, const std::vector<Entry>& entries) {
  Bytes b;
  b.push_back(big_endian ? 'M' : 'I');
  b.push_back(big_endian ? 'M' : 'I');
  Put(&b, bigtiff ? 43 : 42, 2, big_endian);
  if (bigtiff) {
    Put(&b, 8, 2, big_endian);
    Put(&b, 0, 2, big_endian);
    Put(&b, 16, 8, big_endian);
  } else {
    Put(&b, 8, 4, big_endian);
  }
  Put(&b, entries.size(), bigtiff ? 8 : 2, big_endian);
  for (const Entry& e : entries) {
    Put(&b, e.tag, 2, big_endian);
    Put(&b, e.type, 2, big_endian);
    Put(&b, 1, bigtiff ? 8 : 4, big_endian);
    const int value_bytes = bigtiff ? 8 : 4;
    const int n = e.type == 3 ? 2 : (e.type == 16 ? 8 : 4);
    Put(&b, e.value, n, big_endian);
    for (int i = n; i < value_bytes; ++i) b.push_back(0);
  }
  Put(&b, 0, bigtiff ? 8 : 4, big_endian);  // no next IFD
  b.resize(b.size() + 64, 0);               // pixel data stand-in
  return b;
}

std::optional<uint64_t> Rps(const Bytes& b) {
  return ReadTiffRowsPerStrip(b.size(),
                              [&](uint64_t off, size_t n, uint8_t* out) {
                                if (off >= b.size()) return size_t{0};
                                n = std::min<uint64_t>(n, b.size() - off);
                                std::memcpy(out, b.data() + off, n);
                                return n;
                              });
}

const std::vector<Entry> kStrips = {
    {256, 4, 300000}, {257, 3, 3}, {278, 4, 0}, {279, 4, 900000}};

std::vector<Entry> WithRps(uint16_t type, uint64_t rps) {
  std::vector<Entry> e = kStrips;
  e[2] = {278, type, rps};
  return e;
}

TEST(TiffHeaderTest, ReadsRowsPerStripInEveryByteOrderAndSize) {
  for (bool big_endian : {false, true}) {
    EXPECT_EQ(Rps(Tiff(big_endian, false, WithRps(4, 2147483648u))),
              2147483648u);
    EXPECT_EQ(Rps(Tiff(big_endian, false, WithRps(4, 4294967295u))),
              4294967295u);
    EXPECT_EQ(Rps(Tiff(big_endian, false, WithRps(3, 32))), 32u);
    EXPECT_EQ(Rps(Tiff(big_endian, true, WithRps(16, uint64_t{1} << 40))),
              uint64_t{1} << 40);
    EXPECT_EQ(Rps(Tiff(big_endian, true, WithRps(4, 17))), 17u);
  }
}

TEST(TiffHeaderTest, NothingWhenAbsentOrNotATiff) {
  std::vector<Entry> no_rps = kStrips;
  no_rps.erase(no_rps.begin() + 2);
  EXPECT_EQ(Rps(Tiff(false, false, no_rps)), std::nullopt);
  EXPECT_EQ(Rps(Bytes{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0}),
            std::nullopt);
  EXPECT_EQ(Rps(Bytes{'I', 'I', 42}), std::nullopt);
  // A count of 2 or an unexpected type is not a value we can use.
  std::vector<Entry> ascii = WithRps(2, 7);
  EXPECT_EQ(Rps(Tiff(false, false, ascii)), std::nullopt);
}

TEST(TiffHeaderTest, BrokenHeadersAreLeftToTheReader) {
  Bytes b = Tiff(false, false, WithRps(4, 99));
  // IFD offset past the end.
  Bytes far = b;
  far[4] = 0xff;
  far[5] = 0xff;
  EXPECT_EQ(Rps(far), std::nullopt);
  // An entry count whose table runs past the end.
  Bytes many = b;
  many[8] = 0xff;
  many[9] = 0x0f;
  EXPECT_EQ(Rps(many), std::nullopt);
  // Cut inside the table.
  Bytes cut(b.begin(), b.begin() + 20);
  EXPECT_EQ(Rps(cut), std::nullopt);
}

}  // namespace
}  // namespace regserve
