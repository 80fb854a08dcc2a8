// Copyright regserve authors.
#include "core/plan/plan.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"
#include "core/image/region_source.h"
#include "core/plan/plan_internal.h"
#include "core/warp/warp.h"

namespace regserve {

using plan_internal::GrayBytes;
using plan_internal::kFieldBytesPerPixel;
using plan_internal::kGrayBytesPerPixel;
using plan_internal::kMinRegistrationEdge;
using plan_internal::Mb;
using plan_internal::Mp;
using plan_internal::PlanRefine;
using plan_internal::RegSize;

namespace {

// elastix 5.0.1 with the recursive pyramid: ~75 MB + 29 bytes per
// registration pixel (measured from 0.25 to 30 MP, shared/notes/stack.md).
constexpr uint64_t kElastixBaseBytes = 75ull << 20;
constexpr double kElastixBytesPerPixel = 29.0;
// transformix -def all: ~7.6 bytes per pixel; it runs after elastix exits.
constexpr double kTransformixBytesPerPixel = 7.6;
// OpenImageIO decodes through a scratch buffer: as large as the image below
// 64 MiB, 64 MiB of scanlines rounded up to whole strips above it, so a TIFF
// stored as one strip needs a second copy. The readers derive it from the
// header (ImageSpec::decode_scratch_bytes); this is the fallback for a spec
// without it. Measured: docs/benchmarks.md, "Decode memory".
constexpr uint64_t kDecodeScratchBytes = 72ull << 20;

uint64_t DecodeRam(const ImageSpec& spec) {
  const uint64_t scratch =
      spec.decode_scratch_bytes > 0
          ? spec.decode_scratch_bytes
          : std::min<uint64_t>(spec.bytes(), kDecodeScratchBytes);
  return spec.bytes() + scratch;
}
// The quality map (core/quality): the moving copy warped onto the fixed
// grid (4 B/px), plus the thumbnail, the patch grid and OpenCV's buffers.
// Measured: docs/benchmarks.md, "Quality map".
constexpr double kQualityBytesPerPixel = 4.0;
constexpr uint64_t kQualityBaseBytes = 16ull << 20;
// Tile edges the planner tries, largest first.
constexpr int64_t kTileCandidates[] = {16384, 12288, 8192, 6144, 4096, 3072,
                                       2048,  1536,  1024, 768,  512,  256};

// Registration copy sizes for a common downsampling factor such that the
// fixed copy has at most `max_pixels` pixels.
RegSize SizeFor(const ImageSpec& fixed, const ImageSpec& moving,
                double max_pixels) {
  double f = std::sqrt(static_cast<double>(fixed.pixels()) / max_pixels);
  f = std::max(1.0, f);
  RegSize r;
  for (;;) {
    r.fw =
        std::max<int64_t>(1, static_cast<int64_t>(std::floor(fixed.width / f)));
    r.fh = std::max<int64_t>(
        1, static_cast<int64_t>(std::floor(fixed.height / f)));
    if (static_cast<double>(r.fw) * r.fh <= max_pixels || f > 1e6) break;
    f *= 1.0001;
  }
  r.mw =
      std::max<int64_t>(1, static_cast<int64_t>(std::floor(moving.width / f)));
  r.mh =
      std::max<int64_t>(1, static_cast<int64_t>(std::floor(moving.height / f)));
  r.factor = f;
  return r;
}

// RAM of the decode stage, the larger of its two steps. First the fixed
// image is streamed into its copy (core/image/streamed_gray.h): a few
// strips, never the whole image (the stage's threads at most the machine's
// cores). Then the moving image is read whole, with OpenImageIO's scratch,
// beside the fixed copy, and its own copy made (measured:
// docs/benchmarks.md, "Decode memory").
uint64_t DecodeStageRam(const ImageSpec& fixed, const ImageSpec& moving,
                        const RegSize& r, const Budgets& budgets,
                        bool moving_streamed) {
  const uint64_t fixed_gray = static_cast<uint64_t>(
      kGrayBytesPerPixel * static_cast<double>(r.fw * r.fh));
  const uint64_t streamed =
      StreamedGrayscaleWorkBytes(fixed, r.fw, budgets.cpu_threads) + fixed_gray;
  if (moving_streamed) {
    // The moving image streamed into its copy as well, and into its spill
    // in the same pass when it cannot be read by region.
    const uint64_t spill =
        moving.region_chunk_width > 0 ? 0 : SpillWriterRamBytes(moving);
    return std::max(streamed, StreamedGrayscaleWorkBytes(moving, r.mw,
                                                         budgets.cpu_threads) +
                                  GrayBytes(r) + spill);
  }
  return std::max(streamed, DecodeRam(moving) + GrayBytes(r));
}

// Both images decoded at once, each on half the stage's threads, when
// there are two cores and the RAM budget holds both steps together: a
// strip-by-strip decoder (zlib, libjpeg) keeps one core busy, so this
// nearly halves the stage (docs/benchmarks.md, "The CPU job's time").
void PlanConcurrentDecode(const ImageSpec& fixed, const ImageSpec& moving,
                          const RegSize& r, const Budgets& budgets,
                          bool moving_streamed, Plan* plan) {
  if (moving_streamed || budgets.cpu_threads < 2) return;
  const uint64_t both =
      StreamedGrayscaleWorkBytes(fixed, r.fw, budgets.cpu_threads / 2) +
      DecodeRam(moving) + GrayBytes(r);
  if (both > budgets.ram_bytes) return;
  plan->decode_concurrent = true;
  plan->decode.ram_bytes = std::max(plan->decode.ram_bytes, both);
}

// RAM of the quality stage: its own buffers, the copies and the field it
// reads, and the full moving image held for the warp.
uint64_t QualityStageRam(const RegSize& r, uint64_t held) {
  return QualityRamBytes(r.fw * r.fh) + GrayBytes(r) + held +
         static_cast<uint64_t>(kFieldBytesPerPixel * r.fw * r.fh);
}

// RAM of the registration stage: elastix/transformix (children), our gray
// copies (kept for the later stages) and the moving copy pre-warped by the
// initial alignment (on the fixed grid), and the full moving image held for
// the warp.
uint64_t RegistrationStageRam(const RegSize& r, uint64_t held) {
  const int64_t px = std::max(r.fw * r.fh, r.mw * r.mh);
  return RegistrationRamBytes(px) + GrayBytes(r) +
         static_cast<uint64_t>(kGrayBytesPerPixel * r.fw * r.fh) + held +
         static_cast<uint64_t>(kFieldBytesPerPixel * r.fw * r.fh);
}

// The initial alignment (core/registration/robust_start): OpenCV's SIFT
// builds its scale space (first octave doubled) on one copy at a time,
// downsampled to at most RobustStartOptions::detection_megapixels (1.5 MP):
// about 237 B per detection pixel, measured from 0.5 to 2 MP
// (docs/benchmarks.md, "Robust start"); the matcher's and the fits' buffers
// are a few MB. The stage then writes the pre-warped copy and its validity
// mask (5 B per fixed copy pixel). The base covers what the stage measured
// beyond that in a daemon (the 283.6 MP pair streamed under 1 GB: 428 MB
// against 417 MB planned with a 16 MiB base; docs/benchmarks.md, "The
// memory plan against malloc's caching").
constexpr double kDetectionPixels = 1.5e6;
constexpr double kSiftBytesPerDetectionPixel = 240.0;
constexpr uint64_t kSiftBaseBytes = 48ull << 20;

// RAM of the initial alignment stage: its own, plus the copies and the full
// moving image it holds.
uint64_t InitialAlignmentStageRam(const RegSize& r, uint64_t held) {
  return InitialAlignmentRamBytes(r.fw * r.fh, r.mw * r.mh) + GrayBytes(r) +
         held;
}

}  // namespace

uint64_t TiffWriterPartialBytes(int64_t warp_tile, int64_t out_width,
                                int64_t stream_tile, const ImageSpec& pixel) {
  if (warp_tile <= 0 || stream_tile <= 0 || warp_tile % stream_tile == 0) {
    return 0;
  }
  const uint64_t tiles_across =
      static_cast<uint64_t>((out_width + stream_tile - 1) / stream_tile);
  const uint64_t tile_pixels =
      static_cast<uint64_t>(stream_tile) * static_cast<uint64_t>(stream_tile);
  return 2 * tiles_across * tile_pixels * (pixel.bytes_per_pixel() + 1);
}

// Per compression thread, beside its tiles: the codec's state (zstd's
// context at level 3 is the largest, about 1.3 MB), its stack and what its
// malloc arena keeps. Measured on 283.6 MP RGB, 1 to 16 threads: about
// 6 MB of RSS per thread with 512 px tiles (docs/benchmarks.md, "Result
// writer").
constexpr uint64_t kWriterThreadBytes = 4ull << 20;

uint64_t ResultWriterRamBytes(int64_t warp_tile, int64_t out_width,
                              int64_t out_height, int64_t stream_tile,
                              const ImageSpec& pixel, int threads,
                              bool pyramid) {
  if (stream_tile <= 0) return 0;
  const uint64_t n = static_cast<uint64_t>(std::max(1, threads));
  const uint64_t tile = static_cast<uint64_t>(stream_tile) *
                        static_cast<uint64_t>(stream_tile) *
                        pixel.bytes_per_pixel();
  uint64_t bytes =
      TiffWriterPartialBytes(warp_tile, out_width, stream_tile, pixel) +
      n * (4 * tile + kWriterThreadBytes);
  // Reduced levels: parents wait for their children, about a row of tiles
  // per level when tiles arrive in rows; two rows for warp tiles that do
  // not line up with them.
  int64_t w = out_width, h = out_height;
  while (pyramid && std::max(w, h) > stream_tile) {
    w = (w + 1) / 2;
    h = (h + 1) / 2;
    bytes +=
        2 * static_cast<uint64_t>((w + stream_tile - 1) / stream_tile) * tile;
  }
  return bytes;
}

uint64_t InitialAlignmentRamBytes(int64_t fixed_pixels, int64_t moving_pixels) {
  const double detection =
      std::min(static_cast<double>(std::max(fixed_pixels, moving_pixels)),
               kDetectionPixels);
  return kSiftBaseBytes +
         static_cast<uint64_t>(kSiftBytesPerDetectionPixel * detection +
                               (kGrayBytesPerPixel + 1) *
                                   static_cast<double>(fixed_pixels));
}

uint64_t RegistrationRamBytes(int64_t pixels) {
  const double elastix = kElastixBaseBytes + kElastixBytesPerPixel * pixels;
  const double transformix =
      kElastixBaseBytes + kTransformixBytesPerPixel * pixels;
  return static_cast<uint64_t>(std::max(elastix, transformix));
}

uint64_t QualityRamBytes(int64_t pixels) {
  return kQualityBaseBytes + static_cast<uint64_t>(kQualityBytesPerPixel *
                                                   static_cast<double>(pixels));
}

Budgets BudgetsFromHardware(const HardwareSnapshot& hw,
                            const BudgetOverrides& overrides) {
  Budgets b;
  b.ram_bytes = overrides.ram_bytes != 0
                    ? overrides.ram_bytes
                    : static_cast<uint64_t>(0.8 * hw.ram_available_bytes);
  b.cpu_threads = std::max(1, hw.cpu_cores);
  if (!hw.gpus.empty()) {
    const GpuInfo* best = &hw.gpus[0];
    for (const GpuInfo& g : hw.gpus) {
      if (g.vram_free_bytes > best->vram_free_bytes) best = &g;
    }
    b.has_gpu = true;
    b.gpu_name = best->name;
    b.vram_bytes = overrides.vram_bytes != 0
                       ? overrides.vram_bytes
                       : static_cast<uint64_t>(0.9 * best->vram_free_bytes);
  }
  return b;
}

namespace {

absl::Status ValidatePlanInputs(const ImageSpec& fixed, const ImageSpec& moving,
                                const JobOptions& options) {
  absl::Status s = ValidateSpec(fixed);
  if (!s.ok())
    return absl::InvalidArgumentError(
        absl::StrCat("fixed image: ", s.message()));
  s = ValidateSpec(moving);
  if (!s.ok())
    return absl::InvalidArgumentError(
        absl::StrCat("moving image: ", s.message()));
  if (!(options.max_registration_megapixels > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_registration_megapixels must be > 0, got ",
                     options.max_registration_megapixels));
  }
  if (fixed.width < kMinRegistrationEdge ||
      fixed.height < kMinRegistrationEdge ||
      moving.width < kMinRegistrationEdge ||
      moving.height < kMinRegistrationEdge) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images must be at least ", kMinRegistrationEdge, "x",
        kMinRegistrationEdge, " pixels to register; got fixed ", fixed.width,
        "x", fixed.height, " and moving ", moving.width, "x", moving.height));
  }
  // The result has the moving image's channels and sample type.
  return CheckCompression(options.compression, options.jpeg_quality, moving,
                          "spec.compression");
}

