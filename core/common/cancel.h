// Copyright regserve authors.
//
// CancelToken: a shared, thread-safe "please stop" flag with an optional
// deadline. Long-running core operations (decode, elastix, warp) poll it
// between units of work and return absl::CancelledError() or
// absl::DeadlineExceededError() when it fires.
//
//   auto token = std::make_shared<CancelToken>();
//   token->set_deadline(absl::Now() + absl::Minutes(10));
//   ... in a worker loop:
//   REGSERVE_RETURN_IF_ERROR(token->Check());
//   ... from another thread:
//   token->Cancel("client cancelled");
#ifndef REGSERVE_CORE_COMMON_CANCEL_H_
#define REGSERVE_CORE_COMMON_CANCEL_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace regserve {

// Thread-safe. All methods may be called from any thread.
class CancelToken {
 public:
  CancelToken() = default;
  CancelToken(const CancelToken&) = delete;
  CancelToken& operator=(const CancelToken&) = delete;

  // Requests cancellation. The first reason wins.
  void Cancel(std::string reason) {
    absl::MutexLock lock(&mu_);
    if (!cancelled_.load()) reason_ = std::move(reason);
    cancelled_.store(true);
  }
  bool cancelled() const { return cancelled_.load(); }

  void set_deadline(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    deadline_ = deadline;
  }
  absl::Time deadline() const {
    absl::MutexLock lock(&mu_);
    return deadline_;
  }

  // OK while neither cancelled nor past the deadline; otherwise
  // CancelledError(reason) or DeadlineExceededError.
  absl::Status Check() const {
    absl::MutexLock lock(&mu_);
    if (cancelled_.load()) {
      return absl::CancelledError(reason_.empty() ? "cancelled" : reason_);
    }
    if (absl::Now() >= deadline_) {
      return absl::DeadlineExceededError("deadline exceeded");
    }
    return absl::OkStatus();
  }

 private:
  mutable absl::Mutex mu_;
  std::atomic<bool> cancelled_{false};
  std::string reason_ ABSL_GUARDED_BY(mu_);
  absl::Time deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

using CancelTokenPtr = std::shared_ptr<CancelToken>;

}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_CANCEL_H_
