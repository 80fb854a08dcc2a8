// Copyright regserve authors.
//
// The planner's refinement decisions: off, auto on rigid/affine jobs, the
// GPU at the copy's size (or the CPU when its VRAM budget cannot hold it),
// the CPU at the largest working size its time budget allows, skipped
// under auto where that is too coarse, and forced by refine=on.
#include <string>

#include "absl/strings/match.h"
#include "core/plan/plan.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

bool AnyReasonHas(const Plan& p, absl::string_view text) {
  for (const std::string& r : p.reasons) {
    if (absl::StrContains(r, text)) return true;
  }
  return false;
}

ImageSpec Rgb(int64_t w, int64_t h) {
  return ImageSpec{
      .width = w, .height = h, .channels = 3, .type = SampleType::kUInt8};
}

Budgets CpuOnly() {
  Budgets b;
  b.ram_bytes = 16ull << 30;
  b.cpu_threads = 2;
  return b;
}

Budgets WithGpu(uint64_t vram) {
  Budgets b = CpuOnly();
  b.has_gpu = true;
  b.gpu_name = "Test GPU";
  b.vram_bytes = vram;
  return b;
}

Plan MakeOk(const ImageSpec& s, const JobOptions& o, const Budgets& b) {
  absl::StatusOr<Plan> p = MakePlan(s, s, o, b);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : Plan();
}

TEST(RefinePlan, OffIsOff) {
  JobOptions o;
  o.refine = RefineMode::kOff;
  const Plan p = MakeOk(Rgb(1000, 800), o, CpuOnly());
  EXPECT_FALSE(p.refine_enabled);
  EXPECT_EQ(p.refine.ram_bytes, 0u);
  EXPECT_TRUE(AnyReasonHas(p, "refinement off (refine=off)"));
}

TEST(RefinePlan, AutoKeepsRigidAndAffineJobs) {
  for (TransformKind t : {TransformKind::kRigid, TransformKind::kAffine}) {
    JobOptions o;
    o.transform = t;
    const Plan p = MakeOk(Rgb(1000, 800), o, WithGpu(8ull << 30));
    EXPECT_FALSE(p.refine_enabled);
    EXPECT_TRUE(AnyReasonHas(p, "would not keep"));
    o.refine = RefineMode::kOn;
    EXPECT_TRUE(MakeOk(Rgb(1000, 800), o, WithGpu(8ull << 30)).refine_enabled);
  }
}

TEST(RefinePlan, GpuRefinesAtTheCopysSize) {
  JobOptions o;
  const Plan p = MakeOk(Rgb(6000, 4000), o, WithGpu(8ull << 30));
  ASSERT_TRUE(p.refine_enabled);
  EXPECT_EQ(p.refine_device, WarpDevice::kCuda);
  EXPECT_EQ(p.refine_max_pixels, 0);
  EXPECT_EQ(p.refine_width, p.registration_fixed_width);
  EXPECT_GT(p.refine.vram_bytes, 0u);
  EXPECT_TRUE(AnyReasonHas(p, "refining on the GPU (Test GPU) at"));
  // The planned options are what the stage runs with.
  const RefineOptions ro = PlannedRefineOptions(p);
  EXPECT_EQ(ro.device, WarpDevice::kCuda);
  EXPECT_EQ(ro.levels, p.refine_levels);
  EXPECT_EQ(ro.iterations, p.refine_iterations);
}

TEST(RefinePlan, ASmallVramBudgetPoolsOrFallsBackToTheCpu) {
  JobOptions o;
  const Budgets small = WithGpu(600ull << 20);
  const Plan p = MakeOk(Rgb(6000, 4000), o, small);
  ASSERT_TRUE(p.refine_enabled);
  if (p.refine_device == WarpDevice::kCuda) {
    EXPECT_GT(p.refine_max_pixels, 0);  // pooled to fit
    EXPECT_LE(p.refine.vram_bytes, small.vram_bytes);
  }
  const Plan q = MakeOk(Rgb(6000, 4000), o, WithGpu(1ull << 20));
  EXPECT_TRUE(AnyReasonHas(q, "cannot hold the refinement"));
  EXPECT_NE(q.refine_device, WarpDevice::kCuda);
}

