// Copyright regserve authors.
#include "client/tile_assembler.h"

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/common/tile_grid.h"
#include "core/image/image_io.h"
#include "core/image/tile_wire_codec.h"
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
  const TileGrid grid(kW, kH, kTile);  // 3 x 2 tiles
  for (int64_t i = 0; i < grid.count(); ++i) {
    const TileRect r = grid.rect(i);
    v1::Tile t;
    t.set_index(i);
    t.set_x(r.x);
    t.set_y(r.y);
    t.set_width(r.w);
    t.set_height(r.h);
    t.set_channels(kChannels);
    t.set_sample_type(v1::SAMPLE_TYPE_UINT8);
    t.set_encoding(v1::TILE_ENCODING_RAW);
    t.set_image_width(kW);
    t.set_image_height(kH);
    t.set_tile_size(kTile);
    t.set_tile_count(grid.count());
    std::string data;
    for (int64_t y = r.y; y < r.y + r.h; ++y)
      for (int64_t x = r.x; x < r.x + r.w; ++x)
        for (int c = 0; c < kChannels; ++c)
          data.push_back(static_cast<char>(Pixel(x, y, c)));
    t.set_data(data);
    tiles.push_back(t);
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

TEST(TileAssemblerTest, TiffIsEncodedBandByBandAndResumes) {
  const std::string path = TempDir() + "/out.tif";
  const std::vector<v1::Tile> tiles = MakeTiles();  // 2 bands of 3 tiles
  {
    auto a = TileAssembler::Open(path, "job1", false);
    ASSERT_TRUE(a.ok());
    for (int i = 0; i < 2; ++i) ASSERT_TRUE((*a)->AddTile(tiles[i]).ok());
    EXPECT_NE(access((*a)->encoded_path().c_str(), F_OK), 0);
    ASSERT_TRUE((*a)->AddTile(tiles[2]).ok());  // the first band is whole
    EXPECT_EQ(access((*a)->encoded_path().c_str(), F_OK), 0);
    EXPECT_NE(access(path.c_str(), F_OK), 0);
    ASSERT_TRUE((*a)->AddTile(tiles[3]).ok());
  }  // interrupted: its half-written encoding goes, the raw tiles stay
  auto resumed = TileAssembler::Open(path, "job1", true);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ((*resumed)->next_tile(), 4);
  EXPECT_NE(access((*resumed)->encoded_path().c_str(), F_OK), 0);
  for (size_t i = 4; i < tiles.size(); ++i)
    ASSERT_TRUE((*resumed)->AddTile(tiles[i]).ok());
  ASSERT_TRUE((*resumed)->Finish().ok());
  EXPECT_NE(access((*resumed)->encoded_path().c_str(), F_OK), 0);
  EXPECT_NE(access((*resumed)->partial_path().c_str(), F_OK), 0);
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

TEST(TileAssemblerTest, RefusesTilesOffTheGrid) {
  const std::string path = TempDir() + "/out.png";
  auto a = TileAssembler::Open(path, "j", false);
  ASSERT_TRUE(a.ok());
  // A tile count that is not the grid's.
  std::vector<v1::Tile> tiles = MakeTiles();
  for (v1::Tile& t : tiles) t.set_tile_count(7);
  EXPECT_EQ((*a)->AddTile(tiles[0]).code(), absl::StatusCode::kInvalidArgument);
  // Tile 1 at tile 2's place.
  tiles = MakeTiles();
  ASSERT_TRUE((*a)->AddTile(tiles[0]).ok());
  v1::Tile moved = tiles[2];
  moved.set_index(1);
  EXPECT_EQ((*a)->AddTile(moved).code(), absl::StatusCode::kInvalidArgument);
}

// Tiles as a server sends them in `encoding` (some may stay RAW when they
// would not shrink: each tile says).
std::vector<v1::Tile> EncodeTiles(TileEncoding encoding) {
  std::vector<v1::Tile> tiles = MakeTiles();
  auto enc = TileWireEncoder::Create(encoding);
  EXPECT_TRUE(enc.ok());
  for (v1::Tile& t : tiles) {
    std::string data = t.data();
    TileEncoding used;
    const WireTileShape shape{t.width(), t.height(), kChannels,
                              SampleType::kUInt8};
    EXPECT_TRUE((*enc)->Encode(shape, &data, &used).ok());
    t.set_data(data);
    t.set_encoding(used == TileEncoding::kZstd      ? v1::TILE_ENCODING_ZSTD
                   : used == TileEncoding::kDeflate ? v1::TILE_ENCODING_DEFLATE
                                                    : v1::TILE_ENCODING_RAW);
  }
  return tiles;
}

TEST(TileAssemblerTest, DecodesZstdAndDeflateTilesToTheSamePixels) {
  const std::string dir = TempDir();
  for (TileEncoding e : {TileEncoding::kZstd, TileEncoding::kDeflate}) {
    const std::string path =
        dir + "/out_" + std::string(TileEncodingName(e)) + ".tif";
    auto a = TileAssembler::Open(path, "job1", /*resume=*/false);
    ASSERT_TRUE(a.ok());
    std::vector<v1::Tile> tiles = EncodeTiles(e);
    EXPECT_NE(tiles[0].encoding(), v1::TILE_ENCODING_RAW);
    for (const v1::Tile& t : tiles) ASSERT_TRUE((*a)->AddTile(t).ok());
    ASSERT_TRUE((*a)->Finish().ok());
    ExpectImage(path);
  }
}

TEST(TileAssemblerTest, CorruptCompressedTileIsRefused) {
  auto a = TileAssembler::Open(TempDir() + "/out.tif", "j", false);
  ASSERT_TRUE(a.ok());
  v1::Tile t = EncodeTiles(TileEncoding::kZstd)[0];
  ASSERT_EQ(t.encoding(), v1::TILE_ENCODING_ZSTD);
  t.set_data(t.data().substr(0, t.data().size() / 2));
  EXPECT_EQ((*a)->AddTile(t).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->next_tile(), 0);
}

TEST(TileAssemblerTest, EncodingMustBeKnown) {
  const std::string path = TempDir() + "/out.png";
  auto a = TileAssembler::Open(path, "j", false);
  ASSERT_TRUE(a.ok());
  v1::Tile t = MakeTiles()[0];
  t.set_encoding(v1::TILE_ENCODING_UNSPECIFIED);
  EXPECT_EQ((*a)->AddTile(t).code(), absl::StatusCode::kInvalidArgument);
  t.set_encoding(static_cast<v1::TileEncoding>(5));
  EXPECT_EQ((*a)->AddTile(t).code(), absl::StatusCode::kInvalidArgument);
  // A server older than the enum sends only the text.
  t.set_encoding(v1::TILE_ENCODING_UNSPECIFIED);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  t.set_encoding_name("raw");
#pragma GCC diagnostic pop
  EXPECT_TRUE((*a)->AddTile(t).ok());
}

}  // namespace
}  // namespace regserve
