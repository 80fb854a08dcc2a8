// Copyright regserve authors.
#include "core/image/image_io.h"

#include <OpenImageIO/imageio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
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
  return absl::StrCat(::testing::TempDir(), "/regserve_image_io_", ::getpid(),
                      "_", name);
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f),
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

bool SameSpec(const ImageSpec& a, const ImageSpec& b) {
  return a.width == b.width && a.height == b.height &&
         a.channels == b.channels && a.type == b.type;
}

void ExpectIdentical(const Image& a, const Image& b) {
  ASSERT_TRUE(SameSpec(a.spec(), b.spec()))
      << a.spec().DebugString() << " vs " << b.spec().DebugString();
  ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0);
}

// ---------------------------------------------------------------------------
// Round trips.

using RoundTripParam = std::tuple<std::string, SampleType, int>;

class RoundTripTest : public TestWithParam<RoundTripParam> {};

TEST_P(RoundTripTest, WriteThenReadIsExact) {
  const auto& [ext, type, channels] = GetParam();
  const Image src = RandomImage(Spec(37, 23, channels, type), 17 + channels);
  const std::string path = TempPath(
      absl::StrCat("rt_", channels, "_", SampleTypeName(type), ".", ext));
  ASSERT_TRUE(WriteImageFile(path, src).ok());

  absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(SameSpec(*spec, src.spec())) << spec->DebugString();

  absl::StatusOr<Image> back = ReadImageFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectIdentical(src, *back);

  // Memory decode equals file decode.
  const std::vector<uint8_t> bytes = ReadBytes(path);
  absl::StatusOr<Image> mem = ReadImageMemory(bytes, "x." + ext);
  ASSERT_TRUE(mem.ok()) << mem.status();
  ExpectIdentical(*back, *mem);
  absl::StatusOr<ImageSpec> mem_spec = ReadImageSpecMemory(bytes, "x." + ext);
  ASSERT_TRUE(mem_spec.ok()) << mem_spec.status();
  EXPECT_TRUE(SameSpec(*mem_spec, src.spec()));
  std::remove(path.c_str());
}

std::string RoundTripName(
    const ::testing::TestParamInfo<RoundTripParam>& info) {
  return absl::StrCat(std::get<0>(info.param), "_",
                      SampleTypeName(std::get<1>(info.param)), "_",
                      std::get<2>(info.param), "ch");
}

INSTANTIATE_TEST_SUITE_P(
    Png, RoundTripTest,
    ::testing::Combine(::testing::Values("png"),
                       ::testing::Values(SampleType::kUInt8,
                                         SampleType::kUInt16),
                       ::testing::Values(1, 2, 3, 4)),
    RoundTripName);
INSTANTIATE_TEST_SUITE_P(
    Tiff, RoundTripTest,
    ::testing::Combine(::testing::Values("tif"),
                       ::testing::Values(SampleType::kUInt8,
                                         SampleType::kUInt16,
                                         SampleType::kFloat32),
                       ::testing::Values(1, 2, 3, 4)),
    RoundTripName);
INSTANTIATE_TEST_SUITE_P(
    Exr, RoundTripTest,
    ::testing::Combine(::testing::Values("exr"),
                       ::testing::Values(SampleType::kFloat32),
                       ::testing::Values(1, 2, 3, 4)),
    RoundTripName);

TEST(ImageIoTest, JpegRoundTripIsClose) {
  // Smooth content, so the lossy codec keeps it close.
  absl::StatusOr<Image> src =
      Image::Allocate(Spec(64, 48, 3, SampleType::kUInt8));
  ASSERT_TRUE(src.ok());
  for (int64_t y = 0; y < 48; ++y) {
    for (int64_t x = 0; x < 64; ++x) {
      uint8_t* p = src->row(y) + x * 3;
      p[0] = static_cast<uint8_t>(x * 4);
      p[1] = static_cast<uint8_t>(y * 5);
      p[2] = 128;
    }
  }
  const std::string path = TempPath("rt.jpg");
  ASSERT_TRUE(WriteImageFile(path, *src).ok());
  absl::StatusOr<Image> back = ReadImageFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(SameSpec(back->spec(), src->spec()));
  double err = 0;
  for (size_t i = 0; i < src->size_bytes(); ++i) {
    err += std::abs(int{src->data()[i]} - int{back->data()[i]});
  }
  EXPECT_LT(err / src->size_bytes(), 3.0);
  std::remove(path.c_str());
}

