// Copyright regserve authors.
#include "core/plan/plan.h"

#include <algorithm>
#include <string>

#include "absl/strings/match.h"
#include "core/warp/warp.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

constexpr uint64_t kGiB = 1ull << 30;

ImageSpec Rgb(int64_t w, int64_t h) { return {w, h, 3, SampleType::kUInt8}; }
// The seed's fabric scans: 18960 x 14960 RGB, 283.6 MP.
const ImageSpec kFabric = Rgb(18960, 14960);

HardwareSnapshot Machine(uint64_t ram, uint64_t vram) {
  HardwareSnapshot hw;
  hw.ram_total_bytes = ram;
  hw.ram_available_bytes = ram;
  hw.cpu_cores = 8;
  if (vram > 0) hw.gpus.push_back({0, "Injected GPU", vram, vram});
  return hw;
}

std::string Reasons(const Plan& p) {
  std::string s;
  for (const auto& r : p.reasons) s += r + "\n";
  return s;
}

TEST(BudgetsFromHardware, DerivesFromMeasuredMemoryUnlessOverridden) {
  Budgets b = BudgetsFromHardware(Machine(32 * kGiB, 16 * kGiB), {});
  EXPECT_EQ(b.ram_bytes, static_cast<uint64_t>(0.8 * 32 * kGiB));
  EXPECT_EQ(b.vram_bytes, static_cast<uint64_t>(0.9 * 16 * kGiB));
  EXPECT_TRUE(b.has_gpu);
  b = BudgetsFromHardware(Machine(32 * kGiB, 16 * kGiB), {4 * kGiB, 2 * kGiB});
  EXPECT_EQ(b.ram_bytes, 4 * kGiB);
  EXPECT_EQ(b.vram_bytes, 2 * kGiB);
  b = BudgetsFromHardware(Machine(8 * kGiB, 0), {});
  EXPECT_FALSE(b.has_gpu);
  EXPECT_EQ(b.vram_bytes, 0u);
}

TEST(MakePlan, SixteenGigGpuAndThirtyTwoGigRam) {
  Budgets b = BudgetsFromHardware(Machine(32 * kGiB, 16 * kGiB), {});
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Capped by max_registration_megapixels = 20, not by RAM.
  const double reg_px = static_cast<double>(plan->registration_fixed_width) *
                        plan->registration_fixed_height;
  EXPECT_LE(reg_px, 20e6);
  EXPECT_GT(reg_px, 19.5e6);
  EXPECT_NEAR(static_cast<double>(plan->registration_fixed_width) /
                  plan->registration_fixed_height,
              18960.0 / 14960.0, 0.01);
  EXPECT_THAT(Reasons(*plan),
              testing::HasSubstr("capped by max_registration_megapixels=20"));
  EXPECT_EQ(plan->output_width, 18960);
  EXPECT_EQ(plan->output_height, 14960);
  EXPECT_EQ(plan->warp_device, WarpDevice::kCuda);
  EXPECT_LE(plan->warp.vram_bytes, b.vram_bytes);
  EXPECT_LE(plan->warp.ram_bytes, b.ram_bytes);
  EXPECT_LE(plan->registration.ram_bytes, b.ram_bytes);
  // Full resolution is never downsampled for the warp.
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("18960x14960"));
}

TEST(MakePlan, EightyGigGpuWarpsInOnePass) {
  Budgets b = BudgetsFromHardware(Machine(128 * kGiB, 80 * kGiB), {});
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->warp_device, WarpDevice::kCuda);
  EXPECT_EQ(plan->tile_size, 0) << Reasons(*plan);
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("one pass on the GPU"));
}

TEST(MakePlan, TwoGigVramBudgetStillFitsOnePassBecauseTheWarpStreamsBands) {
  // The one-pass CUDA warp keeps the moving image resident and streams the
  // output in bands, so 283.6 MP RGB needs about 1.1 GB of VRAM.
  Budgets b =
      BudgetsFromHardware(Machine(128 * kGiB, 80 * kGiB), {0, 2 * kGiB});
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->warp_device, WarpDevice::kCuda);
  EXPECT_EQ(plan->tile_size, 0) << Reasons(*plan);
  EXPECT_LE(plan->warp.vram_bytes, 2 * kGiB);
  EXPECT_GT(plan->warp.vram_bytes, kFabric.bytes());
}

