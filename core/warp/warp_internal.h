// Copyright regserve authors.
//
// Internal helpers shared by the CPU and CUDA warpers: input validation,
// launch parameters, tiling, and the conservative source region of an output
// rectangle (from per-block min/max of the field). Not part of the API.
#ifndef REGSERVE_CORE_WARP_WARP_INTERNAL_H_
#define REGSERVE_CORE_WARP_WARP_INTERNAL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"
#include "core/warp/warp.h"
#include "core/warp/warp_kernel.h"

namespace regserve {
namespace warp_internal {

// InvalidArgument for empty/mismatched fields, bad sizes or options.
absl::Status ValidateWarpInputs(const Image& moving,
                                const DisplacementField& field,
                                int64_t out_width, int64_t out_height,
                                const WarpOptions& options);

// Launch parameters with everything but the rectangle, the output buffer and
// the source buffer filled in. field_dx/field_dy point at `field`'s host data.
WarpParams MakeBaseParams(const Image& moving, const DisplacementField& field,
                          const WarpOptions& options);
// The same for a moving image of `moving` read by region.
absl::Status ValidateWarpInputs(const ImageSpec& moving,
                                const DisplacementField& field,
                                int64_t out_width, int64_t out_height,
                                const WarpOptions& options);
WarpParams MakeBaseParams(const ImageSpec& moving,
                          const DisplacementField& field,
                          const WarpOptions& options);
// ValidateWarpInputs for Warper::WarpRegions, which also needs tiles
// (tile_size > 0).
absl::Status ValidateRegionWarpInputs(const ImageSpec& moving,
                                      const DisplacementField& field,
                                      int64_t out_width, int64_t out_height,
                                      const WarpOptions& options);

// Output tiles in row-major order. tile_size 0 (or >= both dimensions) gives
// one tile covering the whole output, or, with band_rows > 0, full-width
// bands of band_rows rows.
std::vector<TileRect> MakeTiles(int64_t out_width, int64_t out_height,
                                int64_t tile_size, int64_t band_rows = 0);

// Runs fn(begin, end) over [0, n) split into up to `threads` contiguous
// ranges: the first on the calling thread, the others on new threads. A
// thread that cannot be started (std::system_error) is not an error: its
// range runs on the calling thread instead. Returns when all have run.
void ParallelRanges(int64_t n, int threads,
                    const std::function<void(int64_t, int64_t)>& fn);

// Per-block min/max of the field's finite values, used to bound the source
// region an output rectangle reads. Non-finite nodes are ignored: every
// pixel interpolating one gets a non-finite position, hence the fill value.
class FieldBounds {
 public:
  // Node rows per block (a block is kBlock x kBlock nodes).
  static constexpr int64_t kBlock = 16;

  // `threads` > 1 computes the blocks in parallel.
  FieldBounds(const DisplacementField& field, int threads);
  // Sized for `field`, no block computed yet: ComputeBlockRows fills them
  // (the CUDA one pass does so row by row, as its bands need them).
  struct Deferred {};
  FieldBounds(const DisplacementField& field, Deferred);

  // Computes the blocks of block rows [by_begin, by_end), i.e. node rows
  // [by_begin * kBlock, by_end * kBlock). Distinct ranges may be computed on
  // different threads at once.
  void ComputeBlockRows(const DisplacementField& field, int64_t by_begin,
                        int64_t by_end);

  // Source rectangle (absolute moving pixels, clamped to the image) holding
  // every tap read by the output pixels of `rect`; w or h is 0 when no pixel
  // of `rect` samples inside the image. Conservative by construction.
  TileRect SourceRegion(const WarpParams& params, const TileRect& rect) const;

 private:
  int64_t field_w_ = 0, field_h_ = 0;
  int64_t blocks_x_ = 0, blocks_y_ = 0;
  // 4 floats per block: min dx, max dx, min dy, max dy (+inf/-inf if none).
  std::vector<float> stats_;
};

// Node rows [*lo, *hi] of the field that the output pixels of `rect` may
// read (FieldAt's arithmetic, widened by a node as SourceRegion does).
void FieldNodeRows(const WarpParams& params, const TileRect& rect, int64_t* lo,
                   int64_t* hi);

// Exact source rectangle of `rect` from the per-pixel positions (same
// arithmetic as the kernel). Cost: one field lookup per pixel; used for small
// rectangles only.
TileRect ExactSourceRegion(const WarpParams& params, const TileRect& rect);

// One unit of device work: an output rectangle and the source region it
// reads.
struct RegionItem {
  TileRect out;
  TileRect src;
};

// Splits `rect` into items whose source region holds at most
// `capacity_pixels` pixels (quadtree split; small rectangles use the exact
// region, so a 1x1 rectangle always fits when capacity >= 16).
void PlanRegions(const FieldBounds& bounds, const WarpParams& params,
                 const TileRect& rect, int64_t capacity_pixels,
                 std::vector<RegionItem>* items);

// The LibTorch CPU warper (always available).
std::unique_ptr<Warper> CreateCpuWarper();

#if REGSERVE_HAVE_CUDA
// The CUDA warper; Unavailable if the device cannot be used.
absl::StatusOr<std::unique_ptr<Warper>> CreateCudaWarper(int cuda_device);
#endif

// Memory-model constants (see warp_memory.cc).
inline constexpr int64_t kCudaBandRows = 512;  // one-pass output band
inline constexpr int kCudaBandSlots = 3;       // one-pass band ring
inline constexpr int64_t kCudaSourceChunkRows = 256;
inline constexpr int64_t kCudaRegionMargin = 256;  // per side, tiled source
// The field is staged into pinned memory and uploaded in chunks of this size.
inline constexpr size_t kCudaFieldChunkBytes = size_t{4} << 20;
// Source-region capacity (pixels) of one tiled slot for tile edge T.
int64_t RegionCapacityPixels(int64_t src_w, int64_t src_h, int64_t tile);

}  // namespace warp_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_WARP_WARP_INTERNAL_H_
