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

// libFuzzer found this 165-byte TIFF (tests/fuzz/corpus/image_io_fuzz/
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
  // Whether OIIO decodes these bytes or reports them corrupt, it must not
  // have asked for more than its 64 MiB chunk.
  if (image.ok()) {
    EXPECT_EQ(image->width(), 3195728);
    EXPECT_EQ(image->height(), 2);
  }
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

}  // namespace
}  // namespace regserve
