// Copyright regserve authors.
//
// The planner: from the two image sizes, the job options and the memory
// budgets, decides the registration size, the warp device and mode (one pass
// or tiles of a given size), and the memory each stage will need, with
// human-readable reasons.
//
//   Budgets b = BudgetsFromHardware(snapshot, BudgetOverrides{});
//   REGSERVE_ASSIGN_OR_RETURN(
//       Plan plan, MakePlan(fixed_spec, moving_spec, opts, b));
//   for (const std::string& r : plan.reasons) {
//     std::cout << r << "\n";
//   }
//
// Memory models (measured, not megapixel constants):
//  - elastix with the recursive pyramid: ~75 MB + 29 bytes per registration
//    pixel (shared/notes/stack.md); transformix -def all: ~7.6 B/px.
//  - decode and grayscale copies: computed from the image specs.
//  - warp: EstimateWarpMemory() from core/warp, measured on this code.
//  - refinement: EstimateRefineCost() from core/refine, measured.
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_PLAN_PLAN_H_
#define REGSERVE_CORE_PLAN_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/common/tile_grid.h"
#include "core/common/types.h"
#include "core/hardware/hardware.h"
#include "core/image/compression.h"
#include "core/image/image.h"
#include "core/refine/refine.h"

namespace regserve {

// elastix's work when the refinement runs on a GPU after it: the
// refinement then does the fine work at the whole registration copy, so
// elastix needs only the large-scale map (docs/benchmarks.md, "elastix
// before a GPU refinement").
struct ElastixSchedule {
  // elastix's copy: the registration copy pooled to at most this many
  // megapixels (fixed copy); 0 keeps the registration copy.
  double max_megapixels = 0.0;
  // The preset's iterations times this (PresetSchedule::iteration_scale).
  double iteration_scale = 1.0;
  // false: no affine stage before the B-spline one when the initial
  // alignment found a start (its homography already holds the global map).
  bool linear_stage = true;
};

struct JobOptions {
  TransformKind transform = TransformKind::kBSpline;
  double max_registration_megapixels = 20.0;
  // kUnspecified plans like kAuto; the job manager first replaces it with
  // the daemon's default.
  DevicePreference device = DevicePreference::kUnspecified;
  Interpolation interpolation = Interpolation::kLinear;
  // false: output at the registration size instead of full resolution.
  bool output_full_resolution = true;
  // The LibTorch refinement after registration (core/refine): kAuto when it
  // pays (see Plan::refine_enabled), kOff never, kOn always.
  RefineMode refine = RefineMode::kAuto;
  // How the stored result's tiles are compressed; jpeg_quality (1..100)
  // for kJpeg, which takes 8-bit grey or RGB images only.
  Compression compression = Compression::kDeflate;
  int jpeg_quality = kDefaultJpegQuality;
  // The daemon's settings (JobManager::Options), applied when the job is
  // planned; not part of the job's spec. The shift correction's passes
  // (Plan::shift_correction_passes; 0: none).
  ElastixSchedule elastix_before_gpu_refine;
  int shift_correction_passes = 2;
  // Passes of the shift correction after a refinement on the GPU (0: none).
  int gpu_correction_passes = 0;
  // elastix's schedule when no GPU refines and the shift correction follows.
  ElastixSchedule elastix_before_cpu_correction;
};

// Budgets the plan must fit. VRAM budget 0 or has_gpu=false means CPU only.
struct Budgets {
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;
  bool has_gpu = false;
  std::string gpu_name;
  int cpu_threads = 1;
};

// Explicit budgets from flags; 0 means "derive from the hardware".
struct BudgetOverrides {
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;
};

// RAM: 80% of available RAM unless overridden; VRAM: 90% of free VRAM of the
// first GPU unless overridden.
Budgets BudgetsFromHardware(const HardwareSnapshot& hw,
                            const BudgetOverrides& overrides);

struct StageMemory {
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;
};

struct Plan {
  // Registration copies (fixed and moving keep their own aspect ratios and
  // the same downsampling factor relative to their full size).
  int64_t registration_fixed_width = 0;
  int64_t registration_fixed_height = 0;
  int64_t registration_moving_width = 0;
  int64_t registration_moving_height = 0;
  double registration_factor = 1.0;  // full / registration, per axis

