// Copyright regserve authors.
#include "core/image/tiled_tiff_writer.h"

#include <OpenImageIO/imageio.h>
#include <tiffio.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/image/image_io.h"
#include "core/image/tile_pyramid.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::TestWithParam;

std::string DataPath(const std::string& relative) {
  const char* env = std::getenv("REGSERVE_TEST_DATA");
  const std::string root =
      env != nullptr ? env : REGSERVE_SOURCE_DIR "/tests/data";
  return root + "/" + relative;
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/regserve_tiled_", ::getpid(), "_",
                      name);
}

std::string ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f),
                     std::istreambuf_iterator<char>());
}

ImageSpec Spec(int64_t w, int64_t h, int c, SampleType t) {
  ImageSpec s;
  s.width = w;
  s.height = h;
  s.channels = c;
  s.type = t;
  return s;
}

// Deterministic random pixels covering the type's whole range.
Image RandomImage(const ImageSpec& spec, uint32_t seed) {
  absl::StatusOr<Image> img = Image::Allocate(spec);
  EXPECT_TRUE(img.ok()) << img.status();
  std::mt19937 rng(seed);
  const size_t n = static_cast<size_t>(spec.pixels()) * spec.channels;
  for (size_t i = 0; i < n; ++i) {
    switch (spec.type) {
      case SampleType::kUInt8:
        img->as<uint8_t>()[i] = static_cast<uint8_t>(rng());
        break;
      case SampleType::kUInt16:
        img->as<uint16_t>()[i] = static_cast<uint16_t>(rng());
        break;
      case SampleType::kFloat32:
        img->as<float>()[i] =
            std::uniform_real_distribution<float>(-2.0f, 5.0f)(rng);
        break;
    }
  }
  return std::move(*img);
}

// Copies src[x0..x0+w, y0..y0+h) into a new image.
Image Crop(const Image& src, int64_t x0, int64_t y0, int64_t w, int64_t h) {
  ImageSpec s = src.spec();
  s.width = w;
  s.height = h;
  absl::StatusOr<Image> out = Image::Allocate(s);
  EXPECT_TRUE(out.ok());
  const size_t bpp = s.bytes_per_pixel();
  for (int64_t y = 0; y < h; ++y) {
    std::memcpy(out->row(y), src.row(y0 + y) + x0 * bpp, w * bpp);
  }
  return std::move(*out);
}

// A crop of the committed photo (real texture, for JPEG and pyramid checks).
Image Photo(int64_t w, int64_t h) {
  static const Image* photo = [] {
    absl::StatusOr<Image> p =
        ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"));
    EXPECT_TRUE(p.ok()) << p.status();
    return new Image(std::move(*p));
  }();
  return Crop(*photo, 2000, 1200, w, h);
}

void ExpectIdentical(const Image& a, const Image& b) {
  ASSERT_EQ(a.spec().DebugString(), b.spec().DebugString());
  ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0);
}

struct Rect {
  int64_t x, y, w, h;
};

// A random partition of the image into rectangles, in random order.
std::vector<Rect> RandomPartition(int64_t width, int64_t height,
                                  uint32_t seed) {
  std::mt19937 rng(seed);
  auto cuts = [&](int64_t n) {
    std::vector<int64_t> c = {0, n};
    const int k = static_cast<int>(rng() % 6);
    for (int i = 0; i < k && n > 1; ++i) c.push_back(1 + rng() % (n - 1));
    std::sort(c.begin(), c.end());
    c.erase(std::unique(c.begin(), c.end()), c.end());
    return c;
  };
  const std::vector<int64_t> xs = cuts(width), ys = cuts(height);
  std::vector<Rect> rects;
  for (size_t j = 0; j + 1 < ys.size(); ++j) {
    for (size_t i = 0; i + 1 < xs.size(); ++i) {
      rects.push_back({xs[i], ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j]});
    }
  }
  std::shuffle(rects.begin(), rects.end(), rng);
  return rects;
}

