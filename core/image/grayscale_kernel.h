// Copyright regserve authors.
//
// Private to core/image: the per-row kernel of the grayscale registration
// copy, shared by MakeGrayscaleCopy (image_io.h: the source whole in RAM) and
// ReadGrayscaleCopyFile (streamed_gray.h: the source decoded in strips). Both
// paths give the same bits because every output row is the same sum in the
// same order: zero, then + weight(k) * ReduceRow(k) for source rows k
// ascending, then * norm.
//
//   GrayKernel kernel;
//   REGSERVE_ASSIGN_OR_RETURN(kernel, MakeGrayKernel(src_spec, tw, th));
//   kernel.reduce(row_k, src_w, kernel.wx, luma, reduced);   // per source row
//   AccumulateRow(kernel.wy, k, reduced, tw, r0, r1, &dst);  // into outputs
//   NormalizeRows(kernel.norm, r0, r1, &dst);                // once, at the
//   end
#ifndef REGSERVE_CORE_IMAGE_GRAYSCALE_KERNEL_H_
#define REGSERVE_CORE_IMAGE_GRAYSCALE_KERNEL_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/image.h"

namespace regserve {
namespace gray_internal {

// Source range and overlap weights of each output sample along one axis.
// Output sample j covers [j*scale, (j+1)*scale) of the source; source sample
// i covers [i, i+1). weights[offset[j] .. offset[j+1]) belong to source
// samples first[j], first[j]+1, ...; they are overlap lengths divided by
// scale, so they sum to 1.
struct AxisWeights {
  std::vector<int64_t> first;
  std::vector<int64_t> offset;
  std::vector<float> weights;

  // One past the last source sample of output sample j.
  int64_t end(int64_t j) const {
    return first[j] + (offset[j + 1] - offset[j]);
  }
  // The output samples whose footprint contains source sample k, as
  // [begin, end) (never empty for 0 <= k < source).
  std::pair<int64_t, int64_t> OutputsOf(int64_t k) const;
};

// One source row (of `width` pixels) to its luma, reduced horizontally to
// wx's target width: luma gets `width` floats, reduced the target width.
using ReduceRowFn = void (*)(const void* row, int64_t width,
                             const AxisWeights& wx, float* luma,
                             float* reduced);

struct GrayKernel {
  AxisWeights wx, wy;
  ReduceRowFn reduce = nullptr;
  float norm = 1.0f;  // 1/255, 1/65535 or 1 (float input)
};

// Checks 1 <= target <= the source size (InvalidArgument otherwise) and
// builds the tables (ResourceExhausted when they cannot be allocated).
absl::StatusOr<GrayKernel> MakeGrayKernel(const ImageSpec& source,
                                          int64_t target_width,
                                          int64_t target_height);

// Adds weight * reduced into the output rows in [row_begin, row_end) whose
// footprint contains source row k. Callers go through k in ascending order
// for each output row, after zeroing it.
void AccumulateRow(const AxisWeights& wy, int64_t k, const float* reduced,
                   int64_t row_begin, int64_t row_end, Image* dst);

// Multiplies rows [row_begin, row_end) by norm (after all accumulation).
void NormalizeRows(float norm, int64_t row_begin, int64_t row_end, Image* dst);

}  // namespace gray_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_GRAYSCALE_KERNEL_H_
