// Copyright regserve authors.
#include "core/scheduler/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace regserve {

SchedulerConfig ToSchedulerConfig(const ResourceConfig& rc) {
  SchedulerConfig c;
  c.ram_budget_bytes = rc.ram_budget_bytes;
  c.vram_budget_bytes = rc.vram_budget_bytes;
  c.gpu_ordinals = rc.gpu_ordinals;
  c.cpu_slots = rc.cpu_slots;
  c.machine_threads = rc.machine_threads;
  c.min_threads = rc.elastix_threads;
  return c;
}

namespace {

std::string Mb(uint64_t bytes) {
  return absl::StrFormat("%.0f MB", static_cast<double>(bytes) / 1e6);
}
uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t SubClamp(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

}  // namespace

struct ResourceScheduler::Waiter {
  ResourceRequest request;
  int priority = 0;
  uint64_t sequence = 0;
  uint64_t arrival = 0;
  bool admitted = false;
  int gpu = -1;
  uint64_t id = 0;
};

struct ResourceScheduler::Held {
  uint64_t id = 0;
  Lane lane = Lane::kCpu;
  int gpu = -1;
  uint64_t ram = 0;
  uint64_t vram = 0;
  std::string label;
  absl::Time admitted_at;
};

// ---------------------------------------------------------------------------
// Reservation

Reservation::Reservation(Reservation&& other) noexcept {
  *this = std::move(other);
}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    scheduler_ = std::exchange(other.scheduler_, nullptr);
    id_ = other.id_;
    lane_ = other.lane_;
    gpu_ = other.gpu_;
    ram_ = other.ram_;
    vram_ = other.vram_;
    threads_ = other.threads_;
  }
  return *this;
}

Reservation::~Reservation() { Release(); }

void Reservation::Release() {
  if (scheduler_ != nullptr) {
    std::exchange(scheduler_, nullptr)->ReleaseById(id_);
  }
}

// ---------------------------------------------------------------------------
// ResourceScheduler

ResourceScheduler::ResourceScheduler(SchedulerConfig config,
                                     HardwareProbe* probe)
    : config_(std::move(config)), probe_(probe) {
  absl::MutexLock lock(&mu_);
  vram_reserved_.assign(config_.vram_budget_bytes.size(), 0);
  gpu_running_.assign(config_.vram_budget_bytes.size(), 0);
  live_vram_free_.assign(config_.vram_budget_bytes.size(), UINT64_MAX);
  retained_vram_.assign(config_.vram_budget_bytes.size(), 0);
}

void ResourceScheduler::SetRetainedVram(int gpu, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (gpu < 0 || gpu >= static_cast<int>(retained_vram_.size())) return;
  retained_vram_[gpu] = bytes;
  if (AdmitLocked()) cv_.SignalAll();
}

ResourceScheduler::~ResourceScheduler() { Shutdown(); }

absl::Status ResourceScheduler::CheckFits(const ResourceRequest& r) const {
  if (r.ram_bytes > config_.ram_budget_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        r.label.empty() ? "the stage" : r.label, " needs ", Mb(r.ram_bytes),
        " of RAM but the RAM budget is ", Mb(config_.ram_budget_bytes)));
  }
  if (r.lane == Lane::kCpu) {
    if (config_.cpu_slots < 1) {
      return absl::FailedPreconditionError("the scheduler has no CPU slots");
    }
    return absl::OkStatus();
  }
  const int n = static_cast<int>(config_.vram_budget_bytes.size());
  if (n == 0 || config_.gpu_slots_per_gpu < 1) {
    return absl::FailedPreconditionError(
        "a GPU stage was requested but the scheduler has no GPU");
  }
  if (r.gpu >= n || r.gpu < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU index ", r.gpu, " is out of range 0..", n - 1));
  }
  uint64_t best = 0;
  for (int g = 0; g < n; ++g) {
    if (r.gpu == -1 || r.gpu == g)
      best = std::max(best, config_.vram_budget_bytes[g]);
  }
  if (r.vram_bytes > best) {
    return absl::ResourceExhaustedError(absl::StrCat(
        r.label.empty() ? "the stage" : r.label, " needs ", Mb(r.vram_bytes),
        " of VRAM but the largest VRAM budget is ", Mb(best)));
  }
  return absl::OkStatus();
}

void ResourceScheduler::RefreshLiveLocked(bool force) {
  if (probe_ == nullptr) return;
  const absl::Time now = absl::Now();
  if (!force && now - last_live_check_ < config_.live_check_period) return;
  last_live_check_ = now;
  absl::StatusOr<HardwareSnapshot> hw = probe_->Probe();
  if (!hw.ok()) return;  // keep the last reading
  live_ram_available_ =
      SubClamp(hw->ram_available_bytes, config_.live_ram_headroom_bytes);
  for (size_t i = 0; i < live_vram_free_.size(); ++i) {
    live_vram_free_[i] = UINT64_MAX;
    const int ordinal = i < config_.gpu_ordinals.size()
                            ? config_.gpu_ordinals[i]
                            : static_cast<int>(i);
    for (const GpuInfo& g : hw->gpus) {
      if (g.index == ordinal) live_vram_free_[i] = g.vram_free_bytes;
    }
  }
  SubtractRecentAdmissionsLocked(now);
}