TEST(ImageIoTest, HalfAndSignedDecodeToFloat) {
  // OIIO writes these natively; we must hand back float32.
  const std::string half_path = TempPath("half.exr");
  const std::string int16_path = TempPath("int16.tif");
  {
    std::vector<float> px = {0.5f, -1.25f, 2.0f, 1024.0f};
    auto out = OIIO::ImageOutput::create(half_path);
    ASSERT_TRUE(out != nullptr);
    ASSERT_TRUE(
        out->open(half_path, OIIO::ImageSpec(2, 2, 1, OIIO::TypeDesc::HALF)));
    ASSERT_TRUE(out->write_image(OIIO::TypeDesc::FLOAT, px.data()));
    ASSERT_TRUE(out->close());
  }
  {
    std::vector<int16_t> px = {-32767, 0, 16384, 32767};
    auto out = OIIO::ImageOutput::create(int16_path);
    ASSERT_TRUE(out != nullptr);
    ASSERT_TRUE(
        out->open(int16_path, OIIO::ImageSpec(2, 2, 1, OIIO::TypeDesc::INT16)));
    ASSERT_TRUE(out->write_image(OIIO::TypeDesc::INT16, px.data()));
    ASSERT_TRUE(out->close());
  }
  absl::StatusOr<Image> half = ReadImageFile(half_path);
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->type(), SampleType::kFloat32);
  EXPECT_EQ(half->as<float>()[1], -1.25f);
  EXPECT_EQ(half->as<float>()[3], 1024.0f);
  absl::StatusOr<Image> i16 = ReadImageFile(int16_path);
  ASSERT_TRUE(i16.ok()) << i16.status();
  EXPECT_EQ(i16->type(), SampleType::kFloat32);
  // OIIO normalises signed integers to [-1, 1].
  EXPECT_FLOAT_EQ(i16->as<float>()[0], -1.0f);
  EXPECT_FLOAT_EQ(i16->as<float>()[1], 0.0f);
  EXPECT_FLOAT_EQ(i16->as<float>()[3], 1.0f);
  std::remove(half_path.c_str());
  std::remove(int16_path.c_str());
}

