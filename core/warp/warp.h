// Copyright regserve authors.
//
// Full-resolution warp of the moving image into the fixed frame through a
// DisplacementField, with LibTorch on CUDA or on the CPU.
//
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Warper> warper,
//                             Warper::Create(WarpDevice::kCuda, 0));
//   WarpOptions opts;
//   opts.tile_size = plan.tile_size;  // 0: one pass
//   REGSERVE_ASSIGN_OR_RETURN(
//       WarpStats stats,
//       warper->Warp(moving, field, out_w, out_h, opts,
//                    [&](const TileRect& r, const Image& tile) {
//                      return writer->WriteRegion(r.x, r.y, tile);
//                    }));
//
// Output pixel (i, j) samples the fixed-frame position
//   p = (output_origin_x + i * output_spacing_x,
//        output_origin_y + j * output_spacing_y)
// (full-resolution fixed pixels; default origin 0, spacing 1), looks up d(p)
// in the field (bilinear, border-clamped), and samples the moving image at
// p + d(p) with the chosen interpolation; positions outside the moving image
// get fill_value. Coordinates are computed in fp32.
//
// Tiled output is bit-identical to one-pass output: each output pixel's
// arithmetic does not depend on the tiling.
//
// Ownership: a Warper owns its device resources (CUDA streams, pinned staging
// buffers, device memory) and frees them in its destructor. It is not
// thread-safe: use one Warper per thread (one per GPU in the daemon).
#ifndef REGSERVE_CORE_WARP_WARP_H_
#define REGSERVE_CORE_WARP_WARP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/common/cancel.h"
#include "core/common/tile_grid.h"
#include "core/common/types.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"
#include "core/image/region_source.h"

namespace regserve {

struct WarpOptions {
  Interpolation interpolation = Interpolation::kLinear;
  // Value for outside samples, in sample units (e.g. 0..255 for uint8).
  double fill_value = 0.0;
  // Square output tile edge in pixels; 0 = one pass over the whole output.
  int64_t tile_size = 0;
  // One pass on the CPU only: hand the output over in full-width bands of
  // this many rows, so finished rows can be stored and streamed while the
  // rest is computed (and only a band is held); 0 = one piece. The samples
  // do not depend on it.
  int64_t band_rows = 0;
  // Output grid in fixed full-resolution pixels (see header comment).
  double output_origin_x = 0.0;
  double output_origin_y = 0.0;
  double output_spacing_x = 1.0;
  double output_spacing_y = 1.0;
  // CPU threads LibTorch may use (intra-op) on the CPU path.
  int cpu_threads = 1;
  // Polled between tiles; may be null.
  const CancelToken* cancel = nullptr;
  // CUDA one pass only, for benchmarks (warp_benchmark): the output band
  // and source chunk heights and the number of band slots (0: the defaults
  // of warp_internal.h), and whether to time the pass's phases on the GPU
  // (WarpStats::timeline_ms). The samples do not depend on any of them.
  int64_t cuda_band_rows = 0;
  int64_t cuda_chunk_rows = 0;
  int cuda_band_slots = 0;
  bool cuda_timeline = false;
};

struct WarpStats {
  int64_t tiles = 0;
  double seconds = 0.0;
  // Measured (CUDA caching allocator); 0 on the CPU.
  uint64_t peak_device_bytes = 0;
  std::string device;  // "cpu" or "cuda:0 (NVIDIA H100 ...)"
  // WarpOptions::cuda_timeline: milliseconds from the start of the call to
  // each phase's end, in order (host and GPU times).
  std::vector<std::pair<std::string, double>> timeline_ms;
};

// Called once per finished output tile, in row-major tile order, from the
// thread that called Warp. `tile` has the moving image's channels and sample
// type and is only valid during the call (the CUDA warper hands out its own
// pinned staging memory, reused across calls). A non-OK return aborts the
// warp.
using TileCallback =
    std::function<absl::Status(const TileRect& rect, const Image& tile)>;

class Warper {
 public:
  virtual ~Warper() = default;

