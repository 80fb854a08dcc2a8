// Copyright regserve authors.
//
// The refinement's part of the plan (plan_internal.h: PlanRefine): where
// and at what size the LibTorch refinement runs, the shift correction
// before it on the CPU, and elastix's lighter schedule before either.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/plan/plan.h"
#include "core/plan/plan_internal.h"
#include "core/refine/refine.h"

namespace regserve {

double RefineCpuBudgetSeconds(int64_t pixels) {
  // elastix 5.0.1, 2 threads: ~10 s + 1.15 s per MP (shared/notes/stack.md).
  const double elastix = 10.0 + 1.15 * static_cast<double>(pixels) / 1e6;
  return std::max(3.0, elastix / 3.0);
}

RefineOptions PlannedRefineOptions(const Plan& plan) {
  RefineOptions o;
  o.device = plan.refine_device;
  o.max_pixels = plan.refine_max_pixels;
  o.levels = plan.refine_levels;
  o.iterations = plan.refine_iterations;
  return o;
}

namespace plan_internal {
namespace {

// On the CPU, a working level pooled by more than this from the
// registration copy is too coarse to pay under refine=auto.
constexpr int64_t kMaxPayingCpuPool = 4;
// A working level must keep this many pixels per edge (RefineField's
// smallest level).
constexpr int64_t kMinRefineEdge = 24;

// The refinement's RAM with what the stage holds: the copies, the field
// and the full moving image (for the warp).
uint64_t RefineStageRam(const RefineCost& c, const RegSize& r, uint64_t held) {
  return c.ram_bytes + GrayBytes(r) + held +
         static_cast<uint64_t>(kFieldBytesPerPixel * r.fw * r.fh);
}

// The least pooling of the fixed copy at which the refinement on `device`
// fits the budgets (VRAM on CUDA; RAM; on the CPU also `seconds`), or
// false.
bool ChooseRefinePool(const RegSize& reg, uint64_t held, const Budgets& budgets,
                      double seconds, RefineOptions* o, RefineCost* cost) {
  for (int64_t pool = 1;; ++pool) {
    const int64_t w = reg.fw / pool, h = reg.fh / pool;
    if (w < kMinRefineEdge || h < kMinRefineEdge) return false;
    o->max_pixels = pool == 1 ? 0 : w * h;
    *cost = EstimateRefineCost(reg.fw, reg.fh, reg.fw * reg.fh, *o);
    const bool fits =
        RefineStageRam(*cost, reg, held) <= budgets.ram_bytes &&
        (o->device == WarpDevice::kCuda ? cost->vram_bytes <= budgets.vram_bytes
                                        : cost->seconds <= seconds);
    if (fits) return true;
  }
}

void RecordRefine(const RefineOptions& o, const RefineCost& c,
                  const RegSize& reg, uint64_t held, Plan* plan) {
  plan->refine_enabled = true;
  plan->refine_device = o.device;
  plan->refine_max_pixels = o.max_pixels;
  plan->refine_width = c.work.width;
  plan->refine_height = c.work.height;
  plan->refine_levels = RefineLevelsFor(c.work.width, c.work.height, o.levels);
  plan->refine_iterations = o.iterations;
  plan->refine.ram_bytes = RefineStageRam(c, reg, held);
  plan->refine.vram_bytes = c.vram_bytes;
}

std::string RefineSize(const RefineCost& c) {
  return absl::StrFormat(
      "%dx%d (%s, %s)", c.work.width, c.work.height,
      Mp(static_cast<double>(c.work.width * c.work.height)),
      c.work.pool == 1
          ? std::string("the registration copy")
          : absl::StrCat("1/", c.work.pool, " of the registration copy"));
}

// elastix's copy and schedule before `what` (a refinement on the GPU, or
// the shift correction on the CPU: ElastixSchedule), with the reason when
// it differs from the preset's.
void PlanLightElastix(const ElastixSchedule& s, const char* before,
                      const RegSize& reg, Plan* plan) {
  plan->elastix_iteration_scale = s.iteration_scale;
  plan->elastix_linear_stage = s.linear_stage;
  const double px = static_cast<double>(reg.fw * reg.fh);
  const double shortest =
      static_cast<double>(std::min({reg.fw, reg.fh, reg.mw, reg.mh}));
  double k =
      s.max_megapixels > 0 ? std::sqrt(px / (s.max_megapixels * 1e6)) : 1.0;
  k = std::min(k, shortest / kMinRegistrationEdge);
  std::vector<std::string> what;
  if (k > 1.0) {
    auto pooled = [k](int64_t n) {
      return std::max<int64_t>(1, static_cast<int64_t>(std::floor(n / k)));
    };
    plan->elastix_fixed_width = pooled(reg.fw);
    plan->elastix_fixed_height = pooled(reg.fh);
    plan->elastix_moving_width = pooled(reg.mw);
    plan->elastix_moving_height = pooled(reg.mh);
    what.push_back(absl::StrFormat("at %dx%d (1/%.2f of the registration copy)",
                                   plan->elastix_fixed_width,
                                   plan->elastix_fixed_height, k));
  }
  if (s.iteration_scale != 1.0) {
    what.push_back(absl::StrFormat("with %g x the preset's iterations",
                                   s.iteration_scale));
  }
  if (!s.linear_stage) {
    what.push_back("without the affine stage after an initial alignment");
  }
  if (what.empty()) return;
  plan->reasons.push_back(absl::StrCat(
      "elastix before ", before, " runs ", absl::StrJoin(what, ", "), ": ",
      before, " does the fine work at the registration copy"));
}

// The shift correction's passes and memory (plan.quality is set).
void PlanShiftCorrection(int passes, const char* when, const Budgets& budgets,
                         const RegSize& reg, Plan* plan) {
  if (passes <= 0) return;
  // A quality estimate and two more fields (the 32 px passes keep their
  // candidates until the end, correction_passes.cc).
  const uint64_t ram =
      plan->quality.ram_bytes +
      2 * static_cast<uint64_t>(kFieldBytesPerPixel * reg.fw * reg.fh);
  if (ram > budgets.ram_bytes) {
    plan->reasons.push_back(absl::StrFormat(
        "shift correction skipped: it needs %s of RAM, more than the budget "
        "of %s",
        Mb(ram), Mb(budgets.ram_bytes)));
    return;
  }
  plan->shift_correction_passes = passes;
  plan->shift_correction.ram_bytes = ram;
  plan->reasons.push_back(absl::StrFormat(
      "shift correction %s: up to %d passes on the %dx%d registration copy "
      "(then as many, up to 2, on patches of half the size), each kept when "
      "the quality estimate improves; %s RAM",
      when, plan->shift_correction_passes, reg.fw, reg.fh,
      Mb(plan->shift_correction.ram_bytes)));
}

}  // namespace

void PlanRefine(uint64_t held, const JobOptions& options,
                const Budgets& budgets, const RegSize& reg, Plan* plan) {
  if (options.refine == RefineMode::kOff) {
    plan->reasons.push_back("refinement off (refine=off)");
    return;
  }
  if (options.refine == RefineMode::kAuto &&
      options.transform != TransformKind::kBSpline) {
    plan->reasons.push_back(
        absl::StrCat("refinement skipped: the job asks for a ",
                     TransformKindName(options.transform),
                     " transform, which a deformable refinement would not keep "
                     "(refine=on forces it)"));
    return;
  }
  RefineOptions o;
  RefineCost cost;
  if (budgets.has_gpu && options.device != DevicePreference::kCpu) {
    o.device = WarpDevice::kCuda;
    if (ChooseRefinePool(reg, held, budgets, 0, &o, &cost)) {
      RecordRefine(o, cost, reg, held, plan);
      plan->reasons.push_back(absl::StrFormat(
          "refining on the GPU (%s) at %s, %d levels x %d iterations; %s "
          "VRAM, %s RAM",
          budgets.gpu_name, RefineSize(cost), plan->refine_levels, o.iterations,
          Mb(plan->refine.vram_bytes), Mb(plan->refine.ram_bytes)));
      PlanLightElastix(options.elastix_before_gpu_refine, "the GPU refinement",
                       reg, plan);
      PlanShiftCorrection(options.gpu_correction_passes,
                          "after the GPU refinement", budgets, reg, plan);
      plan->shift_correction_after_refine = plan->shift_correction_passes > 0;
      return;
    }
    plan->reasons.push_back(
        absl::StrCat("the GPU's VRAM budget of ", Mb(budgets.vram_bytes),
                     " cannot hold the refinement; it is planned on the CPU"));
  }
  o.device = WarpDevice::kCpu;
  o.threads = 1;  // as the stage runs it (RefineOptions::threads)
  PlanShiftCorrection(options.shift_correction_passes, "before refining",
                      budgets, reg, plan);
  if (plan->shift_correction_passes > 0) {
    PlanLightElastix(options.elastix_before_cpu_correction,
                     "the shift correction", reg, plan);
  }
  const double seconds = RefineCpuBudgetSeconds(reg.fw * reg.fh);
  const bool found = ChooseRefinePool(reg, held, budgets, seconds, &o, &cost);
  const bool pays = found && cost.work.pool <= kMaxPayingCpuPool;
  if (options.refine == RefineMode::kAuto && !pays) {
    plan->reasons.push_back(
        found ? absl::StrFormat(
                    "refinement skipped on the CPU: within its %.0f s budget "
                    "it would work at %s, too coarse to improve on elastix "
                    "(refine=on forces it; a GPU refines at full size)",
                    seconds, RefineSize(cost))
              : absl::StrFormat(
                    "refinement skipped on the CPU: it does not fit its "
                    "%.0f s budget or the RAM budget of %s at any size",
                    seconds, Mb(budgets.ram_bytes)));
    return;
  }
  if (!found) {
    // refine=on: the smallest working size, whatever it takes.
    const int64_t pool =
        std::max<int64_t>(1, std::min(reg.fw, reg.fh) / kMinRefineEdge);
    o.max_pixels = (reg.fw / pool) * (reg.fh / pool);
    cost = EstimateRefineCost(reg.fw, reg.fh, reg.fw * reg.fh, o);
  }
  RecordRefine(o, cost, reg, held, plan);
  plan->reasons.push_back(absl::StrFormat(
      "refining on the CPU at %s, %d levels x %d iterations: about %.1f s "
      "(budget %.0f s); %s RAM",
      RefineSize(cost), plan->refine_levels, o.iterations, cost.seconds,
      seconds, Mb(plan->refine.ram_bytes)));
}

}  // namespace plan_internal
}  // namespace regserve
