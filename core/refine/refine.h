// Copyright regserve authors.
//
// Refinement of a registration's displacement field with LibTorch: a smooth
// residual, added to the field elastix produced, is optimised by autograd
// and Adam, coarse to fine over an image pyramid, on local normalised
// cross-correlation (LNCC) between the fixed copy and the moving copy
// sampled at x + d(x), with a bending-energy penalty on the total field.
//
//   RefineOptions opts;
//   opts.fixed_full_width = 6028;   // full-resolution sizes, as for
//   opts.fixed_full_height = 3391;  // RegistrationRequest
//   opts.moving_full_width = 6028;
//   opts.moving_full_height = 3391;
//   opts.max_pixels = 1'000'000;    // working size (CPU budget)
//   opts.threads = 2;
//   REGSERVE_ASSIGN_OR_RETURN(
//       RefineResult r,
//       RefineField(fixed_gray, moving_gray, reg.field, opts));
//   reg.field = std::move(r.field);  // same grid as the input field
//
// Geometry (see core/image/displacement_field.h): a registration copy of a
// W-pixel-wide image that is w pixels wide has spacing f = W / w and its
// pixel k centred at full-resolution position (f - 1) / 2 + k f. The
// working levels pool the copies by whole factors, which keeps that form
// (spacing k f, origin (k f - 1) / 2), so no level shifts the image; each
// shrink is anti-aliased with a Gaussian first. The residual is a sum of
// control grids, one per level from the coarsest to the current one, each
// spanning that level's pixel centres, upsampled bilinearly. All
// coordinates are fp32 tensors, on the CPU as on CUDA.
//
// The data term weighs each window by its texture; where there is little,
// the bending penalty, which acts on the TOTAL field (an affine field costs
// nothing), and the coarse grids make the field follow its surroundings.
// The result is the input field unchanged unless the loss went down and
// the mean LNCC went up by at least 0.001.
//
// Thread safety: RefineField may be called from several threads; it sets
// LibTorch's intra-op thread count (at::set_num_threads) to
// options.threads, which is process-wide on the CPU.
#ifndef REGSERVE_CORE_REFINE_REFINE_H_
#define REGSERVE_CORE_REFINE_REFINE_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/common/cancel.h"
#include "core/common/types.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"

namespace regserve {

struct RefineProgress {
  int level = 0;  // 0-based, coarsest first
  int num_levels = 1;
  int iteration = 0;  // within the level, 1-based
  int iterations = 0;
  double loss = 0.0;      // data term (-LNCC) + penalty
  double fraction = 0.0;  // of the whole refinement, by work
};

struct RefineOptions {
  // Full-resolution sizes of the images the copies were made from (the
  // copies' spacing is full / copy size, as in RegistrationRequest).
  int64_t fixed_full_width = 0;
  int64_t fixed_full_height = 0;
  int64_t moving_full_width = 0;
  int64_t moving_full_height = 0;

