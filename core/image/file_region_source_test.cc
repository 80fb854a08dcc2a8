// Copyright regserve authors.
#include "core/image/file_region_source.h"

#include <OpenImageIO/imageio.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/image/image_io.h"
#include "core/image/streamed_gray.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

std::string DataPath(const std::string& relative) {
  const char* env = std::getenv("REGSERVE_TEST_DATA");
  const std::string root =
      env != nullptr ? env : REGSERVE_SOURCE_DIR "/tests/data";
  return root + "/" + relative;
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/regserve_region_source_",
                      ::getpid(), "_", name);
}

struct Layout {
  std::string name;
  std::string ext;
  OIIO::TypeDesc type;
  int tile = 0;            // square TIFF tiles; 0: strips
  int rows_per_strip = 0;  // -1: one strip
  std::string compression;
  bool random_access;
};

const std::vector<Layout>& Layouts() {
  static const std::vector<Layout> layouts = {
      {"tiled_zip", "tif", OIIO::TypeDesc::UINT8, 64, 0, "zip", true},
      {"tiled_odd_u16", "tif", OIIO::TypeDesc::UINT16, 48, 0, "zip", true},
      {"striped_lzw", "tif", OIIO::TypeDesc::UINT8, 0, 8, "lzw", true},
      {"striped_raw_1row", "tif", OIIO::TypeDesc::UINT8, 0, 1, "none", true},
      {"one_strip", "tif", OIIO::TypeDesc::UINT8, 0, -1, "zip", false},
      {"jpeg", "jpg", OIIO::TypeDesc::UINT8, 0, 0, "", false},
      {"png", "png", OIIO::TypeDesc::UINT8, 0, 0, "", false},
  };
  return layouts;
}

// A crop of the seeding photo (real content, odd sizes), RGB.
std::string WriteLayout(const Layout& l) {
  static const std::vector<float> crop = [] {
    absl::StatusOr<Image> photo =
        ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"));
    EXPECT_TRUE(photo.ok()) << photo.status();
    std::vector<float> out(613 * 401 * 3);
    if (!photo.ok()) return out;
    for (int y = 0; y < 401; ++y) {
      const uint8_t* row = photo->row(1100 + y) + 1900 * 3;
      for (int i = 0; i < 613 * 3; ++i) out[y * 613 * 3 + i] = row[i] / 255.f;
    }
    return out;
  }();
  OIIO::ImageSpec spec(613, 401, 3, l.type);
  if (l.tile > 0) spec.tile_width = spec.tile_height = l.tile;
  if (l.rows_per_strip != 0) {
    spec.attribute("tiff:RowsPerStrip",
                   l.rows_per_strip > 0 ? l.rows_per_strip : 401);
  }
  if (!l.compression.empty()) spec.attribute("compression", l.compression);
  const std::string path = TempPath(l.name + "." + l.ext);
  auto out = OIIO::ImageOutput::create(path);
  EXPECT_TRUE(out && out->open(path, spec)) << OIIO::geterror();
  if (!out) return path;
  EXPECT_TRUE(out->write_image(OIIO::TypeDesc::FLOAT, crop.data()));
  EXPECT_TRUE(out->close());
  return path;
}

// Region sources for a file: the file itself, or its spill written in the
// same pass as the grayscale copy.
absl::StatusOr<std::unique_ptr<FileRegionSource>> OpenEither(
    const std::string& path, const Layout& l, uint64_t cache) {
  RegionSourceOptions o;
  o.cache_bytes = cache;
  if (l.random_access) return OpenFileRegionSource(path, o);
  const std::string spill = path + ".spill";
  REGSERVE_ASSIGN_OR_RETURN(ImageSpec spec, ReadImageSpecFile(path));
  REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<SpillWriter> w,
                            SpillWriter::Create(spill, spec));
  StreamedGrayOptions g;
  g.chunk_bytes = 20000;  // several chunks
  g.on_rows = [&](const Image& rows, int64_t, int64_t n) {
    return w->Append(rows.data(), rows.row_bytes(), n);
  };
  REGSERVE_RETURN_IF_ERROR(ReadGrayscaleCopyFile(path, 61, 40, g).status());
  REGSERVE_RETURN_IF_ERROR(w->Close());
  return OpenSpillRegionSource(spill, spec, o);
}

void ExpectRegion(const Image& whole, RegionSource* src, int64_t x, int64_t y,
                  int64_t w, int64_t h) {
  ImageSpec rs = whole.spec();
  rs.width = w;
  rs.height = h;
  absl::StatusOr<Image> region = Image::Allocate(rs);
  ASSERT_TRUE(region.ok());
  ASSERT_TRUE(
      src->ReadRegion(x, y, w, h, region->data(), region->row_bytes()).ok());
  const size_t bpp = rs.bytes_per_pixel();
  for (int64_t j = 0; j < h; ++j) {
    ASSERT_EQ(std::memcmp(region->row(j), whole.row(y + j) + x * bpp, w * bpp),
              0)
        << "row " << y + j << " of region " << w << "x" << h << " at " << x
        << "," << y;
  }
}