TEST(MakePlan, SmallVramBudgetTilesWithTheLargestTileThatFits) {
  const uint64_t budget = 512ull << 20;
  Budgets b = BudgetsFromHardware(Machine(128 * kGiB, 80 * kGiB), {0, budget});
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->warp_device, WarpDevice::kCuda);
  EXPECT_GT(plan->tile_size, 0) << Reasons(*plan);
  EXPECT_LE(plan->warp.vram_bytes, budget);
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("tiles"));
  // The next larger candidate would not fit.
  const auto bigger =
      EstimateWarpMemory(kFabric, 18960, 14960, plan->registration_fixed_width,
                         plan->registration_fixed_height,
                         plan->tile_size * 4 / 3, WarpDevice::kCuda);
  EXPECT_GT(bigger.device_bytes, budget);
}

TEST(MakePlan, NoGpuWarpsOnCpu) {
  Budgets b = BudgetsFromHardware(Machine(32 * kGiB, 0), {});
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->warp_device, WarpDevice::kCpu);
  EXPECT_EQ(plan->warp.vram_bytes, 0u);
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("no GPU available"));

  JobOptions cuda;
  cuda.device = DevicePreference::kCuda;
  EXPECT_EQ(MakePlan(kFabric, kFabric, cuda, b).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MakePlan, CpuPreferenceIsHonoured) {
  Budgets b = BudgetsFromHardware(Machine(64 * kGiB, 80 * kGiB), {});
  JobOptions o;
  o.device = DevicePreference::kCpu;
  auto plan = MakePlan(kFabric, kFabric, o, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->warp_device, WarpDevice::kCpu);
}

// One core: the decode stage reads one image after the other.
HardwareSnapshot OneCore(uint64_t ram) {
  HardwareSnapshot hw = Machine(ram, 0);
  hw.cpu_cores = 1;
  return hw;
}

