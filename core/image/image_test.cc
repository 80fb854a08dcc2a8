// Copyright regserve authors.
#include "core/image/image.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace regserve {
namespace {

ImageSpec Spec(int64_t w, int64_t h, int c, SampleType t) {
  ImageSpec s;
  s.width = w;
  s.height = h;
  s.channels = c;
  s.type = t;
  return s;
}

TEST(SampleTypeTest, SizesAndNames) {
  EXPECT_EQ(SampleSize(SampleType::kUInt8), 1u);
  EXPECT_EQ(SampleSize(SampleType::kUInt16), 2u);
  EXPECT_EQ(SampleSize(SampleType::kFloat32), 4u);
  EXPECT_EQ(SampleTypeName(SampleType::kUInt8), "uint8");
  EXPECT_EQ(SampleTypeName(SampleType::kUInt16), "uint16");
  EXPECT_EQ(SampleTypeName(SampleType::kFloat32), "float32");
}

TEST(ImageSpecTest, BytesAndDebugString) {
  const ImageSpec s = Spec(640, 480, 3, SampleType::kUInt16);
  EXPECT_EQ(s.pixels(), 640 * 480);
  EXPECT_EQ(s.bytes_per_pixel(), 6u);
  EXPECT_EQ(s.bytes(), 640u * 480u * 6u);
  EXPECT_EQ(s.DebugString(), "640x480x3 uint16");
}

TEST(ValidateSpecTest, AcceptsAndRejects) {
  EXPECT_TRUE(ValidateSpec(Spec(1, 1, 1, SampleType::kUInt8)).ok());
  EXPECT_TRUE(ValidateSpec(Spec(2147483647, 1, 4, SampleType::kFloat32)).ok());
  EXPECT_EQ(ValidateSpec(Spec(0, 5, 1, SampleType::kUInt8)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSpec(Spec(5, -1, 1, SampleType::kUInt8)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSpec(Spec(2147483648LL, 1, 1, SampleType::kUInt8)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSpec(Spec(5, 5, 0, SampleType::kUInt8)).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status five = ValidateSpec(Spec(5, 5, 5, SampleType::kUInt8));
  EXPECT_EQ(five.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(five.message().find("5 channels"), absl::string_view::npos);
  // 2^31-1 squared x 4 channels x 4 bytes > INT64_MAX.
  EXPECT_EQ(ValidateSpec(Spec(2147483647, 2147483647, 4, SampleType::kFloat32))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ImageTest, DefaultIsEmpty) {
  Image img;
  EXPECT_TRUE(img.empty());
  EXPECT_EQ(img.width(), 0);
  EXPECT_EQ(img.data(), nullptr);
}

TEST(ImageTest, AllocateZeroedRowsAndMove) {
  absl::StatusOr<Image> img =
      Image::AllocateZeroed(Spec(7, 5, 3, SampleType::kUInt16));
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->row_bytes(), 7u * 3u * 2u);
  EXPECT_EQ(img->size_bytes(), 5u * 7u * 3u * 2u);
  EXPECT_EQ(img->row(2), img->data() + 2 * img->row_bytes());
  for (size_t i = 0; i < img->size_bytes(); ++i) ASSERT_EQ(img->data()[i], 0);
  img->as<uint16_t>()[3] = 4242;
  Image moved = std::move(*img);
  EXPECT_EQ(moved.as<uint16_t>()[3], 4242);
  EXPECT_EQ(moved.spec().DebugString(), "7x5x3 uint16");
}

TEST(ImageTest, AllocateRejectsBadSpec) {
  EXPECT_EQ(Image::Allocate(Spec(0, 1, 1, SampleType::kUInt8)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class CountingAllocator final : public HostAllocator {
 public:
  void* Allocate(size_t bytes) override {
    if (fail) return nullptr;
    ++allocations;
    live_bytes += bytes;
    return ::operator new(bytes);
  }
  void Free(void* p, size_t bytes) override {
    ++frees;
    live_bytes -= bytes;
    ::operator delete(p);
  }
  bool fail = false;
  int allocations = 0;
  int frees = 0;
  size_t live_bytes = 0;
};

TEST(ImageTest, UsesAndReturnsToCustomAllocator) {
  CountingAllocator alloc;
  {
    absl::StatusOr<Image> img =
        Image::Allocate(Spec(10, 10, 4, SampleType::kFloat32), &alloc);
    ASSERT_TRUE(img.ok());
    EXPECT_EQ(alloc.allocations, 1);
    EXPECT_EQ(alloc.live_bytes, 10u * 10u * 16u);
  }
  EXPECT_EQ(alloc.frees, 1);
  EXPECT_EQ(alloc.live_bytes, 0u);
}

TEST(ImageTest, AllocationFailureIsResourceExhausted) {
  CountingAllocator alloc;
  alloc.fail = true;
  absl::StatusOr<Image> img =
      Image::Allocate(Spec(10, 10, 1, SampleType::kUInt8), &alloc);
  EXPECT_EQ(img.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace regserve