// The largest registration copy within the full size, the RAM budget and
// max_registration_megapixels; fills the plan's registration fields.
absl::StatusOr<RegSize> PlanRegistration(const ImageSpec& fixed,
                                         const ImageSpec& moving,
                                         const JobOptions& options,
                                         const Budgets& budgets, bool streamed,
                                         Plan* plan_out) {
  Plan& plan = *plan_out;
  // The moving image held from decode to warp: none when read by region.
  const uint64_t held = streamed ? 0 : moving.bytes();
  const double full_px = static_cast<double>(fixed.pixels());
  const double cap_px = options.max_registration_megapixels * 1e6;
  // RAM allows: solve RegistrationStageRam(P) <= budget for P by bisection
  // over the fixed copy's pixel count (monotone in P).
  auto fits_ram = [&](double px) {
    return RegistrationStageRam(SizeFor(fixed, moving, px), held) <=
           budgets.ram_bytes;
  };
  double ram_px = 0;
  if (fits_ram(full_px)) {
    // Report how far RAM would stretch beyond the full size.
    const double per_px =
        kElastixBytesPerPixel + 3 * kGrayBytesPerPixel + kFieldBytesPerPixel;
    const double fixed_cost = kElastixBaseBytes + held;
    ram_px = budgets.ram_bytes > fixed_cost
                 ? (budgets.ram_bytes - fixed_cost) / per_px
                 : full_px;
    ram_px = std::max(ram_px, full_px);
  } else {
    double lo = 0, hi = full_px;
    for (int i = 0; i < 60; ++i) {
      const double mid = 0.5 * (lo + hi);
      (fits_ram(mid) ? lo : hi) = mid;
    }
    ram_px = lo;
  }
  const double target_px = std::min({full_px, ram_px, cap_px});
  const RegSize reg = SizeFor(fixed, moving, std::max(target_px, 1.0));
  const bool too_thin =
      reg.fw < kMinRegistrationEdge || reg.fh < kMinRegistrationEdge ||
      reg.mw < kMinRegistrationEdge || reg.mh < kMinRegistrationEdge;
  if (too_thin) {
    // The copy needs at least kMinRegistrationEdge px on every edge of both
    // images: with the shortest edge E, the factor may be at most E / 32,
    // which takes this many pixels of the fixed copy.
    const double shortest = static_cast<double>(
        std::min({fixed.width, fixed.height, moving.width, moving.height}));
    const double max_factor = shortest / kMinRegistrationEdge;
    const double needed_px = std::ceil(full_px / (max_factor * max_factor));
    if (cap_px < needed_px && needed_px <= ram_px) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "max_registration_megapixels=%g makes the registration copies "
          "%dx%d (fixed) and %dx%d (moving), but every edge needs at least "
          "%d px (the images are very elongated); set "
          "max_registration_megapixels to at least %.3g",
          options.max_registration_megapixels, reg.fw, reg.fh, reg.mw, reg.mh,
          kMinRegistrationEdge, std::ceil(needed_px / 1e3) / 1e3));
    }
  }
  if (too_thin || !fits_ram(static_cast<double>(reg.fw * reg.fh))) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the RAM budget of ", Mb(budgets.ram_bytes),
        " cannot hold the registration stage even at the smallest copy (",
        kMinRegistrationEdge, " px): it needs the moving image (", Mb(held),
        ") plus elastix (", Mb(kElastixBaseBytes),
        " + 29 B/px); raise --ram_budget or send smaller images"));
  }
  plan.registration_fixed_width = reg.fw;
  plan.registration_fixed_height = reg.fh;
  plan.registration_moving_width = reg.mw;
  plan.registration_moving_height = reg.mh;
  plan.registration_factor = static_cast<double>(fixed.width) / reg.fw;
  {
    std::string why;
    if (target_px == full_px) {
      why = "full resolution fits";
    } else if (target_px == cap_px) {
      why = absl::StrCat(
          "capped by max_registration_megapixels=",
          absl::StrFormat("%g", options.max_registration_megapixels));
    } else {
      why = absl::StrCat("capped by the RAM budget of ", Mb(budgets.ram_bytes));
    }
    plan.reasons.push_back(absl::StrFormat(
        "registering at %dx%d (%s, 1/%.2f of full size): %s; RAM allows %s",
        reg.fw, reg.fh, Mp(static_cast<double>(reg.fw) * reg.fh),
        plan.registration_factor, why, Mp(ram_px)));
  }
  plan.decode.ram_bytes = DecodeStageRam(fixed, moving, reg, budgets, streamed);
  PlanConcurrentDecode(fixed, moving, reg, budgets, streamed, &plan);
  plan.registration.ram_bytes = RegistrationStageRam(reg, held);
  plan.initial_alignment.ram_bytes = InitialAlignmentStageRam(reg, held);
  plan.quality.ram_bytes = QualityStageRam(reg, held);

  return reg;
}