TEST(MakePlan, DecodeReservesOpenImageIoScratch) {
  // Below 64 MiB the scratch is as large as the image; above, about 64 MiB.
  const Budgets b = BudgetsFromHardware(OneCore(32 * kGiB), {});
  const ImageSpec small = Rgb(2000, 2000);  // 12 MB
  auto plan = MakePlan(small, small, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GE(plan->decode.ram_bytes, 2 * small.bytes());
  plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GE(plan->decode.ram_bytes, kFabric.bytes() + (uint64_t{64} << 20));
  const uint64_t striped = plan->decode.ram_bytes;
  // The reader's figure from the header wins: a TIFF stored as one strip
  // needs a second copy of the image.
  ImageSpec one_strip = kFabric;
  one_strip.decode_scratch_bytes = kFabric.bytes();
  auto single = MakePlan(kFabric, one_strip, JobOptions{}, b);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(single->decode.ram_bytes - striped,
            kFabric.bytes() - (uint64_t{72} << 20));
  EXPECT_LT(plan->decode.ram_bytes,
            kFabric.bytes() + (uint64_t{256} << 20) + 4 * 20'000'000ull);
}

TEST(MakePlan, DecodeStreamsTheFixedImage) {
  // The fixed image is streamed into its copy: a few strips, not the whole
  // image; the moving image is still read whole beside the fixed copy.
  const Budgets b = BudgetsFromHardware(OneCore(32 * kGiB), {});
  ImageSpec fixed = kFabric;
  fixed.stream_rows = 64;
  fixed.stream_scratch_bytes = 64ull * 18960 * 3;
  const ImageSpec moving = Rgb(4000, 3000);
  auto plan = MakePlan(fixed, moving, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const uint64_t fixed_gray =
      4ull * plan->registration_fixed_width * plan->registration_fixed_height;
  const uint64_t moving_gray =
      4ull * plan->registration_moving_width * plan->registration_moving_height;
  const uint64_t streamed =
      StreamedGrayscaleWorkBytes(fixed, plan->registration_fixed_width,
                                 b.cpu_threads) +
      fixed_gray;
  const uint64_t moving_step = 2 * moving.bytes() + fixed_gray + moving_gray;
  EXPECT_EQ(plan->decode.ram_bytes, std::max(streamed, moving_step));
  EXPECT_LT(plan->decode.ram_bytes, kFabric.bytes() / 4);
  // Three chunks of 64 rows (two and the measured overhead) and 8 MiB,
  // their reduced rows, a luma row per thread.
  EXPECT_EQ(StreamedGrayscaleWorkBytes(fixed, 1000, 8),
            (8ull << 20) + 3 * 64ull * 18960 * 3 + 64ull * 1000 * 4 +
                8ull * 18960 * 4 + fixed.stream_scratch_bytes);
  // A spec without the layout (not read from a file) counts the whole image.
  EXPECT_EQ(StreamedGrayscaleWorkBytes(kFabric, 1000, 8), kFabric.bytes());
  // Moving the same fabric: its whole image dominates.
  plan = MakePlan(fixed, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(plan->decode.ram_bytes, kFabric.bytes());
}

TEST(MakePlan, DecodeReadsBothImagesAtOnceWhereTheBudgetHoldsBoth) {
  ImageSpec fixed = kFabric;
  fixed.stream_rows = 64;
  fixed.stream_scratch_bytes = 64ull * 18960 * 3;
  const ImageSpec moving = Rgb(4000, 3000);
  const Budgets one = BudgetsFromHardware(OneCore(32 * kGiB), {});
  auto seq = MakePlan(fixed, moving, JobOptions{}, one);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_FALSE(seq->decode_concurrent);
  // Eight cores: the fixed stream (on half of them) beside the moving step.
  const Budgets b = BudgetsFromHardware(Machine(32 * kGiB, 0), {});
  auto plan = MakePlan(fixed, moving, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->decode_concurrent);
  const uint64_t gray =
      4ull *
      (plan->registration_fixed_width * plan->registration_fixed_height +
       plan->registration_moving_width * plan->registration_moving_height);
  EXPECT_EQ(plan->decode.ram_bytes,
            StreamedGrayscaleWorkBytes(fixed, plan->registration_fixed_width,
                                       b.cpu_threads / 2) +
                2 * moving.bytes() + gray);
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("(both images at once)"));
  // A moving image read by region streams too: one at a time.
  Budgets tight = b;
  tight.ram_bytes = 1024ull << 20;
  auto streamed = MakePlan(kFabric, kFabric, JobOptions{}, tight);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  EXPECT_TRUE(streamed->moving_streamed);
  EXPECT_FALSE(streamed->decode_concurrent);
}

TEST(TiffWriterPartialBytes, OnlyWhenWarpTilesCutStreamTiles) {
  EXPECT_EQ(TiffWriterPartialBytes(0, 18960, 512, kFabric), 0u);     // one pass
  EXPECT_EQ(TiffWriterPartialBytes(4096, 18960, 512, kFabric), 0u);  // lined up
  EXPECT_EQ(TiffWriterPartialBytes(1536, 18960, 512, kFabric), 0u);
  // 768 px warp tiles cut 512 px stream tiles: two rows of 38 tiles,
  // 512 x 512 px of 3 bytes plus a coverage byte each.
  EXPECT_EQ(TiffWriterPartialBytes(768, 18960, 512, kFabric),
            2ull * 38 * 512 * 512 * 4);
  EXPECT_EQ(TiffWriterPartialBytes(4096, 100, 48, Rgb(100, 100)),
            2ull * 3 * 48 * 48 * 4);
}

TEST(ResultWriterRamBytes, TilesPerThreadAndPyramidRows) {
  // One pass, 512 px RGB tiles (786 KB): 4 tiles and 4 MiB per thread,
  // and two rows of tiles per reduced level: 19+10+5+3+2+1 tiles across.
  const uint64_t tile = 512ull * 512 * 3;
  const uint64_t levels = 2 * (19 + 10 + 5 + 3 + 2 + 1) * tile;
  EXPECT_EQ(ResultWriterRamBytes(0, 18960, 14960, 512, kFabric, 1, false),
            4 * tile + (4ull << 20));
  EXPECT_EQ(ResultWriterRamBytes(0, 18960, 14960, 512, kFabric, 16, true),
            16 * (4 * tile + (4ull << 20)) + levels);
  // Warp tiles that cut stream tiles add the partly covered ones.
  EXPECT_EQ(ResultWriterRamBytes(768, 18960, 14960, 512, kFabric, 2, true) -
                ResultWriterRamBytes(0, 18960, 14960, 512, kFabric, 2, true),
            TiffWriterPartialBytes(768, 18960, 512, kFabric));
}

TEST(MakePlan, ResultWriterSizedForTheCoresAndJpegNeedsEightBitGreyOrRgb) {
  Budgets b;
  b.ram_bytes = 64 * kGiB;
  b.cpu_threads = 8;
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->result_writer_threads, 8);
  EXPECT_EQ(plan->result_writer_ram_bytes,
            ResultWriterRamBytes(plan->tile_size, 18960, 14960,
                                 plan->stream_tile_size, kFabric, 8, true));
  JobOptions jpeg;
  jpeg.compression = Compression::kJpeg;
  EXPECT_TRUE(MakePlan(kFabric, kFabric, jpeg, b).ok());
  ImageSpec rgba = kFabric;
  rgba.channels = 4;
  auto refused = MakePlan(kFabric, rgba, jpeg, b);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("spec.compression=jpeg"),
            std::string::npos)
      << refused.status();
}