absl::Status WriteAll(const std::string& path, const Image& src,
                      const TiledTiffOptions& o,
                      const std::vector<Rect>& rects) {
  absl::StatusOr<std::unique_ptr<TiledTiffWriter>> w =
      OpenTiledTiffWriter(path, src.spec(), o);
  if (!w.ok()) return w.status();
  for (const Rect& r : rects) {
    absl::Status s = (*w)->WriteRegion(r.x, r.y, Crop(src, r.x, r.y, r.w, r.h));
    if (!s.ok()) return s;
  }
  return (*w)->Close();
}

// Horizontal bands of `rows` rows, top to bottom (how the warp hands over).
std::vector<Rect> Bands(int64_t width, int64_t height, int64_t rows) {
  std::vector<Rect> r;
  for (int64_t y = 0; y < height; y += rows) {
    r.push_back({0, y, width, std::min(rows, height - y)});
  }
  return r;
}

// Reads subimage `sub`, MIP level `mip` through OpenImageIO.
Image ReadLevel(const std::string& path, int sub, int mip) {
  auto in = OIIO::ImageInput::open(path);
  EXPECT_TRUE(in != nullptr) << OIIO::geterror();
  if (in == nullptr) return Image();
  EXPECT_TRUE(in->seek_subimage(sub, mip)) << in->geterror();
  const OIIO::ImageSpec& s = in->spec();
  const SampleType t = s.format == OIIO::TypeDesc::UINT8 ? SampleType::kUInt8
                       : s.format == OIIO::TypeDesc::UINT16
                           ? SampleType::kUInt16
                           : SampleType::kFloat32;
  absl::StatusOr<Image> img =
      Image::Allocate(Spec(s.width, s.height, s.nchannels, t));
  EXPECT_TRUE(img.ok());
  const OIIO::TypeDesc fmt = t == SampleType::kUInt8    ? OIIO::TypeDesc::UINT8
                             : t == SampleType::kUInt16 ? OIIO::TypeDesc::UINT16
                                                        : OIIO::TypeDesc::FLOAT;
  EXPECT_TRUE(in->read_image(sub, mip, 0, s.nchannels, fmt, img->data()))
      << in->geterror();
  in->close();
  return std::move(*img);
}

// ---------------------------------------------------------------------------
// Lossless round trips from regions in any order, every pixel layout.

using TiledParam = std::tuple<int, SampleType, int, Compression>;

class TiledWriterTest : public TestWithParam<TiledParam> {};

TEST_P(TiledWriterTest, RandomOrderRegionsReproduceTheSource) {
  const auto& [tile, type, channels, compression] = GetParam();
  const Image src = RandomImage(Spec(150, 97, channels, type), tile + channels);
  const std::string path = TempPath(absl::StrCat(
      "tiled_", tile, "_", channels, "_", SampleTypeName(type), ".tif"));
  TiledTiffOptions o;
  o.tile = tile;
  o.compression = compression;
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    o.threads = static_cast<int>(seed);  // 1, 2, 3
    ASSERT_TRUE(WriteAll(path, src, o, RandomPartition(150, 97, seed)).ok());
    absl::StatusOr<Image> back = ReadImageFile(path);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectIdentical(src, *back);
  }
  // The file really is tiled with the requested tile size.
  auto in = OIIO::ImageInput::open(path);
  ASSERT_TRUE(in != nullptr);
  EXPECT_EQ(in->spec().tile_width, tile);
  EXPECT_EQ(in->spec().tile_height, tile);
  in->close();
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Tiles, TiledWriterTest,
    ::testing::Values(
        TiledParam{16, SampleType::kUInt8, 3, Compression::kDeflate},
        TiledParam{32, SampleType::kUInt16, 1, Compression::kZstd},
        TiledParam{64, SampleType::kFloat32, 2, Compression::kDeflate},
        TiledParam{48, SampleType::kUInt8, 4, Compression::kNone},
        TiledParam{256, SampleType::kFloat32, 1, Compression::kZstd},
        TiledParam{32, SampleType::kUInt16, 4, Compression::kNone}),
    [](const ::testing::TestParamInfo<TiledParam>& info) {
      return absl::StrCat("tile", std::get<0>(info.param), "_",
                          SampleTypeName(std::get<1>(info.param)), "_",
                          std::get<2>(info.param), "ch_",
                          CompressionName(std::get<3>(info.param)));
    });