void ResourceScheduler::SubtractRecentAdmissionsLocked(absl::Time now) {
  struct Recent {
    Lane lane;
    int gpu;
    uint64_t ram, vram;
  };
  std::vector<Recent> recent;
  // Admitted, but their threads have not even taken the reservation yet.
  for (const Waiter* w : waiters_) {
    if (w->admitted) {
      recent.push_back({w->request.lane, w->gpu, w->request.ram_bytes,
                        w->request.vram_bytes});
    }
  }
  for (const Held& h : held_) {
    if (now - h.admitted_at < config_.allocation_grace) {
      recent.push_back({h.lane, h.gpu, h.ram, h.vram});
    }
  }
  const int gpus = static_cast<int>(live_vram_free_.size());
  for (const Recent& r : recent) {
    live_ram_available_ = SubClamp(live_ram_available_, r.ram);
    if (r.lane == Lane::kGpu && r.gpu >= 0 && r.gpu < gpus &&
        live_vram_free_[r.gpu] != UINT64_MAX) {
      live_vram_free_[r.gpu] = SubClamp(live_vram_free_[r.gpu], r.vram);
    }
  }
}

bool ResourceScheduler::AdmitLocked() {
  const int n = static_cast<int>(config_.vram_budget_bytes.size());
  // What is left for waiters further down the order.
  uint64_t ram_left = SubClamp(config_.ram_budget_bytes, ram_reserved_);
  std::vector<uint64_t> vram_left(n);
  std::vector<int> gpu_slots_left(n);
  for (int g = 0; g < n; ++g) {
    vram_left[g] = SubClamp(config_.vram_budget_bytes[g], vram_reserved_[g]);
    gpu_slots_left[g] = config_.gpu_slots_per_gpu - gpu_running_[g];
  }
  int cpu_slots_left = config_.cpu_slots - cpu_running_;
  bool admitted_any = false;

  for (Waiter* w : waiters_) {
    if (w->admitted) continue;
    const ResourceRequest& r = w->request;
    // Live readings only say whether the memory is really free right now.
    const bool live_ram_ok = r.ram_bytes <= live_ram_available_;
    if (r.lane == Lane::kCpu) {
      const bool fits =
          cpu_slots_left > 0 && r.ram_bytes <= ram_left && live_ram_ok;
      if (fits) {
        w->admitted = true;
        ram_reserved_ += r.ram_bytes;
        ++cpu_running_;
        admitted_any = true;
        live_ram_available_ = SubClamp(live_ram_available_, r.ram_bytes);
      }
      // Admitted or held back: either way later waiters get what is left.
      ram_left = SubClamp(ram_left, r.ram_bytes);
      cpu_slots_left = std::max(0, cpu_slots_left - 1);
      continue;
    }
    // GPU lane: among the GPUs that fit now, the one with the fewest warps
    // running (then the most VRAM left); if none fits, hold back on the GPU
    // with the most VRAM left, where it will fit soonest.
    int chosen = -1, hold = -1;
    for (int g = 0; g < n; ++g) {
      if (r.gpu != -1 && r.gpu != g) continue;
      if (r.vram_bytes > config_.vram_budget_bytes[g]) continue;
      if (hold == -1 || vram_left[g] > vram_left[hold]) hold = g;
      const uint64_t live_free =
          live_vram_free_[g] == UINT64_MAX
              ? UINT64_MAX
              : SaturatingAdd(live_vram_free_[g], retained_vram_[g]);
      const bool fits = gpu_slots_left[g] > 0 && r.vram_bytes <= vram_left[g] &&
                        r.vram_bytes <= live_free;
      if (!fits) continue;
      if (chosen == -1 || gpu_running_[g] < gpu_running_[chosen] ||
          (gpu_running_[g] == gpu_running_[chosen] &&
           vram_left[g] > vram_left[chosen])) {
        chosen = g;
      }
    }
    const bool fits = chosen != -1 && r.ram_bytes <= ram_left && live_ram_ok;
    const int g = fits ? chosen : hold;
    if (fits) {
      w->admitted = true;
      w->gpu = chosen;
      ram_reserved_ += r.ram_bytes;
      vram_reserved_[chosen] += r.vram_bytes;
      ++gpu_running_[chosen];
      admitted_any = true;
      live_ram_available_ = SubClamp(live_ram_available_, r.ram_bytes);
      if (live_vram_free_[chosen] != UINT64_MAX) {
        // The warp may reuse what is retained first, then takes free memory.
        const uint64_t from_retained =
            std::min(retained_vram_[chosen], r.vram_bytes);
        retained_vram_[chosen] -= from_retained;
        live_vram_free_[chosen] =
            SubClamp(live_vram_free_[chosen], r.vram_bytes - from_retained);
      }
    }
    ram_left = SubClamp(ram_left, r.ram_bytes);
    if (g >= 0) {
      vram_left[g] = SubClamp(vram_left[g], r.vram_bytes);
      gpu_slots_left[g] = std::max(0, gpu_slots_left[g] - 1);
    }
  }
  return admitted_any;
}

