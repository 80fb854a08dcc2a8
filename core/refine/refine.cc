// Copyright regserve authors.
//
// RefineField: see refine.h. Narrow LibTorch headers only (<torch/torch.h>
// takes ~40 s to compile).
#include "core/refine/refine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/optim/adam.h>

#if REGSERVE_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/refine/box_filter.h"

namespace regserve {
namespace {

// grid_sampler's integer modes.
constexpr int64_t kBilinear = 0;
constexpr int64_t kBorder = 1;
// Below this edge a pyramid level carries too little to register.
constexpr int64_t kMinLevelEdge = 24;
// Automatic levels: halve until the coarsest level's longer edge is at most
// this, so that its 9 px LNCC windows see the blurred background's large
// structures. On the Kleiber benchmark (docs/benchmarks.md) the whole 20 MP
// copy with 3 levels (coarsest 1443 px) kept elastix's 13 px p95 errors;
// 6 levels (180 px) took them to 0.17 px.
constexpr int64_t kCoarsestEdge = 160;
// ... and at least this many where the short edge allows (a 181x217 image
// with 2 levels kept most of a 3 px error that 3 levels removed).
constexpr int kMinAutoLevels = 4;
// Adam's epsilon per control grid, as a fraction of the grid's RMS gradient
// at its first step: nodes with far smaller gradients (no texture) then take
// proportionally small steps instead of full steps on noise. 0.3 against
// 0.01 and 3 on the Kleiber benchmark (docs/benchmarks.md): max error 1.1
// against 1.0 and 7.3 px, mean 0.155 against 0.160 and 0.225 px.
constexpr double kAdamEpsilonPerRms = 0.3;
// The LNCC gain (at the finest level) below which the input field is kept.
constexpr double kMinNccGain = 1e-3;

// The cost model (EstimateRefineCost), fitted to refine_memory_benchmark
// on this project's 2-core machine (LibTorch 1.13, CPU, one thread, 40
// steps per level, automatic levels; docs/benchmarks.md, "Refinement"):
// peak RSS growth 56 MB at 0.25 MP, 229 MB at 1 MP, 1123 MB at 5 MP and
// 2217 MB at 20 MP worked at the copy's size; 756 MB for a 20 MP copy
// worked at 0.55 MP. CPU seconds: 0.90, 3.3, 22.6 and 160 at those sizes
// (the cost per pixel grows with the working set), plus about 50 ns per
// copy pixel for the anti-aliased shrink.
constexpr double kHostBaseBytes = 32e6;
constexpr double kWorkBytesPerPixel = 180;
constexpr double kCopyBytesPerPixel = 16;
constexpr double kFieldBytesPerNode = 24;
constexpr double kSecondsPerWorkPixelStep = 60e-9;
constexpr double kSecondsPerWorkPixelStepPerMp = 6e-9;
constexpr double kSecondsPerCopyPixel = 50e-9;
// More threads did not help: 2 threads took 4.5 s where 1 took 4.1 s on a
// quiet machine, and 4 to 6 times as long as 1 under load (OpenMP's
// barriers wait for a preempted thread). The model assumes no speed-up.
constexpr double kThreadEfficiency = 0.0;
// CUDA, measured on the H200 (refine_memory_benchmark --device=cuda,
// LibTorch 2.11): the caching allocator's peak was 126 MB at 1 MP, 622 MB
// at 5 MP and 2437 MB at 20 MP worked at the copy's size, 529 MB for a
// 20 MP copy worked at 1.25 MP; the host kept the field's staging and
// result (608 MB of RSS growth for a 20 MP field). The base covers the
// kernels' workspace and the allocator's rounding.
constexpr double kCudaBaseBytes = 256e6;
constexpr double kCudaWorkBytesPerPixel = 120;
constexpr double kCudaCopyBytesPerPixel = 12;
constexpr double kCudaFieldBytesPerNode = 12;
constexpr double kCudaHostFieldBytesPerNode = 32;

// Pixel centres of an image or grid in full-resolution pixels: pixel
// (i, j) lies at (ox + i * sx, oy + j * sy).
struct Grid {
  int64_t w = 0;
  int64_t h = 0;
  double sx = 1.0;
  double sy = 1.0;
  double ox = 0.0;
  double oy = 0.0;
};

Grid CopyGrid(const Image& copy, int64_t full_w, int64_t full_h) {
  Grid g;
  g.w = copy.width();
  g.h = copy.height();
  g.sx = static_cast<double>(full_w) / g.w;
  g.sy = static_cast<double>(full_h) / g.h;
  g.ox = (g.sx - 1.0) / 2.0;
  g.oy = (g.sy - 1.0) / 2.0;
  return g;
}

// avg_pool2d by k (remainder cropped) keeps "origin (s - 1) / 2".
Grid Pooled(const Grid& g, int64_t k) {
  Grid p;
  p.w = g.w / k;
  p.h = g.h / k;
  p.sx = g.sx * k;
  p.sy = g.sy * k;
  p.ox = (p.sx - 1.0) / 2.0;
  p.oy = (p.sy - 1.0) / 2.0;
  return p;
}

Grid FieldGrid(const DisplacementField& f) {
  return Grid{f.width,     f.height,   f.spacing_x,
              f.spacing_y, f.origin_x, f.origin_y};
}

// 1 x 2 x h x w tensor of the pixel centres of `g` (x, then y).
at::Tensor Positions(const Grid& g, const at::TensorOptions& to) {
  at::Tensor x = at::arange(g.w, to).mul_(g.sx).add_(g.ox);
  at::Tensor y = at::arange(g.h, to).mul_(g.sy).add_(g.oy);
  return at::stack({x.view({1, g.w}).expand({g.h, g.w}),
                    y.view({g.h, 1}).expand({g.h, g.w})})
      .unsqueeze(0);
}

// grid_sampler's normalised coordinates (align_corners) of full-resolution
// positions `pos` (1 x 2 x h x w) in the image or grid `g`: 1 x h x w x 2.
at::Tensor Normalised(const at::Tensor& pos, const Grid& g) {
  auto axis = [](const at::Tensor& p, int64_t n, double s, double o) {
    if (n <= 1) return at::zeros_like(p);
    const double a = 2.0 / (s * (n - 1));
    return p.mul(a).add(-o * a - 1.0);
  };
  return at::stack({axis(pos.select(1, 0), g.w, g.sx, g.ox),
                    axis(pos.select(1, 1), g.h, g.sy, g.oy)},
                   -1);
}

// An image as a 1 x 1 x h x w tensor scaled to zero mean and unit variance,
// so that the LNCC constants mean the same for every image.
at::Tensor ImageTensor(const Image& img, const at::TensorOptions& to) {
  at::Tensor t = at::from_blob(const_cast<float*>(img.as<float>()),
                               {1, 1, img.height(), img.width()},
                               at::TensorOptions().dtype(at::kFloat))
                     .to(to, /*non_blocking=*/false, /*copy=*/true);
  const at::Tensor mean = t.mean();
  const at::Tensor std = t.std().clamp_min(1e-6);
  return t.sub_(mean).div_(std);
}

at::Tensor FieldTensor(const DisplacementField& f,
                       const at::TensorOptions& to) {
  const at::TensorOptions cpu = at::TensorOptions().dtype(at::kFloat);
  at::Tensor dx =
      at::from_blob(const_cast<float*>(f.dx.data()), {f.height, f.width}, cpu);
  at::Tensor dy =
      at::from_blob(const_cast<float*>(f.dy.data()), {f.height, f.width}, cpu);
  return at::stack({dx, dy}).unsqueeze(0).to(to, false, true);
}

// The control grid of a level: nodes from its first to its last pixel
// centre, about `spacing` level pixels apart, so that upsampling the nodes
// bilinearly with align_corners lands exactly on the level's pixels.
Grid ControlGrid(const Grid& level, double spacing) {
  Grid g;
  g.w = std::max<int64_t>(2, std::llround((level.w - 1) / spacing) + 1);
  g.h = std::max<int64_t>(2, std::llround((level.h - 1) / spacing) + 1);
  g.sx = level.sx * (level.w - 1) / (g.w - 1);
  g.sy = level.sy * (level.h - 1) / (g.h - 1);
  g.ox = level.ox;
  g.oy = level.oy;
  return g;
}

// One pyramid level: constants of the optimisation (no gradient).
struct Level {
  Grid fixed_grid;
  Grid moving_grid;
  Grid ctrl_grid;
  at::Tensor fixed;       // 1 x 1 x h x w, normalised
  at::Tensor fixed_mean;  // LNCC window statistics of `fixed`
  at::Tensor fixed_var;
  at::Tensor moving;  // 1 x 1 x hm x wm, normalised
  // Where the initial field sends each pixel, in normalised moving
  // coordinates (1 x 2 x h x w), and the factor from full-resolution
  // pixels to those (1 x 2 x 1 x 1).
  at::Tensor grid0;
  at::Tensor scale;
  // Per-pixel weight of the LNCC: inside the overlap (eroded by the
  // window) and textured; and its sum.
  at::Tensor weight;
  double weight_sum = 0.0;
  // The initial field less the prior map's displacement, at the control
  // nodes: the bending penalty acts on this plus the residual.
  at::Tensor d0_nodes;
};

struct LossTerms {
  at::Tensor total;
  at::Tensor ncc;  // weighted mean LNCC
};

// Bending energy of a field sampled on `g` (1 x 2 x h x w), per squared
// full-resolution pixel.
at::Tensor Bending(const at::Tensor& d, const Grid& g) {
  at::Tensor bend = at::zeros({}, d.options());
  if (g.w >= 3) {
    const at::Tensor dxx = d.narrow(3, 2, g.w - 2) -
                           2 * d.narrow(3, 1, g.w - 2) +
                           d.narrow(3, 0, g.w - 2);
    bend = bend + dxx.pow(2).mean() / std::pow(g.sx, 4);
  }
  if (g.h >= 3) {
    const at::Tensor dyy = d.narrow(2, 2, g.h - 2) -
                           2 * d.narrow(2, 1, g.h - 2) +
                           d.narrow(2, 0, g.h - 2);
    bend = bend + dyy.pow(2).mean() / std::pow(g.sy, 4);
  }
  const at::Tensor top = d.narrow(2, 0, g.h - 1),
                   bottom = d.narrow(2, 1, g.h - 1);
  const at::Tensor dxy = bottom.narrow(3, 1, g.w - 1) -
                         bottom.narrow(3, 0, g.w - 1) -
                         top.narrow(3, 1, g.w - 1) + top.narrow(3, 0, g.w - 1);
  return bend + 2 * dxy.pow(2).mean() / (g.sx * g.sx * g.sy * g.sy);
}

LossTerms Loss(const Level& lv, const at::Tensor& ctrl, const RefineOptions& o,
               double diagonal) {
  const at::Tensor u = at::upsample_bilinear2d(
      ctrl, {lv.fixed_grid.h, lv.fixed_grid.w}, /*align_corners=*/true);
  const at::Tensor where = (lv.grid0 + u * lv.scale).permute({0, 2, 3, 1});
  const at::Tensor warped =
      at::grid_sampler(lv.moving, where, kBilinear, kBorder, true);
  const at::Tensor stats = refine_internal::BoxMean(
      at::cat({warped, lv.fixed * warped, warped * warped}, 1), o.ncc_window);
  const at::Tensor m_mean = stats.narrow(1, 0, 1);
  const at::Tensor cov = stats.narrow(1, 1, 1) - lv.fixed_mean * m_mean;
  const at::Tensor m_var =
      (stats.narrow(1, 2, 1) - m_mean * m_mean).clamp_min(0.0);
  const at::Tensor ncc = cov * at::rsqrt(lv.fixed_var * m_var + o.ncc_epsilon);
  LossTerms t;
  t.ncc = (ncc * lv.weight).sum() / lv.weight_sum;
  t.total = -t.ncc + o.smoothness * diagonal * diagonal *
                         Bending(lv.d0_nodes + ctrl, lv.ctrl_grid);
  return t;
}

class Refiner {
 public:
  Refiner(const Image& fixed, const Image& moving,
          const DisplacementField& initial, const RefineOptions& o,
          at::TensorOptions to)
      : fixed_(fixed), moving_(moving), initial_(initial), o_(o), to_(to) {
    diagonal_ = std::hypot(static_cast<double>(o.fixed_full_width),
                           static_cast<double>(o.fixed_full_height));
  }