  WarpDevice device = WarpDevice::kCpu;
  int cuda_device = 0;
  // LibTorch intra-op threads (CPU). 1 is as fast as 2 on a quiet 2-core
  // machine and several times faster on a busy one (docs/benchmarks.md).
  int threads = 1;
  // The finest working level has at most this many pixels (the copies are
  // pooled by the smallest whole factor that fits); 0 = the copy's size.
  int64_t max_pixels = 0;
  // The defaults were chosen on the Kleiber benchmark (docs/benchmarks.md).
  // Pyramid levels; 0: at least 4, and as many as take the coarsest level's
  // longer edge to at most 160 px (RefineLevelsFor). A level's short edge
  // never goes below 24 px.
  int levels = 0;
  int iterations = 40;  // Adam steps per level
  int ncc_window = 9;   // LNCC window edge in level pixels (odd)
  // Control-grid spacing in level pixels. Each level adds a grid at its own
  // spacing; the coarser levels' grids keep being optimised.
  double control_spacing = 16.0;
  // Weight of the bending energy of the total field less `prior`, made
  // dimensionless with the image diagonal (so it does not depend on the
  // image size).
  double smoothness = 0.01;
  // The projective map the field is expected to follow up to a smooth
  // deviation: row-major 3x3, fixed -> moving full-resolution positions (the
  // initial alignment's homography). The default, the identity, like any
  // affine map, leaves the bending of the total field itself; a strong
  // perspective would otherwise be bent towards an affine map.
  std::array<double, 9> prior = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  // Adam's step at each level, in that level's pixels (decays linearly to
  // a tenth over the level's iterations).
  double learning_rate = 0.05;
  // LNCC constants, in units of the copies' global variance: the epsilon
  // under the square root of the window variances' product, and the local
  // variance at which a window's weight is one half (windows without
  // texture weigh little, so the bending penalty decides there).
  double ncc_epsilon = 1e-8;
  double texture_variance = 1e-4;
  // Polled between iterations; may be null.
  const CancelToken* cancel = nullptr;
  // May be null. Called after every iteration, on the calling thread.
  std::function<void(const RefineProgress&)> on_progress;
};

struct RefineResult {
  DisplacementField field;  // the input field's grid, refined
  // False when the optimisation did not lower the loss or raise the mean
  // LNCC by at least 0.001: `field` is then the input field, unchanged.
  bool improved = false;
  int levels = 0;          // levels run
  int iterations = 0;      // Adam steps in all
  int64_t work_width = 0;  // finest working level
  int64_t work_height = 0;
  double initial_loss = 0.0;  // at the finest level, before and after
  double final_loss = 0.0;
  double initial_ncc = 0.0;  // mean LNCC over the overlap, same level
  double final_ncc = 0.0;
  double seconds = 0.0;
  uint64_t peak_device_bytes = 0;  // CUDA caching allocator; 0 on the CPU
  std::string device;              // "cpu" or "cuda:0"
};

// Refines `initial` (on any grid over the fixed image, in full-resolution
// pixels) against the float32 single-channel registration copies. Errors:
// InvalidArgument (bad images, field or options), Unavailable (CUDA asked
// for but not built in or no such device), ResourceExhausted (out of device
// memory), Cancelled / DeadlineExceeded (the token), Internal (a LibTorch
// failure, with its message).
absl::StatusOr<RefineResult> RefineField(const Image& fixed_gray,
                                         const Image& moving_gray,
                                         const DisplacementField& initial,
                                         const RefineOptions& options);

// The working size RefineField uses for a copy of copy_width x copy_height
// and options.max_pixels: the copy pooled by the smallest whole factor that
// fits.
struct RefineWorkSize {
  int64_t pool = 1;  // whole pooling factor of the copy
  int64_t width = 0;
  int64_t height = 0;
};
RefineWorkSize RefineWorkSizeFor(int64_t copy_width, int64_t copy_height,
                                 int64_t max_pixels);

// The pyramid levels RefineField runs for a finest working level of
// work_width x work_height and RefineOptions::levels = `levels`.
int RefineLevelsFor(int64_t work_width, int64_t work_height, int levels);

// What RefineField needs for a fixed copy of copy_width x copy_height, an
// initial field of field_pixels nodes and `options` (device, max_pixels,
// levels, iterations, threads). Measured with refine_memory_benchmark
// (docs/benchmarks.md, "Refinement"); the planner sizes the stage with it.
struct RefineCost {
  RefineWorkSize work;
  uint64_t ram_bytes = 0;   // host memory, peak
  uint64_t vram_bytes = 0;  // CUDA device memory, peak (0 on the CPU)
  double seconds = 0.0;     // on the CPU with options.threads; 0 on CUDA
};
RefineCost EstimateRefineCost(int64_t copy_width, int64_t copy_height,
                              int64_t field_pixels,
                              const RefineOptions& options);

// The job option: kAuto refines when it pays (see the planner), kOff never,
// kOn always (also for rigid and affine jobs, and on a slow CPU).
enum class RefineMode { kAuto = 0, kOff = 1, kOn = 2 };
absl::string_view RefineModeName(RefineMode mode);  // "auto", "off", "on"
// Accepts exactly those names; InvalidArgument lists them.
absl::StatusOr<RefineMode> ParseRefineMode(absl::string_view name);

}  // namespace regserve

#endif  // REGSERVE_CORE_REFINE_REFINE_H_
