// Copyright regserve authors.
//
// Operations on maps between the fixed and the moving image: a 3x3
// homography (from the initial alignment) applied to points, used to
// pre-warp a grayscale registration copy, and composed with a displacement
// field (from elastix) into one total field.
//
// Coordinates follow displacement_field.h: full-resolution pixel (i, j) has
// its centre at (i, j), and a grid's node (gx, gy) lies at (origin_x +
// gx * spacing_x, origin_y + gy * spacing_y). A Homography maps a FIXED
// full-resolution position to a MOVING full-resolution position.
//
//   Homography h = ...;                      // fixed -> moving
//   GridGeometry fixed_grid = RegistrationGrid(fixed_gray.width(),
//       fixed_gray.height(), fixed_full_width, fixed_full_height);
//   GridGeometry moving_grid = RegistrationGrid(...);
//   REGSERVE_ASSIGN_OR_RETURN(Image prewarped,
//       WarpByHomography(moving_gray, moving_grid, h, fixed_grid));
//   // ... elastix registers fixed_gray against `prewarped`, field d ...
//   REGSERVE_ASSIGN_OR_RETURN(DisplacementField total,
//       ComposeHomographyField(h, d));     // total(x) = H(x + d(x)) - x
//
// Thread safety: pure functions; `threads` workers inside a call.
#ifndef REGSERVE_CORE_IMAGE_FIELD_OPS_H_
#define REGSERVE_CORE_IMAGE_FIELD_OPS_H_

#include <array>
#include <cstdint>

#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"

namespace regserve {

// Row-major 3x3 matrix on homogeneous full-resolution coordinates:
// (x', y', w') = m * (x, y, 1), the point is (x' / w', y' / w').
struct Homography {
  std::array<double, 9> m = {1, 0, 0, 0, 1, 0, 0, 0, 1};

  static Homography Identity() { return Homography(); }
  // Maps (x, y). Returns false (and leaves the outputs alone) where the
  // point goes to or beyond infinity (w' <= 1e-12 relative to |m|).
  bool Apply(double x, double y, double* out_x, double* out_y) const;
  // First this map, then `after`: the matrix after * this.
  Homography Then(const Homography& after) const;
  // The inverse; false when singular.
  bool Inverse(Homography* out) const;
};

// A regular grid of sample positions in full-resolution coordinates.
struct GridGeometry {
  int64_t width = 0;
  int64_t height = 0;
  double origin_x = 0.0;
  double origin_y = 0.0;
  double spacing_x = 1.0;
  double spacing_y = 1.0;
};

// The grid of a registration copy of copy_width x copy_height made from a
// full_width x full_height image: spacing full / copy per axis, origin
// (spacing - 1) / 2 (core/registration/registration.h).
GridGeometry RegistrationGrid(int64_t copy_width, int64_t copy_height,
                              int64_t full_width, int64_t full_height);

// Resamples `src` (float32, 1 channel, sampled on `src_grid`) onto `target`:
// out(gx, gy) = src at position H(p), p the full-resolution position of
// target node (gx, gy), bilinear. Nodes whose source position lies outside
// src's pixel centres (or at infinity) get `fill`; when `valid` is non-null
// it receives a uint8 mask of the same size, 1 where the sample was inside.
// Errors: InvalidArgument (not float32 grey, grid size mismatch, empty
// target), ResourceExhausted (allocation).
absl::StatusOr<Image> WarpByHomography(const Image& src,
                                       const GridGeometry& src_grid,
                                       const Homography& h,
                                       const GridGeometry& target,
                                       float fill = 0.0f,
                                       Image* valid = nullptr, int threads = 1);

// Where `valid` (uint8, from WarpByHomography) is 0, copies `from`'s sample
// into `image`; all three the same size, `from` and `image` float32 grey.
// The initial alignment fills the outside of its pre-warped moving copy with
// the fixed copy: where there is no moving data, the pair then agrees at
// zero displacement, instead of showing elastix an edge that is not in the
// fixed image. InvalidArgument for mismatched images.
absl::Status FillInvalid(const Image& valid, const Image& from, Image* image);

// The total map of "first the field, then the homography": on d's grid,
// total(x) = H(x + d(x)) - x, in full-resolution pixels. This is the field
// of a registration whose moving copy was pre-warped by H onto the fixed
// grid (WarpByHomography) and then registered with displacement d. Nodes
// where H sends x + d(x) to infinity get a displacement far outside any
// image (-1e7 px), so the warp fills them. InvalidArgument for an empty or
// inconsistent field.
absl::StatusOr<DisplacementField> ComposeHomographyField(
    const Homography& h, const DisplacementField& d, int threads = 1);

// The field of H alone, d(x) = H(x) - x, sampled on `grid` (the same
// conventions as ComposeHomographyField).
absl::StatusOr<DisplacementField> HomographyField(const Homography& h,
                                                  const GridGeometry& grid,
                                                  int threads = 1);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_FIELD_OPS_H_
