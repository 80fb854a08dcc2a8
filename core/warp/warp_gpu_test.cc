// Copyright regserve authors.
//
// CUDA warp against the CPU warp. Skipped (GTEST_SKIP with the reason) only
// when this build or machine has no CUDA.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/warp/warp.h"
#include "core/warp/warp_test_util.h"

namespace regserve {
namespace {

using warp_test::RandomImage;
using warp_test::SmoothField;
using warp_test::WarpToImage;

std::unique_ptr<Warper> CudaOrNull(std::string* why) {
  auto w = Warper::Create(WarpDevice::kCuda, 0);
  if (!w.ok()) {
    *why = std::string(w.status().message());
    return nullptr;
  }
  return std::move(w).value();
}

// Largest per-sample difference between two images of the same spec.
double MaxDiff(const Image& a, const Image& b) {
  double worst = 0;
  const int64_t n = a.width() * a.height() * a.channels();
  for (int64_t k = 0; k < n; ++k) {
    double x = 0, y = 0;
    switch (a.type()) {
      case SampleType::kUInt8:
        x = a.as<uint8_t>()[k], y = b.as<uint8_t>()[k];
        break;
      case SampleType::kUInt16:
        x = a.as<uint16_t>()[k], y = b.as<uint16_t>()[k];
        break;
      case SampleType::kFloat32:
        x = a.as<float>()[k], y = b.as<float>()[k];
        break;
    }
    worst = std::max(worst, std::fabs(x - y));
  }
  return worst;
}

// For a 3000x2000 image: neighbouring nodes pointing to opposite ends of
// it, so that the tiled path must split tiles until each source region
// fits.
DisplacementField OppositeEndsField() {
  DisplacementField f;
  f.width = 30;
  f.height = 20;
  f.spacing_x = 100;
  f.spacing_y = 100;
  f.dx.resize(600);
  f.dy.resize(600);
  for (int k = 0; k < 600; ++k) {
    f.dx[k] = (k % 2) ? 2500.f : -2500.f;
    f.dy[k] = (k % 3) ? 1500.f : -1500.f;
  }
  return f;
}

TEST(WarpGpuTest, CudaMatchesCpuOnFreshRandomInputs) {
  std::string why;
  auto cuda = CudaOrNull(&why);
  if (cuda == nullptr) GTEST_SKIP() << "CUDA unavailable: " << why;
  auto cpu = Warper::Create(WarpDevice::kCpu).value();
  const uint32_t seed = static_cast<uint32_t>(std::random_device{}());
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  for (SampleType type :
       {SampleType::kUInt8, SampleType::kUInt16, SampleType::kFloat32}) {
    for (int channels : {1, 3, 4}) {
      for (Interpolation interp :
           {Interpolation::kLinear, Interpolation::kCubic,
            Interpolation::kNearest}) {
        const Image m =
            RandomImage({1031, 777, channels, type}, seed + channels);
        const auto f = SmoothField(1100, 800, 41, 30, 25.0, seed + 7);
        WarpOptions o;
        o.interpolation = interp;
        o.fill_value = 5;
        o.cpu_threads = 4;
        const Image ref = WarpToImage(*cpu, m, f, 1100, 800, o).value();
        const Image one = WarpToImage(*cuda, m, f, 1100, 800, o).value();
        // Same arithmetic (warp_kernel.h, no FMA): expected bit-identical;
        // the contract is within one unit for uint8 linear.
        EXPECT_LE(MaxDiff(one, ref), type == SampleType::kFloat32 ? 1e-5 : 1.0)
            << m.spec().DebugString() << " " << InterpolationName(interp);
        EXPECT_EQ(std::memcmp(one.data(), ref.data(), one.size_bytes()), 0)
            << "not bit-identical: " << m.spec().DebugString() << " "
            << InterpolationName(interp);
        for (int64_t tile : {1000, 256, 97}) {
          o.tile_size = tile;
          const Image tiled = WarpToImage(*cuda, m, f, 1100, 800, o).value();
          EXPECT_EQ(std::memcmp(one.data(), tiled.data(), one.size_bytes()), 0)
              << "tiled " << tile
              << " differs from one pass: " << m.spec().DebugString() << " "
              << InterpolationName(interp);
        }
        o.tile_size = 0;
      }
    }
  }
}

TEST(WarpGpuTest, PinnedSourceGivesTheSameResult) {
  std::string why;
  auto cuda = CudaOrNull(&why);
  if (cuda == nullptr) GTEST_SKIP() << "CUDA unavailable: " << why;
  ASSERT_NE(PinnedHostAllocator(), nullptr);
  const Image m = RandomImage({2000, 1500, 3, SampleType::kUInt8}, 3);
  Image pinned = Image::Allocate(m.spec(), PinnedHostAllocator()).value();
  std::memcpy(pinned.data(), m.data(), m.size_bytes());
  const auto f = SmoothField(2000, 1500, 50, 40, 30.0, 3);
  WarpOptions o;
  const Image a = WarpToImage(*cuda, m, f, 2000, 1500, o).value();
  const Image b = WarpToImage(*cuda, pinned, f, 2000, 1500, o).value();
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0);
  o.tile_size = 700;
  const Image c = WarpToImage(*cuda, pinned, f, 2000, 1500, o).value();
  EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size_bytes()), 0);
}

