// Copyright regserve authors.
#include "core/image/streamed_gray.h"

#include <OpenImageIO/imageio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/testing/peak_rss.h"
#include "core/image/image_io.h"
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
  return absl::StrCat(::testing::TempDir(), "/regserve_streamed_gray_",
                      ::getpid(), "_", name);
}

// How a test file is laid out (written with OpenImageIO).
struct Layout {
  std::string name;
  std::string ext;
  int channels;
  OIIO::TypeDesc type;
  int tile = 0;            // TIFF tiles (square), 0: strips
  int rows_per_strip = 0;  // TIFF strips; -1: one strip for the whole image
  std::string compression;
};

const std::vector<Layout>& Layouts() {
  static const std::vector<Layout> layouts = {
      {"tiled_tiff", "tif", 3, OIIO::TypeDesc::UINT8, 64, 0, "zip"},
      {"striped_tiff_lzw", "tif", 3, OIIO::TypeDesc::UINT8, 0, 8, "lzw"},
      {"striped_tiff_u16", "tif", 3, OIIO::TypeDesc::UINT16, 0, 7, "zip"},
      {"one_strip_tiff", "tif", 3, OIIO::TypeDesc::UINT8, 0, -1, "zip"},
      {"tiled_tiff_gray_u16", "tif", 1, OIIO::TypeDesc::UINT16, 32, 0, "zip"},
      {"jpeg", "jpg", 3, OIIO::TypeDesc::UINT8, 0, 0, ""},
      {"png_rgba", "png", 4, OIIO::TypeDesc::UINT8, 0, 0, ""},
      {"exr_half", "exr", 3, OIIO::TypeDesc::HALF, 0, 0, "zip"},
  };
  return layouts;
}

// A crop of the seeding photo (real content, odd sizes), as float RGB.
const std::vector<float>& PhotoCrop(int* w, int* h) {
  static int width = 0, height = 0;
  static const std::vector<float> px = [] {
    absl::StatusOr<Image> photo =
        ReadImageFile(DataPath("photos/seeding_5312x2988.jpg"));
    EXPECT_TRUE(photo.ok()) << photo.status();
    width = 611;
    height = 397;
    std::vector<float> out(static_cast<size_t>(width) * height * 3);
    if (!photo.ok()) return out;
    for (int y = 0; y < height; ++y) {
      const uint8_t* row = photo->row(1200 + y) + 2000 * 3;
      for (int i = 0; i < width * 3; ++i)
        out[static_cast<size_t>(y) * width * 3 + i] = row[i] / 255.0f;
    }
    return out;
  }();
  *w = width;
  *h = height;
  return px;
}

std::string WriteLayout(const Layout& l) {
  int w = 0, h = 0;
  const std::vector<float>& rgb = PhotoCrop(&w, &h);
  std::vector<float> px(static_cast<size_t>(w) * h * l.channels);
  for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i) {
    for (int c = 0; c < l.channels; ++c) {
      // Gray from green; alpha a ramp so that it varies.
      px[i * l.channels + c] = c < 3 ? rgb[i * 3 + (l.channels == 1 ? 1 : c)]
                                     : static_cast<float>(i % 251) / 250.0f;
    }
  }
  OIIO::ImageSpec spec(w, h, l.channels, l.type);
  if (l.tile > 0) spec.tile_width = spec.tile_height = l.tile;
  if (l.rows_per_strip != 0) {
    spec.attribute("tiff:RowsPerStrip",
                   l.rows_per_strip > 0 ? l.rows_per_strip : h);
  }
  if (!l.compression.empty()) spec.attribute("compression", l.compression);
  spec.attribute("XResolution", 300.0f);
  spec.attribute("YResolution", 300.0f);
  spec.attribute("ResolutionUnit", "in");
  const std::string path = TempPath(l.name + "." + l.ext);
  auto out = OIIO::ImageOutput::create(path);
  EXPECT_TRUE(out && out->open(path, spec)) << OIIO::geterror();
  if (!out) return path;
  EXPECT_TRUE(out->write_image(OIIO::TypeDesc::FLOAT, px.data()))
      << out->geterror();
  EXPECT_TRUE(out->close());
  return path;
}

void ExpectSameBits(const Image& a, const Image& b) {
  ASSERT_EQ(a.spec().DebugString(), b.spec().DebugString());
  ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0);
}

class StreamedGrayLayoutTest : public ::testing::TestWithParam<Layout> {};