class RegionSourceTest : public ::testing::TestWithParam<Layout> {};

TEST_P(RegionSourceTest, RegionsMatchTheWholeImage) {
  const Layout& l = GetParam();
  const std::string path = WriteLayout(l);
  absl::StatusOr<Image> whole = ReadImageFile(path);
  ASSERT_TRUE(whole.ok()) << whole.status();
  absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->region_chunk_width > 0, l.random_access);
  // A cache of two chunks (eviction all the time) and a roomy one.
  for (uint64_t cache : {uint64_t{1}, uint64_t{8} << 20}) {
    absl::StatusOr<std::unique_ptr<FileRegionSource>> src =
        OpenEither(path, l, cache);
    ASSERT_TRUE(src.ok()) << src.status();
    EXPECT_EQ((*src)->spec().DebugString(), whole->spec().DebugString());
    std::mt19937 rng(7);
    ExpectRegion(*whole, src->get(), 0, 0, 613, 401);
    ExpectRegion(*whole, src->get(), 612, 400, 1, 1);
    for (int i = 0; i < 40; ++i) {
      const int64_t x = rng() % 613, y = rng() % 401;
      const int64_t w = 1 + rng() % (613 - x), h = 1 + rng() % (401 - y);
      ExpectRegion(*whole, src->get(), x, y, w, h);
    }
  }
}

TEST_P(RegionSourceTest, OverlappingRegionsHitTheCache) {
  const Layout& l = GetParam();
  absl::StatusOr<std::unique_ptr<FileRegionSource>> src =
      OpenEither(WriteLayout(l), l, 8 << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  std::vector<uint8_t> buf(200 * 150 * (*src)->spec().bytes_per_pixel());
  const size_t stride = 200 * (*src)->spec().bytes_per_pixel();
  ASSERT_TRUE((*src)->ReadRegion(100, 100, 200, 150, buf.data(), stride).ok());
  const RegionSourceStats first = (*src)->stats();
  EXPECT_GT(first.chunk_reads, 0);
  ASSERT_TRUE((*src)->ReadRegion(150, 120, 100, 100, buf.data(), stride).ok());
  const RegionSourceStats second = (*src)->stats();
  EXPECT_EQ(second.chunk_reads, first.chunk_reads);
  EXPECT_GT(second.cache_hits, first.cache_hits);
}

INSTANTIATE_TEST_SUITE_P(Layouts, RegionSourceTest,
                         ::testing::ValuesIn(Layouts()),
                         [](const auto& info) { return info.param.name; });

TEST(RegionSourceErrors, SequentialFileNeedsASpill) {
  const Layout& jpeg = Layouts()[5];
  absl::StatusOr<std::unique_ptr<FileRegionSource>> src =
      OpenFileRegionSource(WriteLayout(jpeg));
  EXPECT_EQ(src.status().code(), absl::StatusCode::kFailedPrecondition)
      << src.status();
}

TEST(RegionSourceErrors, RegionOutsideTheImage) {
  absl::StatusOr<std::unique_ptr<FileRegionSource>> src =
      OpenFileRegionSource(WriteLayout(Layouts()[0]));
  ASSERT_TRUE(src.ok());
  std::vector<uint8_t> buf(16 * 16 * 3);
  EXPECT_EQ((*src)->ReadRegion(600, 0, 16, 16, buf.data(), 48).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*src)->ReadRegion(0, 0, 0, 16, buf.data(), 48).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RegionSourceErrors, ShortSpillIsDataLoss) {
  ImageSpec spec{300, 200, 3, SampleType::kUInt8};
  const std::string path = TempPath("short.spill");
  absl::StatusOr<std::unique_ptr<SpillWriter>> w =
      SpillWriter::Create(path, spec);
  ASSERT_TRUE(w.ok());
  std::vector<uint8_t> rows(300 * 3 * 10);
  ASSERT_TRUE((*w)->Append(rows.data(), 900, 10).ok());
  EXPECT_EQ((*w)->Close().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(OpenSpillRegionSource(path, spec).status().code(),
            absl::StatusCode::kDataLoss);
  std::remove(path.c_str());
}

TEST(RegionSourceErrors, FullDiskIsResourceExhausted) {
  ImageSpec spec{300, 300, 3, SampleType::kUInt8};
  absl::StatusOr<std::unique_ptr<SpillWriter>> w =
      SpillWriter::Create("/dev/full", spec);
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<uint8_t> rows(300 * 3 * 300);
  const absl::Status s = (*w)->Append(rows.data(), 900, 300);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
}

}  // namespace
}  // namespace regserve
