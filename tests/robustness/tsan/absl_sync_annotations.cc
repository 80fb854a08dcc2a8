// Copyright regserve authors.
//
// ThreadSanitizer support for the distribution's Abseil (REGSERVE_TSAN only;
// linked into every test and program of a -DREGSERVE_TSAN=ON build by
// cmake/regserve.cmake).
//
// Debian's libabsl_synchronization.so is not built with -fsanitize=thread, so
// TSan cannot see absl::Mutex, absl::CondVar or absl::Notification acquire
// and release anything: every field guarded by an absl::Mutex is reported as
// a data race. An instrumented Abseil tells TSan through its
// ABSL_TSAN_MUTEX_* hooks; this file does the same from outside. It defines
// the out-of-line members of those classes in the executable, which takes
// precedence over the shared library's definitions (ELF symbol
// interposition, also for the library's own internal calls), forwards each
// call to the library's definition (found with dlsym(RTLD_NEXT)) and adds
// the happens-before edges:
//   - lock-type operations (Lock, TryLock when it succeeds, ReaderLock,
//     LockWhen*, and the re-acquisition at the end of Await* and
//     CondVar::Wait*) acquire the mutex's address;
//   - unlock-type operations (Unlock, ReaderUnlock, and the release at the
//     start of Await* and CondVar::Wait*) release it;
//   - Notification::Notify releases the notified flag, which the inline
//     HasBeenNotified() reads with an (instrumented) acquire load, and the
//     WaitForNotification* calls acquire it.
//   - every evaluation of a waiter's Condition is bracketed by an acquire
//     and a release (see AnnotatedCondition).
// Readers are modelled like writers (a reader's release is also seen by the
// next reader), which can only hide races between two readers, never report
// a false one. Nothing here suppresses a report.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdlib>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#define REGSERVE_STR2(x) #x
#define REGSERVE_STR(x) REGSERVE_STR2(x)

namespace {

// "_ZN4absl<len><inline namespace>" + rest ("_ZNK..." for const members):
// the mangled name of an Abseil member in this installation's inline
// namespace.
std::string Mangled(const char* rest, bool is_const) {
  const std::string ns = REGSERVE_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return std::string(is_const ? "_ZNK4absl" : "_ZN4absl") +
         std::to_string(ns.size()) + ns + rest;
}

// The shared library's definition of a member.
template <typename Fn>
Fn Real(const char* rest, bool is_const = false) {
  void* f = dlsym(RTLD_NEXT, Mangled(rest, is_const).c_str());
  if (f == nullptr) std::abort();  // Abseil's ABI changed: update this file
  return reinterpret_cast<Fn>(f);
}

void* Key(const void* p) { return const_cast<void*>(p); }

// A waiter's condition is evaluated by whichever thread holds the mutex at
// the time, often inside another thread's Unlock (after that thread's
// release above). Like Abseil's own EvalConditionAnnotated, each evaluation
// is modelled as a critical section of its own: acquire, evaluate, release.
struct AnnotatedCondition {
  const absl::Condition* condition;
  absl::Mutex* mu;
  static bool Eval(void* arg) {
    const auto* self = static_cast<const AnnotatedCondition*>(arg);
    __tsan_acquire(self->mu);
    const bool result = self->condition->Eval();
    __tsan_release(self->mu);
    return result;
  }
};

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  static auto real = Real<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::ReaderLock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderUnlock() {
  static auto real = Real<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::ReaderTryLock() {
  static auto real = Real<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::LockWhen(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(
      "5Mutex8LockWhenERKNS0_9ConditionE");
  AnnotatedCondition wrapped{&cond, this};
  real(this, Condition(&AnnotatedCondition::Eval, &wrapped));
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(
      "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AnnotatedCondition wrapped{&cond, this};
  real(this, Condition(&AnnotatedCondition::Eval, &wrapped));
  __tsan_acquire(this);
}

// The *WithTimeout / *WithDeadline variants hold the mutex on return whatever
// the condition's value.
bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration d) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AnnotatedCondition wrapped{&cond, this};
  const bool r = real(this, Condition(&AnnotatedCondition::Eval, &wrapped), d);
  __tsan_acquire(this);
  return r;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time t) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotatedCondition wrapped{&cond, this};
  const bool r = real(this, Condition(&AnnotatedCondition::Eval, &wrapped), t);
  __tsan_acquire(this);
  return r;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, absl::Duration d) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AnnotatedCondition wrapped{&cond, this};
  const bool r = real(this, Condition(&AnnotatedCondition::Eval, &wrapped), d);
  __tsan_acquire(this);
  return r;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, absl::Time t) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotatedCondition wrapped{&cond, this};
  const bool r = real(this, Condition(&AnnotatedCondition::Eval, &wrapped), t);
  __tsan_acquire(this);
  return r;
}

void Mutex::Await(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(
      "5Mutex5AwaitERKNS0_9ConditionE");
  __tsan_release(this);
  AnnotatedCondition wrapped{&cond, this};
  real(this, Condition(&AnnotatedCondition::Eval, &wrapped));
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration d) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  __tsan_release(this);
  AnnotatedCondition wrapped{&cond, this};
  const bool r = real(this, Condition(&AnnotatedCondition::Eval, &wrapped), d);
  __tsan_acquire(this);
  return r;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time t) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_release(this);
  AnnotatedCondition wrapped{&cond, this};
  const bool r = real(this, Condition(&AnnotatedCondition::Eval, &wrapped), t);
  __tsan_acquire(this);
  return r;
}

void CondVar::Wait(Mutex* mu) {
  static auto real =
      Real<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration d) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, absl::Duration)>(
      "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool r = real(this, mu, d);
  __tsan_acquire(mu);
  return r;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time t) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, absl::Time)>(
      "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool r = real(this, mu, t);
  __tsan_acquire(mu);
  return r;
}

void Notification::Notify() {
  static auto real = Real<void (*)(Notification*)>("12Notification6NotifyEv");
  __tsan_release(Key(&notified_yet_));
  real(this);
}

void Notification::WaitForNotification() const {
  static auto real = Real<void (*)(const Notification*)>(
      "12Notification19WaitForNotificationEv", true);
  real(this);
  __tsan_acquire(Key(&notified_yet_));
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration d) const {
  static auto real = Real<bool (*)(const Notification*, absl::Duration)>(
      "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE", true);
  const bool r = real(this, d);
  if (r) __tsan_acquire(Key(&notified_yet_));
  return r;
}

bool Notification::WaitForNotificationWithDeadline(absl::Time t) const {
  static auto real = Real<bool (*)(const Notification*, absl::Time)>(
      "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE", true);
  const bool r = real(this, t);
  if (r) __tsan_acquire(Key(&notified_yet_));
  return r;
}

ABSL_NAMESPACE_END
}  // namespace absl