TEST(WarpGpuTest, PathologicalFieldSplitsRegionsAndStaysCorrect) {
  // Neighbouring nodes pointing to opposite ends of the image force the
  // tiled path to split tiles until each source region fits.
  std::string why;
  auto cuda = CudaOrNull(&why);
  if (cuda == nullptr) GTEST_SKIP() << "CUDA unavailable: " << why;
  auto cpu = Warper::Create(WarpDevice::kCpu).value();
  const Image m = RandomImage({3000, 2000, 1, SampleType::kUInt8}, 5);
  const DisplacementField f = OppositeEndsField();
  WarpOptions o;
  o.tile_size = 256;
  const Image ref = WarpToImage(*cpu, m, f, 3000, 2000, o).value();
  const Image got = WarpToImage(*cuda, m, f, 3000, 2000, o).value();
  EXPECT_EQ(std::memcmp(ref.data(), got.data(), ref.size_bytes()), 0);
}

// WarpRegions on CUDA (the moving image read by region into pinned slots)
// gives the CPU warp's samples of the image held whole, for every tile size
// and a field that forces split regions.
TEST(WarpGpuTest, RegionsReadByRegionMatchTheCpu) {
  std::string why;
  auto cuda = CudaOrNull(&why);
  if (cuda == nullptr) GTEST_SKIP() << "CUDA unavailable: " << why;
  auto cpu = Warper::Create(WarpDevice::kCpu).value();
  for (const ImageSpec& spec : {ImageSpec{1531, 1077, 3, SampleType::kUInt8},
                                ImageSpec{900, 700, 1, SampleType::kFloat32}}) {
    const Image m = RandomImage(spec, 11);
    const auto f = SmoothField(spec.width, spec.height, 40, 30, 35.0, 11);
    const std::unique_ptr<RegionSource> src = MakeImageRegionSource(&m);
    WarpOptions o;
    o.interpolation = Interpolation::kCubic;
    o.cpu_threads = 4;
    const Image ref =
        WarpToImage(*cpu, m, f, spec.width, spec.height, o).value();
    for (int64_t tile : {2048, 512, 256, 97}) {
      o.tile_size = tile;
      absl::StatusOr<Image> got = WarpToImage(
          *cuda, m, f, spec.width, spec.height, o, nullptr, src.get());
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(std::memcmp(ref.data(), got->data(), ref.size_bytes()), 0)
          << spec.DebugString() << " tile " << tile;
    }
  }
  // Opposite ends of the image side by side: regions split per tile.
  const Image m = RandomImage({3000, 2000, 1, SampleType::kUInt8}, 5);
  const DisplacementField f = OppositeEndsField();
  const std::unique_ptr<RegionSource> src = MakeImageRegionSource(&m);
  WarpOptions o;
  o.tile_size = 256;
  const Image ref = WarpToImage(*cpu, m, f, 3000, 2000, o).value();
  const Image got =
      WarpToImage(*cuda, m, f, 3000, 2000, o, nullptr, src.get()).value();
  EXPECT_EQ(std::memcmp(ref.data(), got.data(), ref.size_bytes()), 0);
  o.tile_size = 0;  // one pass is refused for a source read by region
  EXPECT_TRUE(absl::IsInvalidArgument(
      WarpToImage(*cuda, m, f, 3000, 2000, o, nullptr, src.get()).status()));
}

}  // namespace
}  // namespace regserve