TEST_P(StreamedGrayLayoutTest, SameBitsAsInRam) {
  const Layout& l = GetParam();
  const std::string path = WriteLayout(l);
  ImageMetadata in_ram_meta;
  ReadOptions ro;
  ro.metadata = &in_ram_meta;
  absl::StatusOr<Image> whole = ReadImageFile(path, ro);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int64_t w = whole->width(), h = whole->height();
  const std::vector<std::pair<int64_t, int64_t>> sizes = {
      {w, h}, {w / 2, h / 2}, {w * 37 / 100, h * 61 / 100}, {97, 13}, {1, 1}};
  for (const auto& [tw, th] : sizes) {
    absl::StatusOr<Image> want = MakeGrayscaleCopy(*whole, tw, th, 2);
    ASSERT_TRUE(want.ok()) << want.status();
    // A few rows at a time (many chunks, strips and tile rows whole), and
    // the default (one chunk for these small files).
    for (uint64_t chunk : {uint64_t{6000}, uint64_t{0}}) {
      for (int threads : {1, 3}) {
        SCOPED_TRACE(absl::StrCat(l.name, " ", tw, "x", th, " chunk ", chunk,
                                  " threads ", threads));
        StreamedGrayOptions o;
        o.threads = threads;
        o.chunk_bytes = chunk;
        ImageMetadata meta;
        o.metadata = &meta;
        absl::StatusOr<Image> got = ReadGrayscaleCopyFile(path, tw, th, o);
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectSameBits(*want, *got);
        EXPECT_EQ(meta.x_resolution, in_ram_meta.x_resolution);
        EXPECT_EQ(meta.resolution_unit, in_ram_meta.resolution_unit);
        EXPECT_EQ(meta.icc_profile, in_ram_meta.icc_profile);
      }
    }
  }
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Formats, StreamedGrayLayoutTest,
                         ::testing::ValuesIn(Layouts()),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                           return info.param.name;
                         });

TEST(StreamedGrayTest, LayoutDecidesTheRowsReadAtOnce) {
  // Whole strips and rows of tiles; a bounded number of rows otherwise.
  for (const Layout& l : Layouts()) {
    SCOPED_TRACE(l.name);
    const std::string path = WriteLayout(l);
    absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_GE(spec->stream_rows, 1);
    EXPECT_LE(spec->stream_rows, spec->height);
    if (l.tile > 0) {
      EXPECT_TRUE(spec->stream_rows % l.tile == 0 ||
                  spec->stream_rows == spec->height);
    }
    if (l.rows_per_strip > 0) {
      EXPECT_TRUE(spec->stream_rows % l.rows_per_strip == 0 ||
                  spec->stream_rows == spec->height);
    }
    std::remove(path.c_str());
  }
}

TEST(StreamedGrayTest, Errors) {
  const Layout striped = Layouts()[1];
  const std::string path = WriteLayout(striped);
  EXPECT_EQ(
      ReadGrayscaleCopyFile(TempPath("missing.tif"), 10, 10).status().code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadGrayscaleCopyFile(path, 0, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadGrayscaleCopyFile(path, 10, 100000).status().code(),
            absl::StatusCode::kInvalidArgument);
  StreamedGrayOptions small;
  small.max_bytes = 1000;
  absl::Status s = ReadGrayscaleCopyFile(path, 10, 10, small).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  StreamedGrayOptions pixels;
  pixels.max_pixels = 1000;
  EXPECT_EQ(ReadGrayscaleCopyFile(path, 10, 10, pixels).status().code(),
            absl::StatusCode::kInvalidArgument);
  StreamedGrayOptions spec_check;
  spec_check.check_spec = [](const ImageSpec& spec) {
    return absl::FailedPreconditionError(spec.DebugString());
  };
  s = ReadGrayscaleCopyFile(path, 10, 10, spec_check).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "611x397x3 uint8");
  // Cancelled after the second chunk: no more strips are decoded.
  StreamedGrayOptions cancel;
  cancel.chunk_bytes = 6000;
  int calls = 0;
  cancel.check_cancel = [&calls] {
    return ++calls == 2 ? absl::CancelledError("job cancelled")
                        : absl::OkStatus();
  };
  s = ReadGrayscaleCopyFile(path, 10, 10, cancel).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_EQ(calls, 2);
  std::remove(path.c_str());
}