void PlanOutput(const ImageSpec& fixed, const JobOptions& options,
                const RegSize& reg, Plan* plan_out) {
  Plan& plan = *plan_out;
  if (options.output_full_resolution) {
    plan.output_width = fixed.width;
    plan.output_height = fixed.height;
  } else {
    plan.output_width = reg.fw;
    plan.output_height = reg.fh;
    plan.reasons.push_back(
        absl::StrFormat("output at the registration size %dx%d "
                        "(output_resolution=registration)",
                        reg.fw, reg.fh));
  }
}

// A streamed warp reads regions of at most (4096 + 512)^2 px: larger tiles
// would only grow the regions and the cache, the reads are as sequential.
constexpr int64_t kMaxStreamedTile = 4096;

// The region source's cache for warp tiles of `tile`: a band of source rows
// across the image as high as a region plus one chunk, so that the tiles of
// an output row find the chunks their neighbours read.
uint64_t RegionCacheBytes(const ImageSpec& moving, int64_t tile) {
  int64_t cw = 0, ch = 0;
  RegionChunkOf(moving, &cw, &ch);
  const int64_t rows = std::min<int64_t>(moving.height, tile + 512) + ch;
  return static_cast<uint64_t>(rows) * static_cast<uint64_t>(moving.width) *
         moving.bytes_per_pixel();
}

