// Copyright regserve authors.
#include "core/plan/resources.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

uint64_t RamBudget(const HardwareSnapshot& hw, const ResourceFlags& f) {
  return f.ram_bytes != 0
             ? f.ram_bytes
             : static_cast<uint64_t>(
                   0.8 * static_cast<double>(hw.ram_available_bytes));
}

uint64_t VramBudget(const GpuInfo& gpu, const ResourceFlags& f) {
  return f.vram_bytes != 0
             ? f.vram_bytes
             : static_cast<uint64_t>(0.9 *
                                     static_cast<double>(gpu.vram_free_bytes));
}

const GpuInfo* FindGpu(const HardwareSnapshot& hw, int ordinal) {
  for (const GpuInfo& g : hw.gpus) {
    if (g.index == ordinal) return &g;
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<ResourceConfig> MakeResourceConfig(const HardwareSnapshot& hw,
                                                  const ResourceFlags& flags) {
  ResourceConfig rc;
  rc.flags = flags;
  rc.ram_budget_bytes = RamBudget(hw, flags);
  const int cores = std::max(1, hw.cpu_cores);
  rc.elastix_threads =
      flags.elastix_threads > 0 ? flags.elastix_threads : std::min(4, cores);
  rc.cpu_slots = flags.cpu_slots > 0 ? flags.cpu_slots
                                     : std::max(1, cores / rc.elastix_threads);
  rc.machine_threads = std::max(cores, rc.elastix_threads);
  const DeviceSelection& sel = flags.devices;
  if (sel.preference == DevicePreference::kCpu) return rc;
  if (sel.gpus.empty()) {
    if (sel.preference == DevicePreference::kCuda && hw.gpus.empty()) {
      return absl::InvalidArgumentError(
          "--device cuda, but the machine has no visible GPU; use auto or "
          "cpu");
    }
    for (const GpuInfo& g : hw.gpus) rc.gpu_ordinals.push_back(g.index);
  } else {
    for (int ordinal : sel.gpus) {
      if (FindGpu(hw, ordinal) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--device names GPU ", ordinal, ", but the machine has ",
            hw.gpus.size(), " visible GPU(s)"));
      }
      rc.gpu_ordinals.push_back(ordinal);
    }
  }
  for (int ordinal : rc.gpu_ordinals) {
    rc.vram_budget_bytes.push_back(VramBudget(*FindGpu(hw, ordinal), flags));
  }
  return rc;
}

Budgets PlanningBudgets(const HardwareSnapshot& hw, const ResourceFlags& flags,
                        const std::vector<int>& managed_gpus) {
  Budgets b;
  b.ram_bytes = RamBudget(hw, flags);
  b.cpu_threads = std::max(1, hw.cpu_cores);
  const GpuInfo* best = nullptr;
  for (int ordinal : managed_gpus) {
    const GpuInfo* g = FindGpu(hw, ordinal);
    if (g != nullptr &&
        (best == nullptr || g->vram_free_bytes > best->vram_free_bytes)) {
      best = g;
    }
  }
  if (best != nullptr) {
    b.has_gpu = true;
    b.gpu_name = best->name;
    b.vram_bytes = VramBudget(*best, flags);
  }
  return b;
}

}  // namespace regserve
