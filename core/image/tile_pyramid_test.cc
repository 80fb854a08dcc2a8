// Copyright regserve authors.
#include "core/image/tile_pyramid.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(PyramidGeometryTest, HalvesUntilOneTileHoldsTheLevel) {
  const PyramidGeometry g(18960, 14960, 512);
  ASSERT_EQ(g.levels(), 7);
  const int64_t w[] = {18960, 9480, 4740, 2370, 1185, 593, 297};
  const int64_t h[] = {14960, 7480, 3740, 1870, 935, 468, 234};
  for (int k = 0; k < 7; ++k) {
    EXPECT_EQ(g.width(k), w[k]) << k;
    EXPECT_EQ(g.height(k), h[k]) << k;
  }
  EXPECT_EQ(g.tiles_x(0), 38);
  EXPECT_EQ(g.tile_w(0, 37), 18960 - 37 * 512);
  EXPECT_EQ(PyramidGeometry(512, 512, 512).levels(), 1);
  EXPECT_EQ(PyramidGeometry(513, 10, 512).levels(), 2);
  EXPECT_EQ(PyramidGeometry(513, 10, 512).width(1), 257);
  EXPECT_EQ(PyramidGeometry(513, 10, 512).height(1), 5);
  EXPECT_EQ(PyramidGeometry(5000, 5000, 512, /*pyramid=*/false).levels(), 1);
}

TEST(HalveTest, AveragesTwoByTwoAndRepeatsTheOddEdge) {
  // 3x3 valid pixels of one channel in a 16x16 tile.
  const int t = 16;
  std::vector<uint8_t> child(t * t, 0);
  const uint8_t v[3][3] = {{10, 20, 30}, {40, 51, 60}, {70, 80, 90}};
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 3; ++x) child[y * t + x] = v[y][x];
  }
  ReplicateEdges(t, 3, 3, 1, child.data());
  EXPECT_EQ(child[0 * t + 5], 30);  // last column repeated
  EXPECT_EQ(child[7 * t + 1], 80);  // last row repeated
  std::vector<uint8_t> parent(t * t, 0);
  HalveInto(t, 1, SampleType::kUInt8, 3, 3, child.data(), 1, 0, parent.data());
  // Quadrant (1, 0) starts at x = 8.
  EXPECT_EQ(parent[8], (10 + 20 + 40 + 51 + 2) / 4);
  EXPECT_EQ(parent[9], (30 + 30 + 60 + 60 + 2) / 4);
  EXPECT_EQ(parent[t + 8], (70 + 80 + 70 + 80 + 2) / 4);
  EXPECT_EQ(parent[t + 9], 90);
  EXPECT_EQ(parent[0], 0);  // other quadrants untouched
}

// The reference: level k+1 from the whole level k, edges repeated.
std::vector<uint16_t> HalveWhole(const std::vector<uint16_t>& in, int64_t w,
                                 int64_t h, int c) {
  const int64_t ow = (w + 1) / 2, oh = (h + 1) / 2;
  std::vector<uint16_t> out(ow * oh * c);
  auto at = [&](int64_t x, int64_t y, int ch) {
    return uint32_t{in[(std::min(y, h - 1) * w + std::min(x, w - 1)) * c + ch]};
  };
  for (int64_t y = 0; y < oh; ++y) {
    for (int64_t x = 0; x < ow; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        const uint32_t s = at(2 * x, 2 * y, ch) + at(2 * x + 1, 2 * y, ch) +
                           at(2 * x, 2 * y + 1, ch) +
                           at(2 * x + 1, 2 * y + 1, ch);
        out[(y * ow + x) * c + ch] = static_cast<uint16_t>((s + 2) / 4);
      }
    }
  }
  return out;
}

TEST(TileParentsTest, EveryLevelMatchesHalvingTheWholeLevel) {
  const int t = 16, c = 2;
  const int64_t w = 75, h = 41;  // odd sizes, partial edge tiles
  const PyramidGeometry g(w, h, t);
  ASSERT_EQ(g.levels(), 4);  // 75 -> 38 -> 19 -> 10
  std::mt19937 rng(7);
  std::vector<uint16_t> level(w * h * c);
  for (uint16_t& v : level) v = static_cast<uint16_t>(rng());
  TileParents parents(g, c, SampleType::kUInt16);
  // Tiles of the current level, finished in row-major order.
  std::vector<std::vector<uint16_t>> finished;
  auto tile_of = [&](const std::vector<uint16_t>& img, int k, int64_t tx,
                     int64_t ty) {
    std::vector<uint16_t> tile(t * t * c, 0);
    for (int64_t y = 0; y < g.tile_h(k, ty); ++y) {
      std::memcpy(&tile[y * t * c],
                  &img[((ty * t + y) * g.width(k) + tx * t) * c],
                  g.tile_w(k, tx) * c * sizeof(uint16_t));
    }
    ReplicateEdges(t, g.tile_w(k, tx), g.tile_h(k, ty), c * 2,
                   reinterpret_cast<uint8_t*>(tile.data()));
    return tile;
  };
  for (int k = 0; k + 1 < g.levels(); ++k) {
    const std::vector<uint16_t> want =
        HalveWhole(level, g.width(k), g.height(k), c);
    std::vector<uint16_t> got(want.size(), 0);
    int completed = 0;
    for (int64_t ty = 0; ty < g.tiles_y(k); ++ty) {
      for (int64_t tx = 0; tx < g.tiles_x(k); ++tx) {
        std::vector<uint16_t> tile = tile_of(level, k, tx, ty);
        std::optional<ParentTile> p = parents.Add(
            k, tx, ty, reinterpret_cast<const uint8_t*>(tile.data()));
        if (!p.has_value()) continue;
        ++completed;
        EXPECT_EQ(p->level, k + 1);
        const uint16_t* px =
            reinterpret_cast<const uint16_t*>(p->pixels.data());
        for (int64_t y = 0; y < g.tile_h(k + 1, p->ty); ++y) {
          std::memcpy(&got[((p->ty * t + y) * g.width(k + 1) + p->tx * t) * c],
                      px + y * t * c,
                      g.tile_w(k + 1, p->tx) * c * sizeof(uint16_t));
        }
      }
    }
    EXPECT_EQ(completed, g.tiles(k + 1)) << "level " << k + 1;
    EXPECT_EQ(got, want) << "level " << k + 1;
    level = want;
  }
  EXPECT_EQ(parents.held_bytes(), 0u);
  EXPECT_GT(parents.peak_bytes(), 0u);
}

}  // namespace
}  // namespace regserve