// The warp's memory for a device and tile size, for the plan's output size
// and registration copy.
struct WarpSizer {
  const ImageSpec& moving;
  const Budgets& budgets;
  const RegSize& reg;
  int64_t output_width;
  int64_t output_height;
  bool streamed = false;  // the moving image read by region

  WarpMemoryEstimate Estimate(int64_t tile, WarpDevice device) const {
    if (streamed) {
      WarpMemoryEstimate e = EstimateRegionWarpMemory(
          moving, output_width, output_height, reg.fw, reg.fh, tile, device);
      e.host_bytes +=
          RegionSourceRamBytes(moving, RegionCacheBytes(moving, tile));
      return e;
    }
    return EstimateWarpMemory(moving, output_width, output_height, reg.fw,
                              reg.fh, tile, device);
  }
  // The warp holds the moving image (unless streamed) and the field besides
  // its own buffers.
  uint64_t RamFor(const WarpMemoryEstimate& e) const {
    return (streamed ? 0 : moving.bytes()) + e.host_bytes +
           static_cast<uint64_t>(kFieldBytesPerPixel * reg.fw * reg.fh);
  }
  bool Fits(const WarpMemoryEstimate& e, WarpDevice device) const {
    return RamFor(e) <= budgets.ram_bytes &&
           (device == WarpDevice::kCpu || e.device_bytes <= budgets.vram_bytes);
  }
  // Largest tile (0 = one pass) that fits both budgets on `device`.
  bool ChooseTile(WarpDevice device, int64_t* tile) const {
    if (streamed) {
      for (int64_t t : kTileCandidates) {
        if (t > kMaxStreamedTile) continue;
        if (Fits(Estimate(t, device), device)) {
          *tile = t;
          return true;
        }
      }
      return false;
    }
    if (Fits(Estimate(0, device), device)) {
      *tile = 0;
      return true;
    }
    for (int64_t t : kTileCandidates) {
      if (t >= std::max(output_width, output_height)) continue;
      if (Fits(Estimate(t, device), device)) {
        *tile = t;
        return true;
      }
    }
    return false;
  }
};

