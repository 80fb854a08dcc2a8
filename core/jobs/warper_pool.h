// Copyright regserve authors.
//
// WarperPool: one CUDA warper per GPU, shared by the jobs that warp there,
// and the one owner of those warpers (and so of their device memory and
// streams). A warper that could not be created is remembered for a minute,
// so the jobs in between go straight to the CPU instead of each paying for
// (and logging) the same failure.
//
//   WarperPool pool(factory);
//   WarperPool::Lease lease = pool.AcquireCuda(/*ordinal=*/0);
//   if (lease.ok()) lease.warper()->Warp(...);   // exclusive while held
//   else fall back, telling the user lease.failure()
//
// Thread safety: thread-safe. A lease gives its holder the warper alone
// until the lease is destroyed.
#ifndef REGSERVE_CORE_JOBS_WARPER_POOL_H_
#define REGSERVE_CORE_JOBS_WARPER_POOL_H_

#include <map>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/jobs/job_env.h"
#include "core/warp/warp.h"

namespace regserve {

class WarperPool {
 private:
  struct Slot;

 public:
  explicit WarperPool(WarperFactory factory);
  ~WarperPool();

  class Lease {
   public:
    Lease() = default;  // empty: no warper, OK failure
    // The slot's mutex passes from AcquireCuda to the lease, which the
    // analysis cannot follow: these three are checked by the tests instead.
    Lease(Lease&&) noexcept;
    Lease& operator=(Lease&&) noexcept ABSL_NO_THREAD_SAFETY_ANALYSIS;
    ~Lease() ABSL_NO_THREAD_SAFETY_ANALYSIS;
    bool ok() const { return warper_ != nullptr; }
    Warper* warper() const { return warper_; }
    // Why there is no warper (when !ok()).
    const absl::Status& failure() const { return failure_; }

   private:
    friend class WarperPool;
    std::shared_ptr<Slot> slot_;
    Warper* warper_ = nullptr;
    absl::Status failure_;
  };

  // The GPU's warper, created on first use, held exclusively by the lease.
  Lease AcquireCuda(int ordinal) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // A new CPU warper for one job (the CPU warp keeps no shared state).
  absl::StatusOr<std::unique_ptr<Warper>> CreateCpu();

 private:
  std::shared_ptr<Slot> SlotFor(int ordinal);

  const WarperFactory factory_;
  absl::Mutex mu_;
  std::map<int, std::shared_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_WARPER_POOL_H_
