// Copyright regserve authors.
#include "client/quality_map_image.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace regserve {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A 3x2 grid of 40 px patches (stride 20) over an 80x60 image, with a
// 40x30 thumbnail of grey 100.
v1::QualityMap SmallMap() {
  v1::QualityMap m;
  m.set_cols(3);
  m.set_rows(2);
  for (double x : {0.0, 20.0, 40.0}) m.add_x0(x);
  for (double y : {0.0, 20.0}) m.add_y0(y);
  m.set_patch_width(40);
  m.set_patch_height(40);
  m.set_stride_x(20);
  m.set_stride_y(20);
  const v1::QualityPatchState states[] = {
      v1::QUALITY_PATCH_STATE_MEASURED,  v1::QUALITY_PATCH_STATE_MEASURED,
      v1::QUALITY_PATCH_STATE_UNMATCHED, v1::QUALITY_PATCH_STATE_UNKNOWN,
      v1::QUALITY_PATCH_STATE_MEASURED,  v1::QUALITY_PATCH_STATE_UNKNOWN};
  const float errors[] = {0.2f, 3.0f, kNaN, kNaN, 0.9f, kNaN};
  for (int k = 0; k < 6; ++k) {
    m.add_state(states[k]);
    m.add_error_px(errors[k]);
  }
  m.set_thumbnail_width(40);
  m.set_thumbnail_height(30);
  m.set_thumbnail(std::string(40 * 30, static_cast<char>(100)));
  return m;
}

const uint8_t* At(const Image& img, int x, int y) { return img.row(y) + 3 * x; }

TEST(QualityMapImageTest, CellsAreTintedByState) {
  absl::StatusOr<Image> img = RenderQualityMap(SmallMap());
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->width(), 40);
  EXPECT_EQ(img->height(), 30);
  EXPECT_EQ(img->channels(), 3);
  // Cell edges: x at 0, 15, 25, 40 (midway between centres 10, 20, 30 in
  // thumbnail pixels); y at 0, 15, 30.
  const uint8_t* good = At(*img, 5, 5);  // 0.2 px: green
  EXPECT_GT(good[1], good[0] + 30);
  EXPECT_GT(good[1], good[2] + 30);
  const uint8_t* bad = At(*img, 20, 5);  // 3 px: red
  EXPECT_GT(bad[0], bad[1] + 30);
  const uint8_t* unmatched = At(*img, 35, 5);
  EXPECT_GT(unmatched[0], unmatched[1] + 30);
  const uint8_t* unknown = At(*img, 5, 25);  // grey, untouched
  EXPECT_EQ(unknown[0], 100);
  EXPECT_EQ(unknown[1], 100);
  EXPECT_EQ(unknown[2], 100);
  const uint8_t* yellowish = At(*img, 20, 25);  // 0.9 px
  EXPECT_GT(yellowish[0], yellowish[2] + 30);
  EXPECT_GT(yellowish[1], yellowish[2] + 30);
}

TEST(QualityMapImageTest, WithoutThumbnailDrawsOnGrey) {
  v1::QualityMap m = SmallMap();
  m.clear_thumbnail();
  m.set_thumbnail_width(0);
  m.set_thumbnail_height(0);
  absl::StatusOr<Image> img = RenderQualityMap(m);
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->width(), 1024);
  EXPECT_EQ(img->height(), 768);
  EXPECT_EQ(At(*img, 100, 700)[0], 128);
}

TEST(QualityMapImageTest, InconsistentMapsAreRefused) {
  v1::QualityMap m = SmallMap();
  m.add_state(v1::QUALITY_PATCH_STATE_UNKNOWN);
  EXPECT_EQ(RenderQualityMap(m).status().code(),
            absl::StatusCode::kInvalidArgument);
  m = SmallMap();
  m.set_thumbnail("short");
  EXPECT_EQ(RenderQualityMap(m).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderQualityMap(v1::QualityMap()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QualityMapImageTest, ColoursRampFromGreenToRed) {
  EXPECT_EQ(ErrorColour(0.1), (std::array<uint8_t, 3>{0, 200, 0}));
  const auto yellow = ErrorColour(1.0);
  EXPECT_GT(yellow[0], 200);
  EXPECT_GT(yellow[1], 200);
  EXPECT_EQ(ErrorColour(5.0), (std::array<uint8_t, 3>{220, 0, 0}));
  EXPECT_EQ(ErrorColour(kNaN), (std::array<uint8_t, 3>{0, 200, 0}));
}

TEST(QualityMapImageTest, SummaryText) {
  v1::QualitySummary s;
  EXPECT_EQ(QualitySummaryText(s), "quality: not estimated");
  s.set_warning("the residual could not be estimated: x");
  EXPECT_EQ(QualitySummaryText(s),
            "quality: not estimated (the residual could not be estimated: x)");
  s.set_estimated(true);
  s.set_verdict(v1::QUALITY_VERDICT_GOOD);
  s.set_mean_px(0.21);
  s.set_p95_px(0.6);
  s.set_max_px(1.1);
  s.set_checked_fraction(0.83);
  EXPECT_EQ(QualitySummaryText(s),
            "quality: est. mean 0.21 px, p95 0.60 px, max 1.10 px, checked 83% "
            "of the area");
  s.set_verdict(v1::QUALITY_VERDICT_POOR);
  EXPECT_NE(QualitySummaryText(s).find("(poor)"), std::string::npos);
}

}  // namespace
}  // namespace regserve