// Places the warp on the GPU when the options allow it and it fits there.
// Returns false when the warp goes to the CPU (with the reason in the plan
// unless device=cpu asked for it).
absl::StatusOr<bool> PlaceWarpOnGpu(const WarpSizer& sizer,
                                    const JobOptions& options, int64_t* tile,
                                    Plan* plan_out) {
  Plan& plan = *plan_out;
  const Budgets& budgets = sizer.budgets;
  const bool want_cuda = options.device == DevicePreference::kCuda;
  const bool may_cuda = options.device != DevicePreference::kCpu;
  if (want_cuda && !budgets.has_gpu) {
    return absl::FailedPreconditionError(
        "device=cuda was requested but this server has no usable GPU; use "
        "device=auto or device=cpu");
  }
  if (!may_cuda || !budgets.has_gpu) {
    if (options.device == DevicePreference::kAuto ||
        options.device == DevicePreference::kUnspecified) {
      plan.reasons.push_back("no GPU available: warping on the CPU");
    }
    return false;
  }
  if (sizer.ChooseTile(WarpDevice::kCuda, tile)) {
    plan.warp_device = WarpDevice::kCuda;
    const WarpMemoryEstimate one = sizer.Estimate(0, WarpDevice::kCuda);
    if (*tile == 0) {
      plan.reasons.push_back(absl::StrFormat(
          "warping %dx%d in one pass on the GPU (%s): needs %s of VRAM, "
          "budget %s",
          plan.output_width, plan.output_height, budgets.gpu_name,
          Mb(one.device_bytes), Mb(budgets.vram_bytes)));
    } else {
      plan.reasons.push_back(absl::StrFormat(
          "warping %dx%d on the GPU (%s) in %dx%d tiles: one pass would "
          "need %s of VRAM, budget %s",
          plan.output_width, plan.output_height, budgets.gpu_name, *tile, *tile,
          Mb(one.device_bytes), Mb(budgets.vram_bytes)));
    }
    return true;
  }
  if (want_cuda) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the warp does not fit the VRAM budget of ", Mb(budgets.vram_bytes),
        " even with ", kTileCandidates[std::size(kTileCandidates) - 1],
        " px tiles; raise --vram_budget or use device=cpu"));
  }
  plan.reasons.push_back(absl::StrCat(
      "the GPU's VRAM budget of ", Mb(budgets.vram_bytes),
      " cannot hold even the smallest warp tile; falling back to the CPU"));
  return false;
}

absl::Status PlaceWarpOnCpu(const WarpSizer& sizer, int64_t* tile,
                            Plan* plan_out) {
  Plan& plan = *plan_out;
  if (!sizer.ChooseTile(WarpDevice::kCpu, tile)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the RAM budget of ", Mb(sizer.budgets.ram_bytes),
                     " cannot hold the warp: the moving image alone is ",
                     Mb(sizer.moving.bytes()), "; raise --ram_budget"));
  }
  plan.warp_device = WarpDevice::kCpu;
  plan.reasons.push_back(
      *tile == 0 ? absl::StrFormat("warping %dx%d in one pass on the CPU",
                                   plan.output_width, plan.output_height)
                 : absl::StrFormat(
                       "warping %dx%d on the CPU in %dx%d tiles to fit the "
                       "RAM budget of %s",
                       plan.output_width, plan.output_height, *tile, *tile,
                       Mb(sizer.budgets.ram_bytes)));
  return absl::OkStatus();
}