TEST(ImageIoTest, WriteErrors) {
  const Image img = RandomImage(Spec(4, 4, 1, SampleType::kUInt8), 1);
  EXPECT_EQ(WriteImageFile(TempPath("noext"), img).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteImageFile(TempPath("x.notaformat"), img).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(WriteImageFile("/nonexistent_dir_regserve/x.png", img).ok());
  EXPECT_EQ(WriteImageFile(TempPath("x.png"), Image()).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Real images.

TEST(ImageIoRealDataTest, BrainPng) {
  const std::string path =
      DataPath("itk_brain/BrainProtonDensitySliceShifted13x17y.png");
  absl::StatusOr<Image> img = ReadImageFile(path);
  ASSERT_TRUE(img.ok()) << img.status();
  // A grayscale slice stored as 8-bit RGB.
  EXPECT_EQ(img->spec().DebugString(), "221x257x3 uint8");
  int64_t nonzero = 0;
  for (int64_t i = 0; i < img->spec().pixels(); ++i) {
    const uint8_t* p = img->data() + i * 3;
    ASSERT_EQ(p[0], p[1]);
    ASSERT_EQ(p[0], p[2]);
    nonzero += p[0] != 0;
  }
  EXPECT_GT(nonzero, img->spec().pixels() / 4);
}

TEST(ImageIoRealDataTest, PngMatchesIndependentRawGolden) {
  // fixed_u8.png is fixed.raw (256x256 little-endian int16) clipped to 0..255.
  absl::StatusOr<Image> img =
      ReadImageFile(DataPath("elastix_example/fixed_u8.png"));
  ASSERT_TRUE(img.ok()) << img.status();
  ASSERT_EQ(img->spec().DebugString(), "256x256x1 uint8");
  const std::vector<uint8_t> raw =
      ReadBytes(DataPath("elastix_example/fixed.raw"));
  ASSERT_EQ(raw.size(), 256u * 256u * 2u);
  for (size_t i = 0; i < 256u * 256u; ++i) {
    const int16_t v = static_cast<int16_t>(raw[2 * i] | (raw[2 * i + 1] << 8));
    ASSERT_EQ(img->data()[i], std::clamp<int>(v, 0, 255)) << "pixel " << i;
  }
}

TEST(ImageIoRealDataTest, PhotoJpegFileMemoryAndThreadsAgree) {
  const std::string path = DataPath("photos/seeding_5312x2988.jpg");
  absl::StatusOr<ImageSpec> spec = ReadImageSpecFile(path);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->DebugString(), "5312x2988x3 uint8");

  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<Image> file = ReadImageFile(path);
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(file.ok()) << file.status();
  std::cout << "decode 15.9 MP JPEG: "
            << std::chrono::duration<double>(t1 - t0).count() << " s\n";

  const std::vector<uint8_t> bytes = ReadBytes(path);
  ReadOptions two;
  two.threads = 2;
  absl::StatusOr<Image> mem = ReadImageMemory(bytes, "photo.jpg", two);
  ASSERT_TRUE(mem.ok()) << mem.status();
  ExpectIdentical(*file, *mem);

  // The photo is not flat: rows differ and values span most of the range.
  uint8_t lo = 255, hi = 0;
  for (size_t i = 0; i < file->size_bytes(); i += 97) {
    lo = std::min(lo, file->data()[i]);
    hi = std::max(hi, file->data()[i]);
  }
  EXPECT_GT(hi - lo, 150);

  const auto t2 = std::chrono::steady_clock::now();
  absl::StatusOr<Image> small =
      MakeGrayscaleCopy(*file, 1218, 685, 2);  // ~1 MP
  const auto t3 = std::chrono::steady_clock::now();
  absl::StatusOr<Image> big =
      MakeGrayscaleCopy(*file, 4967, 2794, 2);  // ~14 MP
  const auto t4 = std::chrono::steady_clock::now();
  ASSERT_TRUE(small.ok() && big.ok());
  std::cout << "grayscale 15.9 MP -> 1 MP: "
            << std::chrono::duration<double>(t3 - t2).count()
            << " s; -> 14 MP: "
            << std::chrono::duration<double>(t4 - t3).count()
            << " s (2 threads)\n";
  // Both copies keep the mean luminance of the photo.
  auto mean = [](const Image& g) {
    double s = 0;
    for (int64_t i = 0; i < g.spec().pixels(); ++i) s += g.as<float>()[i];
    return s / g.spec().pixels();
  };
  EXPECT_NEAR(mean(*small), mean(*big), 1e-3);
}

TEST(ImageIoTest, LimitsAreCheckedBeforeDecoding) {
  const std::string path = DataPath("itk_brain/BrainProtonDensitySlice.png");
  ReadOptions few_pixels;
  few_pixels.max_pixels = 1000;
  absl::StatusOr<Image> a = ReadImageFile(path, few_pixels);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("39277 pixels"), std::string::npos)
      << a.status();
  ReadOptions few_bytes;
  few_bytes.max_bytes = 100000;
  absl::StatusOr<Image> b = ReadImageFile(path, few_bytes);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("117831 bytes"), std::string::npos)
      << b.status();
  EXPECT_NE(b.status().message().find("100000"), std::string::npos);
  few_bytes.max_bytes = 181 * 217 * 3;  // exactly enough
  EXPECT_TRUE(ReadImageFile(path, few_bytes).ok());
}

class CountingAllocator final : public HostAllocator {
 public:
  void* Allocate(size_t bytes) override {
    ++allocations;
    return std::malloc(bytes);
  }
  void Free(void* p, size_t) override {
    ++frees;
    std::free(p);
  }
  int allocations = 0;
  int frees = 0;
};

