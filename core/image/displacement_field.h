// Copyright regserve authors.
//
// DisplacementField: a dense 2-D displacement T(x) - x sampled on a regular
// grid, in full-resolution pixel units. Produced by core/registration (from
// transformix -def all on the registration copy) and consumed by core/warp,
// which upsamples it bilinearly on the fly.
//
// Coordinate convention (used everywhere in regserve): a full-resolution
// pixel (i, j) has its centre at (i, j). Grid node (gx, gy) lies at
// full-resolution position (origin_x + gx * spacing_x,
// origin_y + gy * spacing_y) of the FIXED image. The displacement stored there
// maps a fixed-image position p to the moving-image position p + d(p), in
// MOVING full-resolution pixels. Positions between nodes are interpolated
// bilinearly; positions outside the grid clamp to the border node.
//
// For a registration copy downsampled by an integer or fractional factor f
// (area averaging), node centres are at origin = (f - 1) / 2, spacing = f.
#ifndef REGSERVE_CORE_IMAGE_DISPLACEMENT_FIELD_H_
#define REGSERVE_CORE_IMAGE_DISPLACEMENT_FIELD_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace regserve {

struct DisplacementField {
  int64_t width = 0;   // grid nodes along x
  int64_t height = 0;  // grid nodes along y
  double origin_x = 0.0;
  double origin_y = 0.0;
  double spacing_x = 1.0;
  double spacing_y = 1.0;
  // Row-major, width * height each.
  std::vector<float> dx;
  std::vector<float> dy;

  bool empty() const { return width == 0 || height == 0; }
  size_t bytes() const { return (dx.size() + dy.size()) * sizeof(float); }
};

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_DISPLACEMENT_FIELD_H_
