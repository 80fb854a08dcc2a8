// Copyright regserve authors.
//
// The machine's budgets, decided once: the one place where the hardware
// reading and the daemon's flags become both the scheduler's configuration
// (what it admits) and the planner's budgets (what a plan is sized for), so
// a plan is never sized for memory or a GPU the scheduler does not manage.
//
//   ResourceFlags flags;                     // from --ram_budget, --device...
//   REGSERVE_ASSIGN_OR_RETURN(ResourceConfig rc,
//                             MakeResourceConfig(probe->Probe().value(),
//                             flags));
//   ResourceScheduler scheduler(ToSchedulerConfig(rc), probe);
//   Budgets now = PlanningBudgets(fresh_snapshot, rc.flags,
//                                 rc.gpu_ordinals);        // per job
//
// Rules: RAM is 80% of what the system reports available unless
// --ram_budget; each managed GPU's VRAM is 90% of its free memory unless
// --vram_budget. --device cpu manages no GPU; cuda:0,2 only those ordinals.
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_PLAN_RESOURCES_H_
#define REGSERVE_CORE_PLAN_RESOURCES_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/common/types.h"
#include "core/hardware/hardware.h"
#include "core/plan/plan.h"

namespace regserve {

// What the flags say; 0 means "derive from the hardware".
struct ResourceFlags {
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;  // per GPU
  DeviceSelection devices;
  int elastix_threads = 0;  // 0: min(4, cores)
  int cpu_slots = 0;        // 0: cores / elastix_threads, at least 1
};

// The scheduler's view, without the scheduler itself (core/scheduler
// consumes it; core/plan does not depend on it).
struct ResourceConfig {
  ResourceFlags flags;
  uint64_t ram_budget_bytes = 0;
  std::vector<int> gpu_ordinals;            // managed GPUs, CUDA ordinals
  std::vector<uint64_t> vram_budget_bytes;  // one per managed GPU
  int cpu_slots = 1;
  int elastix_threads = 1;  // the least CPU threads a stage gets
  int machine_threads = 1;  // the cores that the stages running share
};

// InvalidArgument when --device names a GPU the machine does not have, or
// asks for cuda where the machine has none.
absl::StatusOr<ResourceConfig> MakeResourceConfig(const HardwareSnapshot& hw,
                                                  const ResourceFlags& flags);

// Budgets for planning a job now, from a fresh snapshot: the same RAM rule,
// and the VRAM of the managed GPU with the most free memory (the scheduler
// may place the warp there). No managed GPU: CPU only.
Budgets PlanningBudgets(const HardwareSnapshot& hw, const ResourceFlags& flags,
                        const std::vector<int>& managed_gpus);

}  // namespace regserve

#endif  // REGSERVE_CORE_PLAN_RESOURCES_H_
