// Copyright regserve authors.
#include "core/refine/box_filter.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace regserve {
namespace refine_internal {
namespace {

// Window sums along rows (x), then along columns (y), each cropped at the
// border; double accumulators keep the running sums exact enough.
at::Tensor BoxSumCpu(const at::Tensor& in, int64_t r) {
  const at::Tensor x = in.contiguous();
  const int64_t planes = x.size(0) * x.size(1);
  const int64_t h = x.size(2), w = x.size(3);
  at::Tensor rows = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* mid = rows.data_ptr<float>();
  at::parallel_for(0, planes * h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* s = src + row * w;
      float* d = mid + row * w;
      double acc = 0;
      for (int64_t i = 0; i < std::min(r, w); ++i) acc += s[i];
      for (int64_t i = 0; i < w; ++i) {
        if (i + r < w) acc += s[i + r];
        d[i] = static_cast<float>(acc);
        if (i - r >= 0) acc -= s[i - r];
      }
    }
  });
  at::Tensor out = at::empty_like(x);
  float* dst = out.data_ptr<float>();
  // Columns in chunks, so that each thread streams whole rows.
  const int64_t chunk = 256;
  const int64_t chunks = (w + chunk - 1) / chunk;
  at::parallel_for(0, planes * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(chunk);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t p = job / chunks;
      const int64_t x0 = (job % chunks) * chunk;
      const int64_t n = std::min(chunk, w - x0);
      const float* s = mid + p * h * w + x0;
      float* d = dst + p * h * w + x0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t y = 0; y < std::min(r, h); ++y) {
        for (int64_t i = 0; i < n; ++i) acc[i] += s[y * w + i];
      }
      for (int64_t y = 0; y < h; ++y) {
        if (y + r < h) {
          for (int64_t i = 0; i < n; ++i) acc[i] += s[(y + r) * w + i];
        }
        for (int64_t i = 0; i < n; ++i)
          d[y * w + i] = static_cast<float>(acc[i]);
        if (y - r >= 0) {
          for (int64_t i = 0; i < n; ++i) acc[i] -= s[(y - r) * w + i];
        }
      }
    }
  });
  return out;
}

// 1 / (pixels in the cropped window), 1 x 1 x h x w.
at::Tensor InverseCount(int64_t h, int64_t w, int64_t r) {
  auto counts = [r](int64_t n) {
    at::Tensor i = at::arange(n, at::kFloat);
    return at::minimum(i + r, at::full({n}, n - 1.0f)) -
           at::maximum(i - r, at::zeros({n})) + 1;
  };
  return (1.0 / (counts(h).view({h, 1}) * counts(w).view({1, w})))
      .view({1, 1, h, w});
}

class BoxMeanCpu : public torch::autograd::Function<BoxMeanCpu> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x, int64_t r) {
    const at::Tensor inv = InverseCount(x.size(2), x.size(3), r);
    ctx->save_for_backward({inv});
    ctx->saved_data["r"] = r;
    return BoxSumCpu(x, r).mul_(inv);
  }
  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grad) {
    const at::Tensor inv = ctx->get_saved_variables()[0];
    const int64_t r = ctx->saved_data["r"].toInt();
    return {BoxSumCpu(grad[0] * inv, r), at::Tensor()};
  }
};

}  // namespace

at::Tensor BoxMean(const at::Tensor& x, int64_t win) {
  const int64_t r = win / 2;
  if (x.device().is_cpu()) return BoxMeanCpu::apply(x, r);
  const at::Tensor y =
      at::avg_pool2d(x, {1, win}, {1, 1}, {0, r}, false, false);
  return at::avg_pool2d(y, {win, 1}, {1, 1}, {r, 0}, false, false);
}

}  // namespace refine_internal
}  // namespace regserve