TEST(MakePlan, TinyRamBudgetShrinksRegistrationCopy) {
  // 1.5 GiB: the moving image (851 MB) plus elastix must fit, so the copy
  // is limited by RAM rather than by the 20 MP cap, and the CPU warp tiles.
  Budgets b;
  b.ram_bytes = 3 * kGiB / 2;
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("capped by the RAM budget"));
  EXPECT_LE(plan->registration.ram_bytes, b.ram_bytes);
  EXPECT_LE(plan->warp.ram_bytes, b.ram_bytes);
  EXPECT_LE(plan->decode.ram_bytes, b.ram_bytes);
  const double reg_px = static_cast<double>(plan->registration_fixed_width) *
                        plan->registration_fixed_height;
  EXPECT_LT(reg_px, 20e6);
  EXPECT_GT(reg_px, 1e6);
}

TEST(MakePlan, ImpossibleBudgetIsRefusedWithNumbers) {
  Budgets b;
  b.ram_bytes = 256ull << 20;  // less than the moving image
  auto plan = MakePlan(kFabric, kFabric, JobOptions{}, b);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(plan.status().message()),
              testing::HasSubstr("268 MB"));
}

TEST(MakePlan, SmallImagesRegisterAtFullResolution) {
  Budgets b = BudgetsFromHardware(Machine(8 * kGiB, 0), {});
  auto plan = MakePlan(Rgb(640, 480), Rgb(600, 500), JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->registration_fixed_width, 640);
  EXPECT_EQ(plan->registration_fixed_height, 480);
  EXPECT_EQ(plan->registration_moving_width, 600);
  EXPECT_EQ(plan->registration_moving_height, 500);
  EXPECT_DOUBLE_EQ(plan->registration_factor, 1.0);
  EXPECT_THAT(Reasons(*plan), testing::HasSubstr("full resolution fits"));
  EXPECT_EQ(plan->tile_size, 0);
}