TEST(StreamedGrayTest, TruncatedFileNamesTheRows) {
  for (const Layout& l : {Layouts()[0], Layouts()[1], Layouts()[5]}) {
    SCOPED_TRACE(l.name);
    const std::string path = WriteLayout(l);
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)),
                      std::istreambuf_iterator<char>());
    const std::string cut = TempPath("cut_" + l.name + "." + l.ext);
    // JPEG: cut in the scan data; TIFF: the strips come before the IFD at
    // the end, so keep the tail and zero the middle.
    if (l.ext == "jpg") {
      bytes.resize(bytes.size() / 2);
    } else {
      std::fill(bytes.begin() + bytes.size() / 3,
                bytes.begin() + bytes.size() / 2, '\xff');
    }
    std::ofstream(cut, std::ios::binary) << bytes;
    StreamedGrayOptions o;
    o.chunk_bytes = 6000;
    absl::Status s = ReadGrayscaleCopyFile(cut, 50, 30, o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("rows"), absl::string_view::npos) << s;
    std::remove(cut.c_str());
    std::remove(path.c_str());
  }
}

using testing_util::ResetPeakRss;
using testing_util::StatusBytes;

// A 57 MP RGB striped TIFF (uncompressed, so it writes and reads fast),
// written in bands from the photo crop so that the test never holds it.
std::string WriteLargeTiff(int64_t* bytes) {
  constexpr int kW = 8192, kH = 7000, kBand = 250;
  int cw = 0, ch = 0;
  const std::vector<float>& crop = PhotoCrop(&cw, &ch);
  OIIO::ImageSpec spec(kW, kH, 3, OIIO::TypeDesc::UINT8);
  spec.attribute("tiff:RowsPerStrip", 64);
  spec.attribute("compression", "none");
  const std::string path = TempPath("large.tif");
  auto out = OIIO::ImageOutput::create(path);
  EXPECT_TRUE(out && out->open(path, spec)) << OIIO::geterror();
  std::vector<uint8_t> band(static_cast<size_t>(kW) * kBand * 3);
  for (int y0 = 0; out && y0 < kH; y0 += kBand) {
    for (int y = 0; y < kBand; ++y) {
      for (int x = 0; x < kW * 3; ++x) {
        const size_t at =
            static_cast<size_t>((y0 + y) % ch) * cw * 3 + (x + y0) % (cw * 3);
        band[static_cast<size_t>(y) * kW * 3 + x] =
            static_cast<uint8_t>(crop[at] * 255.0f);
      }
    }
    EXPECT_TRUE(out->write_scanlines(y0, y0 + kBand, 0, OIIO::TypeDesc::UINT8,
                                     band.data()));
  }
  if (out) {
    EXPECT_TRUE(out->close());
  }
  *bytes = int64_t{kW} * kH * 3;
  return path;
}

// The sanitizers' shadow memory and quarantine add to RSS: the planned
// bound is checked in the plain build only (the bound against the whole
// image holds in both).
using testing_util::kSanitized;

TEST(StreamedGrayMemoryTest, NeverHoldsTheWholeImage) {
  int64_t image_bytes = 0;
  const std::string path = WriteLargeTiff(&image_bytes);
  // 4 MB chunks: the working set is then well apart from the image's.
  StreamedGrayOptions o;
  o.threads = 2;
  o.chunk_bytes = 4'000'000;
  absl::StatusOr<ImageSpec> spec = ReadGrayscaleLayout(path, o);
  ASSERT_TRUE(spec.ok()) << spec.status();
  const int64_t tw = 1024, th = 875;
  if (!ResetPeakRss()) GTEST_SKIP() << "no /proc/self/clear_refs here";
  uint64_t base = StatusBytes("VmRSS");
  absl::StatusOr<Image> streamed = ReadGrayscaleCopyFile(path, tw, th, o);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  const uint64_t streamed_peak = StatusBytes("VmHWM") - base;
  // Within the planner's figure for it, and far below the image.
  const uint64_t planned =
      StreamedGrayscaleWorkBytes(*spec, tw, o.threads) + 4ull * tw * th;
  if (!kSanitized) {
    EXPECT_LE(streamed_peak, planned);
  }
  EXPECT_LT(streamed_peak, static_cast<uint64_t>(image_bytes) / 4);

  // The same measurement sees the whole image when it is read whole, and
  // the copy is the same.
  ASSERT_TRUE(ResetPeakRss());
  base = StatusBytes("VmRSS");
  {
    absl::StatusOr<Image> whole = ReadImageFile(path);
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_GE(StatusBytes("VmHWM") - base, static_cast<uint64_t>(image_bytes));
    absl::StatusOr<Image> want = MakeGrayscaleCopy(*whole, tw, th, 2);
    ASSERT_TRUE(want.ok()) << want.status();
    ExpectSameBits(*want, *streamed);
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace regserve