  absl::Status Run(RefineResult* result);

 private:
  void BuildLevels();
  Level MakeLevel(const at::Tensor& f, const at::Tensor& m, const Grid& fg,
                  const Grid& mg, const at::Tensor& field) const;
  // Optimises level `index` over the control grids of it and the coarser
  // levels.
  absl::Status Optimise(int index);
  // The control grids summed on the nodes of the finest one.
  at::Tensor Combined(const std::vector<at::Tensor>& to_finest) const;
  void Report(int index, int iteration, double loss);
  const Image& fixed_;
  const Image& moving_;
  const DisplacementField& initial_;
  const RefineOptions& o_;
  const at::TensorOptions to_;
  double diagonal_ = 1.0;
  std::vector<Level> levels_;       // coarsest first
  std::vector<at::Tensor> params_;  // one control grid per level so far
  std::vector<Grid> grids_;
  at::Tensor final_ctrl_;  // on the finest level's control grid
  double total_work_ = 0.0;
  double done_work_ = 0.0;
  int steps_ = 0;
};

// The prior map's displacement H(p) - p at positions `pos` (1 x 2 x h x w).
at::Tensor PriorDisplacement(const at::Tensor& pos,
                             const std::array<double, 9>& m) {
  const at::Tensor x = pos.select(1, 0), y = pos.select(1, 1);
  const at::Tensor w = (x * m[6] + y * m[7] + m[8]).clamp_min(1e-9);
  return at::stack({(x * m[0] + y * m[1] + m[2]) / w - x,
                    (x * m[3] + y * m[4] + m[5]) / w - y},
                   1);
}

// A Gaussian blur of sigma level pixels (separable, border replicated).
at::Tensor Blur(const at::Tensor& x, double sigma) {
  if (sigma <= 0) return x;
  const int64_t r = static_cast<int64_t>(std::ceil(3 * sigma));
  std::vector<double> k(2 * r + 1);
  double sum = 0;
  for (int64_t i = -r; i <= r; ++i) {
    sum += k[i + r] = std::exp(-0.5 * (i / sigma) * (i / sigma));
  }
  // Weighted sums of shifted views: two image-sized buffers at any radius
  // (conv2d's im2col would take 2r + 1 of them).
  auto pass = [&](const at::Tensor& in, int64_t dim) {
    const at::Tensor padded =
        at::replication_pad2d(in, dim == 3 ? std::vector<int64_t>{r, r, 0, 0}
                                           : std::vector<int64_t>{0, 0, r, r});
    const int64_t n = in.size(dim);
    at::Tensor out = padded.narrow(dim, 0, n) * (k[0] / sum);
    for (int64_t i = 1; i <= 2 * r; ++i) {
      out.add_(padded.narrow(dim, i, n), k[i] / sum);
    }
    return out;
  };
  return pass(pass(x, 3), 2);
}

// Downsampling by a whole factor k: a Gaussian of k / 2 pixels against
// aliasing (box pooling alone lets fine texture alias differently in the
// two images, which biased coarse levels by a tenth of a pixel), then
// k x k pooling, which keeps the pixel centres' geometry (see Pooled).
at::Tensor Shrink(const at::Tensor& x, int64_t k) {
  if (k <= 1) return x;
  return at::avg_pool2d(Blur(x, 0.5 * k), {k, k});
}

Level Refiner::MakeLevel(const at::Tensor& f, const at::Tensor& m,
                         const Grid& fg, const Grid& mg,
                         const at::Tensor& field) const {
  const int64_t win = o_.ncc_window;
  Level lv;
  lv.fixed_grid = fg;
  lv.moving_grid = mg;
  lv.ctrl_grid = ControlGrid(fg, o_.control_spacing);
  lv.fixed = f;
  lv.moving = m;
  lv.fixed_mean = refine_internal::BoxMean(f, win);
  lv.fixed_var =
      (refine_internal::BoxMean(f * f, win) - lv.fixed_mean * lv.fixed_mean)
          .clamp_min(0.0);
  const Grid field_grid = FieldGrid(initial_);
  const at::Tensor pos = Positions(fg, to_);
  const at::Tensor d0 = at::grid_sampler(field, Normalised(pos, field_grid),
                                         kBilinear, kBorder, true);
  lv.grid0 = Normalised(pos + d0, mg).permute({0, 3, 1, 2}).contiguous();
  lv.scale = at::tensor({2.0 / (mg.sx * std::max<int64_t>(1, mg.w - 1)),
                         2.0 / (mg.sy * std::max<int64_t>(1, mg.h - 1))},
                        to_)
                 .view({1, 2, 1, 1});
  const at::Tensor inside =
      (lv.grid0.abs() <= 1.0).all(1, /*keepdim=*/true).to(at::kFloat);
  const at::Tensor overlap =
      (refine_internal::BoxMean(inside, win) > 0.999).to(at::kFloat);
  lv.weight = overlap * lv.fixed_var / (lv.fixed_var + o_.texture_variance);
  lv.weight_sum = std::max(1.0, lv.weight.sum().item<double>());
  const at::Tensor nodes = Positions(lv.ctrl_grid, to_);
  lv.d0_nodes = at::grid_sampler(field, Normalised(nodes, field_grid),
                                 kBilinear, kBorder, true) -
                PriorDisplacement(nodes, o_.prior);
  return lv;
}

void Refiner::BuildLevels() {
  at::NoGradGuard no_grad;
  const Grid fixed_copy =
      CopyGrid(fixed_, o_.fixed_full_width, o_.fixed_full_height);
  const Grid moving_copy =
      CopyGrid(moving_, o_.moving_full_width, o_.moving_full_height);
  const RefineWorkSize work =
      RefineWorkSizeFor(fixed_copy.w, fixed_copy.h, o_.max_pixels);
  // The moving copy is pooled to about the fixed level's pixel size.
  const double ratio =
      0.5 * (fixed_copy.sx / moving_copy.sx + fixed_copy.sy / moving_copy.sy);
  const int64_t mpool = std::max<int64_t>(1, std::llround(work.pool * ratio));
  at::Tensor f = Shrink(ImageTensor(fixed_, to_), work.pool);
  at::Tensor m = Shrink(ImageTensor(moving_, to_), mpool);
  Grid fg = Pooled(fixed_copy, work.pool);
  Grid mg = Pooled(moving_copy, mpool);
  const at::Tensor field = FieldTensor(initial_, to_);
  const int levels = RefineLevelsFor(fg.w, fg.h, o_.levels);
  std::vector<Level> fine_first;
  for (int l = 0; l < levels; ++l) {
    if (l > 0) {
      if (std::min({fg.w, fg.h, mg.w, mg.h}) / 2 < kMinLevelEdge) break;
      f = Shrink(f, 2);
      m = Shrink(m, 2);
      fg = Pooled(fg, 2);
      mg = Pooled(mg, 2);
    }
    fine_first.push_back(MakeLevel(f, m, fg, mg, field));
  }
  levels_.assign(std::make_move_iterator(fine_first.rbegin()),
                 std::make_move_iterator(fine_first.rend()));
  for (const Level& lv : levels_) {
    total_work_ +=
        static_cast<double>(lv.fixed_grid.w * lv.fixed_grid.h) * o_.iterations;
  }
}

void Refiner::Report(int index, int iteration, double loss) {
  if (!o_.on_progress) return;
  RefineProgress p;
  p.level = index;
  p.num_levels = static_cast<int>(levels_.size());
  p.iteration = iteration;
  p.iterations = o_.iterations;
  p.loss = loss;
  p.fraction = total_work_ > 0 ? std::min(1.0, done_work_ / total_work_) : 1.0;
  o_.on_progress(p);
}

at::Tensor Refiner::Combined(const std::vector<at::Tensor>& to_finest) const {
  at::Tensor sum = params_.back();
  for (size_t j = 0; j + 1 < params_.size(); ++j) {
    sum = sum +
          at::grid_sampler(params_[j], to_finest[j], kBilinear, kBorder, true);
  }
  return sum;
}

absl::Status Refiner::Optimise(int index) {
  const Level& lv = levels_[index];
  // A new, finer grid joins the coarser ones, which keep being optimised:
  // the coarse grids carry large-scale corrections into areas without
  // texture faster than fine nodes could pass them on.
  params_.push_back(at::zeros({1, 2, lv.ctrl_grid.h, lv.ctrl_grid.w}, to_));
  grids_.push_back(lv.ctrl_grid);
  std::vector<at::Tensor> to_finest;
  {
    at::NoGradGuard no_grad;
    const at::Tensor nodes = Positions(lv.ctrl_grid, to_);
    for (size_t j = 0; j + 1 < grids_.size(); ++j) {
      to_finest.push_back(Normalised(nodes, grids_[j]));
    }
  }
  const double level_px = 0.5 * (lv.fixed_grid.sx + lv.fixed_grid.sy);
  const double lr = o_.learning_rate * level_px;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (at::Tensor& p : params_) {
    p.set_requires_grad(true);
    groups.emplace_back(std::vector<at::Tensor>{p},
                        std::make_unique<torch::optim::AdamOptions>(lr));
  }
  torch::optim::Adam adam(std::move(groups), torch::optim::AdamOptions(lr));
  const double work = static_cast<double>(lv.fixed_grid.w * lv.fixed_grid.h);
  for (int it = 1; it <= o_.iterations; ++it) {
    if (o_.cancel != nullptr) REGSERVE_RETURN_IF_ERROR(o_.cancel->Check());
    adam.zero_grad();
    const LossTerms t = Loss(lv, Combined(to_finest), o_, diagonal_);
    t.total.backward();
    for (size_t j = 0; j < params_.size(); ++j) {
      auto& group = static_cast<torch::optim::AdamOptions&>(
          adam.param_groups()[j].options());
      // Linear decay to a tenth: large steps first, then settle.
      group.lr(lr * (1.0 - 0.9 * (it - 1) / std::max(1, o_.iterations - 1)));
      if (it == 1) {
        // Nodes whose gradient is far below the grid's typical one (no
        // texture) must not take full Adam steps on noise.
        const double rms =
            params_[j].grad().pow(2).mean().sqrt().item<double>();
        group.eps(std::max(1e-12, kAdamEpsilonPerRms * rms));
      }
    }
    adam.step();
    ++steps_;
    done_work_ += work;
    Report(index, it, t.total.item<double>());
  }
  for (at::Tensor& p : params_) p = p.detach();
  if (index + 1 == static_cast<int>(levels_.size())) {
    at::NoGradGuard no_grad;
    final_ctrl_ = Combined(to_finest);
  }
  return absl::OkStatus();
}

absl::Status Refiner::Run(RefineResult* result) {
  BuildLevels();
  const Level& finest = levels_.back();
  result->work_width = finest.fixed_grid.w;
  result->work_height = finest.fixed_grid.h;
  result->levels = static_cast<int>(levels_.size());
  for (int i = 0; i < static_cast<int>(levels_.size()); ++i) {
    REGSERVE_RETURN_IF_ERROR(Optimise(i));
  }
  const at::Tensor& ctrl = final_ctrl_;
  result->iterations = steps_;
  at::NoGradGuard no_grad;
  const LossTerms before = Loss(finest, at::zeros_like(ctrl), o_, diagonal_);
  const LossTerms after = Loss(finest, ctrl, o_, diagonal_);
  result->initial_loss = before.total.item<double>();
  result->final_loss = after.total.item<double>();
  result->initial_ncc = before.ncc.item<double>();
  result->final_ncc = after.ncc.item<double>();
  result->field = initial_;
  // A lower loss alone is not enough: the images must fit measurably
  // better, or the bending penalty may merely have reshaped the field where
  // the images say nothing (refine_benchmark --truth=homography, without
  // the prior: the loss fell, the LNCC went from 0.9175 to 0.9174, and the
  // p95 error from 0.36 to 0.88 px; docs/benchmarks.md).
  result->improved = result->final_loss < result->initial_loss &&
                     result->final_ncc >= result->initial_ncc + kMinNccGain;
  if (!result->improved) return absl::OkStatus();
  // The residual at the input field's nodes, added to it.
  const Grid field_grid = FieldGrid(initial_);
  const at::Tensor u =
      at::grid_sampler(ctrl,
                       Normalised(Positions(field_grid, to_), finest.ctrl_grid),
                       kBilinear, kBorder, true)
          .to(at::kCPU)
          .contiguous();
  const float* ux = u.data_ptr<float>();
  const float* uy = ux + field_grid.w * field_grid.h;
  for (size_t k = 0; k < result->field.dx.size(); ++k) {
    result->field.dx[k] += ux[k];
    result->field.dy[k] += uy[k];
  }
  return absl::OkStatus();
}

absl::Status ValidateInputs(const Image& fixed, const Image& moving,
                            const DisplacementField& field,
                            const RefineOptions& o) {
  for (const Image* img : {&fixed, &moving}) {
    if (img->empty() || img->channels() != 1 ||
        img->type() != SampleType::kFloat32) {
      return absl::InvalidArgumentError(
          "refine: the registration copies must be non-empty float32 "
          "single-channel images");
    }
  }
  if (field.empty() ||
      field.dx.size() != static_cast<size_t>(field.width * field.height) ||
      field.dy.size() != field.dx.size() || !(field.spacing_x > 0) ||
      !(field.spacing_y > 0)) {
    return absl::InvalidArgumentError(
        "refine: the initial field is empty or "
        "malformed");
  }
  if (o.fixed_full_width < fixed.width() ||
      o.fixed_full_height < fixed.height() ||
      o.moving_full_width < moving.width() ||
      o.moving_full_height < moving.height()) {
    return absl::InvalidArgumentError(
        "refine: the full-resolution sizes must be at least the copies' sizes");
  }
  if (o.levels < 0 || o.iterations < 1 || o.ncc_window < 3 ||
      o.ncc_window % 2 == 0 || !(o.control_spacing >= 1) ||
      !(o.smoothness >= 0) || !(o.learning_rate > 0) || !(o.ncc_epsilon > 0) ||
      !(o.texture_variance >= 0) || o.threads < 1 || o.max_pixels < 0) {
    return absl::InvalidArgumentError(
        "refine: levels must be >= 0, iterations and threads >= 1, "
        "ncc_window odd "
        ">= 3, control_spacing >= 1, smoothness, texture_variance and "
        "max_pixels >= 0, learning_rate and ncc_epsilon > 0");
  }
  const RefineWorkSize work =
      RefineWorkSizeFor(fixed.width(), fixed.height(), o.max_pixels);
  if (work.width < kMinLevelEdge || work.height < kMinLevelEdge) {
    return absl::InvalidArgumentError(
        absl::StrCat("refine: the working size ", work.width, "x", work.height,
                     " is below ", kMinLevelEdge, " px; raise max_pixels"));
  }
  return absl::OkStatus();
}

// The tensor options for the device, with the device made current.
absl::StatusOr<at::TensorOptions> DeviceOptions(const RefineOptions& o,
                                                std::string* name) {
  const at::TensorOptions cpu = at::TensorOptions().dtype(at::kFloat);
  if (o.device == WarpDevice::kCpu) {
    *name = "cpu";
    return cpu;
  }
#if REGSERVE_HAVE_CUDA
  if (o.cuda_device < 0 ||
      o.cuda_device >= static_cast<int>(c10::cuda::device_count())) {
    return absl::UnavailableError(absl::StrCat(
        "refine: CUDA device ", o.cuda_device, " is not available (",
        static_cast<int>(c10::cuda::device_count()), " visible)"));
  }
  *name = absl::StrCat("cuda:", o.cuda_device);
  return cpu.device(
      at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(o.cuda_device)));
#else
  return absl::UnavailableError(
      "refine: CUDA requested but regserve was built against a CPU-only "
      "LibTorch");
#endif
}

}  // namespace