// The warp's memory on its device and, for a GPU warp, on the CPU it falls
// back to if the GPU warper cannot start.
void RecordWarpMemory(const WarpSizer& sizer, int64_t tile, Plan* plan_out) {
  Plan& plan = *plan_out;
  plan.tile_size = tile;
  const WarpMemoryEstimate w = sizer.Estimate(tile, plan.warp_device);
  plan.warp.ram_bytes = sizer.RamFor(w);
  plan.warp.vram_bytes =
      plan.warp_device == WarpDevice::kCuda ? w.device_bytes : 0;
  if (plan.warp_device == WarpDevice::kCuda) {
    int64_t cpu_tile = 0;
    if (sizer.ChooseTile(WarpDevice::kCpu, &cpu_tile)) {
      plan.warp_cpu_fallback.ram_bytes =
          sizer.RamFor(sizer.Estimate(cpu_tile, WarpDevice::kCpu));
      plan.warp_cpu_tile_size = cpu_tile;
    }
  }
}

// The streamed warp: on the GPU when its tiles, pinned region slots and
// field fit the VRAM and RAM budgets (CudaWarper::WarpRegions), else on the
// CPU; its tiles, the region source's cache and the spill.
absl::Status PlanStreamedWarp(const WarpSizer& sizer, const JobOptions& options,
                              Plan* plan_out) {
  Plan& plan = *plan_out;
  const ImageSpec& moving = sizer.moving;
  const Budgets& budgets = sizer.budgets;
  int64_t tile = 0;
  const bool want_cuda = options.device == DevicePreference::kCuda;
  if (want_cuda && !budgets.has_gpu) {
    return absl::FailedPreconditionError(
        "device=cuda was requested but this server has no usable GPU; use "
        "device=auto or device=cpu");
  }
  const bool may_cuda =
      budgets.has_gpu && options.device != DevicePreference::kCpu;
  if (may_cuda && sizer.ChooseTile(WarpDevice::kCuda, &tile)) {
    plan.warp_device = WarpDevice::kCuda;
  } else if (want_cuda) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the warp of the moving image read by region does not fit the VRAM "
        "budget of ",
        Mb(budgets.vram_bytes), " and the RAM budget of ",
        Mb(budgets.ram_bytes),
        " even with 256 px tiles; raise the budgets "
        "or use device=cpu"));
  } else if (!sizer.ChooseTile(WarpDevice::kCpu, &tile)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the RAM budget of ", Mb(budgets.ram_bytes),
        " cannot hold the warp even reading the moving image by region (",
        Mb(sizer.RamFor(sizer.Estimate(256, WarpDevice::kCpu))),
        " with 256 px tiles); raise --ram_budget"));
  } else {
    plan.warp_device = WarpDevice::kCpu;
    if (may_cuda) {
      plan.reasons.push_back(absl::StrCat(
          "the GPU's VRAM budget of ", Mb(budgets.vram_bytes),
          " (with the RAM for its pinned regions) cannot hold even the "
          "smallest warp tile of the moving image read by region: warping "
          "on the CPU"));
    }
  }
  const bool gpu = plan.warp_device == WarpDevice::kCuda;
  plan.moving_streamed = true;
  plan.moving_cache_bytes = RegionCacheBytes(moving, tile);
  plan.spill_bytes = moving.region_chunk_width > 0 ? 0 : SpillFileBytes(moving);
  plan.reasons.push_back(absl::StrFormat(
      "warping %dx%d on the %s in %dx%d tiles, the moving image read %s "
      "through a %s cache",
      plan.output_width, plan.output_height,
      gpu ? absl::StrCat("GPU (", budgets.gpu_name, ")") : "CPU", tile, tile,
      plan.spill_bytes > 0
          ? absl::StrCat("from a spill file of ", Mb(plan.spill_bytes),
                         " (it can only be decoded in order)")
          : std::string("from its file by tile or strip"),
      Mb(plan.moving_cache_bytes)));
  RecordWarpMemory(sizer, tile, plan_out);
  if (gpu) {
    plan.reasons.back() +=
        absl::StrFormat("; %s of VRAM, budget %s", Mb(plan.warp.vram_bytes),
                        Mb(budgets.vram_bytes));
  }
  return absl::OkStatus();
}

// The warp's device and tile size, and its memory on each.
absl::Status PlanWarp(const ImageSpec& moving, const JobOptions& options,
                      const Budgets& budgets, const RegSize& reg, bool streamed,
                      Plan* plan_out) {
  const WarpSizer sizer{
      moving,  budgets, reg, plan_out->output_width, plan_out->output_height,
      streamed};
  int64_t tile = 0;
  if (streamed) return PlanStreamedWarp(sizer, options, plan_out);
  REGSERVE_ASSIGN_OR_RETURN(const bool on_gpu,
                            PlaceWarpOnGpu(sizer, options, &tile, plan_out));
  if (!on_gpu) REGSERVE_RETURN_IF_ERROR(PlaceWarpOnCpu(sizer, &tile, plan_out));
  RecordWarpMemory(sizer, tile, plan_out);
  return absl::OkStatus();
}

}  // namespace

