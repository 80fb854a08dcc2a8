// Copyright regserve authors.
#include "core/plan/resources.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

HardwareSnapshot TwoGpuMachine() {
  HardwareSnapshot hw;
  hw.ram_available_bytes = 10ull << 30;
  hw.cpu_cores = 16;
  hw.gpus.push_back(GpuInfo{0, "small", 8ull << 30, 4ull << 30});
  hw.gpus.push_back(GpuInfo{1, "big", 80ull << 30, 60ull << 30});
  return hw;
}

TEST(ResourcesTest, BudgetsFromTheMachine) {
  absl::StatusOr<ResourceConfig> rc =
      MakeResourceConfig(TwoGpuMachine(), ResourceFlags{});
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(rc->ram_budget_bytes, static_cast<uint64_t>(0.8 * (10ull << 30)));
  ASSERT_EQ(rc->gpu_ordinals, (std::vector<int>{0, 1}));
  EXPECT_EQ(rc->vram_budget_bytes[1],
            static_cast<uint64_t>(0.9 * (60ull << 30)));
  EXPECT_EQ(rc->elastix_threads, 4);
  EXPECT_EQ(rc->cpu_slots, 4);
  EXPECT_EQ(rc->machine_threads, 16);  // the stages running share them
}

TEST(ResourcesTest, DeviceFlagChoosesTheManagedGpus) {
  ResourceFlags flags;
  flags.devices.preference = DevicePreference::kCuda;
  flags.devices.gpus = {0};
  absl::StatusOr<ResourceConfig> rc =
      MakeResourceConfig(TwoGpuMachine(), flags);
  ASSERT_TRUE(rc.ok()) << rc.status();
  ASSERT_EQ(rc->gpu_ordinals, (std::vector<int>{0}));
  // The plan is sized for a managed GPU only, even though GPU 1 has more.
  const Budgets b =
      PlanningBudgets(TwoGpuMachine(), rc->flags, rc->gpu_ordinals);
  EXPECT_TRUE(b.has_gpu);
  EXPECT_EQ(b.gpu_name, "small");
  EXPECT_EQ(b.vram_bytes, static_cast<uint64_t>(0.9 * (4ull << 30)));

  flags.devices.preference = DevicePreference::kCpu;
  flags.devices.gpus.clear();
  rc = MakeResourceConfig(TwoGpuMachine(), flags);
  ASSERT_TRUE(rc.ok());
  EXPECT_TRUE(rc->gpu_ordinals.empty());
  EXPECT_FALSE(
      PlanningBudgets(TwoGpuMachine(), rc->flags, rc->gpu_ordinals).has_gpu);
}

TEST(ResourcesTest, AbsentGpusAreRefused) {
  ResourceFlags flags;
  flags.devices.preference = DevicePreference::kCuda;
  flags.devices.gpus = {3};
  EXPECT_EQ(MakeResourceConfig(TwoGpuMachine(), flags).status().code(),
            absl::StatusCode::kInvalidArgument);
  flags.devices.gpus.clear();
  HardwareSnapshot no_gpu = TwoGpuMachine();
  no_gpu.gpus.clear();
  EXPECT_EQ(MakeResourceConfig(no_gpu, flags).status().code(),
            absl::StatusCode::kInvalidArgument);
  flags.devices.preference = DevicePreference::kAuto;
  EXPECT_TRUE(MakeResourceConfig(no_gpu, flags).ok());
}

TEST(ResourcesTest, FlagsOverrideTheMachine) {
  ResourceFlags flags;
  flags.ram_bytes = 1ull << 30;
  flags.vram_bytes = 2ull << 30;
  flags.elastix_threads = 2;
  flags.cpu_slots = 3;
  absl::StatusOr<ResourceConfig> rc =
      MakeResourceConfig(TwoGpuMachine(), flags);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->ram_budget_bytes, 1ull << 30);
  EXPECT_EQ(rc->vram_budget_bytes,
            (std::vector<uint64_t>{2ull << 30, 2ull << 30}));
  EXPECT_EQ(rc->elastix_threads, 2);
  EXPECT_EQ(rc->cpu_slots, 3);
}

}  // namespace
}  // namespace regserve