int RefineLevelsFor(int64_t work_width, int64_t work_height, int levels) {
  int n = 1;
  int64_t w = work_width, h = work_height;
  const int cap = levels > 0 ? levels : 64;
  while (n < cap && std::min(w, h) / 2 >= kMinLevelEdge &&
         (levels > 0 || n < kMinAutoLevels || std::max(w, h) > kCoarsestEdge)) {
    w /= 2;
    h /= 2;
    ++n;
  }
  return n;
}

RefineWorkSize RefineWorkSizeFor(int64_t copy_width, int64_t copy_height,
                                 int64_t max_pixels) {
  RefineWorkSize s;
  if (max_pixels > 0 && copy_width * copy_height > max_pixels) {
    // From the floor of the area ratio's root up: the ceiling can skip the
    // smallest factor that fits (odd edges crop).
    s.pool = std::max<int64_t>(
        2, static_cast<int64_t>(std::floor(std::sqrt(
               static_cast<double>(copy_width * copy_height) / max_pixels))));
    while ((copy_width / s.pool) * (copy_height / s.pool) > max_pixels) {
      ++s.pool;
    }
  }
  s.width = copy_width / s.pool;
  s.height = copy_height / s.pool;
  return s;
}

RefineCost EstimateRefineCost(int64_t copy_width, int64_t copy_height,
                              int64_t field_pixels,
                              const RefineOptions& options) {
  RefineCost c;
  c.work = RefineWorkSizeFor(copy_width, copy_height, options.max_pixels);
  const double work = static_cast<double>(c.work.width * c.work.height);
  const double copy = static_cast<double>(copy_width * copy_height);
  // The working set: levels, the autograd graph of one step, its gradients;
  // the copies' tensors and their anti-aliased shrink; the initial field,
  // its tensor and the result.
  const double tensors = kWorkBytesPerPixel * work + kCopyBytesPerPixel * copy +
                         kFieldBytesPerNode * static_cast<double>(field_pixels);
  if (options.device == WarpDevice::kCuda) {
    c.ram_bytes = static_cast<uint64_t>(kHostBaseBytes +
                                        kCudaHostFieldBytesPerNode *
                                            static_cast<double>(field_pixels));
    c.vram_bytes = static_cast<uint64_t>(
        kCudaBaseBytes + kCudaWorkBytesPerPixel * work +
        kCudaCopyBytesPerPixel * copy +
        kCudaFieldBytesPerNode * static_cast<double>(field_pixels));
    return c;
  }
  c.ram_bytes = static_cast<uint64_t>(kHostBaseBytes + tensors);
  // Steps at the finest level's size; each coarser level costs a quarter.
  double level_work = 0;
  const int levels =
      RefineLevelsFor(c.work.width, c.work.height, options.levels);
  for (int l = 0; l < levels; ++l) level_work += std::pow(0.25, l);
  const double per_step =
      kSecondsPerWorkPixelStep + kSecondsPerWorkPixelStepPerMp * work / 1e6;
  const double one_thread = per_step * work * options.iterations * level_work +
                            kSecondsPerCopyPixel * copy;
  c.seconds = one_thread /
              (1.0 + kThreadEfficiency * (std::max(1, options.threads) - 1));
  return c;
}