  int64_t output_width = 0;
  int64_t output_height = 0;
  WarpDevice warp_device = WarpDevice::kCpu;
  int64_t tile_size = 0;  // warp tile edge; 0 = one pass
  // The stored and streamed result's tile edge (TIFF tile = streamed tile):
  // the daemon's --stream_tile_size, smaller where a tile of this pixel type
  // would hold more than kMaxTileDataBytes.
  int64_t stream_tile_size = 0;

  StageMemory decode;  // full images + grayscale copies
  // The fixed image streamed into its copy while the moving image is read
  // (decode.ram_bytes holds both); else one after the other.
  bool decode_concurrent = false;
  StageMemory registration;  // elastix + transformix (+ copies held)
  StageMemory quality;       // quality map: warped copy (+ copies held)
  StageMemory warp;          // moving image + warp working set + writer
  // The initial alignment (robust start, between decode and registration):
  // SIFT on copies of at most 1.5 MP, the pre-warped moving copy and its
  // mask (+ the copies and the moving image held).
  StageMemory initial_alignment;
  // The refinement (core/refine) between registration and quality: whether
  // it runs and why not (the reasons say), where, its finest working level
  // (RefineOptions::max_pixels: 0 = the registration copy's size) and
  // schedule, and its memory (+ the copies, the field and the moving image
  // held).
  bool refine_enabled = false;
  WarpDevice refine_device = WarpDevice::kCpu;
  int64_t refine_max_pixels = 0;
  int64_t refine_width = 0;
  int64_t refine_height = 0;
  int refine_levels = 0;
  int refine_iterations = 0;  // per level
  StageMemory refine;
  // The shift correction (core/refine/shift_correction.h) at the start of
  // the refine stage, before a LibTorch refinement on the CPU: at most this
  // many passes on the quality map's patches (then two on patches of half
  // the size), each kept only when the quality estimate improved (0: none;
  // jobs refined on a GPU, refine=off and, under refine=auto, rigid and
  // affine jobs have none),
  // and its memory (a quality estimate and one more field, + the copies,
  // the field and the moving image held).
  int shift_correction_passes = 0;
  StageMemory shift_correction;
  // Where a GPU refines (JobOptions::gpu_correction_passes > 0), the shift
  // correction runs after the refinement instead: it then measures what
  // the refinement left (docs/benchmarks.md, "The quality estimate's
  // cost").
  bool shift_correction_after_refine = false;
  // elastix's own copy and schedule in the registration stage: the
  // registration copies pooled to these sizes (0: the copies themselves),
  // the preset's iterations times elastix_iteration_scale, and its affine
  // stage skipped after a found initial alignment unless
  // elastix_linear_stage. Lighter than the default only before a GPU
  // refinement (JobOptions::elastix_before_gpu_refine).
  int64_t elastix_fixed_width = 0;
  int64_t elastix_fixed_height = 0;
  int64_t elastix_moving_width = 0;
  int64_t elastix_moving_height = 0;
  double elastix_iteration_scale = 1.0;
  bool elastix_linear_stage = true;
  // The part of warp.ram_bytes that the result writer holds (partly covered
  // stream tiles, tiles being compressed, pyramid rows: ResultWriterRamBytes)
  // and the compression threads it was sized for (the warp stage uses at
  // most these; 0 in plans persisted before: 1).
  uint64_t result_writer_ram_bytes = 0;
  int result_writer_threads = 0;
  // A CUDA plan's CPU fallback, used when the GPU warper cannot start: its
  // RAM (writer included) and warp tile. Zero for CPU plans.
  StageMemory warp_cpu_fallback;
  int64_t warp_cpu_tile_size = 0;
  uint64_t result_writer_cpu_ram_bytes = 0;

