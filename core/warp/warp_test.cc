// Copyright regserve authors.
#include "core/warp/warp.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/warp/warp_internal.h"
#include "core/warp/warp_test_util.h"

namespace regserve {
namespace {

using warp_test::ConstantField;
using warp_test::MaxErrorVsReference;
using warp_test::RandomImage;
using warp_test::SameBytes;
using warp_test::SmoothField;
using warp_test::WarpToImage;

std::unique_ptr<Warper> Cpu() {
  return Warper::Create(WarpDevice::kCpu).value();
}

const SampleType kTypes[] = {SampleType::kUInt8, SampleType::kUInt16,
                             SampleType::kFloat32};
const Interpolation kInterps[] = {Interpolation::kLinear, Interpolation::kCubic,
                                  Interpolation::kNearest};

TEST(ParallelRangesTest, CoversEveryIndexOnce) {
  for (int64_t n : {0, 1, 7, 100, 1001}) {
    for (int threads : {1, 2, 3, 16, 5000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      warp_internal::ParallelRanges(n, threads, [&](int64_t b, int64_t e) {
        EXPECT_LE(0, b);
        EXPECT_LT(b, e);
        EXPECT_LE(e, n);
        for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
            << "n=" << n << " threads=" << threads << " i=" << i;
    }
  }
}

TEST(WarpCpuTest, IdentityFieldReproducesImage) {
  auto warper = Cpu();
  for (SampleType type : kTypes) {
    for (int channels = 1; channels <= 4; ++channels) {
      for (Interpolation interp : kInterps) {
        Image m = RandomImage({61, 37, channels, type}, 7 + channels);
        WarpOptions o;
        o.interpolation = interp;
        Image out =
            WarpToImage(*warper, m, ConstantField(0.f, 0.f), 61, 37, o).value();
        EXPECT_TRUE(SameBytes(out, m))
            << m.spec().DebugString() << " " << InterpolationName(interp);
      }
    }
  }
}

TEST(WarpCpuTest, TranslationMatchesShiftedImageAndFillsOutside) {
  auto warper = Cpu();
  const Image m = RandomImage({80, 60, 3, SampleType::kUInt8}, 3);
  for (Interpolation interp : kInterps) {
    WarpOptions o;
    o.interpolation = interp;
    o.fill_value = 200;
    Image out =
        WarpToImage(*warper, m, ConstantField(13.f, 17.f), 80, 60, o).value();
    for (int64_t j = 0; j < 60; ++j) {
      for (int64_t i = 0; i < 80; ++i) {
        for (int c = 0; c < 3; ++c) {
          const uint8_t got = out.row(j)[i * 3 + c];
          const bool inside = i + 13 < 80 && j + 17 < 60;
          const uint8_t want = inside ? m.row(j + 17)[(i + 13) * 3 + c] : 200;
          ASSERT_EQ(got, want)
              << i << "," << j << " " << InterpolationName(interp);
        }
      }
    }
  }
}

TEST(WarpCpuTest, TiledIsBitIdenticalToOnePass) {
  auto warper = Cpu();
  const int64_t w = 97, h = 83;
  const DisplacementField f = SmoothField(w, h, 9, 7, 6.0, 11);
  for (SampleType type : kTypes) {
    for (int channels = 1; channels <= 4; ++channels) {
      const Image m = RandomImage({90, 88, channels, type}, 100 + channels);
      for (Interpolation interp : kInterps) {
        WarpOptions o;
        o.interpolation = interp;
        o.fill_value = 9;
        const Image one = WarpToImage(*warper, m, f, w, h, o).value();
        for (int64_t tile : {1, 7, 16, 50, 96, 97, 200}) {
          o.tile_size = tile;
          o.cpu_threads = tile % 2 == 0 ? 2 : 1;
          WarpStats stats;
          const Image tiled =
              WarpToImage(*warper, m, f, w, h, o, &stats).value();
          EXPECT_TRUE(SameBytes(one, tiled))
              << m.spec().DebugString() << " " << InterpolationName(interp)
              << " tile " << tile;
          const int64_t want_tiles =
              tile >= w ? 1 : ((w + tile - 1) / tile) * ((h + tile - 1) / tile);
          EXPECT_EQ(stats.tiles, want_tiles);
        }
      }
    }
  }
}

TEST(WarpCpuTest, BandsAreBitIdenticalToOnePassAndComeInRowOrder) {
  auto warper = Cpu();
  const int64_t w = 97, h = 83;
  const DisplacementField f = SmoothField(w, h, 9, 7, 6.0, 11);
  const Image m = RandomImage({90, 88, 3, SampleType::kUInt8}, 5);
  WarpOptions o;
  o.cpu_threads = 2;
  const Image one = WarpToImage(*warper, m, f, w, h, o).value();
  for (int64_t band : {1, 16, 32, 82, 83, 500}) {
    o.band_rows = band;
    WarpStats stats;
    const Image banded = WarpToImage(*warper, m, f, w, h, o, &stats).value();
    EXPECT_TRUE(SameBytes(one, banded)) << "band " << band;
    EXPECT_EQ(stats.tiles, band >= h ? 1 : (h + band - 1) / band);
    int64_t next_y = 0;
    absl::StatusOr<WarpStats> s = warper->Warp(
        m, f, w, h, o, [&](const TileRect& r, const Image&) -> absl::Status {
          EXPECT_EQ(r.x, 0);
          EXPECT_EQ(r.w, w);
          EXPECT_EQ(r.y, next_y);
          next_y += r.h;
          return absl::OkStatus();
        });
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(next_y, h);
  }
}

TEST(WarpCpuTest, MatchesNaiveReference) {
  auto warper = Cpu();
  const DisplacementField f = SmoothField(120, 90, 13, 10, 9.0, 5);
  for (SampleType type : kTypes) {
    for (Interpolation interp : kInterps) {
      const Image m = RandomImage({110, 95, 3, type}, 21);
      WarpOptions o;
      o.interpolation = interp;
      o.fill_value = 3;
      o.tile_size = 32;
      const Image out = WarpToImage(*warper, m, f, 120, 90, o).value();
      const double err = MaxErrorVsReference(out, m, f, o);
      // Integer types: within one unit (fp32 vs double rounding at .5).
      // float32: fp32 rounding of values in [-1, 1] (cubic overshoots a bit).
      const double tol = type == SampleType::kFloat32 ? 1e-4 : 1.0;
      EXPECT_LE(err, tol) << SampleTypeName(type) << " "
                          << InterpolationName(interp);
    }
  }
}

// The CUDA kernel runs WarpPixel per pixel; the CPU rows share its
// column terms (WarpRow). Both must give the same bits (warp_kernel.h).
template <typename T, int C, int I>
void ExpectRowsMatchWarpPixel(const Image& m, const DisplacementField& f,
                              const WarpOptions& o, const Image& out) {
  warp_internal::WarpParams p = warp_internal::MakeBaseParams(m, f, o);
  p.src = m.data();
  p.src_stride = m.width();
  for (int64_t j = 0; j < out.height(); ++j) {
    for (int64_t i = 0; i < out.width(); ++i) {
      T want[C];
      warp_internal::WarpPixel<T, C, I>(p, i, j, want);
      ASSERT_EQ(std::memcmp(want, out.row(j) + i * C * sizeof(T), sizeof(want)),
                0)
          << "pixel " << i << "," << j;
    }
  }
}

TEST(WarpCpuTest, RowsAreBitIdenticalToThePerPixelKernel) {
  auto warper = Cpu();
  // Nodes beyond the image and a field that pushes pixels outside: clamped
  // taps, fill, and every interpolation's border.
  const DisplacementField f = SmoothField(120, 90, 13, 10, 25.0, 7);
  WarpOptions o;
  o.fill_value = 3;
  o.tile_size = 32;
  const Image u8 = RandomImage({110, 95, 3, SampleType::kUInt8}, 5);
  const Image f32 = RandomImage({110, 95, 1, SampleType::kFloat32}, 6);
  o.interpolation = Interpolation::kLinear;
  ExpectRowsMatchWarpPixel<uint8_t, 3, warp_internal::kKernelLinear>(
      u8, f, o, WarpToImage(*warper, u8, f, 120, 90, o).value());
  o.interpolation = Interpolation::kCubic;
  ExpectRowsMatchWarpPixel<float, 1, warp_internal::kKernelCubic>(
      f32, f, o, WarpToImage(*warper, f32, f, 120, 90, o).value());
  o.interpolation = Interpolation::kNearest;
  ExpectRowsMatchWarpPixel<uint8_t, 3, warp_internal::kKernelNearest>(
      u8, f, o, WarpToImage(*warper, u8, f, 120, 90, o).value());
}

TEST(WarpKernelTest, FloorIsFloorfBitForBit) {
  const float values[] = {0.f,        -0.f,        0.5f,        -0.5f,
                          1.f,        -1.f,        2.999999f,   -2.000001f,
                          8388607.5f, -8388607.5f, 8388608.f,   -8388609.f,
                          1e30f,      -1e30f,      INFINITY,    -INFINITY,
                          1e-40f,     -1e-40f,     123456.789f, -0.75f};
  for (float v : values) {
    const float got = warp_internal::Floor(v), want = std::floor(v);
    EXPECT_EQ(std::memcmp(&got, &want, sizeof(float)), 0) << v;
  }
  EXPECT_TRUE(std::isnan(warp_internal::Floor(NAN)));
}

TEST(WarpCpuTest, FillValueIsClampedToTheSampleType) {
  auto warper = Cpu();
  const DisplacementField away = ConstantField(1000.f, 0.f);
  WarpOptions o;
  o.fill_value = 70000;
  Image m16 = RandomImage({20, 10, 2, SampleType::kUInt16}, 1);
  Image out = WarpToImage(*warper, m16, away, 20, 10, o).value();
  for (int64_t k = 0; k < 20 * 10 * 2; ++k)
    ASSERT_EQ(out.as<uint16_t>()[k], 65535);
  o.fill_value = -3.5;
  Image mf = RandomImage({20, 10, 1, SampleType::kFloat32}, 1);
  out = WarpToImage(*warper, mf, away, 20, 10, o).value();
  for (int64_t k = 0; k < 20 * 10; ++k) ASSERT_EQ(out.as<float>()[k], -3.5f);
  o.fill_value = 77.4;
  Image m8 = RandomImage({20, 10, 4, SampleType::kUInt8}, 1);
  out = WarpToImage(*warper, m8, away, 20, 10, o).value();
  for (int64_t k = 0; k < 20 * 10 * 4; ++k) ASSERT_EQ(out.as<uint8_t>()[k], 77);
}

TEST(WarpCpuTest, NonFiniteFieldNodesGiveFill) {
  auto warper = Cpu();
  DisplacementField f = ConstantField(0.f, 0.f);
  f.dx[0] = std::nanf("");
  f.dy[5] = INFINITY;
  const Image m = RandomImage({100, 70, 1, SampleType::kUInt8}, 4);
  WarpOptions o;
  o.fill_value = 1;
  o.tile_size = 16;
  const Image out = WarpToImage(*warper, m, f, 100, 70, o).value();
  // Pixel (0, 0) interpolates node 0 only (tx = ty = 0): NaN * 0 is NaN.
  EXPECT_EQ(out.row(0)[0], 1);
  // Pixels far from both bad nodes' cells are untouched? Every pixel shares
  // a cell with node 0 or 5 here (3x2 nodes), so all are fill.
  for (int64_t j = 0; j < 70; ++j) {
    for (int64_t i = 0; i < 100; ++i) ASSERT_EQ(out.row(j)[i], 1);
  }
}

TEST(WarpCpuTest, OutputOriginAndSpacingGiveRegistrationResolution) {
  auto warper = Cpu();
  const Image m = RandomImage({64, 48, 1, SampleType::kUInt8}, 8);
  WarpOptions o;
  o.interpolation = Interpolation::kNearest;
  o.output_spacing_x = 2.0;
  o.output_spacing_y = 3.0;
  const Image out =
      WarpToImage(*warper, m, ConstantField(0.f, 0.f), 32, 16, o).value();
  for (int64_t j = 0; j < 16; ++j) {
    for (int64_t i = 0; i < 32; ++i)
      ASSERT_EQ(out.row(j)[i], m.row(3 * j)[2 * i]);
  }
  // Fractional origin/spacing with a real field, against the reference.
  o.interpolation = Interpolation::kLinear;
  o.output_origin_x = 1.5;
  o.output_origin_y = 1.5;
  o.output_spacing_x = 4.0;
  o.output_spacing_y = 4.0;
  o.tile_size = 5;
  const DisplacementField f = SmoothField(64, 48, 5, 4, 3.0, 2);
  const Image small = WarpToImage(*warper, m, f, 16, 12, o).value();
  EXPECT_LE(MaxErrorVsReference(small, m, f, o), 1.0);
}

TEST(WarpCpuTest, LargeDisplacementsTiledEqualsOnePass) {
  // A scaled-down stand-in for the 500 MP case: many small tiles, large
  // smooth displacements, 2 threads.
  auto warper = Cpu();
  const Image m = RandomImage({1500, 1000, 1, SampleType::kUInt8}, 9);
  const DisplacementField f = SmoothField(1500, 1000, 60, 40, 40.0, 9);
  WarpOptions o;
  o.cpu_threads = 2;
  const Image one = WarpToImage(*warper, m, f, 1500, 1000, o).value();
  o.tile_size = 123;
  const Image tiled = WarpToImage(*warper, m, f, 1500, 1000, o).value();
  EXPECT_TRUE(SameBytes(one, tiled));
}

// A moving image read by region gives the samples of the image held whole,
// for every type, channel count, interpolation and tile size, with smooth
// and large displacements (regions split when a tile's source is large).
TEST(WarpRegionsTest, BitIdenticalToTheImageHeldWhole) {
  auto warper = Cpu();
  const int64_t w = 197, h = 143;
  const DisplacementField smooth = SmoothField(w, h, 9, 7, 6.0, 11);
  const DisplacementField large = SmoothField(w, h, 30, 20, 150.0, 5);
  for (SampleType type : kTypes) {
    for (int channels : {1, 3, 4}) {
      const Image m = RandomImage({190, 148, channels, type}, 7 + channels);
      const std::unique_ptr<RegionSource> src = MakeImageRegionSource(&m);
      for (Interpolation interp : kInterps) {
        for (const DisplacementField* f : {&smooth, &large}) {
          WarpOptions o;
          o.interpolation = interp;
          o.fill_value = 3;
          const Image whole = WarpToImage(*warper, m, *f, w, h, o).value();
          for (int64_t tile : {16, 50, 300}) {
            o.tile_size = tile;
            o.cpu_threads = tile % 2 == 0 ? 2 : 1;
            const Image streamed =
                WarpToImage(*warper, m, *f, w, h, o, nullptr, src.get())
                    .value();
            EXPECT_TRUE(SameBytes(whole, streamed))
                << m.spec().DebugString() << " " << InterpolationName(interp)
                << " tile " << tile;
          }
        }
      }
    }
  }
}

// Reads only around what each tile samples: a translation by a tile's width
// reads each source pixel about once, not the whole image per tile.
class CountingSource final : public RegionSource {
 public:
  explicit CountingSource(const Image* m) : inner_(MakeImageRegionSource(m)) {}
  const ImageSpec& spec() const override { return inner_->spec(); }
  absl::Status ReadRegion(int64_t x, int64_t y, int64_t w, int64_t h,
                          uint8_t* dst, size_t stride) override {
    pixels_ += w * h;
    ++reads_;
    if (fail_after_ >= 0 && reads_ > fail_after_) {
      return absl::InternalError("disk gone");
    }
    return inner_->ReadRegion(x, y, w, h, dst, stride);
  }
  int64_t pixels_ = 0, reads_ = 0, fail_after_ = -1;

 private:
  std::unique_ptr<RegionSource> inner_;
};

TEST(WarpRegionsTest, ReadsTheRegionsTheTilesSample) {
  auto warper = Cpu();
  const Image m = RandomImage({2000, 1500, 1, SampleType::kUInt8}, 3);
  CountingSource src(&m);
  WarpOptions o;
  o.tile_size = 256;
  const DisplacementField f = ConstantField(10.5f, -7.25f);
  const Image whole = WarpToImage(*warper, m, f, 2000, 1500, o).value();
  const Image streamed =
      WarpToImage(*warper, m, f, 2000, 1500, o, nullptr, &src).value();
  EXPECT_TRUE(SameBytes(whole, streamed));
  // 8 x 6 tiles, each reading its tile plus a few pixels of halo.
  EXPECT_EQ(src.reads_, 48);
  EXPECT_LT(src.pixels_, 2000 * 1500 * 1.15);
}

TEST(WarpRegionsTest, ReadErrorsAndBadOptions) {
  auto warper = Cpu();
  const Image m = RandomImage({300, 200, 3, SampleType::kUInt8}, 3);
  CountingSource src(&m);
  src.fail_after_ = 2;
  WarpOptions o;
  o.tile_size = 64;
  const DisplacementField f = ConstantField(0.f, 0.f);
  auto ignore = [](const TileRect&, const Image&) { return absl::OkStatus(); };
  EXPECT_EQ(warper->WarpRegions(&src, f, 300, 200, o, ignore).status().code(),
            absl::StatusCode::kInternal);
  o.tile_size = 0;
  EXPECT_EQ(warper->WarpRegions(&src, f, 300, 200, o, ignore).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WarpCpuTest, CancellationIsPolledBetweenTiles) {
  auto warper = Cpu();
  const Image m = RandomImage({64, 64, 1, SampleType::kUInt8}, 1);
  CancelToken token;
  WarpOptions o;
  o.tile_size = 16;
  o.cancel = &token;
  int tiles = 0;
  absl::StatusOr<WarpStats> s =
      warper->Warp(m, ConstantField(0.f, 0.f), 64, 64, o,
                   [&](const TileRect&, const Image&) {
                     if (++tiles == 2) token.Cancel("stop now");
                     return absl::OkStatus();
                   });
  EXPECT_TRUE(absl::IsCancelled(s.status())) << s.status();
  EXPECT_EQ(tiles, 2);
  EXPECT_NE(s.status().message().find("stop now"), absl::string_view::npos);

  CancelToken late;
  late.set_deadline(absl::Now() - absl::Seconds(1));
  o.cancel = &late;
  s = warper->Warp(
      m, ConstantField(0.f, 0.f), 64, 64, o,
      [&](const TileRect&, const Image&) { return absl::OkStatus(); });
  EXPECT_TRUE(absl::IsDeadlineExceeded(s.status())) << s.status();
}

TEST(WarpCpuTest, CallbackErrorAbortsTheWarp) {
  auto warper = Cpu();
  const Image m = RandomImage({64, 64, 1, SampleType::kUInt8}, 1);
  WarpOptions o;
  o.tile_size = 16;
  int tiles = 0;
  absl::StatusOr<WarpStats> s =
      warper->Warp(m, ConstantField(0.f, 0.f), 64, 64, o,
                   [&](const TileRect&, const Image&) {
                     ++tiles;
                     return absl::DataLossError("disk full");
                   });
  EXPECT_TRUE(absl::IsDataLoss(s.status()));
  EXPECT_EQ(tiles, 1);
}

TEST(WarpCpuTest, BadInputsAreInvalidArgument) {
  auto warper = Cpu();
  const Image m = RandomImage({16, 16, 1, SampleType::kUInt8}, 1);
  auto noop = [](const TileRect&, const Image&) { return absl::OkStatus(); };
  WarpOptions o;
  EXPECT_TRUE(absl::IsInvalidArgument(
      warper->Warp(m, DisplacementField{}, 16, 16, o, noop).status()));
  DisplacementField bad = ConstantField(0.f, 0.f);
  bad.dy.pop_back();
  EXPECT_TRUE(
      absl::IsInvalidArgument(warper->Warp(m, bad, 16, 16, o, noop).status()));
  bad = ConstantField(0.f, 0.f);
  bad.spacing_x = 0;
  EXPECT_TRUE(
      absl::IsInvalidArgument(warper->Warp(m, bad, 16, 16, o, noop).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      warper->Warp(m, ConstantField(0.f, 0.f), 0, 16, o, noop).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      warper->Warp(Image(), ConstantField(0.f, 0.f), 16, 16, o, noop)
          .status()));
  o.tile_size = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(
      warper->Warp(m, ConstantField(0.f, 0.f), 16, 16, o, noop).status()));
  o.tile_size = 0;
  o.output_spacing_x = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(
      warper->Warp(m, ConstantField(0.f, 0.f), 16, 16, o, noop).status()));
}

TEST(WarpCpuTest, DeviceAndCudaAvailability) {
  EXPECT_EQ(Cpu()->device(), WarpDevice::kCpu);
#if !REGSERVE_HAVE_CUDA
  auto cuda = Warper::Create(WarpDevice::kCuda, 0);
  EXPECT_TRUE(absl::IsUnavailable(cuda.status())) << cuda.status();
  EXPECT_EQ(PinnedHostAllocator(), nullptr);
#endif
}

TEST(WarpMemoryTest, EstimateFollowsTheModel) {
  const ImageSpec rgb{18960, 14960, 3, SampleType::kUInt8};
  const WarpMemoryEstimate one =
      EstimateWarpMemory(rgb, 18960, 14960, 4473, 3154, 0, WarpDevice::kCuda);
  const WarpMemoryEstimate t4k = EstimateWarpMemory(
      rgb, 18960, 14960, 4473, 3154, 4096, WarpDevice::kCuda);
  const WarpMemoryEstimate t2k = EstimateWarpMemory(
      rgb, 18960, 14960, 4473, 3154, 2048, WarpDevice::kCuda);
  // One pass holds the whole source on the device.
  EXPECT_GT(one.device_bytes, rgb.bytes());
  EXPECT_LT(t4k.device_bytes, one.device_bytes);
  EXPECT_LT(t2k.device_bytes, t4k.device_bytes);
  EXPECT_LT(t4k.device_bytes, 2ull << 30);
  // The field alone is a floor for every tile size.
  EXPECT_GT(t2k.device_bytes, 2ull * 4 * 4473 * 3154);
  const WarpMemoryEstimate cpu =
      EstimateWarpMemory(rgb, 18960, 14960, 4473, 3154, 1024, WarpDevice::kCpu);
  EXPECT_EQ(cpu.device_bytes, 0u);
  EXPECT_EQ(cpu.host_bytes, 2ull * 1024 * 1024 * 3);
  EXPECT_EQ(
      EstimateWarpMemory(rgb, 18960, 14960, 4473, 3154, 0, WarpDevice::kCpu)
          .host_bytes,
      rgb.bytes());
}

}  // namespace
}  // namespace regserve