TEST(RefinePlan, CpuWorksAtWhatItsBudgetAllows) {
  JobOptions o;
  o.max_registration_megapixels = 5;
  const Plan p = MakeOk(Rgb(6028, 3391), o, CpuOnly());
  ASSERT_TRUE(p.refine_enabled);
  EXPECT_EQ(p.refine_device, WarpDevice::kCpu);
  // A 5 MP copy does not fit the CPU budget whole; pooled by 2 it does.
  const RefineOptions ro = PlannedRefineOptions(p);
  const RefineCost c = EstimateRefineCost(
      p.registration_fixed_width, p.registration_fixed_height,
      p.registration_fixed_width * p.registration_fixed_height, [&] {
        RefineOptions x = ro;
        x.threads = 1;
        return x;
      }());
  EXPECT_GE(c.work.pool, 2);
  EXPECT_LE(c.seconds, RefineCpuBudgetSeconds(p.registration_fixed_width *
                                              p.registration_fixed_height));
  EXPECT_EQ(p.refine_width, c.work.width);
  EXPECT_TRUE(AnyReasonHas(p, "refining on the CPU at"));
}

TEST(RefinePlan, AutoSkipsWhatWouldBeTooCoarseOnTheCpuAndOnForcesIt) {
  // A 400 MP copy: the cost per working pixel grows with the working set,
  // so only a level pooled by 5 fits the time budget.
  JobOptions o;
  o.max_registration_megapixels = 400;
  Budgets b = CpuOnly();
  b.ram_bytes = 64ull << 30;
  const ImageSpec grey{.width = 20000,
                       .height = 20000,
                       .channels = 1,
                       .type = SampleType::kUInt8};
  const Plan p = MakeOk(grey, o, b);
  EXPECT_FALSE(p.refine_enabled);
  EXPECT_TRUE(AnyReasonHas(p, "refinement skipped on the CPU"));
  o.refine = RefineMode::kOn;
  const Plan q = MakeOk(grey, o, b);
  EXPECT_TRUE(q.refine_enabled);
  EXPECT_GT(q.refine_max_pixels, 0);
}

TEST(RefinePlan, ElastixRunsLighterOnlyBeforeAGpuRefinement) {
  JobOptions o;
  o.elastix_before_gpu_refine.max_megapixels = 2.0;
  o.elastix_before_gpu_refine.iteration_scale = 0.5;
  o.elastix_before_gpu_refine.linear_stage = false;
  const Plan gpu = MakeOk(Rgb(6000, 4000), o, WithGpu(8ull << 30));
  ASSERT_EQ(gpu.refine_device, WarpDevice::kCuda);
  // Pooled by one factor from the 20 MP copy to at most 2 MP, both images.
  EXPECT_GT(gpu.elastix_fixed_width, 0);
  EXPECT_LE(gpu.elastix_fixed_width * gpu.elastix_fixed_height, 2000000);
  EXPECT_GT(gpu.elastix_fixed_width * gpu.elastix_fixed_height, 1800000);
  EXPECT_EQ(gpu.elastix_moving_width, gpu.elastix_fixed_width);
  EXPECT_LT(gpu.elastix_fixed_width, gpu.registration_fixed_width);
  EXPECT_DOUBLE_EQ(gpu.elastix_iteration_scale, 0.5);
  EXPECT_FALSE(gpu.elastix_linear_stage);
  EXPECT_TRUE(AnyReasonHas(gpu, "elastix before the GPU refinement runs at"));
  EXPECT_TRUE(AnyReasonHas(gpu, "without the affine stage"));
  // The refinement still works at the whole registration copy.
  EXPECT_EQ(gpu.refine_width, gpu.registration_fixed_width);

  for (const Budgets& b : {CpuOnly(), WithGpu(8ull << 30)}) {
    JobOptions cpu = o;
    if (b.has_gpu) cpu.device = DevicePreference::kCpu;
    const Plan p = MakeOk(Rgb(6000, 4000), cpu, b);
    EXPECT_NE(p.refine_device, WarpDevice::kCuda);
    EXPECT_EQ(p.elastix_fixed_width, 0);
    EXPECT_DOUBLE_EQ(p.elastix_iteration_scale, 1.0);
    EXPECT_TRUE(p.elastix_linear_stage);
  }
  // The default schedule changes nothing.
  const Plan d = MakeOk(Rgb(6000, 4000), JobOptions(), WithGpu(8ull << 30));
  EXPECT_EQ(d.elastix_fixed_width, 0);
  EXPECT_FALSE(AnyReasonHas(d, "elastix before the GPU refinement"));
}