  // The moving image read by region (core/image/region_source.h) instead of
  // held whole, when it does not fit beside the stages: decoded in strips
  // into its copy (and, when the file cannot be read by region, into a
  // spill file of spill_bytes in the job directory), warped on the CPU in
  // tiles of tile_size through a region cache of moving_cache_bytes.
  bool moving_streamed = false;
  uint64_t moving_cache_bytes = 0;
  uint64_t spill_bytes = 0;

  std::vector<std::string> reasons;
};

// The whole plan of a job: registration size, output grid, warp device and
// tiles, the result's stream tiles (from `stream_tile_size`, the daemon's
// --stream_tile_size) and every stage's memory. Errors: InvalidArgument (bad
// specs/options, a stream tile edge TileGrid refuses), ResourceExhausted
// when even the smallest registration copy / tile size cannot fit, with the
// numbers.
absl::StatusOr<Plan> MakePlan(const ImageSpec& fixed, const ImageSpec& moving,
                              const JobOptions& options, const Budgets& budgets,
                              int64_t stream_tile_size = 512);

// Most bytes of samples in one streamed tile: with the tile's other fields a
// message stays below gRPC's default 4 MiB receive limit.
constexpr uint64_t kMaxTileDataBytes = 3584ull << 10;  // 3.5 MiB

// The stream tile edge for `requested` (a valid TileGrid edge) and this
// pixel type: `requested`, or the largest multiple of 16 whose tile fits
// kMaxTileDataBytes.
int64_t StreamTileEdge(int64_t requested, const ImageSpec& pixel);

// Re-derives the plan's stream tiles for another requested edge (a daemon
// restarted with another --stream_tile_size) and the writer's memory.
void SetStreamTiles(int64_t requested_edge, const ImageSpec& moving,
                    Plan* plan);

// RAM the tiled TIFF writer holds for stream tiles that a warp tile covers
// only partly: zero when warp tiles line up with stream tiles (or the warp
// is one pass, warp_tile 0); otherwise up to two rows of stream tiles across
// the output, each pixel with its coverage byte.
uint64_t TiffWriterPartialBytes(int64_t warp_tile, int64_t out_width,
                                int64_t stream_tile, const ImageSpec& pixel);

// RAM of the stored result's writer (core/image/tiled_tiff_writer.h) for an
// out_width x out_height result in stream tiles of `stream_tile` with
// `threads` compression threads: TiffWriterPartialBytes, 4 tiles and 4 MiB
// per thread (2 x threads tiles in flight, raw or compressed, each thread's
// output buffer, its codec and its malloc arena), and with `pyramid` two
// rows of tiles per reduced level. Measured: docs/benchmarks.md, "Result
// writer".
uint64_t ResultWriterRamBytes(int64_t warp_tile, int64_t out_width,
                              int64_t out_height, int64_t stream_tile,
                              const ImageSpec& pixel, int threads,
                              bool pyramid);

// elastix + transformix RAM for a registration copy of `pixels` pixels.
uint64_t RegistrationRamBytes(int64_t pixels);

// The refinement's options for a planned job (device, working size, levels,
// iterations; sizes and threads are the caller's).
RefineOptions PlannedRefineOptions(const Plan& plan);

// The refinement's CPU time budget for a registration copy of `pixels`
// pixels: a third of elastix's time there (~10 s + 1.15 s/MP on 2
// threads), at least 3 s. On the Kleiber benchmark that is 1/2 of a 5 MP
// copy (mean error 0.15 px) and 1/3 of an 18 MP one (0.12 px).
double RefineCpuBudgetSeconds(int64_t pixels);

// The initial alignment's own RAM (core/registration/robust_start) for
// registration copies of `fixed_pixels` and `moving_pixels`: SIFT's scale
// space on the larger copy downsampled to its detection size, and the
// moving copy pre-warped onto the fixed grid.
uint64_t InitialAlignmentRamBytes(int64_t fixed_pixels, int64_t moving_pixels);

// The quality stage's own RAM (core/quality) for a fixed registration copy
// of `pixels` pixels, besides the copies, field and moving image it holds.
uint64_t QualityRamBytes(int64_t pixels);

}  // namespace regserve

#endif  // REGSERVE_CORE_PLAN_PLAN_H_