absl::StatusOr<Reservation> ResourceScheduler::Acquire(
    const ResourceRequest& request, int priority, uint64_t sequence,
    const CancelToken* cancel) {
  absl::Status fits = CheckFits(request);
  if (!fits.ok()) return fits;

  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::AbortedError("the scheduler is shutting down");
  Waiter w;
  w.request = request;
  w.priority = priority;
  w.sequence = sequence;
  w.arrival = next_id_++;
  w.id = w.arrival;
  auto pos =
      std::find_if(waiters_.begin(), waiters_.end(), [&](const Waiter* o) {
        if (o->priority != w.priority) return o->priority < w.priority;
        if (o->sequence != w.sequence) return o->sequence > w.sequence;
        return o->arrival > w.arrival;
      });
  auto it = waiters_.insert(pos, &w);

  // Not forced: a reading taken within live_check_period has the admissions
  // since then subtracted, which a fresh reading would not show yet (an
  // admitted stage allocates only after it is admitted).
  RefreshLiveLocked(/*force=*/false);
  absl::Status result = absl::OkStatus();
  for (;;) {
    if (AdmitLocked()) cv_.SignalAll();
    if (w.admitted) break;
    if (shutdown_) {
      result = absl::AbortedError("the scheduler is shutting down");
      break;
    }
    if (cancel != nullptr) {
      result = cancel->Check();
      if (!result.ok()) break;
    }
    cv_.WaitWithTimeout(
        &mu_, std::min(config_.live_check_period, absl::Milliseconds(100)));
    RefreshLiveLocked(/*force=*/false);
  }
  waiters_.erase(it);
  if (!result.ok()) {
    // Our held-back share is free again: others may now fit.
    if (AdmitLocked()) cv_.SignalAll();
    return result;
  }
  Held h;
  h.id = w.id;
  h.lane = request.lane;
  h.gpu = w.gpu;
  h.ram = request.ram_bytes;
  h.vram = request.lane == Lane::kGpu ? request.vram_bytes : 0;
  h.label = request.label;
  h.admitted_at = absl::Now();
  held_.push_back(h);

  Reservation r;
  r.scheduler_ = this;
  r.id_ = h.id;
  r.lane_ = h.lane;
  r.gpu_ = h.gpu;
  r.ram_ = h.ram;
  r.vram_ = h.vram;
  r.threads_ = ThreadShareLocked();
  return r;
}

int ResourceScheduler::ThreadShareLocked() const {
  int running = cpu_running_;
  for (int n : gpu_running_) running += n;
  const int floor = std::max(1, config_.min_threads);
  return std::max(floor, config_.machine_threads / std::max(1, running));
}

void ResourceScheduler::ReleaseById(uint64_t id) {
  absl::MutexLock lock(&mu_);
  for (auto it = held_.begin(); it != held_.end(); ++it) {
    if (it->id != id) continue;
    ram_reserved_ -= it->ram;
    if (it->lane == Lane::kCpu) {
      --cpu_running_;
    } else {
      vram_reserved_[it->gpu] -= it->vram;
      --gpu_running_[it->gpu];
    }
    held_.erase(it);
    break;
  }
  // Waiters re-run admission themselves; the freed memory may also have
  // changed the live readings.
  RefreshLiveLocked(/*force=*/true);
  cv_.SignalAll();
}

void ResourceScheduler::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  cv_.SignalAll();
}

SchedulerStats ResourceScheduler::Stats() const {
  absl::MutexLock lock(&mu_);
  SchedulerStats s;
  s.ram_budget_bytes = config_.ram_budget_bytes;
  s.ram_reserved_bytes = ram_reserved_;
  s.vram_budget_bytes = config_.vram_budget_bytes;
  s.vram_reserved_bytes = vram_reserved_;
  s.gpu_running = gpu_running_;
  s.cpu_running = cpu_running_;
  s.waiting = static_cast<int>(waiters_.size());
  for (const Held& h : held_) {
    s.held_labels.push_back(absl::StrCat(
        h.label.empty() ? "stage" : h.label, " (",
        h.lane == Lane::kCpu
            ? std::string("cpu")
            : absl::StrCat("gpu ", h.gpu, ", ", Mb(h.vram), " VRAM"),
        ", ", Mb(h.ram), " RAM)"));
  }
  for (const Waiter* w : waiters_) {
    if (!w->admitted) s.waiting_labels.push_back(w->request.label);
  }
  return s;
}

}  // namespace regserve