int64_t StreamTileEdge(int64_t requested, const ImageSpec& pixel) {
  const double bpp = std::max<double>(1.0, pixel.bytes_per_pixel());
  int64_t cap = static_cast<int64_t>(
      std::floor(std::sqrt(static_cast<double>(kMaxTileDataBytes) / bpp)));
  cap -= cap % TileGrid::kEdgeMultiple;
  cap = std::clamp(cap, TileGrid::kMinEdge, TileGrid::kMaxEdge);
  return std::min(requested, cap);
}

void SetStreamTiles(int64_t requested_edge, const ImageSpec& moving,
                    Plan* plan) {
  plan->warp.ram_bytes -= plan->result_writer_ram_bytes;
  plan->warp_cpu_fallback.ram_bytes -= plan->result_writer_cpu_ram_bytes;
  plan->stream_tile_size = StreamTileEdge(requested_edge, moving);
  const int threads = std::max(1, plan->result_writer_threads);
  plan->result_writer_ram_bytes = ResultWriterRamBytes(
      plan->tile_size, plan->output_width, plan->output_height,
      plan->stream_tile_size, moving, threads, /*pyramid=*/true);
  plan->result_writer_cpu_ram_bytes =
      plan->warp_cpu_fallback.ram_bytes == 0
          ? 0
          : ResultWriterRamBytes(plan->warp_cpu_tile_size, plan->output_width,
                                 plan->output_height, plan->stream_tile_size,
                                 moving, threads, /*pyramid=*/true);
  plan->warp.ram_bytes += plan->result_writer_ram_bytes;
  plan->warp_cpu_fallback.ram_bytes += plan->result_writer_cpu_ram_bytes;
}

namespace {

absl::StatusOr<Plan> MakePlanWith(const ImageSpec& fixed,
                                  const ImageSpec& moving,
                                  const JobOptions& options,
                                  const Budgets& budgets,
                                  int64_t stream_tile_size, bool streamed) {
  Plan plan;
  REGSERVE_ASSIGN_OR_RETURN(
      const RegSize reg,
      PlanRegistration(fixed, moving, options, budgets, streamed, &plan));
  PlanOutput(fixed, options, reg, &plan);
  REGSERVE_RETURN_IF_ERROR(
      PlanWarp(moving, options, budgets, reg, streamed, &plan));
  PlanRefine(streamed ? 0 : moving.bytes(), options, budgets, reg, &plan);
  // The writer compresses on up to one thread per core, fewer where each
  // thread's tiles and buffers would not fit the RAM budget beside the warp.
  const int cores = std::max(1, budgets.cpu_threads);
  plan.result_writer_threads = cores;
  SetStreamTiles(stream_tile_size, moving, &plan);
  while (plan.result_writer_threads > 1 &&
         std::max(plan.warp.ram_bytes, plan.warp_cpu_fallback.ram_bytes) >
             budgets.ram_bytes) {
    plan.result_writer_threads /= 2;
    SetStreamTiles(stream_tile_size, moving, &plan);
  }
  if (plan.result_writer_threads < cores) {
    plan.reasons.push_back(absl::StrFormat(
        "the result is compressed on %d threads, not %d: more would not fit "
        "the RAM budget of %s beside the warp",
        plan.result_writer_threads, cores, Mb(budgets.ram_bytes)));
  }
  if (plan.warp_cpu_fallback.ram_bytes > budgets.ram_bytes) {
    // The job fails with that reason if the GPU warper cannot start.
    plan.reasons.push_back(absl::StrFormat(
        "no CPU fallback for the GPU warp: it would need %s of RAM",
        Mb(plan.warp_cpu_fallback.ram_bytes)));
    plan.warp_cpu_fallback.ram_bytes = 0;
    plan.result_writer_cpu_ram_bytes = 0;  // SetStreamTiles keeps it so
  }
  const TileGrid tiles(plan.output_width, plan.output_height,
                       plan.stream_tile_size);
  plan.reasons.push_back(
      absl::StrCat("result stored and streamed as ", tiles.count(),
                   " tiles of ", plan.stream_tile_size, " px",
                   plan.stream_tile_size < stream_tile_size
                       ? absl::StrCat(" (not ", stream_tile_size,
                                      ": a tile's data stays within ",
                                      kMaxTileDataBytes >> 10, " KiB)")
                       : ""));
  plan.reasons.push_back(absl::StrCat(
      "result written as a pyramidal tiled TIFF, ",
      CompressionName(options.compression),
      options.compression == Compression::kJpeg
          ? absl::StrCat(" quality ", options.jpeg_quality)
          : std::string(),
      ", compressed on up to ", plan.result_writer_threads,
      " threads; the writer holds ", Mb(plan.result_writer_ram_bytes)));
  plan.reasons.push_back(absl::StrFormat(
      "memory estimates: decode %s RAM (%s); registration %s RAM; warp %s "
      "RAM, %s VRAM",
      Mb(plan.decode.ram_bytes),
      plan.decode_concurrent ? "both images at once" : "one image at a time",
      Mb(plan.registration.ram_bytes), Mb(plan.warp.ram_bytes),
      Mb(plan.warp.vram_bytes)));
  plan.reasons.push_back(absl::StrFormat(
      "quality map: the residual is estimated on the %dx%d registration copy "
      "by patch phase correlation before the warp; %s RAM",
      plan.registration_fixed_width, plan.registration_fixed_height,
      Mb(plan.quality.ram_bytes)));
  plan.reasons.push_back(absl::StrFormat(
      "initial alignment: SIFT features on the registration copies (at most "
      "%.1f MP for detection) and a robust similarity/affine/homography fit "
      "before elastix; %s RAM",
      kDetectionPixels / 1e6, Mb(plan.initial_alignment.ram_bytes)));
  if (plan.decode.ram_bytes > budgets.ram_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "decoding needs ", Mb(plan.decode.ram_bytes),
        " of RAM, more than the RAM budget of ", Mb(budgets.ram_bytes),
        "; raise --ram_budget or send smaller images"));
  }
  if (plan.initial_alignment.ram_bytes > budgets.ram_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the initial alignment needs ", Mb(plan.initial_alignment.ram_bytes),
        " of RAM, more than the RAM budget of ", Mb(budgets.ram_bytes),
        "; raise --ram_budget or send smaller images"));
  }
  return plan;
}