TEST(TiledWriterTest, IncompleteWriteFailsCloseAndRemovesFile) {
  const Image src = RandomImage(Spec(40, 30, 1, SampleType::kUInt8), 3);
  const std::string path = TempPath("incomplete.tif");
  absl::StatusOr<std::unique_ptr<TiledTiffWriter>> w =
      OpenTiledTiffWriter(path, src.spec(), 16);
  ASSERT_TRUE(w.ok());
  // Everything except a 3x2 hole at (20, 10).
  ASSERT_TRUE((*w)->WriteRegion(0, 0, Crop(src, 0, 0, 40, 10)).ok());
  ASSERT_TRUE((*w)->WriteRegion(0, 12, Crop(src, 0, 12, 40, 18)).ok());
  ASSERT_TRUE((*w)->WriteRegion(0, 10, Crop(src, 0, 10, 20, 2)).ok());
  ASSERT_TRUE((*w)->WriteRegion(23, 10, Crop(src, 23, 10, 17, 2)).ok());
  absl::Status s = (*w)->Close();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("6 of 1200 pixels"), std::string::npos) << s;
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
  EXPECT_EQ((*w)->Close().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(TiledWriterTest, DestroyedUnclosedRemovesTheFile) {
  const Image src = RandomImage(Spec(40, 30, 3, SampleType::kUInt8), 3);
  const std::string path = TempPath("unclosed.tif");
  TiledTiffOptions o;
  o.tile = 16;
  o.threads = 2;
  o.pyramid = true;
  {
    absl::StatusOr<std::unique_ptr<TiledTiffWriter>> w =
        OpenTiledTiffWriter(path, src.spec(), o);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->WriteRegion(0, 0, Crop(src, 0, 0, 40, 20)).ok());
  }
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

TEST(TiledWriterTest, OnePixelImage) {
  const Image src = RandomImage(Spec(1, 1, 3, SampleType::kUInt16), 9);
  const std::string path = TempPath("one.tif");
  TiledTiffOptions o;
  o.tile = 16;
  o.pyramid = true;  // one tile already: no reduced level
  ASSERT_TRUE(WriteAll(path, src, o, {{0, 0, 1, 1}}).ok());
  absl::StatusOr<Image> back = ReadImageFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectIdentical(src, *back);
  std::remove(path.c_str());
}

TEST(TiledWriterTest, RejectsBadRegionsAndArguments) {
  const ImageSpec spec = Spec(40, 30, 1, SampleType::kUInt8);
  const std::string path = TempPath("bad.tif");
  EXPECT_EQ(OpenTiledTiffWriter(TempPath("bad.png"), spec, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenTiledTiffWriter(path, spec, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenTiledTiffWriter(path, Spec(0, 30, 1, SampleType::kUInt8), 16)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenTiledTiffWriter(TempPath("no/such/dir.tif"), spec, 16)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<TiledTiffWriter>> w =
      OpenTiledTiffWriter(path, spec, 16);
  ASSERT_TRUE(w.ok());
  const Image block = RandomImage(Spec(16, 16, 1, SampleType::kUInt8), 2);
  EXPECT_EQ((*w)->WriteRegion(30, 0, block).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*w)->WriteRegion(-1, 0, block).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(
      (*w)->WriteRegion(0, 0, RandomImage(Spec(4, 4, 3, SampleType::kUInt8), 2))
          .code(),
      absl::StatusCode::kInvalidArgument);
  // A complete tile cannot be written again; a partial one may be overwritten.
  ASSERT_TRUE((*w)->WriteRegion(0, 0, block).ok());
  EXPECT_EQ((*w)->WriteRegion(8, 8, block).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*w)->WriteRegion(16, 0, Crop(block, 0, 0, 8, 8)).ok());
  ASSERT_TRUE((*w)->WriteRegion(16, 0, Crop(block, 0, 0, 8, 8)).ok());
  EXPECT_EQ((*w)->Close().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(TiledWriterTest, JpegRefusesWhatItCannotStoreNamingTheOption) {
  TiledTiffOptions o;
  o.compression = Compression::kJpeg;
  for (const ImageSpec& s : {Spec(64, 64, 4, SampleType::kUInt8),
                             Spec(64, 64, 2, SampleType::kUInt8),
                             Spec(64, 64, 3, SampleType::kUInt16),
                             Spec(64, 64, 1, SampleType::kFloat32)}) {
    absl::StatusOr<std::unique_ptr<TiledTiffWriter>> w =
        OpenTiledTiffWriter(TempPath("jpeg_bad.tif"), s, o);
    ASSERT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument)
        << s.DebugString();
    EXPECT_NE(w.status().message().find("compression=jpeg"), std::string::npos)
        << w.status();
  }
  o.jpeg_quality = 0;
  EXPECT_EQ(OpenTiledTiffWriter(TempPath("jpeg_q0.tif"),
                                Spec(64, 64, 3, SampleType::kUInt8), o)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Every compression on a real photo: lossless ones bit-exact, JPEG close.

class CompressionTest : public TestWithParam<Compression> {};

TEST_P(CompressionTest, PhotoRoundTrip) {
  const Compression c = GetParam();
  for (int channels : {3, 1}) {
    Image src = Photo(301, 203);
    if (channels == 1) {
      absl::StatusOr<Image> grey = Image::Allocate(
          Spec(src.width(), src.height(), 1, SampleType::kUInt8));
      ASSERT_TRUE(grey.ok());
      for (int64_t i = 0; i < src.width() * src.height(); ++i) {
        grey->data()[i] = src.data()[3 * i + 1];
      }
      src = std::move(*grey);
    }
    const std::string path =
        TempPath(absl::StrCat("photo_", CompressionName(c), channels, ".tif"));
    TiledTiffOptions o;
    o.tile = 64;
    o.compression = c;
    o.threads = 2;
    ASSERT_TRUE(WriteAll(path, src, o, Bands(301, 203, 64)).ok());
    absl::StatusOr<Image> back = ReadImageFile(path);
    ASSERT_TRUE(back.ok()) << back.status();
    if (c != Compression::kJpeg) {
      ExpectIdentical(src, *back);
    } else {
      ASSERT_EQ(back->spec().DebugString(), src.spec().DebugString());
      double sum = 0;
      int worst = 0;
      const size_t n = src.size_bytes();
      for (size_t i = 0; i < n; ++i) {
        const int d = std::abs(int{src.data()[i]} - int{back->data()[i]});
        sum += d;
        worst = std::max(worst, d);
      }
      // Quality 90 on a photo: about 1-2 grey levels on average.
      EXPECT_LT(sum / static_cast<double>(n), 3.0) << channels;
      EXPECT_LT(worst, 80) << channels;
      EXPECT_GT(sum, 0.0);  // it really is lossy
    }
    std::remove(path.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(All, CompressionTest,
                         ::testing::Values(Compression::kNone,
                                           Compression::kDeflate,
                                           Compression::kZstd,
                                           Compression::kJpeg),
                         [](const ::testing::TestParamInfo<Compression>& i) {
                           return std::string(CompressionName(i.param));
                         });

// ---------------------------------------------------------------------------
// Threads change nothing in the file.

TEST(TiledWriterTest, ParallelOutputIsTheSameFileAsOneThread) {
  const Image src = Photo(700, 530);
  for (Compression c :
       {Compression::kDeflate, Compression::kZstd, Compression::kJpeg}) {
    std::string first;
    for (int threads : {1, 2, 5}) {
      const std::string path = TempPath(absl::StrCat("par_", threads, ".tif"));
      TiledTiffOptions o;
      o.tile = 64;
      o.compression = c;
      o.threads = threads;
      o.pyramid = true;
      ASSERT_TRUE(WriteAll(path, src, o, Bands(700, 530, 100)).ok());
      const std::string bytes = ReadBytes(path);
      ASSERT_GT(bytes.size(), 1000u);
      if (threads == 1) {
        first = bytes;
      } else {
        EXPECT_TRUE(bytes == first)
            << CompressionName(c) << ", " << threads << " threads";
      }
      std::remove(path.c_str());
    }
  }
}

// ---------------------------------------------------------------------------
// The pyramid.

std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos;
       at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

// Level k+1 from level k, as the writer builds it (2x2 mean, odd edge
// repeated), for the lossless check of every level.
Image Halve(const Image& in) {
  const int64_t w = (in.width() + 1) / 2, h = (in.height() + 1) / 2;
  const int c = in.channels();
  absl::StatusOr<Image> out = Image::Allocate(Spec(w, h, c, in.type()));
  EXPECT_TRUE(out.ok());
  auto at = [&](int64_t x, int64_t y, int ch) {
    x = std::min(x, in.width() - 1);
    y = std::min(y, in.height() - 1);
    return uint32_t{in.row(y)[x * c + ch]};
  };
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        const uint32_t s = at(2 * x, 2 * y, ch) + at(2 * x + 1, 2 * y, ch) +
                           at(2 * x, 2 * y + 1, ch) +
                           at(2 * x + 1, 2 * y + 1, ch);
        out->row(y)[x * c + ch] = static_cast<uint8_t>((s + 2) / 4);
      }
    }
  }
  return std::move(*out);
}

class PyramidTest : public TestWithParam<PyramidLayout> {};

TEST_P(PyramidTest, LevelsOpenInOpenImageIoAndTiffinfo) {
  const PyramidLayout layout = GetParam();
  const Image src = Photo(601, 417);
  const PyramidGeometry g(601, 417, 64);
  ASSERT_EQ(g.levels(), 5);  // 601 417 -> 301 209 -> 151 105 -> 76 53 -> 38 27
  const std::string path = TempPath(absl::StrCat(
      "pyramid_", layout == PyramidLayout::kSubIfd ? "subifd" : "pages",
      ".tif"));
  TiledTiffOptions o;
  o.tile = 64;
  o.compression = Compression::kZstd;
  o.threads = 3;
  o.pyramid = true;
  o.layout = layout;
  ASSERT_TRUE(WriteAll(path, src, o, RandomPartition(601, 417, 5)).ok());

  // libtiff's own tool lists every level with its size.
  const std::string info = RunCommand(absl::StrCat("tiffinfo ", path, " 2>&1"));
  for (int k = 0; k < g.levels(); ++k) {
    EXPECT_NE(info.find(absl::StrCat("Image Width: ", g.width(k),
                                     " Image Length: ", g.height(k))),
              std::string::npos)
        << "level " << k << " in:\n"
        << info;
  }
  EXPECT_EQ(Count(info, "reduced-resolution image"), g.levels() - 1) << info;

  // OpenImageIO: the full resolution first, bit-exact; then each level.
  ExpectIdentical(src, ReadLevel(path, 0, 0));
  auto in = OIIO::ImageInput::open(path);
  ASSERT_TRUE(in != nullptr);
  int levels = 0;
  while (in->seek_subimage(levels, 0)) ++levels;
  in->close();
  if (layout == PyramidLayout::kPages) {
    ASSERT_EQ(levels, g.levels());
    Image want = Crop(src, 0, 0, src.width(), src.height());
    for (int k = 1; k < g.levels(); ++k) {
      want = Halve(want);
      ExpectIdentical(want, ReadLevel(path, k, 0));
    }
  } else {
    // OpenImageIO 2.4 does not follow SubIFDs: it sees the full image only.
    EXPECT_EQ(levels, 1);
  }
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Layouts, PyramidTest,
                         ::testing::Values(PyramidLayout::kSubIfd,
                                           PyramidLayout::kPages),
                         [](const ::testing::TestParamInfo<PyramidLayout>& i) {
                           return i.param == PyramidLayout::kSubIfd
                                      ? std::string("SubIfd")
                                      : std::string("Pages");
                         });

// ---------------------------------------------------------------------------
// Metadata: read from an input, carried into the written result.

TEST(TiledWriterTest, CarriesIccProfileResolutionAndOrientation) {
  // An input that has them, as a camera or editor would save it.
  std::string icc(300, '\0');
  for (size_t i = 0; i < icc.size(); ++i) icc[i] = static_cast<char>(i * 7);
  std::memcpy(&icc[36], "acsp", 4);
  const std::string input = TempPath("meta_in.tif");
  {
    auto out = OIIO::ImageOutput::create(input);
    ASSERT_TRUE(out != nullptr);
    OIIO::ImageSpec s(40, 30, 3, OIIO::TypeDesc::UINT8);
    s.attribute(
        "ICCProfile",
        OIIO::TypeDesc(OIIO::TypeDesc::UINT8, static_cast<int>(icc.size())),
        icc.data());
    s.attribute("XResolution", 300.0f);
    s.attribute("YResolution", 300.0f);
    s.attribute("ResolutionUnit", "in");
    s.attribute("Orientation", 6);
    ASSERT_TRUE(out->open(input, s));
    std::vector<uint8_t> pixels(40 * 30 * 3, 128);
    ASSERT_TRUE(out->write_image(OIIO::TypeDesc::UINT8, pixels.data()));
    ASSERT_TRUE(out->close());
  }
  ImageMetadata m;
  ReadOptions ro;
  ro.metadata = &m;
  absl::StatusOr<Image> img = ReadImageFile(input, ro);
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(m.icc_profile, icc);
  EXPECT_DOUBLE_EQ(m.x_resolution, 300.0);
  EXPECT_DOUBLE_EQ(m.y_resolution, 300.0);
  EXPECT_EQ(m.resolution_unit, ResolutionUnit::kInch);
  EXPECT_EQ(m.orientation, 6);

  const std::string path = TempPath("meta_out.tif");
  TiledTiffOptions o;
  o.tile = 16;
  o.pyramid = true;
  o.layout = PyramidLayout::kPages;
  o.metadata = m;
  o.metadata.y_resolution = 150.0;  // pixels need not be square
  ASSERT_TRUE(WriteAll(path, *img, o, Bands(40, 30, 16)).ok());
  auto in = OIIO::ImageInput::open(path);
  ASSERT_TRUE(in != nullptr);
  const OIIO::ImageSpec& s = in->spec();
  const OIIO::ParamValue* p = s.find_attribute("ICCProfile");
  ASSERT_TRUE(p != nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(p->data()), p->datasize()),
            icc);
  EXPECT_FLOAT_EQ(s.get_float_attribute("XResolution"), 300.0f);
  EXPECT_FLOAT_EQ(s.get_float_attribute("YResolution"), 150.0f);
  EXPECT_EQ(s.get_string_attribute("ResolutionUnit"), "in");
  EXPECT_EQ(s.get_int_attribute("Orientation"), 6);
  // The first reduced level: half the pixels per inch, the same profile.
  ASSERT_TRUE(in->seek_subimage(1, 0));
  EXPECT_EQ(in->spec().width, 20);
  p = in->spec().find_attribute("ICCProfile");
  ASSERT_TRUE(p != nullptr);
  EXPECT_EQ(p->datasize(), icc.size());
  EXPECT_FLOAT_EQ(in->spec().get_float_attribute("XResolution"), 150.0f);
  EXPECT_FLOAT_EQ(in->spec().get_float_attribute("YResolution"), 75.0f);
  in->close();
  // The committed photo says 72 dpi and has no profile: nothing invented.
  ImageMetadata photo;
  ro.metadata = &photo;
  ASSERT_TRUE(ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"), ro).ok());
  EXPECT_TRUE(photo.icc_profile.empty());
  EXPECT_DOUBLE_EQ(photo.x_resolution, 72.0);
  EXPECT_EQ(photo.resolution_unit, ResolutionUnit::kInch);
  EXPECT_EQ(photo.orientation, 0);
  std::remove(input.c_str());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace regserve