TEST(MakePlan, MaxMegapixelsOptionAndRegistrationOutput) {
  Budgets b = BudgetsFromHardware(Machine(32 * kGiB, 0), {});
  JobOptions o;
  o.max_registration_megapixels = 1;
  o.output_full_resolution = false;
  auto plan = MakePlan(Rgb(4000, 3000), Rgb(4000, 3000), o, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_LE(plan->registration_fixed_width * plan->registration_fixed_height,
            1000000);
  EXPECT_GT(plan->registration_fixed_width * plan->registration_fixed_height,
            990000);
  EXPECT_EQ(plan->output_width, plan->registration_fixed_width);
  EXPECT_EQ(plan->output_height, plan->registration_fixed_height);
}

TEST(MakePlan, ElongatedImageNamesTheMegapixelsItNeeds) {
  // A 20000x100 strip against a 20000x20000 reference: at the default
  // 20 MP the strip's copy would be 22 px high. RAM is plentiful, so the
  // answer is InvalidArgument with the megapixels that work, not a RAM error.
  Budgets b = BudgetsFromHardware(Machine(512 * kGiB, 0), {});
  JobOptions o;
  auto plan = MakePlan(Rgb(20000, 20000), Rgb(20000, 100), o, b);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument)
      << plan.status();
  const std::string message(plan.status().message());
  EXPECT_THAT(message, testing::HasSubstr("at least 32 px"));
  EXPECT_THAT(message,
              testing::HasSubstr("max_registration_megapixels to at least 41"));
  // And the suggestion works.
  o.max_registration_megapixels = 41;
  plan = MakePlan(Rgb(20000, 20000), Rgb(20000, 100), o, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GE(plan->registration_moving_height, 32);
}

TEST(MakePlan, RejectsBadInput) {
  Budgets b = BudgetsFromHardware(Machine(8 * kGiB, 0), {});
  EXPECT_EQ(MakePlan(Rgb(0, 10), Rgb(10, 10), JobOptions{}, b).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakePlan(Rgb(8, 8), Rgb(100, 100), JobOptions{}, b).status().code(),
            absl::StatusCode::kInvalidArgument);
  JobOptions o;
  o.max_registration_megapixels = 0;
  EXPECT_EQ(MakePlan(Rgb(100, 100), Rgb(100, 100), o, b).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MakePlan, FiveHundredMegapixelsUnderSmallBudgetsStillPlans) {
  const ImageSpec big = Rgb(25000, 20000);  // 500 MP, 1.5 GB
  Budgets b;
  b.ram_bytes = 6 * kGiB;
  b.has_gpu = true;
  b.vram_bytes = 1 * kGiB;
  auto plan = MakePlan(big, big, JobOptions{}, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->warp_device, WarpDevice::kCuda);
  EXPECT_GT(plan->tile_size, 0);
  EXPECT_LE(plan->warp.vram_bytes, b.vram_bytes);
  EXPECT_LE(plan->warp.ram_bytes, b.ram_bytes);
}

TEST(MakePlan, InitialAlignmentReservesSiftAndThePreWarpedCopy) {
  // The Kleiber photo's size with 4 MP registration copies.
  const ImageSpec photo = Rgb(6028, 3391);
  JobOptions o;
  o.max_registration_megapixels = 4;
  const Budgets b = BudgetsFromHardware(Machine(32 * kGiB, 0), {});
  auto plan = MakePlan(photo, photo, o, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int64_t fpx =
      plan->registration_fixed_width * plan->registration_fixed_height;
  const int64_t mpx =
      plan->registration_moving_width * plan->registration_moving_height;
  const uint64_t own = InitialAlignmentRamBytes(fpx, mpx);
  // Measured on these copies: +363 MB for SIFT at 1.5 MP, plus the 4 MP
  // pre-warped copy and its mask (docs/benchmarks.md, "Robust start").
  EXPECT_GE(own, 363'000'000u + 5 * static_cast<uint64_t>(fpx));
  EXPECT_LE(own, 450'000'000u);
  // The stage holds the copies and the moving image besides.
  EXPECT_EQ(plan->initial_alignment.ram_bytes,
            own + 4 * static_cast<uint64_t>(fpx + mpx) + photo.bytes());
  // Detection is capped at 1.5 MP: larger copies add only the pre-warp.
  EXPECT_EQ(InitialAlignmentRamBytes(16'000'000, 16'000'000) -
                InitialAlignmentRamBytes(4'000'000, 4'000'000),
            5u * 12'000'000u);
  // Registration holds the pre-warped copy beside both copies.
  EXPECT_GE(plan->registration.ram_bytes,
            RegistrationRamBytes(std::max(fpx, mpx)) +
                4 * static_cast<uint64_t>(2 * fpx + mpx) + photo.bytes());
  EXPECT_THAT(Reasons(*plan),
              testing::HasSubstr("initial alignment: SIFT features"));
}

}  // namespace
}  // namespace regserve

namespace regserve {
namespace {

ImageSpec Striped(int64_t w, int64_t h) {
  ImageSpec s = Rgb(w, h);
  s.stream_rows = 256;
  s.region_chunk_width = w;
  s.region_chunk_height = 32;
  return s;
}

// Issue 13: the 283.6 MP pair under a 1 GB budget reads the moving image by
// region instead of being refused; every stage fits, none holds the image.
TEST(MakePlanStreamed, TheMovingImageIsReadByRegionWhenItDoesNotFit) {
  const ImageSpec fixed = Striped(18960, 14960);
  const ImageSpec moving = Striped(18960, 14960);
  const Budgets b =
      BudgetsFromHardware(Machine(32 * kGiB, 0), {1000ull << 20, 0});
  absl::StatusOr<Plan> p = MakePlan(fixed, moving, {}, b);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->moving_streamed);
  EXPECT_EQ(p->warp_device, WarpDevice::kCpu);
  EXPECT_GT(p->tile_size, 0);
  EXPECT_LE(p->tile_size, 4096);
  EXPECT_EQ(p->spill_bytes, 0u);  // striped: read from the file
  EXPECT_GT(p->moving_cache_bytes, 0u);
  for (const StageMemory& m : {p->decode, p->registration, p->warp, p->quality,
                               p->initial_alignment}) {
    EXPECT_LE(m.ram_bytes, b.ram_bytes);
  }
  EXPECT_NE(Reasons(*p).find("streaming the moving image from disk in"),
            std::string::npos)
      << Reasons(*p);
  // The same pair with room for it stays in RAM.
  const Budgets big = BudgetsFromHardware(Machine(32 * kGiB, 0), {});
  absl::StatusOr<Plan> in_ram = MakePlan(fixed, moving, {}, big);
  ASSERT_TRUE(in_ram.ok());
  EXPECT_FALSE(in_ram->moving_streamed);
}

// A 500 MP pair under 512 MiB: at the 20 MP registration copy the warp's
// field and writer do not fit beside its tiles, so the copy shrinks until
// every stage does (it was refused: "warp needs 595 MB").
// The affine 500 MP pair of striped TIFFs that docs/benchmarks.md runs.
absl::StatusOr<Plan> Plan500Mp(const Budgets& b) {
  JobOptions o;
  o.transform = TransformKind::kAffine;
  return MakePlan(Striped(25824, 19360), Striped(25824, 19360), o, b);
}

TEST(MakePlanStreamed, TheRegistrationCopyShrinksSoThatTheWarpFits) {
  // Two cores, as where it ran (docs/benchmarks.md): the writer's buffers
  // grow with its threads, one per core (see ManyCores... below).
  HardwareSnapshot two = Machine(32 * kGiB, 0);
  two.cpu_cores = 2;
  const Budgets b = BudgetsFromHardware(two, {512ull << 20, 0});
  absl::StatusOr<Plan> p = Plan500Mp(b);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->moving_streamed);
  for (const StageMemory& m : {p->decode, p->registration, p->warp, p->quality,
                               p->initial_alignment}) {
    EXPECT_LE(m.ram_bytes, b.ram_bytes);
  }
  const double mp = static_cast<double>(p->registration_fixed_width) *
                    p->registration_fixed_height / 1e6;
  EXPECT_LT(mp, 20.0);
  EXPECT_GE(mp, 0.4);
  EXPECT_NE(Reasons(*p).find("the registration copy is limited to"),
            std::string::npos)
      << Reasons(*p);
  // With room for the copy it asks for, nothing is limited.
  absl::StatusOr<Plan> roomy =
      Plan500Mp(BudgetsFromHardware(Machine(32 * kGiB, 0), {2 * kGiB, 0}));
  ASSERT_TRUE(roomy.ok()) << roomy.status();
  EXPECT_EQ(Reasons(*roomy).find("the registration copy is limited to"),
            std::string::npos);
}

// The same pair on a 16-core GPU host under 512 MiB of RAM and of VRAM:
// the writer's threads shrink until the warp fits (it was refused, "warp
// needs 624 MB"), and the GPU warps the regions.
TEST(MakePlanStreamed, ManyCoresCompressOnFewerThreadsToFit) {
  HardwareSnapshot host = Machine(128 * kGiB, 140 * kGiB);
  host.cpu_cores = 16;
  const Budgets b = BudgetsFromHardware(host, {512ull << 20, 512ull << 20});
  absl::StatusOr<Plan> p = Plan500Mp(b);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->moving_streamed);
  for (const StageMemory& m : {p->decode, p->registration, p->warp, p->quality,
                               p->initial_alignment, p->warp_cpu_fallback}) {
    EXPECT_LE(m.ram_bytes, b.ram_bytes) << Reasons(*p);
  }
  EXPECT_LE(p->warp.vram_bytes, b.vram_bytes);
  EXPECT_EQ(p->warp_device, WarpDevice::kCuda) << Reasons(*p);
  EXPECT_LT(p->result_writer_threads, 16);
  EXPECT_GE(p->result_writer_threads, 1);
  EXPECT_NE(Reasons(*p).find("the result is compressed on"), std::string::npos)
      << Reasons(*p);
}

