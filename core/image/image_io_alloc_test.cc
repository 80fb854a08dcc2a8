// Copyright regserve authors.
//
// Decoding must not make OpenImageIO allocate far beyond the image. This
// binary replaces operator new[] (OIIO's scratch buffers use it) to record the
// largest single request; it is its own test so the replacement touches
// nothing else.
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/image/image_io.h"
#include "gtest/gtest.h"

namespace {
std::atomic<size_t> g_largest_array_new{0};
}  // namespace

void* operator new[](size_t n) {
  size_t seen = g_largest_array_new.load(std::memory_order_relaxed);
  while (n > seen && !g_largest_array_new.compare_exchange_weak(
                         seen, n, std::memory_order_relaxed)) {
  }
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace regserve {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// libFuzzer found this 133-byte TIFF (tests/fuzz/corpus/image_io_fuzz/
// regressions/oom-84c7...): 3195728x2 RGB, one row per strip, a strip byte
// count of 2 GiB. Its pixels are 19 MB; OIIO's default read_chunk of 256
// scanlines made read_image ask for 2.45 GB.
constexpr char kWideShortTiff[] =
    "SUkqAAgAAAAKAAABBAABAAAAUMMwAAEBBAABAAAAAgAAABEBBAABAAAAjAAAABUBAwABAAAAAw"
    "AAAAAWAQQAAQAAUMMAABcBBAABAAAAAAAAgBwBAwABAAAAAQAAZGNtAAAAgAAIAAgACAB42u3B"
    "AQ0AAADCoPdPbQ8HFAAAAPBuEAAAAQ==";

TEST(ImageIoAllocTest, WideShortTiffScratchStaysNearOneChunk) {
  std::string bytes;
  ASSERT_TRUE(absl::Base64Unescape(kWideShortTiff, &bytes));
  ReadOptions options;
  options.max_bytes = 64 * kMiB;
  options.threads = 1;
  g_largest_array_new = 0;
  const absl::Span<const uint8_t> span(
      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  absl::StatusOr<Image> image = ReadImageMemory(span, "x.tif", options);
  // OIIO reaches its read loop (and then reports the strips short), so
  // the scratch was really allocated: more than the 19 MB of pixels, less
  // than 256 scanlines.
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_GT(g_largest_array_new.load(), size_t{3195728} * 2 * 3);
  EXPECT_LE(g_largest_array_new.load(), 72 * kMiB)
      << "largest new[] " << g_largest_array_new.load();
}

TEST(ImageIoAllocTest, WideImageDecodesExactlyWithBoundedScratch) {
  // 300000x3 RGB uint8: 900 KB per scanline, so 256 scanlines would be a
  // 230 MB scratch for a 2.7 MB image.
  constexpr int64_t kWidth = 300000, kHeight = 3;
  absl::StatusOr<Image> src =
      Image::Allocate(ImageSpec{kWidth, kHeight, 3, SampleType::kUInt8});
  ASSERT_TRUE(src.ok()) << src.status();
  uint8_t* px = src->as<uint8_t>();
  for (int64_t i = 0; i < kWidth * kHeight * 3; ++i) {
    px[i] = static_cast<uint8_t>((i * 131) >> 3);
  }
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/wide_", ::getpid(), ".tif");
  ASSERT_TRUE(WriteImageFile(path, *src).ok());
  g_largest_array_new = 0;
  ReadOptions options;
  options.threads = 1;
  absl::StatusOr<Image> back = ReadImageFile(path, options);
  ::unlink(path.c_str());
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size_bytes(), src->size_bytes());
  EXPECT_EQ(std::memcmp(back->data(), src->data(), src->size_bytes()), 0);
  // 64 MiB of scanlines rounded up to whole strips (86.4 MB here); 256
  // scanlines would be 230 MB.
  EXPECT_LE(g_largest_array_new.load(), 128 * kMiB)
      << "largest new[] " << g_largest_array_new.load();
}

// Rewrites the RowsPerStrip tag (278) of a little-endian classic TIFF as
// one LONG.
bool PatchRowsPerStrip(const std::string& path, uint32_t rows) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)),
                    std::istreambuf_iterator<char>());
  if (bytes.size() < 8 || bytes.compare(0, 4, std::string("II*\0", 4)) != 0)
    return false;
  auto u16 = [&](size_t at) {
    return static_cast<uint32_t>(static_cast<uint8_t>(bytes[at])) |
           static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 1])) << 8;
  };
  auto u32 = [&](size_t at) { return u16(at) | u16(at + 2) << 16; };
  const size_t ifd = u32(4);
  for (uint32_t i = 0; i < u16(ifd); ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (u16(entry) != 278) continue;
    const uint8_t patch[10] = {4,
                               0,
                               1,
                               0,
                               0,
                               0,
                               static_cast<uint8_t>(rows),
                               static_cast<uint8_t>(rows >> 8),
                               static_cast<uint8_t>(rows >> 16),
                               static_cast<uint8_t>(rows >> 24)};
    f.seekp(static_cast<std::streamoff>(entry + 2));
    f.write(reinterpret_cast<const char*>(patch), sizeof(patch));
    return static_cast<bool>(f);
  }
  return false;
}

TEST(ImageIoAllocTest, StripTallerThanTheImageIsRefusedBeforeReading) {
  // 300000x3 RGB: 2.7 MB of pixels. OIIO allocates RowsPerStrip scanlines:
  // 900 MB at 1000, 59 GB at 65536; at 2^31-1 its rounding overflows and
  // read_image never returns, and from 2^31 its reader frees a bad pointer
  // (the process aborts).
  constexpr int64_t kWidth = 300000, kHeight = 3;
  absl::StatusOr<Image> src =
      Image::Allocate(ImageSpec{kWidth, kHeight, 3, SampleType::kUInt8});
  ASSERT_TRUE(src.ok());
  std::memset(src->data(), 7, src->size_bytes());
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/rps_", ::getpid(), ".tif");
  for (uint32_t rows : {1000u, 65536u, 2147483647u, 2147483648u, 3000000000u}) {
    ASSERT_TRUE(WriteImageFile(path, *src).ok());
    ASSERT_TRUE(PatchRowsPerStrip(path, rows)) << rows;
    g_largest_array_new = 0;
    const absl::Status read = ReadImageFile(path).status();
    EXPECT_EQ(read.code(), absl::StatusCode::kInvalidArgument) << rows;
    EXPECT_NE(read.message().find("RowsPerStrip"), std::string::npos) << read;
    EXPECT_EQ(ReadImageSpecFile(path).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_LT(g_largest_array_new.load(), 16 * kMiB) << rows;
  }
  // A strip a little taller than the image, and TIFF's "one strip"
  // (2^32-1), are read; the whole image is the scratch.
  for (uint32_t rows : {4u, 4294967295u}) {
    ASSERT_TRUE(WriteImageFile(path, *src).ok());
    ASSERT_TRUE(PatchRowsPerStrip(path, rows)) << rows;
    absl::StatusOr<Image> back = ReadImageFile(path);
    ASSERT_TRUE(back.ok()) << rows << ": " << back.status();
    EXPECT_EQ(std::memcmp(back->data(), src->data(), src->size_bytes()), 0);
    absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
    ASSERT_TRUE(spec.ok());
    EXPECT_EQ(spec->decode_scratch_bytes, src->size_bytes()) << rows;
  }
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace regserve
