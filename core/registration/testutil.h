// Copyright regserve authors.
//
// Helpers for the registration golden tests and benchmark (not part of the
// library): reading PNG/JPEG/MetaImage test images as float32 grayscale with
// ITK's readers, simple resampling, and checks on displacement fields.
//
// Thread safety: all functions are thread-safe (no shared state).
#ifndef REGSERVE_CORE_REGISTRATION_TESTUTIL_H_
#define REGSERVE_CORE_REGISTRATION_TESTUTIL_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"

namespace regserve {
namespace testutil {

// Reads .png / .jpg (ITK, colour reduced to luminance) or .mhd (our reader)
// as a 1-channel float32 image with the file's own sample values.
absl::StatusOr<Image> ReadGrayFloat(const std::string& path);

// Copies with a `border`-pixel frame of `value` on every side.
Image Pad(const Image& image, int border, float value = 0.0f);
// Box-filter downsampling by an integer factor (the remainder is cropped).
Image DownsampleBox(const Image& image, int factor);

// The field's displacement at full-resolution position (x, y), bilinear
// between nodes and clamped at the border (displacement_field.h).
std::array<double, 2> FieldAt(const DisplacementField& field, double x,
                              double y);

// Bilinear sample of a 1-channel float image at (x, y); `outside` beyond it.
float SampleBilinear(const Image& image, double x, double y,
                     float outside = 0.0f);

// out(x, y) = moving(p + d(p)) for every pixel p = (x, y) of a
// width x height output, where d is the field (full-resolution pixels).
Image WarpWithField(const Image& moving, const DisplacementField& field,
                    int64_t width, int64_t height);

// out(p) = image(map(p)) with bilinear sampling: a known deformation.
Image WarpWithMap(
    const Image& image,
    const std::function<std::array<double, 2>(double, double)>& map);

// Least-squares affine fit q = A p + t of the field's node positions p and
// p + d(p): a[0..3] = A row-major, a[4..5] = t.
std::array<double, 6> FitAffine(const DisplacementField& field);

// Mean of dx and dy over the nodes.
std::array<double, 2> MeanDisplacement(const DisplacementField& field);

}  // namespace testutil
}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_TESTUTIL_H_
