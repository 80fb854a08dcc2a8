// Copyright regserve authors.
#include "core/quality/quality_map_io.h"

#include <cmath>
#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace regserve {
namespace {

QualityMap SampleMap() {
  QualityMap m;
  QualityGrid& g = m.grid;
  g.cols = 3;
  g.rows = 2;
  g.patch_size = 64;
  g.stride = 32;
  g.x0 = {0, 32, 36};
  g.y0 = {0, 10};
  g.scale_x = 2.5;
  g.scale_y = 2.25;
  g.state = {PatchState::kMeasured,  PatchState::kUnknown,
             PatchState::kUnmatched, PatchState::kMeasured,
             PatchState::kMeasured,  PatchState::kUnknown};
  const float nan = std::nanf("");
  g.dx = {0.5f, nan, nan, -1.25f, 0.f, nan};
  g.dy = {0.f, nan, nan, 2.f, 0.125f, nan};
  g.error_px = {0.5f, nan, nan, 2.358f, 0.125f, nan};
  g.response = {0.9f, 0.f, 0.3f, 0.8f, 0.95f, 0.f};
  m.thumbnail = *Image::Allocate(
      {.width = 5, .height = 3, .channels = 1, .type = SampleType::kUInt8});
  for (int i = 0; i < 15; ++i)
    m.thumbnail.data()[i] = static_cast<uint8_t>(i * 17);
  return m;
}

TEST(QualityMapIoTest, RoundTrips) {
  const QualityMap m = SampleMap();
  absl::StatusOr<QualityMap> back = DecodeQualityMap(EncodeQualityMap(m));
  ASSERT_TRUE(back.ok()) << back.status();
  const QualityGrid& a = m.grid;
  const QualityGrid& b = back->grid;
  EXPECT_EQ(b.cols, 3);
  EXPECT_EQ(b.rows, 2);
  EXPECT_EQ(b.patch_size, 64);
  EXPECT_EQ(b.stride, 32);
  EXPECT_EQ(b.x0, a.x0);
  EXPECT_EQ(b.y0, a.y0);
  EXPECT_EQ(b.scale_x, 2.5);
  EXPECT_EQ(b.scale_y, 2.25);
  EXPECT_EQ(b.state, a.state);
  for (size_t k = 0; k < a.state.size(); ++k) {
    if (std::isnan(a.dx[k])) {
      EXPECT_TRUE(std::isnan(b.dx[k]));
      EXPECT_TRUE(std::isnan(b.error_px[k]));
    } else {
      EXPECT_EQ(b.dx[k], a.dx[k]);
      EXPECT_EQ(b.dy[k], a.dy[k]);
      EXPECT_EQ(b.error_px[k], a.error_px[k]);
    }
    EXPECT_EQ(b.response[k], a.response[k]);
  }
  ASSERT_EQ(back->thumbnail.width(), 5);
  ASSERT_EQ(back->thumbnail.height(), 3);
  EXPECT_EQ(
      std::string(reinterpret_cast<const char*>(back->thumbnail.data()), 15),
      std::string(reinterpret_cast<const char*>(m.thumbnail.data()), 15));
}

TEST(QualityMapIoTest, WithoutThumbnail) {
  QualityMap m = SampleMap();
  m.thumbnail = Image();
  absl::StatusOr<QualityMap> back = DecodeQualityMap(EncodeQualityMap(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->thumbnail.empty());
  EXPECT_EQ(back->grid.state.size(), 6u);
}

TEST(QualityMapIoTest, DamagedBytesAreDataLoss) {
  const std::string bytes = EncodeQualityMap(SampleMap());
  for (size_t cut :
       {size_t{0}, size_t{7}, size_t{20}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_EQ(DecodeQualityMap(bytes.substr(0, cut)).status().code(),
              absl::StatusCode::kDataLoss)
        << cut;
  }
  EXPECT_EQ(DecodeQualityMap(bytes + "x").status().code(),
            absl::StatusCode::kDataLoss);
  std::string other = bytes;
  other[7] = '9';  // another version
  EXPECT_EQ(DecodeQualityMap(other).status().code(),
            absl::StatusCode::kDataLoss);
  std::string bad_state = bytes;
  // The first state byte follows the magic, 4 int32, 2 doubles, 3 + 2 int32.
  bad_state[8 + 16 + 16 + 20] = 7;
  EXPECT_EQ(DecodeQualityMap(bad_state).status().code(),
            absl::StatusCode::kDataLoss);
  std::string huge = bytes;
  const int32_t big = 1 << 30;
  std::memcpy(&huge[8], &big, 4);  // cols
  EXPECT_EQ(DecodeQualityMap(huge).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace regserve
