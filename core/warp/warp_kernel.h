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

// floorf, bit for bit. On the host without it: x86-64's baseline (SSE2)
// has no rounding instruction, so g++ calls libm's floorf, seven times per
// warped pixel. Floats of magnitude 2^23 and above are integers already;
// NaN and infinities come back as they are; an integer x (-0 included)
// comes back itself.
REGSERVE_HD float Floor(float x) {
#ifdef __CUDA_ARCH__
  return floorf(x);
#else
  if (!(x < 8388608.f && x > -8388608.f)) return x;
  const float t = static_cast<float>(static_cast<int32_t>(x));
  return t == x ? x : (t > x ? t - 1.f : t);
#endif
}

// Fixed-frame position of output pixel (i, j).
REGSERVE_HD void GridPosition(const WarpParams& p, int64_t i, int64_t j,
                              float* px, float* py) {
  *px = p.grid_origin_x + static_cast<float>(i) * p.grid_spacing_x;
  *py = p.grid_origin_y + static_cast<float>(j) * p.grid_spacing_y;
}

// Where a fixed position falls between the field's nodes along one axis:
// nodes lo and hi (border-clamped), weight t of hi.
struct FieldTap {
  int64_t lo = 0, hi = 0;
  float t = 0.f;
};

REGSERVE_HD FieldTap FieldAxisTap(float pos, float origin, float inv_spacing,
                                  int64_t nodes) {
  float g = (pos - origin) * inv_spacing;
  g = ClampF(g, 0.f, static_cast<float>(nodes - 1));
  // g may be NaN only if the grid itself is NaN; ClampF maps NaN to NaN and
  // floor(NaN) cast to int is undefined, so treat it as node 0.
  if (!(g == g)) g = 0.f;
  FieldTap tap;
  tap.lo = ClampI(static_cast<int64_t>(Floor(g)), 0, nodes - 1);
  tap.hi = tap.lo + 1 < nodes ? tap.lo + 1 : tap.lo;
  tap.t = g - static_cast<float>(tap.lo);
  return tap;
}

REGSERVE_HD FieldTap FieldTapX(const WarpParams& p, float px) {
  return FieldAxisTap(px, p.field_origin_x, p.field_inv_spacing_x, p.field_w);
}
REGSERVE_HD FieldTap FieldTapY(const WarpParams& p, float py) {
  return FieldAxisTap(py, p.field_origin_y, p.field_inv_spacing_y, p.field_h);
}

// Bilinear displacement between the taps' nodes.
REGSERVE_HD void FieldBetween(const WarpParams& p, const FieldTap& x,
                              const FieldTap& y, float* dx, float* dy) {
  const int64_t r0 = y.lo * p.field_w;
  const int64_t r1 = y.hi * p.field_w;
  *dx = Lerp(Lerp(p.field_dx[r0 + x.lo], p.field_dx[r0 + x.hi], x.t),
             Lerp(p.field_dx[r1 + x.lo], p.field_dx[r1 + x.hi], x.t), y.t);
  *dy = Lerp(Lerp(p.field_dy[r0 + x.lo], p.field_dy[r0 + x.hi], x.t),
             Lerp(p.field_dy[r1 + x.lo], p.field_dy[r1 + x.hi], x.t), y.t);
}

// Bilinear, border-clamped displacement at fixed position (px, py).
REGSERVE_HD void FieldAt(const WarpParams& p, float px, float py, float* dx,
                         float* dy) {
  FieldBetween(p, FieldTapX(p, px), FieldTapY(p, py), dx, dy);
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
    *lo = *hi = ClampI(static_cast<int64_t>(Floor(s + 0.5f)), 0, size - 1);
    return;
  }
  const int64_t f = static_cast<int64_t>(Floor(s));
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
  return static_cast<uint8_t>(ClampF(Floor(v + 0.5f), 0.f, 255.f));
}
template <>
REGSERVE_HD uint16_t FromFloat<uint16_t>(float v) {
  return static_cast<uint16_t>(ClampF(Floor(v + 0.5f), 0.f, 65535.f));
}
template <>
REGSERVE_HD float FromFloat<float>(float v) {
  return v;
}

// Samples the moving image at (sx, sy) into `out` (C samples).
template <typename T, int C, int I>
REGSERVE_HD void SampleAt(const WarpParams& p, float sx, float sy, T* out) {
  if (!Inside(p, sx, sy)) {
    const T f = FromFloat<T>(p.fill);
    REGSERVE_UNROLL
    for (int c = 0; c < C; ++c) out[c] = f;
    return;
  }
  const T* src = static_cast<const T*>(p.src);
  if (I == kKernelNearest) {
    const int64_t x =
        ClampI(static_cast<int64_t>(Floor(sx + 0.5f)), 0, p.src_w - 1);
    const int64_t y =
        ClampI(static_cast<int64_t>(Floor(sy + 0.5f)), 0, p.src_h - 1);
    const T* q = src + ((y - p.src_y0) * p.src_stride + (x - p.src_x0)) * C;
    REGSERVE_UNROLL
    for (int c = 0; c < C; ++c) out[c] = q[c];
    return;
  }
  const float fx = Floor(sx);
  const float fy = Floor(sy);
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

// Computes output pixel (i, j) into `out` (C samples).
template <typename T, int C, int I>
REGSERVE_HD void WarpPixel(const WarpParams& p, int64_t i, int64_t j, T* out) {
  float sx, sy;
  SourcePosition(p, i, j, &sx, &sy);
  SampleAt<T, C, I>(p, sx, sy, out);
}

// The rectangle's columns: each one's fixed x and field tap, the same for
// every row (the CPU rows compute them once per rectangle).
struct ColumnTap {
  float px = 0.f;
  FieldTap tap;
};

// Computes one output row of the rectangle (absolute row j), `columns`
// holding p.rect_w ColumnTaps from column p.rect_x0: WarpPixel's operations
// on the same values, so the same bits.
template <typename T, int C, int I>
inline void WarpRow(const WarpParams& p, const ColumnTap* columns, int64_t j) {
  T* out = static_cast<T*>(p.out) + (j - p.out_y0) * p.out_stride * C;
  float px, py;
  GridPosition(p, p.rect_x0, j, &px, &py);
  const FieldTap row = FieldTapY(p, py);
  for (int64_t k = 0; k < p.rect_w; ++k) {
    float dx, dy;
    FieldBetween(p, columns[k].tap, row, &dx, &dy);
    SampleAt<T, C, I>(p, columns[k].px + dx, py + dy,
                      out + (p.rect_x0 + k - p.out_x0) * C);
  }
}

// Launches WarpPixel over p.rect on `stream` (a cudaStream_t). Defined in
// warp_cuda_kernel.cu (CUDA builds only). Returns the cudaError_t of the
// launch (0 = success).
int LaunchWarpKernel(const WarpParams& p, void* stream);

}  // namespace warp_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_WARP_WARP_KERNEL_H_
