// Copyright regserve authors.
#include "client/tile_assembler.h"

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/image/image_io.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

constexpr int64_t kW = 37, kH = 23, kTile = 16;
constexpr int kChannels = 3;

uint8_t Pixel(int64_t x, int64_t y, int c) {
  return static_cast<uint8_t>((x * 7 + y * 13 + c * 50) & 0xff);
}

std::vector<v1::Tile> MakeTiles() {
  std::vector<v1::Tile> tiles;
  const int64_t tx = (kW + kTile - 1) / kTile, ty = (kH + kTile - 1) / kTile;
  for (int64_t j = 0; j < ty; ++j) {
    for (int64_t i = 0; i < tx; ++i) {
      v1::Tile t;
      t.set_index(j * tx + i);
      t.set_x(i * kTile);
      t.set_y(j * kTile);
      t.set_width(std::min(kTile, kW - t.x()));
      t.set_height(std::min(kTile, kH - t.y()));
      t.set_channels(kChannels);
      t.set_sample_type(v1::SAMPLE_TYPE_UINT8);
      t.set_encoding("raw");
      t.set_image_width(kW);
      t.set_image_height(kH);
      t.set_tile_size(kTile);
      t.set_tile_count(tx * ty);
      std::string data;
      for (int64_t y = t.y(); y < t.y() + t.height(); ++y)
        for (int64_t x = t.x(); x < t.x() + t.width(); ++x)
          for (int c = 0; c < kChannels; ++c)
            data.push_back(static_cast<char>(Pixel(x, y, c)));
      t.set_data(data);
      tiles.push_back(t);
    }
  }
  return tiles;
}

std::string TempDir() {
  char tmpl[] = "/tmp/tile_assembler_test_XXXXXX";
  return mkdtemp(tmpl);
}

void ExpectImage(const std::string& path) {
  auto image = ReadImageFile(path);
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_EQ(image->width(), kW);
  ASSERT_EQ(image->height(), kH);
  ASSERT_EQ(image->channels(), kChannels);
  for (int64_t y = 0; y < kH; ++y)
    for (int64_t x = 0; x < kW; ++x)
      for (int c = 0; c < kChannels; ++c)
        ASSERT_EQ(image->row(y)[x * kChannels + c], Pixel(x, y, c))
            << x << "," << y;
}

TEST(TileAssemblerTest, WritesPngAndTiffAndRemovesPartials) {
  const std::string dir = TempDir();
  for (const std::string name : {"out.png", "out.tif"}) {
    const std::string path = dir + "/" + name;
    auto a = TileAssembler::Open(path, "job1", /*resume=*/false);
    ASSERT_TRUE(a.ok());
    for (const v1::Tile& t : MakeTiles()) ASSERT_TRUE((*a)->AddTile(t).ok());
    EXPECT_TRUE((*a)->complete());
    ASSERT_TRUE((*a)->Finish().ok());
    EXPECT_NE(access((*a)->partial_path().c_str(), F_OK), 0);
    EXPECT_NE(access((*a)->state_path().c_str(), F_OK), 0);
    ExpectImage(path);
  }
}

TEST(TileAssemblerTest, ResumesOnlyTheSameJob) {
  const std::string path = TempDir() + "/out.png";
  const std::vector<v1::Tile> tiles = MakeTiles();
  {
    auto a = TileAssembler::Open(path, "job1", false);
    ASSERT_TRUE(a.ok());
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*a)->AddTile(tiles[i]).ok());
    EXPECT_EQ((*a)->Finish().code(), absl::StatusCode::kFailedPrecondition);
  }
  {
    auto other = TileAssembler::Open(path, "job2", true);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ((*other)->next_tile(), 0);
  }
  {
    // job2 wiped the state; rebuild job1's partial state.
    auto a = TileAssembler::Open(path, "job1", false);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*a)->AddTile(tiles[i]).ok());
  }
  auto resumed = TileAssembler::Open(path, "job1", true);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ((*resumed)->next_tile(), 4);
  // A replayed tile is ignored; a gap is refused.
  EXPECT_TRUE((*resumed)->AddTile(tiles[2]).ok());
  EXPECT_EQ((*resumed)->AddTile(tiles[5]).code(),
            absl::StatusCode::kInvalidArgument);
  for (size_t i = 4; i < tiles.size(); ++i)
    ASSERT_TRUE((*resumed)->AddTile(tiles[i]).ok());
  ASSERT_TRUE((*resumed)->Finish().ok());
  ExpectImage(path);
}

TEST(TileAssemblerTest, RefusesTilesOutsideTheImage) {
  const std::string path = TempDir() + "/out.png";
  auto a = TileAssembler::Open(path, "j", false);
  v1::Tile t = MakeTiles()[0];
  t.set_data(t.data().substr(1));
  EXPECT_EQ((*a)->AddTile(t).code(), absl::StatusCode::kInvalidArgument);
  t = MakeTiles()[0];
  t.set_width(kW + 1);
  EXPECT_EQ((*a)->AddTile(t).code(), absl::StatusCode::kInvalidArgument);
  t = MakeTiles()[0];
  t.set_sample_type(static_cast<v1::SampleType>(9));
  EXPECT_FALSE((*a)->AddTile(t).ok());
}

}  // namespace
}  // namespace regserve
