// Copyright regserve authors.
//
// BoxMean: the mean over a win x win window around every pixel of an
// N x C x H x W float tensor, the window cropped at the image border (as
// avg_pool2d with stride 1, padding win / 2 and count_include_pad = false),
// differentiable. The LNCC of core/refine needs three of these per step.
//
//   at::Tensor local_mean = BoxMean(image, 9);   // same shape as image
//
// On the CPU it runs as running sums (O(1) per pixel whatever the window,
// about 20x faster than avg_pool2d's forward and backward there) inside a
// custom autograd function: a cropped box sum is self-adjoint, so the
// backward is the same filter. On other devices it is avg_pool2d.
//
// Thread safety: pure function of its inputs; uses LibTorch's intra-op
// thread pool.
#ifndef REGSERVE_CORE_REFINE_BOX_FILTER_H_
#define REGSERVE_CORE_REFINE_BOX_FILTER_H_

#include <ATen/ATen.h>

#include <cstdint>

namespace regserve {
namespace refine_internal {

// `x`: N x C x H x W, float32; `win` odd, >= 1.
at::Tensor BoxMean(const at::Tensor& x, int64_t win);

}  // namespace refine_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_REFINE_BOX_FILTER_H_
