// Copyright regserve authors.
#include "core/common/tile_grid.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(TileGridTest, CountsAndEdges) {
  TileGrid g(18960, 14960, 512);
  EXPECT_EQ(g.cols(), 38);
  EXPECT_EQ(g.rows(), 30);
  EXPECT_EQ(g.count(), 1140);
  const TileRect last = g.rect(g.count() - 1);
  EXPECT_EQ(last.x, 37 * 512);
  EXPECT_EQ(last.y, 29 * 512);
  EXPECT_EQ(last.w, 18960 - 37 * 512);
  EXPECT_EQ(last.h, 14960 - 29 * 512);
  EXPECT_EQ(g.rect(39), (TileRect{512, 512, 512, 512}));
}

TEST(TileGridTest, TilesCoverTheImageOnce) {
  TileGrid g(100, 37, 16);
  int64_t area = 0;
  for (int64_t i = 0; i < g.count(); ++i) {
    const TileRect r = g.rect(i);
    ASSERT_GT(r.w, 0);
    ASSERT_GT(r.h, 0);
    area += r.w * r.h;
  }
  EXPECT_EQ(area, 100 * 37);
}

TEST(TileGridTest, OutOfRangeAndEmpty) {
  TileGrid g(10, 10, 16);
  EXPECT_EQ(g.count(), 1);
  EXPECT_EQ(g.rect(1).w, 0);
  EXPECT_EQ(g.rect(-1).w, 0);
  EXPECT_EQ(TileGrid(0, 10, 16).count(), 0);
  EXPECT_EQ(TileGrid().count(), 0);
}

TEST(TileGridTest, ValidEdges) {
  EXPECT_TRUE(TileGrid::ValidateEdge(16, "edge").ok());
  EXPECT_TRUE(TileGrid::ValidateEdge(8192, "edge").ok());
  EXPECT_FALSE(TileGrid::ValidateEdge(8208, "edge").ok());
  EXPECT_FALSE(TileGrid::ValidateEdge(0, "edge").ok());
  const absl::Status s = TileGrid::ValidateEdge(500, "stream_tile_size");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("stream_tile_size"), absl::string_view::npos);
}

}  // namespace
}  // namespace regserve