// Whether every stage of `plan` fits the RAM budget.
bool FitsRam(const Plan& plan, const Budgets& budgets) {
  for (const StageMemory* m :
       {&plan.decode, &plan.registration, &plan.initial_alignment,
        &plan.quality, &plan.warp}) {
    if (m->ram_bytes > budgets.ram_bytes) return false;
  }
  return true;
}

// The smallest registration copy the streamed plan shrinks to so that the
// warp fits (MakePlan).
constexpr double kMinStreamedRegistrationMp = 0.5;

}  // namespace

absl::StatusOr<Plan> MakePlan(const ImageSpec& fixed, const ImageSpec& moving,
                              const JobOptions& options, const Budgets& budgets,
                              int64_t stream_tile_size) {
  REGSERVE_RETURN_IF_ERROR(ValidatePlanInputs(fixed, moving, options));
  REGSERVE_RETURN_IF_ERROR(
      TileGrid::ValidateEdge(stream_tile_size, "stream_tile_size"));
  absl::StatusOr<Plan> in_ram =
      MakePlanWith(fixed, moving, options, budgets, stream_tile_size, false);
  if (in_ram.ok() && FitsRam(*in_ram, budgets)) return in_ram;
  if (!in_ram.ok() &&
      in_ram.status().code() != absl::StatusCode::kResourceExhausted) {
    return in_ram.status();
  }
  // The moving image does not fit beside the stages: read it by region.
  absl::StatusOr<Plan> streamed =
      MakePlanWith(fixed, moving, options, budgets, stream_tile_size, true);
  // The warp also holds the registration's field (8 B per pixel of the
  // copy: 160 MB at 20 MP) and the result writer, so a smaller copy may let
  // it fit where the budget allowed the registration itself a larger one.
  for (JobOptions smaller = options;
       ((streamed.ok() && !FitsRam(*streamed, budgets)) ||
        (!streamed.ok() && absl::IsResourceExhausted(streamed.status()))) &&
       smaller.max_registration_megapixels > kMinStreamedRegistrationMp;) {
    smaller.max_registration_megapixels =
        std::max(kMinStreamedRegistrationMp,
                 std::min(smaller.max_registration_megapixels,
                          static_cast<double>(fixed.pixels()) / 1e6) /
                     2);
    absl::StatusOr<Plan> again =
        MakePlanWith(fixed, moving, smaller, budgets, stream_tile_size, true);
    if (again.ok() && FitsRam(*again, budgets)) {
      again->reasons.push_back(absl::StrFormat(
          "the registration copy is limited to %g MP (of the %g asked): with "
          "more, the warp's field and result writer do not fit the RAM "
          "budget of %s beside its tiles",
          smaller.max_registration_megapixels,
          options.max_registration_megapixels, Mb(budgets.ram_bytes)));
      streamed = std::move(again);
      break;
    }
    if (!again.ok() && !absl::IsResourceExhausted(again.status())) break;
  }
  if (!streamed.ok()) return streamed;
  uint64_t largest = 0;
  for (const StageMemory* m :
       {&streamed->decode, &streamed->registration,
        &streamed->initial_alignment, &streamed->quality, &streamed->warp}) {
    largest = std::max(largest, m->ram_bytes);
  }
  streamed->reasons.insert(
      streamed->reasons.begin(),
      absl::StrFormat(
          "streaming the moving image from disk in %d-px regions: "
          "the whole image needs %s, the budget leaves %s beside "
          "the largest stage",
          streamed->tile_size, Mb(moving.bytes()),
          Mb(budgets.ram_bytes > largest ? budgets.ram_bytes - largest : 0)));
  return streamed;
}

}  // namespace regserve