absl::string_view RefineModeName(RefineMode mode) {
  switch (mode) {
    case RefineMode::kAuto:
      return "auto";
    case RefineMode::kOff:
      return "off";
    case RefineMode::kOn:
      return "on";
  }
  return "unknown";
}

absl::StatusOr<RefineMode> ParseRefineMode(absl::string_view name) {
  for (RefineMode m : {RefineMode::kAuto, RefineMode::kOff, RefineMode::kOn}) {
    if (name == RefineModeName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown refine mode '", name, "': use auto, off or on"));
}

absl::StatusOr<RefineResult> RefineField(const Image& fixed_gray,
                                         const Image& moving_gray,
                                         const DisplacementField& initial,
                                         const RefineOptions& options) {
  const absl::Time start = absl::Now();
  REGSERVE_RETURN_IF_ERROR(
      ValidateInputs(fixed_gray, moving_gray, initial, options));
  RefineResult result;
  REGSERVE_ASSIGN_OR_RETURN(at::TensorOptions to,
                            DeviceOptions(options, &result.device));
  absl::Status status;
  try {
    at::set_num_threads(options.threads);
#if REGSERVE_HAVE_CUDA
    std::optional<c10::cuda::CUDAGuard> guard;
    if (options.device == WarpDevice::kCuda) {
      guard.emplace(static_cast<c10::DeviceIndex>(options.cuda_device));
      // The allocator's statistics throw "Invalid device argument" until
      // LibTorch has initialised CUDA, lazily, with a first tensor.
      (void)at::empty({1}, to);
      c10::cuda::CUDACachingAllocator::resetPeakStats(options.cuda_device);
    }
#endif
    Refiner refiner(fixed_gray, moving_gray, initial, options, to);
    status = refiner.Run(&result);
#if REGSERVE_HAVE_CUDA
    if (options.device == WarpDevice::kCuda) {
      result.peak_device_bytes = static_cast<uint64_t>(
          c10::cuda::CUDACachingAllocator::getDeviceStats(options.cuda_device)
              .allocated_bytes[0]
              .peak);
      // What the run cached is free again for the warp and other jobs (the
      // scheduler admits by the device's free memory).
      c10::cuda::CUDACachingAllocator::emptyCache();
    }
#endif
  } catch (const c10::OutOfMemoryError& e) {
    status = absl::ResourceExhaustedError(absl::StrCat(
        "refine: out of device memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    status = absl::InternalError(
        absl::StrCat("refine: LibTorch failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("refine failed: ", e.what()));
  }
  if (!status.ok()) return status;
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return result;
}

}  // namespace regserve
