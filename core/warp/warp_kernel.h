// Copyright regserve authors.
//
// Internal: the per-pixel arithmetic of the warp, shared verbatim by the CPU
// path (compiled by g++) and the CUDA kernel (compiled by nvcc with
// -fmad=false). Because both compilers see the same float operations in the
// same order and neither contracts them into FMAs, the CPU and CUDA outputs
// are bit-identical, and because every output pixel is computed from its
// absolute index alone, tiled output is bit-identical to one-pass output.
//
// No dependencies beyond <cmath>/<cstdint>: this header is included by the
// .cu file, which does not see LibTorch or Abseil.
#ifndef REGSERVE_CORE_WARP_WARP_KERNEL_H_
#define REGSERVE_CORE_WARP_WARP_KERNEL_H_

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define REGSERVE_HD __host__ __device__ __forceinline__
#define REGSERVE_UNROLL _Pragma("unroll")
#else
#define REGSERVE_HD inline
#define REGSERVE_UNROLL
#endif

namespace regserve {
namespace warp_internal {

enum KernelType { kKernelU8 = 0, kKernelU16 = 1, kKernelF32 = 2 };
enum KernelInterp { kKernelLinear = 0, kKernelCubic = 1, kKernelNearest = 2 };

// Everything one launch needs. Plain data: copied by value to the GPU.
struct WarpParams {
  // Output rectangle computed by this call, in absolute output pixels.
  int64_t rect_x0 = 0, rect_y0 = 0, rect_w = 0, rect_h = 0;
  // Output buffer: pixel (i, j) lives at out + ((j - out_y0) * out_stride +
  // (i - out_x0)) * channels elements.
  void* out = nullptr;
  int64_t out_x0 = 0, out_y0 = 0, out_stride = 0;  // stride in pixels
  // Output grid (fixed full-resolution pixels).
  float grid_origin_x = 0.f, grid_origin_y = 0.f;
  float grid_spacing_x = 1.f, grid_spacing_y = 1.f;
  // Displacement field nodes.
  const float* field_dx = nullptr;
  const float* field_dy = nullptr;
  int64_t field_w = 0, field_h = 0;
  float field_origin_x = 0.f, field_origin_y = 0.f;
  float field_inv_spacing_x = 1.f, field_inv_spacing_y = 1.f;
  // Source: the whole moving image is src_w x src_h; the buffer holds the
  // region starting at (src_x0, src_y0) with src_stride pixels per row.
  const void* src = nullptr;
  int64_t src_w = 0, src_h = 0;
  int64_t src_x0 = 0, src_y0 = 0, src_stride = 0;
  int channels = 1;
  int type = kKernelU8;
  int interp = kKernelLinear;
  // Fill value, already rounded/clamped to the sample type.
  float fill = 0.f;
};

REGSERVE_HD float ClampF(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}
REGSERVE_HD int64_t ClampI(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}
REGSERVE_HD float Lerp(float a, float b, float t) { return a + t * (b - a); }

// Fixed-frame position of output pixel (i, j).
REGSERVE_HD void GridPosition(const WarpParams& p, int64_t i, int64_t j,
                              float* px, float* py) {
  *px = p.grid_origin_x + static_cast<float>(i) * p.grid_spacing_x;
  *py = p.grid_origin_y + static_cast<float>(j) * p.grid_spacing_y;
}

// Bilinear, border-clamped displacement at fixed position (px, py).
REGSERVE_HD void FieldAt(const WarpParams& p, float px, float py, float* dx,
                         float* dy) {
  float gx = (px - p.field_origin_x) * p.field_inv_spacing_x;
  float gy = (py - p.field_origin_y) * p.field_inv_spacing_y;
  gx = ClampF(gx, 0.f, static_cast<float>(p.field_w - 1));
  gy = ClampF(gy, 0.f, static_cast<float>(p.field_h - 1));
  // gx may be NaN only if the grid itself is NaN; ClampF maps NaN to NaN and
  // floorf(NaN) cast to int is undefined, so treat it as node 0.
  if (!(gx == gx)) gx = 0.f;
  if (!(gy == gy)) gy = 0.f;
  int64_t x0 = static_cast<int64_t>(floorf(gx));
  int64_t y0 = static_cast<int64_t>(floorf(gy));
  x0 = ClampI(x0, 0, p.field_w - 1);
  y0 = ClampI(y0, 0, p.field_h - 1);
  const int64_t x1 = x0 + 1 < p.field_w ? x0 + 1 : x0;
  const int64_t y1 = y0 + 1 < p.field_h ? y0 + 1 : y0;
  const float tx = gx - static_cast<float>(x0);
  const float ty = gy - static_cast<float>(y0);
  const int64_t r0 = y0 * p.field_w;
  const int64_t r1 = y1 * p.field_w;
  *dx = Lerp(Lerp(p.field_dx[r0 + x0], p.field_dx[r0 + x1], tx),
             Lerp(p.field_dx[r1 + x0], p.field_dx[r1 + x1], tx), ty);
  *dy = Lerp(Lerp(p.field_dy[r0 + x0], p.field_dy[r0 + x1], tx),
             Lerp(p.field_dy[r1 + x0], p.field_dy[r1 + x1], tx), ty);
}

// Moving-image position sampled by output pixel (i, j).
REGSERVE_HD void SourcePosition(const WarpParams& p, int64_t i, int64_t j,
                                float* sx, float* sy) {
  float px, py, dx, dy;
  GridPosition(p, i, j, &px, &py);
  FieldAt(p, px, py, &dx, &dy);
  *sx = px + dx;
  *sy = py + dy;
}

// A position is inside the moving image when it lies in the pixels' area,
// [-0.5, w - 0.5) x [-0.5, h - 0.5); taps beyond the border are clamped.
// NaN positions are outside.
REGSERVE_HD bool Inside(const WarpParams& p, float sx, float sy) {
  return sx >= -0.5f && sx < static_cast<float>(p.src_w) - 0.5f &&
         sy >= -0.5f && sy < static_cast<float>(p.src_h) - 0.5f;
}

// Tap columns/rows the interpolation reads for an inside position, in
// absolute source pixels (already clamped): [lo, hi].
REGSERVE_HD void TapRange(int interp, float s, int64_t size, int64_t* lo,
                          int64_t* hi) {
  if (interp == kKernelNearest) {
    *lo = *hi = ClampI(static_cast<int64_t>(floorf(s + 0.5f)), 0, size - 1);
    return;
  }
  const int64_t f = static_cast<int64_t>(floorf(s));
  const int64_t r = interp == kKernelCubic ? 1 : 0;
  *lo = ClampI(f - r, 0, size - 1);
  *hi = ClampI(f + 1 + r, 0, size - 1);
}

// Catmull-Rom (Keys, a = -0.5) weights for offsets -1, 0, 1, 2.
REGSERVE_HD void CubicWeights(float t, float w[4]) {
  const float a = -0.5f;
  const float t2 = t * t;
  const float t3 = t2 * t;
  w[0] = a * t3 - 2.f * a * t2 + a * t;
  w[1] = (a + 2.f) * t3 - (a + 3.f) * t2 + 1.f;
  w[2] = -(a + 2.f) * t3 + (2.f * a + 3.f) * t2 - a * t;
  w[3] = -a * t3 + a * t2;
}

template <typename T>
REGSERVE_HD T FromFloat(float v);
template <>
REGSERVE_HD uint8_t FromFloat<uint8_t>(float v) {
  return static_cast<uint8_t>(ClampF(floorf(v + 0.5f), 0.f, 255.f));
}
template <>
REGSERVE_HD uint16_t FromFloat<uint16_t>(float v) {
  return static_cast<uint16_t>(ClampF(floorf(v + 0.5f), 0.f, 65535.f));
}
template <>
REGSERVE_HD float FromFloat<float>(float v) {
  return v;
}

// Computes output pixel (i, j) into `out` (C samples).
template <typename T, int C, int I>
REGSERVE_HD void WarpPixel(const WarpParams& p, int64_t i, int64_t j, T* out) {
  float sx, sy;
  SourcePosition(p, i, j, &sx, &sy);
  if (!Inside(p, sx, sy)) {
    const T f = FromFloat<T>(p.fill);
    REGSERVE_UNROLL
    for (int c = 0; c < C; ++c) out[c] = f;
    return;
  }
  const T* src = static_cast<const T*>(p.src);
  if (I == kKernelNearest) {
    const int64_t x =
        ClampI(static_cast<int64_t>(floorf(sx + 0.5f)), 0, p.src_w - 1);
    const int64_t y =
        ClampI(static_cast<int64_t>(floorf(sy + 0.5f)), 0, p.src_h - 1);
    const T* q = src + ((y - p.src_y0) * p.src_stride + (x - p.src_x0)) * C;
    REGSERVE_UNROLL
    for (int c = 0; c < C; ++c) out[c] = q[c];
    return;
  }
  const float fx = floorf(sx);
  const float fy = floorf(sy);
  const float tx = sx - fx;
  const float ty = sy - fy;
  const int64_t ix = static_cast<int64_t>(fx);
  const int64_t iy = static_cast<int64_t>(fy);
  if (I == kKernelLinear) {
    const int64_t x0 = ClampI(ix, 0, p.src_w - 1) - p.src_x0;
    const int64_t x1 = ClampI(ix + 1, 0, p.src_w - 1) - p.src_x0;
    const int64_t y0 = ClampI(iy, 0, p.src_h - 1) - p.src_y0;
    const int64_t y1 = ClampI(iy + 1, 0, p.src_h - 1) - p.src_y0;
    const T* r0 = src + y0 * p.src_stride * C;
    const T* r1 = src + y1 * p.src_stride * C;
    REGSERVE_UNROLL
    for (int c = 0; c < C; ++c) {
      const float top = Lerp(static_cast<float>(r0[x0 * C + c]),
                             static_cast<float>(r0[x1 * C + c]), tx);
      const float bot = Lerp(static_cast<float>(r1[x0 * C + c]),
                             static_cast<float>(r1[x1 * C + c]), tx);
      out[c] = FromFloat<T>(Lerp(top, bot, ty));
    }
    return;
  }
  // Cubic.
  float wx[4], wy[4];
  CubicWeights(tx, wx);
  CubicWeights(ty, wy);
  int64_t xs[4], ys[4];
  REGSERVE_UNROLL
  for (int k = 0; k < 4; ++k) {
    xs[k] = ClampI(ix - 1 + k, 0, p.src_w - 1) - p.src_x0;
    ys[k] = ClampI(iy - 1 + k, 0, p.src_h - 1) - p.src_y0;
  }
  REGSERVE_UNROLL
  for (int c = 0; c < C; ++c) {
    float acc = 0.f;
    REGSERVE_UNROLL
    for (int r = 0; r < 4; ++r) {
      const T* row = src + ys[r] * p.src_stride * C;
      float h = 0.f;
      REGSERVE_UNROLL
      for (int k = 0; k < 4; ++k) {
        h = h + wx[k] * static_cast<float>(row[xs[k] * C + c]);
      }
      acc = acc + wy[r] * h;
    }
    out[c] = FromFloat<T>(acc);
  }
}

// Computes one output row of the rectangle (absolute row j).
template <typename T, int C, int I>
inline void WarpRow(const WarpParams& p, int64_t j) {
  T* out = static_cast<T*>(p.out) + (j - p.out_y0) * p.out_stride * C;
  for (int64_t i = p.rect_x0; i < p.rect_x0 + p.rect_w; ++i) {
    WarpPixel<T, C, I>(p, i, j, out + (i - p.out_x0) * C);
  }
}

// Launches WarpPixel over p.rect on `stream` (a cudaStream_t). Defined in
// warp_cuda_kernel.cu (CUDA builds only). Returns the cudaError_t of the
// launch (0 = success).
int LaunchWarpKernel(const WarpParams& p, void* stream);

}  // namespace warp_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_WARP_WARP_KERNEL_H_
