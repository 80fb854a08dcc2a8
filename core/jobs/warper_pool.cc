// Copyright regserve authors.
#include "core/jobs/warper_pool.h"

#include <utility>

#include "absl/time/clock.h"

namespace regserve {

namespace {
constexpr absl::Duration kRetryAfter = absl::Minutes(1);
}  // namespace

// The lease holds `mu` from AcquireCuda until it is destroyed.
struct WarperPool::Slot {
  absl::Mutex mu;
  std::unique_ptr<Warper> warper ABSL_GUARDED_BY(mu);
  absl::Status failure ABSL_GUARDED_BY(mu);
  absl::Time failed_at ABSL_GUARDED_BY(mu) = absl::InfinitePast();
};

WarperPool::WarperPool(WarperFactory factory) : factory_(std::move(factory)) {}
WarperPool::~WarperPool() = default;

WarperPool::Lease::Lease(Lease&& o) noexcept
    : slot_(std::move(o.slot_)),
      warper_(std::exchange(o.warper_, nullptr)),
      failure_(std::move(o.failure_)) {}

WarperPool::Lease& WarperPool::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    if (warper_ != nullptr) slot_->mu.Unlock();
    slot_ = std::move(o.slot_);
    warper_ = std::exchange(o.warper_, nullptr);
    failure_ = std::move(o.failure_);
  }
  return *this;
}

WarperPool::Lease::~Lease() {
  if (warper_ != nullptr) slot_->mu.Unlock();
}

std::shared_ptr<WarperPool::Slot> WarperPool::SlotFor(int ordinal) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Slot>& slot = slots_[ordinal];
  if (!slot) slot = std::make_shared<Slot>();
  return slot;
}

WarperPool::Lease WarperPool::AcquireCuda(int ordinal) {
  Lease lease;
  lease.slot_ = SlotFor(ordinal);
  Slot& slot = *lease.slot_;
  slot.mu.Lock();
  if (!slot.warper) {
    if (absl::Now() - slot.failed_at < kRetryAfter) {
      lease.failure_ = slot.failure;
    } else {
      absl::StatusOr<std::unique_ptr<Warper>> created =
          factory_(WarpDevice::kCuda, ordinal);
      if (created.ok()) {
        slot.warper = *std::move(created);
        slot.failure = absl::OkStatus();
      } else {
        slot.failure = created.status();
        slot.failed_at = absl::Now();
        lease.failure_ = slot.failure;
      }
    }
  }
  if (!slot.warper) {
    slot.mu.Unlock();
    return lease;
  }
  lease.warper_ = slot.warper.get();
  return lease;  // still locked: released by the lease
}

absl::StatusOr<std::unique_ptr<Warper>> WarperPool::CreateCpu() {
  return factory_(WarpDevice::kCpu, 0);
}

}  // namespace regserve