TEST(MakePlanStreamed, SequentialFilesSpillAndTheGpuWarpsByRegion) {
  ImageSpec moving = Rgb(18960, 14960);
  moving.stream_rows = 256;  // a JPEG: no region chunk
  const Budgets b =
      BudgetsFromHardware(Machine(32 * kGiB, 80 * kGiB), {1000ull << 20, 0});
  absl::StatusOr<Plan> p = MakePlan(Striped(18960, 14960), moving, {}, b);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->moving_streamed);
  EXPECT_EQ(p->spill_bytes, SpillFileBytes(moving));
  // The GPU warps the regions: VRAM for the tiled warp, RAM for its pinned
  // region slots, within both budgets; a CPU fallback that fits too.
  EXPECT_EQ(p->warp_device, WarpDevice::kCuda);
  EXPECT_GT(p->tile_size, 0);
  EXPECT_GT(p->warp.vram_bytes, 0u);
  EXPECT_LE(p->warp.vram_bytes, b.vram_bytes);
  EXPECT_LE(p->warp.ram_bytes, b.ram_bytes);
  EXPECT_GT(p->warp_cpu_fallback.ram_bytes, 0u);
  EXPECT_LE(p->warp_cpu_fallback.ram_bytes, b.ram_bytes);
  EXPECT_NE(Reasons(*p).find("on the GPU (" + b.gpu_name + ") in"),
            std::string::npos)
      << Reasons(*p);

  // A VRAM budget too small for any tile: the CPU, and the plan says why.
  const Budgets tiny = BudgetsFromHardware(Machine(32 * kGiB, 80 * kGiB),
                                           {1000ull << 20, 4ull << 20});
  absl::StatusOr<Plan> q = MakePlan(Striped(18960, 14960), moving, {}, tiny);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->warp_device, WarpDevice::kCpu);
  EXPECT_NE(Reasons(*q).find("cannot hold even the smallest warp tile of the "
                             "moving image read by region"),
            std::string::npos)
      << Reasons(*q);
  // device=cuda asked for: refused with the numbers instead.
  JobOptions cuda;
  cuda.device = DevicePreference::kCuda;
  const absl::Status refused =
      MakePlan(Striped(18960, 14960), moving, cuda, tiny).status();
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
  // device=cpu: the CPU, without a GPU reason.
  JobOptions cpu;
  cpu.device = DevicePreference::kCpu;
  absl::StatusOr<Plan> c = MakePlan(Striped(18960, 14960), moving, cpu, b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->warp_device, WarpDevice::kCpu);
}

}  // namespace
}  // namespace regserve
