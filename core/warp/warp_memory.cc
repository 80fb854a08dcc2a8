// Copyright regserve authors.
//
// Memory model of the warp. The byte counts below are the buffers the
// implementation allocates (warp.cc, warp_cuda.cc), so the model is exact up
// to allocator rounding; the measurements that confirm it are in
// docs/benchmarks.md ("Warp (GPU)", "Warp (CPU)") and are re-checked by
// core/warp/warp_benchmark.cc, which prints estimate and measurement side by
// side.
//
// CUDA (device_bytes), measured as the CUDA caching allocator's peak
// allocated bytes (c10::cuda::CUDACachingAllocator::getDeviceStats after
// resetPeakStats) around one Warp call on the H100:
//   one pass : moving W*H*bpp (whole source resident)
//              + field 2*4*fw*fh
//              + 3 output bands of 512 rows * out_w * bpp
//   tiled T  : field 2*4*fw*fh
//              + 2 source-region slots of min(W,T+512)*min(H,T+512)*bpp
//              + 2 output-tile slots of T*T*bpp
//   plus 2 MiB rounding per buffer (the caching allocator rounds large
//   blocks to 2 MiB).
// CUDA (host_bytes): pinned staging owned by the Warper: the whole output
// (one pass) or 2 tiles (tiled), plus the field (2*4*fw*fh, staged for its
// upload), plus the field's block bounds (16 bytes per 256 nodes).
//
// CPU (host_bytes), measured as peak RSS growth (VmHWM after clearing it via
// /proc/self/clear_refs) around one Warp call: the output tile buffer,
// T*T*bpp, plus one edge tile at most as large (one pass: out_w*out_h*bpp).
// The moving image is sampled in place; no float copy is made.
//
// Measured on the H100 machine (scripts/gpu_check.sh, 2 runs), 18960x14960
// RGB8 with a 4473x3154 field: one pass 1004.0 MiB peak (estimate 1008.5),
// tiled 8192/4096/2048: 926.0/326.0/170.0 MiB (estimates 931.1/331.1/175.1);
// 500 MP gray with tile 9728: 486.5 MiB (estimate 492.4). CPU, 4096x4096
// RGB8 one pass: +47.1..49.4 MiB RSS (estimate 48.0).
#include <algorithm>
#include <cstdint>

#include "core/warp/warp.h"
#include "core/warp/warp_internal.h"

namespace regserve {

int64_t RegionWarpCapacityPixels(const ImageSpec& moving, int64_t tile_size) {
  return warp_internal::RegionCapacityPixels(moving.width, moving.height,
                                             tile_size);
}

// The streamed CPU warp allocates exactly these buffers (warp.cc,
// CpuWarper::WarpRegions).
uint64_t EstimateRegionWarpHostBytes(const ImageSpec& moving, int64_t out_width,
                                     int64_t out_height, int64_t field_width,
                                     int64_t field_height, int64_t tile_size) {
  const uint64_t bpp = moving.bytes_per_pixel();
  const uint64_t t = static_cast<uint64_t>(std::max<int64_t>(1, tile_size));
  const uint64_t out_bytes =
      static_cast<uint64_t>(out_width) * out_height * bpp;
  const uint64_t regions =
      2 * static_cast<uint64_t>(RegionWarpCapacityPixels(moving, tile_size)) *
      bpp;
  const uint64_t tiles =
      std::min<uint64_t>(2 * t * t * bpp, out_bytes + t * t * bpp);
  const uint64_t bounds =
      16ull * ((field_width + 15) / 16) * ((field_height + 15) / 16);
  return regions + tiles + bounds;
}

WarpMemoryEstimate EstimateRegionWarpMemory(
    const ImageSpec& moving, int64_t out_width, int64_t out_height,
    int64_t field_width, int64_t field_height, int64_t tile_size,
    WarpDevice device) {
  WarpMemoryEstimate e;
  if (device == WarpDevice::kCpu) {
    e.host_bytes = EstimateRegionWarpHostBytes(
        moving, out_width, out_height, field_width, field_height, tile_size);
    return e;
  }
  // CudaWarper::WarpRegions: the tiled path, plus the pinned slots the
  // regions are read into.
  e = EstimateWarpMemory(moving, out_width, out_height, field_width,
                         field_height, std::max<int64_t>(1, tile_size),
                         WarpDevice::kCuda);
  e.host_bytes +=
      2 * static_cast<uint64_t>(RegionWarpCapacityPixels(moving, tile_size)) *
      moving.bytes_per_pixel();
  return e;
}

WarpMemoryEstimate EstimateWarpMemory(const ImageSpec& moving,
                                      int64_t out_width, int64_t out_height,
                                      int64_t field_width, int64_t field_height,
                                      int64_t tile_size, WarpDevice device) {
  using namespace warp_internal;  // NOLINT: constants only
  constexpr uint64_t kRounding = 2ull << 20;
  const uint64_t bpp = moving.bytes_per_pixel();
  const bool one_pass =
      tile_size <= 0 || (tile_size >= out_width && tile_size >= out_height);
  const uint64_t out_bytes =
      static_cast<uint64_t>(out_width) * out_height * bpp;
  WarpMemoryEstimate e;
  if (device == WarpDevice::kCpu) {
    if (one_pass) {
      e.host_bytes = out_bytes;
    } else {
      const uint64_t t = static_cast<uint64_t>(tile_size);
      e.host_bytes =
          std::min<uint64_t>(2 * t * t * bpp, out_bytes + t * t * bpp);
    }
    return e;
  }
  const uint64_t field_bytes =
      2ull * sizeof(float) * static_cast<uint64_t>(field_width) * field_height;
  const uint64_t bounds_bytes =
      16ull * ((field_width + 15) / 16) * ((field_height + 15) / 16);
  if (one_pass) {
    const uint64_t band =
        static_cast<uint64_t>(std::min<int64_t>(kCudaBandRows, out_height)) *
        out_width * bpp;
    e.device_bytes =
        moving.bytes() + field_bytes + kCudaBandSlots * band + 3 * kRounding;
    e.host_bytes = out_bytes + field_bytes + bounds_bytes;
  } else {
    const uint64_t t = static_cast<uint64_t>(tile_size);
    const uint64_t region = static_cast<uint64_t>(RegionCapacityPixels(
                                moving.width, moving.height, tile_size)) *
                            bpp;
    e.device_bytes = field_bytes + 2 * region + 2 * t * t * bpp + 3 * kRounding;
    e.host_bytes = 2 * t * t * bpp + field_bytes + bounds_bytes;
  }
  return e;
}

}  // namespace regserve