TEST(ImageIoTest, DecodesIntoTheGivenAllocator) {
  CountingAllocator alloc;
  ReadOptions opts;
  opts.allocator = &alloc;
  {
    absl::StatusOr<Image> img =
        ReadImageFile(DataPath("ultrasound/OriginalX75Y75.png"), opts);
    ASSERT_TRUE(img.ok()) << img.status();
    EXPECT_EQ(img->spec().DebugString(), "587x485x1 uint8");
    EXPECT_EQ(alloc.allocations, 1);
  }
  EXPECT_EQ(alloc.frees, 1);
}

// ---------------------------------------------------------------------------
// Bad inputs (tests/data/bad_images, see its README.md).

struct BadCase {
  const char* file;
  absl::StatusCode code;  // kOk: must decode
};

class BadImageTest : public TestWithParam<BadCase> {};

TEST_P(BadImageTest, FileAndMemoryGiveExpectedStatus) {
  const BadCase& c = GetParam();
  const std::string path = DataPath(std::string("bad_images/") + c.file);
  ASSERT_EQ(::access(path.c_str(), R_OK), 0) << path;
  ReadOptions opts;
  opts.max_bytes = uint64_t{1} << 30;
  absl::StatusOr<Image> from_file = ReadImageFile(path, opts);
  EXPECT_EQ(from_file.status().code(), c.code) << from_file.status();
  EXPECT_FALSE(from_file.ok() && from_file->empty());
  if (!from_file.ok()) {
    // The message names the input.
    EXPECT_NE(from_file.status().message().find(c.file), std::string::npos)
        << from_file.status();
  }
  const std::vector<uint8_t> bytes = ReadBytes(path);
  absl::StatusOr<Image> from_memory = ReadImageMemory(bytes, c.file, opts);
  EXPECT_EQ(from_memory.status().code(), c.code) << from_memory.status();
  if (from_file.ok() && from_memory.ok())
    ExpectIdentical(*from_file, *from_memory);
}

const BadCase kBadCases[] = {
    {"valid_64x48.png", absl::StatusCode::kOk},
    {"valid_64x48.jpg", absl::StatusCode::kOk},
    {"valid_64x48.tif", absl::StatusCode::kOk},
    {"one_pixel.png", absl::StatusCode::kOk},
    {"truncated.png", absl::StatusCode::kInvalidArgument},
    {"truncated.jpg", absl::StatusCode::kInvalidArgument},
    {"truncated.tif", absl::StatusCode::kInvalidArgument},
    {"corrupt_header.png", absl::StatusCode::kInvalidArgument},
    {"corrupt_header.jpg", absl::StatusCode::kInvalidArgument},
    {"corrupt_header.tif", absl::StatusCode::kInvalidArgument},
    {"empty.png", absl::StatusCode::kInvalidArgument},
    {"garbage.png", absl::StatusCode::kInvalidArgument},
    // OIIO sniffs the PNG signature and decodes it despite the name.
    {"png_named.jpg", absl::StatusCode::kOk},
    {"five_channels.tif", absl::StatusCode::kInvalidArgument},
    // Declared sizes far above the 1 GiB budget: refused from the header.
    {"bomb_50000x50000.tif", absl::StatusCode::kResourceExhausted},
    {"bomb_200000x200000.tif", absl::StatusCode::kInvalidArgument},
    {"bomb_200000x200000.png", absl::StatusCode::kResourceExhausted},
    {"bomb_1000000x1000000.tif", absl::StatusCode::kInvalidArgument},
    {"bomb_1000000x1000000.png", absl::StatusCode::kResourceExhausted},
    // Headers that crash or exhaust OpenImageIO/libpng: refused by ours.
    {"strip_rows_2pow31.tif", absl::StatusCode::kInvalidArgument},
    {"long_text_chunk.png", absl::StatusCode::kInvalidArgument},
};

INSTANTIATE_TEST_SUITE_P(Corpus, BadImageTest, ::testing::ValuesIn(kBadCases),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           std::string n = info.param.file;
                           std::replace(n.begin(), n.end(), '.', '_');
                           return n;
                         });

