// Copyright regserve authors.
#include "core/image/png_chunks.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace regserve {
namespace {

using Bytes = std::vector<uint8_t>;

const Bytes kSignature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

void AppendChunk(Bytes* out, const char* type, uint32_t declared,
                 size_t actual) {
  for (int shift : {24, 16, 8, 0}) out->push_back((declared >> shift) & 0xff);
  out->insert(out->end(), type, type + 4);
  out->insert(out->end(), actual, 0x5a);
  out->insert(out->end(), 4, 0);  // CRC (not checked here)
}

void AppendChunk(Bytes* out, const char* type, size_t length) {
  AppendChunk(out, type, static_cast<uint32_t>(length), length);
}

Bytes Png() {
  Bytes b = kSignature;
  AppendChunk(&b, "IHDR", 13);
  return b;
}

// Counts reads so the window's effect is visible.
struct Reader {
  const Bytes& data;
  int reads = 0;
  size_t operator()(uint64_t offset, size_t n, uint8_t* out) {
    ++reads;
    if (offset >= data.size()) return 0;
    n = std::min<uint64_t>(n, data.size() - offset);
    std::memcpy(out, data.data() + offset, n);
    return n;
  }
};

absl::Status Check(const Bytes& data, int* reads = nullptr) {
  Reader reader{data};
  absl::Status s = CheckPngChunkLengths(
      data.size(),
      [&](uint64_t o, size_t n, uint8_t* out) { return reader(o, n, out); });
  if (reads != nullptr) *reads = reader.reads;
  return s;
}

TEST(PngChunksTest, WellFormedPngPasses) {
  Bytes b = Png();
  AppendChunk(&b, "tEXt", 100);
  AppendChunk(&b, "IDAT", 5000);
  AppendChunk(&b, "IEND", 0);
  EXPECT_TRUE(Check(b).ok());
}

TEST(PngChunksTest, NotAPngIsLeftToOtherReaders) {
  EXPECT_TRUE(Check(Bytes{'I', 'I', '*', 0, 8, 0, 0, 0}).ok());
  EXPECT_TRUE(Check(Bytes{}).ok());
  EXPECT_TRUE(Check(Bytes(kSignature.begin(), kSignature.begin() + 5)).ok());
}

TEST(PngChunksTest, ChunkLongerThanTheFileIsRefusedWithItsName) {
  Bytes b = Png();
  const size_t at = b.size();
  AppendChunk(&b, "tEXt", 1864398532u, 20);
  const absl::Status s = Check(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("\"tEXt\""), std::string::npos) << s;
  EXPECT_NE(s.message().find("at byte " + std::to_string(at)),
            std::string::npos)
      << s;
  EXPECT_NE(s.message().find("1864398532"), std::string::npos) << s;
  EXPECT_NE(s.message().find("re-export"), std::string::npos) << s;
}

TEST(PngChunksTest, LengthAboveTheSpecificationLimitIsRefused) {
  Bytes b = Png();
  AppendChunk(&b, "zTXt", 0x80000000u, 4);
  const absl::Status s = Check(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("above the PNG limit"), std::string::npos) << s;
}

TEST(PngChunksTest, ChunkWhoseCrcIsMissingIsRefused) {
  Bytes b = Png();
  AppendChunk(&b, "tEXt", 10);
  b.resize(b.size() - 4);  // the data fits, its CRC does not
  EXPECT_EQ(Check(b).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PngChunksTest, ImageDataAndWhatFollowsAreLeftToLibpng) {
  // A file cut inside IDAT, or a bad chunk after it: libpng streams IDAT
  // and OpenImageIO never reads past the image data.
  Bytes cut = Png();
  AppendChunk(&cut, "IDAT", 1000, 10);
  EXPECT_TRUE(Check(cut).ok());

  Bytes tail = Png();
  AppendChunk(&tail, "IDAT", 100);
  AppendChunk(&tail, "tEXt", 1864398532u, 20);
  EXPECT_TRUE(Check(tail).ok());

  // The same chunk before IDAT is refused.
  Bytes before = Png();
  AppendChunk(&before, "tEXt", 1864398532u, 20);
  AppendChunk(&before, "IDAT", 100);
  EXPECT_EQ(Check(before).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PngChunksTest, NonLetterChunkTypeIsEscapedInTheMessage) {
  Bytes b = Png();
  AppendChunk(&b, "a\n\x01Z", 500000, 3);
  const absl::Status s = Check(b);
  EXPECT_NE(s.message().find("\"a\\x0a\\x01Z\""), std::string::npos) << s;
}

TEST(PngChunksTest, ManySmallChunksAreReadThroughTheWindow) {
  Bytes b = Png();
  for (int i = 0; i < 20000; ++i) AppendChunk(&b, "tEXt", 3);  // 300 KB
  AppendChunk(&b, "IEND", 0);
  int reads = 0;
  EXPECT_TRUE(Check(b, &reads).ok());
  // One read for the signature, then one per 64 KiB window (plus headers
  // that straddle a window edge).
  EXPECT_LT(reads, 20) << reads;

  // A bad chunk deep in the list, with its header across a window edge.
  Bytes bad = Png();
  while (bad.size() < 65536 - 3) AppendChunk(&bad, "tEXt", 1);
  AppendChunk(&bad, "iTXt", 1u << 30, 0);
  EXPECT_EQ(Check(bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PngChunksTest, LargeFileCostsOneRead) {
  // A large image's IDAT chunks are not walked.
  Bytes b = Png();
  AppendChunk(&b, "tEXt", 30);
  for (int i = 0; i < 200; ++i) AppendChunk(&b, "IDAT", 8192);
  AppendChunk(&b, "IEND", 0);
  int reads = 0;
  EXPECT_TRUE(Check(b, &reads).ok());
  EXPECT_EQ(reads, 2) << "signature, then one window";
}

}  // namespace
}  // namespace regserve
