// Copyright regserve authors.
//
// The CUDA warp kernel: one thread per output pixel, running the shared
// per-pixel code of warp_kernel.h. Compiled with -fmad=false (see
// CMakeLists.txt) so the float arithmetic matches the CPU path bit for bit.
#include <cuda_runtime.h>

#include "core/warp/warp_kernel.h"

namespace regserve {
namespace warp_internal {
namespace {

template <typename T, int C, int I>
__global__ void WarpKernel(WarpParams p, int64_t row_offset) {
  const int64_t i =
      p.rect_x0 + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t j = p.rect_y0 + row_offset +
                    static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  if (i >= p.rect_x0 + p.rect_w || j >= p.rect_y0 + p.rect_h) return;
  T* out = static_cast<T*>(p.out) +
           ((j - p.out_y0) * p.out_stride + (i - p.out_x0)) * C;
  WarpPixel<T, C, I>(p, i, j, out);
}

template <typename T, int C, int I>
cudaError_t Launch(const WarpParams& p, cudaStream_t stream) {
  const dim3 block(32, 8);
  constexpr int64_t kMaxRows = 65535 * 8;
  for (int64_t r = 0; r < p.rect_h; r += kMaxRows) {
    const int64_t rows = p.rect_h - r < kMaxRows ? p.rect_h - r : kMaxRows;
    const dim3 grid(static_cast<unsigned>((p.rect_w + 31) / 32),
                    static_cast<unsigned>((rows + 7) / 8));
    WarpKernel<T, C, I><<<grid, block, 0, stream>>>(p, r);
  }
  return cudaGetLastError();
}

template <typename T, int I>
cudaError_t ByChannels(const WarpParams& p, cudaStream_t s) {
  switch (p.channels) {
    case 1:
      return Launch<T, 1, I>(p, s);
    case 2:
      return Launch<T, 2, I>(p, s);
    case 3:
      return Launch<T, 3, I>(p, s);
    default:
      return Launch<T, 4, I>(p, s);
  }
}

template <typename T>
cudaError_t ByInterp(const WarpParams& p, cudaStream_t s) {
  switch (p.interp) {
    case kKernelCubic:
      return ByChannels<T, kKernelCubic>(p, s);
    case kKernelNearest:
      return ByChannels<T, kKernelNearest>(p, s);
    default:
      return ByChannels<T, kKernelLinear>(p, s);
  }
}

}  // namespace

int LaunchWarpKernel(const WarpParams& p, void* stream) {
  if (p.rect_w <= 0 || p.rect_h <= 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.type) {
    case kKernelU16:
      return static_cast<int>(ByInterp<uint16_t>(p, s));
    case kKernelF32:
      return static_cast<int>(ByInterp<float>(p, s));
    default:
      return static_cast<int>(ByInterp<uint8_t>(p, s));
  }
}

}  // namespace warp_internal
}  // namespace regserve