TEST(RefinePlan, ShiftCorrectionOnlyWhereNoGpuRefines) {
  JobOptions o;
  o.shift_correction_passes = 4;
  o.elastix_before_cpu_correction = {2.0, 0.5, true};
  const Plan cpu = MakeOk(Rgb(6000, 4000), o, CpuOnly());
  EXPECT_EQ(cpu.shift_correction_passes, 4);
  // A quality estimate and one more field, beside what the stage holds.
  EXPECT_GT(cpu.shift_correction.ram_bytes, cpu.quality.ram_bytes);
  EXPECT_TRUE(
      AnyReasonHas(cpu, "shift correction before refining: up to 4 passes"));
  // elastix before it works on a 2 MP copy with half the iterations.
  EXPECT_GT(cpu.elastix_fixed_width, 0);
  EXPECT_LE(cpu.elastix_fixed_width * cpu.elastix_fixed_height, 2000000);
  EXPECT_DOUBLE_EQ(cpu.elastix_iteration_scale, 0.5);
  EXPECT_TRUE(cpu.elastix_linear_stage);
  EXPECT_TRUE(AnyReasonHas(cpu, "elastix before the shift correction runs"));

  const Plan gpu = MakeOk(Rgb(6000, 4000), o, WithGpu(8ull << 30));
  ASSERT_EQ(gpu.refine_device, WarpDevice::kCuda);
  EXPECT_EQ(gpu.shift_correction_passes, 0);
  EXPECT_FALSE(gpu.shift_correction_after_refine);
  EXPECT_FALSE(AnyReasonHas(gpu, "shift correction"));
  // After a GPU refinement only when asked, and then after it.
  JobOptions after = o;
  after.gpu_correction_passes = 2;
  const Plan ga = MakeOk(Rgb(6000, 4000), after, WithGpu(8ull << 30));
  ASSERT_EQ(ga.refine_device, WarpDevice::kCuda);
  EXPECT_EQ(ga.shift_correction_passes, 2);
  EXPECT_TRUE(ga.shift_correction_after_refine);
  EXPECT_GT(ga.shift_correction.ram_bytes, ga.quality.ram_bytes);
  EXPECT_TRUE(AnyReasonHas(
      ga, "shift correction after the GPU refinement: up to 2 passes"));
  EXPECT_FALSE(
      MakeOk(Rgb(6000, 4000), after, CpuOnly()).shift_correction_after_refine);

  JobOptions off = o;
  off.refine = RefineMode::kOff;
  EXPECT_EQ(MakeOk(Rgb(6000, 4000), off, CpuOnly()).shift_correction_passes, 0);
  JobOptions rigid = o;
  rigid.transform = TransformKind::kRigid;
  EXPECT_EQ(MakeOk(Rgb(6000, 4000), rigid, CpuOnly()).shift_correction_passes,
            0);
  JobOptions none = o;
  none.shift_correction_passes = 0;
  const Plan n = MakeOk(Rgb(6000, 4000), none, CpuOnly());
  EXPECT_EQ(n.shift_correction_passes, 0);
  EXPECT_EQ(n.elastix_fixed_width, 0);  // the preset, as before
}

TEST(RefinePlan, ModeNamesRoundTrip) {
  for (RefineMode m : {RefineMode::kAuto, RefineMode::kOff, RefineMode::kOn}) {
    absl::StatusOr<RefineMode> back = ParseRefineMode(RefineModeName(m));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, m);
  }
  EXPECT_TRUE(absl::IsInvalidArgument(ParseRefineMode("sometimes").status()));
}

}  // namespace
}  // namespace regserve