TEST(BadImageTest, PngDataNamedJpgDecodesLikeThePng) {
  absl::StatusOr<Image> png =
      ReadImageFile(DataPath("bad_images/valid_64x48.png"));
  absl::StatusOr<Image> misnamed =
      ReadImageFile(DataPath("bad_images/png_named.jpg"));
  ASSERT_TRUE(png.ok() && misnamed.ok());
  ExpectIdentical(*png, *misnamed);
}

TEST(BadImageTest, MemoryDecodeSniffsFormatWithoutUsefulName) {
  absl::StatusOr<Image> png =
      ReadImageFile(DataPath("bad_images/valid_64x48.png"));
  ASSERT_TRUE(png.ok());
  const std::vector<uint8_t> bytes =
      ReadBytes(DataPath("bad_images/valid_64x48.png"));
  for (const char* hint : {"", "upload", "x.tif", "x.exr"}) {
    SCOPED_TRACE(hint);
    absl::StatusOr<Image> mem = ReadImageMemory(bytes, hint);
    ASSERT_TRUE(mem.ok()) << mem.status();
    ExpectIdentical(*png, *mem);
  }
}

TEST(BadImageTest, OnePixelImage) {
  absl::StatusOr<Image> img =
      ReadImageFile(DataPath("bad_images/one_pixel.png"));
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->spec().DebugString(), "1x1x1 uint8");
  EXPECT_EQ(img->data()[0], 128);
}

TEST(BadImageTest, FiveChannelsMessageSaysWhatToDo) {
  absl::StatusOr<ImageSpec> spec =
      ReadImageSpecFile(DataPath("bad_images/five_channels.tif"));
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find("5 channels"), std::string::npos);
}

TEST(BadImageTest, MissingFileIsNotFound) {
  EXPECT_EQ(
      ReadImageFile(DataPath("bad_images/no_such_file.png")).status().code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadImageSpecFile("/nonexistent/dir/x.tif").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadImageMemory({}, "x.png").status().code(),
            absl::StatusCode::kInvalidArgument);
}

int64_t PeakRssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

// Reads `file` and checks that it fails with one of the allowed codes within
// a second and without the process's peak RSS growing by more than 64 MiB.
void ExpectFastRefusal(const char* file, const ReadOptions& options) {
  SCOPED_TRACE(file);
  const std::string path = DataPath(std::string("bad_images/") + file);
  const int64_t rss_before = PeakRssKb();
  ASSERT_GE(rss_before, 0);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<Image> img = ReadImageFile(path, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_TRUE(img.status().code() == absl::StatusCode::kInvalidArgument ||
              img.status().code() == absl::StatusCode::kResourceExhausted)
      << img.status();
  EXPECT_LT(seconds, 1.0);
  EXPECT_LT(PeakRssKb() - rss_before, 64 * 1024) << "peak RSS grew";
  if (img.status().code() == absl::StatusCode::kResourceExhausted &&
      options.max_bytes != UINT64_MAX) {
    // The message names the budget and what to do.
    EXPECT_NE(img.status().message().find(absl::StrCat(options.max_bytes)),
              std::string::npos)
        << img.status();
    EXPECT_NE(img.status().message().find("raise the budget"),
              std::string::npos);
  }
}

TEST(BadImageTest, PngChunkLongerThanTheFileIsRefusedBeforeLibpng) {
  // libFuzzer's find (tests/fuzz/corpus/image_io_fuzz/regressions/oom-5012...)
  // in its shape: a real PNG whose second tEXt chunk declares 1.8 GB. libpng
  // allocated all of it before noticing the file had ended.
  std::vector<uint8_t> bytes =
      ReadBytes(DataPath("itk_brain/BrainProtonDensitySliceShifted13x17y.png"));
  ASSERT_GT(bytes.size(), 33u);
  const std::vector<uint8_t> chunk = {0x6f, 0x20, 0x76, 0xc4, 't', 'E',
                                      'X',  't',  'S',  'o',  'f', 't'};
  bytes.insert(bytes.begin() + 33, chunk.begin(), chunk.end());  // after IHDR
  const std::string path = TempPath("long_chunk.png");
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  for (const absl::Status& s :
       {ReadImageMemory(bytes, "x.png").status(),
        ReadImageSpecMemory(bytes, "").status(), ReadImageFile(path).status(),
        ReadImageSpecFile(path).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("PNG chunk \"tEXt\" at byte 33 declares "
                               "1864398532 bytes"),
              std::string::npos)
        << s;
  }
  std::remove(path.c_str());
}

TEST(BadImageTest, BombsFailFastWithoutAllocating) {
  ReadOptions budget;
  budget.max_bytes = uint64_t{256} << 20;
  for (const char* file : {"bomb_50000x50000.tif", "bomb_200000x200000.tif",
                           "bomb_200000x200000.png", "bomb_1000000x1000000.tif",
                           "bomb_1000000x1000000.png"}) {
    ExpectFastRefusal(file, budget);
  }
  // Headers beyond any machine's memory fail even with no budget at all
  // (OIIO's own size limit for TIFF, our physical-RAM check for PNG).
  for (const char* file : {"bomb_200000x200000.tif", "bomb_1000000x1000000.tif",
                           "bomb_1000000x1000000.png"}) {
    ExpectFastRefusal(file, ReadOptions());
  }
}

// ---------------------------------------------------------------------------
// Grayscale copy.

Image FloatImage(int64_t w, int64_t h, const std::vector<float>& v) {
  absl::StatusOr<Image> img =
      Image::Allocate(Spec(w, h, 1, SampleType::kFloat32));
  EXPECT_TRUE(img.ok());
  std::copy(v.begin(), v.end(), img->as<float>());
  return std::move(*img);
}

TEST(GrayscaleTest, ConstantImageStaysConstant) {
  absl::StatusOr<Image> img =
      Image::Allocate(Spec(50, 31, 3, SampleType::kUInt8));
  ASSERT_TRUE(img.ok());
  std::memset(img->data(), 200, img->size_bytes());
  absl::StatusOr<Image> g = MakeGrayscaleCopy(*img, 7, 5, 2);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->spec().DebugString(), "7x5x1 float32");
  for (int i = 0; i < 35; ++i)
    EXPECT_NEAR(g->as<float>()[i], 200.0f / 255.0f, 1e-6);
}

