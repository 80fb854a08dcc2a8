// Copyright regserve authors.
//
// Test helpers: this process's memory from /proc/self/status, and whether a
// sanitizer's shadow memory inflates it. Header-only (tests that read a
// peak RSS: streamed_gray_test, streamed_job_test).
#ifndef REGSERVE_CORE_COMMON_TESTING_PEAK_RSS_H_
#define REGSERVE_CORE_COMMON_TESTING_PEAK_RSS_H_

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

namespace regserve {
namespace testing_util {

// A /proc/self/status field in bytes (VmHWM: the peak RSS, VmRSS: now).
inline uint64_t StatusBytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10) * 1024;
    }
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux clear_refs "5"), so that the peak
// of what follows is measured in this process.
inline bool ResetPeakRss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return f.good();
}

// The sanitizers' shadow memory and quarantine add to RSS.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

}  // namespace testing_util
}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_TESTING_PEAK_RSS_H_