  // Errors: Unavailable if kCuda is requested and CUDA is not available (or
  // cuda_device is out of range).
  static absl::StatusOr<std::unique_ptr<Warper>> Create(WarpDevice device,
                                                        int cuda_device = 0);

  // Warps `moving` into an out_width x out_height image. Errors:
  // InvalidArgument (bad sizes/field), Cancelled/DeadlineExceeded (token),
  // ResourceExhausted (out of device memory; message names the tile size to
  // retry with), Internal (LibTorch failure, with its message).
  virtual absl::StatusOr<WarpStats> Warp(const Image& moving,
                                         const DisplacementField& field,
                                         int64_t out_width, int64_t out_height,
                                         const WarpOptions& options,
                                         const TileCallback& on_tile) = 0;

  // Warps a moving image read by region (core/image/region_source.h)
  // instead of held whole: for each output tile of options.tile_size (> 0),
  // the source rectangle the field maps it to, with the interpolation's
  // halo, is read (split into smaller output rectangles where it would hold
  // more than RegionCapacityPixels), the next one while this one is
  // computed. The samples are those Warp gives for the same image. The CPU
  // warper only; others return Unimplemented (the planner warps a streamed
  // image on the CPU). Errors: those of Warp and of `moving`'s reads.
  virtual absl::StatusOr<WarpStats> WarpRegions(RegionSource* moving,
                                                const DisplacementField& field,
                                                int64_t out_width,
                                                int64_t out_height,
                                                const WarpOptions& options,
                                                const TileCallback& on_tile);

  virtual WarpDevice device() const = 0;

  // Device memory this warper keeps between calls (its cached buffers, which
  // the next call reuses or frees first): 0 for the CPU warper. Callers that
  // admit work by the device's free memory add it back (see
  // ResourceScheduler::SetRetainedVram). Call it between Warp calls.
  virtual uint64_t retained_device_bytes() const { return 0; }
};

// Process-wide allocator of page-locked (pinned) host memory. Images the
// CUDA warper reads from pinned memory are uploaded asynchronously at full
// PCIe speed (about 52 GB/s against 14 GB/s for pageable memory on the H100
// machine). Thread-safe; never freed. Returns nullptr when regserve was built
// without CUDA or no CUDA device is usable (use HostAllocator::Default()).
HostAllocator* PinnedHostAllocator();

// Memory model of this implementation (measured; see warp_memory.cc for the
// numbers and how they were measured). Estimates for warping an output of
// out_width x out_height with `tile_size` (0 = one pass).
struct WarpMemoryEstimate {
  uint64_t device_bytes = 0;  // peak VRAM (0 on CPU)
  uint64_t host_bytes = 0;    // peak RAM beyond the moving image itself
};
// The CPU warp of an image read by region (Warper::WarpRegions) in tiles
// of `tile_size` (> 0): two source regions of RegionCapacityPixels (one
// read while the other is sampled), the output tile and an edge tile, the
// field's block bounds. The region source's own cache is not included
// (RegionSourceRamBytes).
uint64_t EstimateRegionWarpHostBytes(const ImageSpec& moving, int64_t out_width,
                                     int64_t out_height, int64_t field_width,
                                     int64_t field_height, int64_t tile_size);
// The warp of an image read by region on `device`: on the CPU
// EstimateRegionWarpHostBytes; on CUDA the tiled warp's VRAM and pinned
// staging plus its two pinned source-region slots (the region source's
// cache again not included).
WarpMemoryEstimate EstimateRegionWarpMemory(
    const ImageSpec& moving, int64_t out_width, int64_t out_height,
    int64_t field_width, int64_t field_height, int64_t tile_size,
    WarpDevice device);
// Most source pixels one region read holds for output tiles of
// `tile_size`: (tile + 2 x 256)^2 within the image.
int64_t RegionWarpCapacityPixels(const ImageSpec& moving, int64_t tile_size);

WarpMemoryEstimate EstimateWarpMemory(const ImageSpec& moving,
                                      int64_t out_width, int64_t out_height,
                                      int64_t field_width, int64_t field_height,
                                      int64_t tile_size, WarpDevice device);

}  // namespace regserve

#endif  // REGSERVE_CORE_WARP_WARP_H_
