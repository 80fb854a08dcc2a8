// Copyright regserve authors.
//
// What the machine the daemon runs on has: RAM (honouring cgroup v2
// memory.max), usable CPU cores (affinity mask and cgroup cpu.max), and GPUs
// with total/free VRAM (through CUDA, when LibTorch was built with it).
//
// The probe is an interface so that tests and the planner can inject any
// machine:
//
//   std::unique_ptr<HardwareProbe> probe = NewSystemProbe();
//   REGSERVE_ASSIGN_OR_RETURN(HardwareSnapshot hw, probe->Probe());
//
//   FakeProbe fake(HardwareSnapshot{.ram_total_bytes = 32ull << 30, ...});
//
// Thread safety: implementations are thread-safe.
#ifndef REGSERVE_CORE_HARDWARE_HARDWARE_H_
#define REGSERVE_CORE_HARDWARE_HARDWARE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace regserve {

struct GpuInfo {
  int index = 0;     // CUDA device ordinal
  std::string name;  // "NVIDIA H100 80GB HBM3"
  uint64_t vram_total_bytes = 0;
  uint64_t vram_free_bytes = 0;
};

struct HardwareSnapshot {
  uint64_t ram_total_bytes = 0;  // min(MemTotal, cgroup memory.max)
  // min(MemAvailable, memory.max - (memory.current - inactive_file)) over
  // the cgroup and its ancestors: reclaimable page cache counts as available.
  uint64_t ram_available_bytes = 0;
  int cpu_cores = 1;          // usable cores (affinity, cpu.max)
  std::vector<GpuInfo> gpus;  // empty without CUDA
  std::string DebugString() const;
};

class HardwareProbe {
 public:
  virtual ~HardwareProbe() = default;
  // A fresh reading (cheap enough to call before every stage admission).
  virtual absl::StatusOr<HardwareSnapshot> Probe() = 0;
};

// Reads /proc/meminfo, /sys/fs/cgroup (v2), sched_getaffinity, and CUDA via
// LibTorch when compiled with CUDA (REGSERVE_HAVE_CUDA).
std::unique_ptr<HardwareProbe> NewSystemProbe();

// For tests: returns whatever snapshot it holds; Set() changes it.
class FakeProbe final : public HardwareProbe {
 public:
  explicit FakeProbe(HardwareSnapshot snapshot)
      : snapshot_(std::move(snapshot)) {}
  absl::StatusOr<HardwareSnapshot> Probe() override {
    absl::MutexLock lock(&mu_);
    return snapshot_;
  }
  void Set(HardwareSnapshot snapshot) {
    absl::MutexLock lock(&mu_);
    snapshot_ = std::move(snapshot);
  }

 private:
  absl::Mutex mu_;
  HardwareSnapshot snapshot_ ABSL_GUARDED_BY(mu_);
};

namespace hardware_internal {
// Parsers, exposed for unit tests. Each returns nullopt-like 0 / false on
// malformed input rather than failing.
// "MemTotal: 123 kB" lines -> bytes; false if either field is missing.
bool ParseMeminfo(const std::string& text, uint64_t* total,
                  uint64_t* available);
// cgroup v2 memory.max: "max" -> UINT64_MAX, else the number.
uint64_t ParseMemoryMax(const std::string& text);
// cgroup v2 cpu.max: "max 100000" -> 0 (no limit); "200000 100000" -> 2.0.
double ParseCpuMax(const std::string& text);

// What one cgroup v2 group's memory files say.
struct CgroupMemory {
  uint64_t limit_bytes = UINT64_MAX;      // memory.max; UINT64_MAX: no limit
  uint64_t available_bytes = UINT64_MAX;  // in [0, limit]; UINT64_MAX: no limit
};
// From the texts of a group's memory.max, memory.current and memory.stat.
// memory.current counts page cache the kernel keeps until the limit is hit,
// so the inactive file cache (memory.stat "inactive_file", reclaimable
// without swapping) is treated as available:
//   available = max - max(0, current - inactive_file), clamped to [0, max].
// An empty or malformed memory.current counts as 0 used; a memory.stat
// without a parsable inactive_file line (e.g. unreadable, passed as "")
// falls back to max - current. Never fails.
CgroupMemory ParseCgroupMemory(const std::string& max_text,
                               const std::string& current_text,
                               const std::string& stat_text);
}  // namespace hardware_internal

}  // namespace regserve

#endif  // REGSERVE_CORE_HARDWARE_HARDWARE_H_
