// Copyright regserve authors.
//
// A coarser copy of a displacement field that the warp reads in its place
// when it moves no output pixel by more than a tolerance.
//
// The field a job warps with lies on the registration copy's grid (a node
// every 3.77 full-resolution pixels for the 283.6 MP pair: 160 MB), though
// elastix's B-spline and the refinement's control grid vary over hundreds of
// pixels. On the GPU those bytes cross PCIe beside the image's and set the
// warp's time (docs/benchmarks.md, "Session 6's device runs"); on the CPU
// they crowd the caches.
//
// CoarsenField samples the field bilinearly on a grid with `factor` times
// fewer nodes per axis spanning the same extent (so the clamping at the
// borders is the same), and measures the largest difference between the two
// bilinear interpolants over the whole plane. Both are bilinear within each
// cell of the overlay of the two grids, so the largest difference lies on
// the overlay's vertices, which are all checked: the bound is exact up to
// float rounding.
//
//   FieldCoarsening c = CoarsestFieldWithin(field, 0.01, 8, threads);
//   warper->Warp(moving, c.factor > 1 ? c.field : field, ...);
#ifndef REGSERVE_CORE_IMAGE_FIELD_COARSEN_H_
#define REGSERVE_CORE_IMAGE_FIELD_COARSEN_H_

#include "core/image/displacement_field.h"

namespace regserve {

struct FieldCoarsening {
  int factor = 1;           // 1: the field itself (`field` is then empty)
  DisplacementField field;  // the coarser field when factor > 1
  double max_error_px = 0;  // largest |coarse - field| anywhere, in px
};

// The field on a grid of ceil((n - 1) / factor) + 1 nodes per axis (at
// least 2) over the same extent, and its largest deviation from `field`.
// `threads` >= 1 share the measurement.
FieldCoarsening CoarsenField(const DisplacementField& field, int factor,
                             int threads);

// The coarsest of the factors 2, 4, 8 ... up to `max_factor` whose
// deviation is at most `tolerance_px`, or factor 1 when none is.
FieldCoarsening CoarsestFieldWithin(const DisplacementField& field,
                                    double tolerance_px, int max_factor,
                                    int threads);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_FIELD_COARSEN_H_