TEST(GrayscaleTest, TwoByTwoBlockAverages) {
  const Image img = FloatImage(4, 4,
                               {1, 2, 3, 4,     //
                                5, 6, 7, 8,     //
                                9, 10, 11, 12,  //
                                13, 14, 15, 16});
  absl::StatusOr<Image> g = MakeGrayscaleCopy(img, 2, 2);
  ASSERT_TRUE(g.ok());
  const float* o = g->as<float>();
  EXPECT_FLOAT_EQ(o[0], (1 + 2 + 5 + 6) / 4.0f);
  EXPECT_FLOAT_EQ(o[1], (3 + 4 + 7 + 8) / 4.0f);
  EXPECT_FLOAT_EQ(o[2], (9 + 10 + 13 + 14) / 4.0f);
  EXPECT_FLOAT_EQ(o[3], (11 + 12 + 15 + 16) / 4.0f);
}

TEST(GrayscaleTest, FractionalFactorOneAndAHalf) {
  // 3x3 -> 2x2: output pixel 0 covers source [0, 1.5), weights 2/3 and 1/3.
  // By hand, out(0,0) = 2/3*(2/3*1 + 1/3*2) + 1/3*(2/3*4 + 1/3*5) = 21/9.
  const Image img = FloatImage(3, 3, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  absl::StatusOr<Image> g = MakeGrayscaleCopy(img, 2, 2);
  ASSERT_TRUE(g.ok());
  const float* o = g->as<float>();
  EXPECT_NEAR(o[0], 21.0 / 9.0, 1e-6);
  EXPECT_NEAR(o[1], 33.0 / 9.0, 1e-6);  // 2/3*(1/3*2+2/3*3) + 1/3*(1/3*5+2/3*6)
  EXPECT_NEAR(o[2], 57.0 / 9.0, 1e-6);
  EXPECT_NEAR(o[3], 69.0 / 9.0, 1e-6);
}

TEST(GrayscaleTest, LumaWeightsAndAlpha) {
  absl::StatusOr<Image> rgba =
      Image::Allocate(Spec(4, 1, 4, SampleType::kUInt8));
  ASSERT_TRUE(rgba.ok());
  const uint8_t px[16] = {255, 0, 0,   0,   0,  255, 0,  7,
                          0,   0, 255, 255, 10, 20,  30, 0};
  std::memcpy(rgba->data(), px, 16);
  absl::StatusOr<Image> g = MakeGrayscaleCopy(*rgba, 4, 1);
  ASSERT_TRUE(g.ok());
  EXPECT_NEAR(g->as<float>()[0], 0.299, 1e-6);
  EXPECT_NEAR(g->as<float>()[1], 0.587, 1e-6);
  EXPECT_NEAR(g->as<float>()[2], 0.114, 1e-6);
  EXPECT_NEAR(g->as<float>()[3], (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255,
              1e-6);

  absl::StatusOr<Image> ga =
      Image::Allocate(Spec(2, 1, 2, SampleType::kUInt16));
  ASSERT_TRUE(ga.ok());
  const uint16_t gpx[4] = {65535, 0, 0, 65535};  // gray+alpha: alpha ignored
  std::memcpy(ga->data(), gpx, 8);
  absl::StatusOr<Image> g2 = MakeGrayscaleCopy(*ga, 2, 1);
  ASSERT_TRUE(g2.ok());
  EXPECT_FLOAT_EQ(g2->as<float>()[0], 1.0f);
  EXPECT_FLOAT_EQ(g2->as<float>()[1], 0.0f);
}

// Brute force: for each output pixel, the 2-D overlap of each source pixel.
std::vector<double> ReferenceGray(const Image& src, int64_t tw, int64_t th) {
  const double sx = static_cast<double>(src.width()) / tw;
  const double sy = static_cast<double>(src.height()) / th;
  std::vector<double> out(tw * th, 0.0);
  for (int64_t oy = 0; oy < th; ++oy) {
    for (int64_t ox = 0; ox < tw; ++ox) {
      double sum = 0;
      for (int64_t y = 0; y < src.height(); ++y) {
        const double oyl = std::max<double>(y, oy * sy);
        const double oyh = std::min<double>(y + 1, (oy + 1) * sy);
        if (oyh <= oyl) continue;
        for (int64_t x = 0; x < src.width(); ++x) {
          const double oxl = std::max<double>(x, ox * sx);
          const double oxh = std::min<double>(x + 1, (ox + 1) * sx);
          if (oxh <= oxl) continue;
          const uint16_t* p =
              reinterpret_cast<const uint16_t*>(src.row(y)) + x * 3;
          const double luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
          sum += (oyh - oyl) * (oxh - oxl) * luma;
        }
      }
      out[oy * tw + ox] = sum / (sx * sy) / 65535.0;
    }
  }
  return out;
}

TEST(GrayscaleTest, MatchesBruteForceAndIsThreadIndependent) {
  const Image src = RandomImage(Spec(101, 67, 3, SampleType::kUInt16), 5);
  for (auto [tw, th] : {std::pair<int64_t, int64_t>{101, 67},
                        {33, 17},
                        {10, 7},
                        {1, 1},
                        {100, 66},
                        {47, 67}}) {
    SCOPED_TRACE(absl::StrCat(tw, "x", th));
    const std::vector<double> ref = ReferenceGray(src, tw, th);
    absl::StatusOr<Image> one = MakeGrayscaleCopy(src, tw, th, 1);
    absl::StatusOr<Image> three = MakeGrayscaleCopy(src, tw, th, 3);
    ASSERT_TRUE(one.ok() && three.ok());
    for (int64_t i = 0; i < tw * th; ++i) {
      ASSERT_NEAR(one->as<float>()[i], ref[i], 2e-6) << "pixel " << i;
    }
    ExpectIdentical(*one, *three);
  }
}

TEST(GrayscaleTest, RejectsBadSizes) {
  const Image src = RandomImage(Spec(10, 10, 1, SampleType::kUInt8), 1);
  EXPECT_EQ(MakeGrayscaleCopy(src, 0, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeGrayscaleCopy(src, 11, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeGrayscaleCopy(Image(), 1, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The tiled TIFF writer's tests: tiled_tiff_writer_test.cc.

}  // namespace
}  // namespace regserve
