// Copyright regserve authors.
//
// ResourceScheduler: admission control for job stages against the RAM budget,
// a VRAM budget per GPU, and execution slots (concurrent CPU registrations,
// one warp at a time per GPU). No gRPC here.
//
// Each stage asks for what its plan needs and blocks until it fits:
//
//   ResourceRequest req;
//   req.ram_bytes = plan.warp.ram_bytes;
//   req.vram_bytes = plan.warp.vram_bytes;
//   req.lane = Lane::kGpu;        // placed on the GPU that fits soonest
//   REGSERVE_ASSIGN_OR_RETURN(Reservation r,
//       scheduler.Acquire(req, job.priority, job.sequence, job.cancel.get()));
//   ... r.gpu() says which GPU; run the stage ...
//   // r's destructor releases everything.
//
// Ordering: waiters are served in (priority descending, sequence ascending)
// order. A waiter that does not fit holds back what it needs ("backfill"):
// later waiters are admitted only from what is left after it, so big jobs
// are not starved and CPU registration of one job overlaps the GPU warp of
// another. Live free-memory readings from the HardwareProbe are checked on
// admission too, guarding against other processes on the machine; each
// admission is subtracted from the last reading until the next one, since
// an admitted stage has not allocated yet when it is admitted.
//
// Invariant (tested): the sum of reservations never exceeds any budget.
//
// Thread safety: all methods are thread-safe.
#ifndef REGSERVE_CORE_SCHEDULER_SCHEDULER_H_
#define REGSERVE_CORE_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/common/cancel.h"
#include "core/hardware/hardware.h"
#include "core/plan/resources.h"

namespace regserve {

enum class Lane {
  kCpu = 0,  // decode, registration: uses a CPU slot
  kGpu = 1,  // warp on a GPU: uses that GPU's slot and VRAM
};

struct SchedulerConfig {
  uint64_t ram_budget_bytes = 0;
  std::vector<uint64_t> vram_budget_bytes;  // one per GPU (index = ordinal)
  std::vector<int> gpu_ordinals;            // CUDA ordinal per entry above
  int cpu_slots = 1;                        // concurrent CPU-lane stages
  int gpu_slots_per_gpu = 1;                // concurrent warps per GPU
  // CPU threads: the machine's cores, shared by the stages running at
  // admission, and the least a stage gets (Reservation::threads).
  int machine_threads = 1;
  int min_threads = 1;
  // Live readings are taken at most this often while waiting.
  absl::Duration live_check_period = absl::Milliseconds(250);
  // Headroom kept free according to live readings (other processes).
  uint64_t live_ram_headroom_bytes = 0;
  // An admitted stage allocates only after its thread wakes, so a reading
  // taken soon after may not show it yet: for this long after admission a
  // reservation is subtracted from each new live reading (on a loaded
  // machine, under ThreadSanitizer, a wake-up took longer than the 10 ms
  // between readings and a second stage was admitted into the same memory).
  absl::Duration allocation_grace = absl::Seconds(1);
};

// The scheduler's part of the machine's budgets (core/plan/resources.h).
SchedulerConfig ToSchedulerConfig(const ResourceConfig& rc);

struct ResourceRequest {
  Lane lane = Lane::kCpu;
  uint64_t ram_bytes = 0;
  uint64_t vram_bytes = 0;  // kGpu only
  // kGpu only: -1 places on any GPU that can hold it soonest; otherwise the
  // index into SchedulerConfig::vram_budget_bytes.
  int gpu = -1;
  std::string label;  // "job abc: warp", for GetServerInfo
};

class ResourceScheduler;

// Move-only RAII handle; releases its resources when destroyed or Release()d.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation();

  void Release();
  bool held() const { return scheduler_ != nullptr; }
  int gpu() const { return gpu_; }  // index, or -1 for CPU lane
  uint64_t ram_bytes() const { return ram_; }
  uint64_t vram_bytes() const { return vram_; }
  // The CPU threads the stage may use (decode, elastix, the CPU warp, the
  // result writer's compression): the machine's threads divided by the
  // stages running when it was admitted, itself included, and at least
  // SchedulerConfig::min_threads. A job alone on the machine gets every
  // core; stages admitted later get a smaller share, so the machine is
  // oversubscribed at most until the earlier ones finish.
  int threads() const { return threads_; }

 private:
  friend class ResourceScheduler;
  ResourceScheduler* scheduler_ = nullptr;
  uint64_t id_ = 0;
  Lane lane_ = Lane::kCpu;
  int gpu_ = -1;
  uint64_t ram_ = 0;
  uint64_t vram_ = 0;
  int threads_ = 1;
};

struct SchedulerStats {
  uint64_t ram_budget_bytes = 0;
  uint64_t ram_reserved_bytes = 0;
  std::vector<uint64_t> vram_budget_bytes;
  std::vector<uint64_t> vram_reserved_bytes;
  std::vector<int> gpu_running;  // warps running per GPU
  int cpu_running = 0;
  int waiting = 0;
  std::vector<std::string> held_labels;  // "job abc: warp (gpu 0, 1.2 GB)"
  std::vector<std::string> waiting_labels;
};

class ResourceScheduler {
 public:
  // `probe` (may be null) gives live readings; not owned, must outlive this.
  ResourceScheduler(SchedulerConfig config, HardwareProbe* probe);
  ~ResourceScheduler();

  // ResourceExhausted (with the numbers) if `request` can never fit the
  // budgets, even on an idle machine. InvalidArgument for a bad gpu index.
  absl::Status CheckFits(const ResourceRequest& request) const;

  // Blocks until admitted. Errors: those of CheckFits, Cancelled /
  // DeadlineExceeded from `cancel` (may be null), Aborted after Shutdown().
  absl::StatusOr<Reservation> Acquire(const ResourceRequest& request,
                                      int priority, uint64_t sequence,
                                      const CancelToken* cancel);

  // Wakes all waiters with Aborted; later Acquire calls fail at once.
  void Shutdown();

  // Device memory this process keeps on GPU `gpu` (an index into
  // vram_budget_bytes) between stages without a reservation: the CUDA
  // warper's cached buffers, which the next warp there reuses or frees. The
  // live free-VRAM reading counts them as used; admission adds them back, so
  // that our own cache cannot hold a warp back forever. Replaces the
  // previous value; out-of-range indices are ignored.
  void SetRetainedVram(int gpu, uint64_t bytes);

  SchedulerStats Stats() const;
  const SchedulerConfig& config() const { return config_; }

 private:
  friend class Reservation;
  struct Waiter;
  struct Held;
  void ReleaseById(uint64_t id);
  // Admits waiters in order; returns true if any was admitted.
  bool AdmitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerConfig config_;
  HardwareProbe* const probe_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t ram_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> vram_reserved_ ABSL_GUARDED_BY(mu_);
  std::vector<int> gpu_running_ ABSL_GUARDED_BY(mu_);
  int cpu_running_ ABSL_GUARDED_BY(mu_) = 0;
  std::list<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);  // sorted by order
  std::list<Held> held_ ABSL_GUARDED_BY(mu_);
  absl::Time last_live_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t live_ram_available_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;
  std::vector<uint64_t> live_vram_free_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> retained_vram_ ABSL_GUARDED_BY(mu_);
  void RefreshLiveLocked(bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Config::allocation_grace: takes the reservations admitted lately off
  // the live readings just taken.
  void SubtractRecentAdmissionsLocked(absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reservation::threads for a stage just admitted (counted as running).
  int ThreadShareLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace regserve

#endif  // REGSERVE_CORE_SCHEDULER_SCHEDULER_H_
