// Copyright regserve authors.
//
// Shared fixtures for the JobManager tests: a temporary data directory, a
// FakeProbe and a real ResourceScheduler with small budgets, helpers to wait
// for jobs and to drain event streams, and image comparisons.
#ifndef REGSERVE_CORE_JOBS_JOB_TEST_UTIL_H_
#define REGSERVE_CORE_JOBS_JOB_TEST_UTIL_H_

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_manager.h"
#include "gtest/gtest.h"

namespace regserve {
namespace testing_util {

inline std::string TestDataDir() {
  const char* d = std::getenv("REGSERVE_TEST_DATA");
  return d != nullptr ? d : "tests/data";
}

inline std::string BrainFixed() {
  return TestDataDir() + "/itk_brain/BrainProtonDensitySlice.png";
}
inline std::string BrainMoving() {
  return TestDataDir() + "/itk_brain/BrainProtonDensitySliceShifted13x17y.png";
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fresh directory under the test temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/regserve_jobs_XXXXXX";
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    path_ = mkdtemp(buf.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline HardwareSnapshot SmallMachine() {
  HardwareSnapshot hw;
  hw.ram_total_bytes = 8ull << 30;
  hw.ram_available_bytes = 8ull << 30;
  hw.cpu_cores = 2;
  return hw;
}

inline SchedulerConfig SmallSchedulerConfig(uint64_t ram = 4ull << 30,
                                            int cpu_slots = 2) {
  SchedulerConfig c;
  c.ram_budget_bytes = ram;
  c.cpu_slots = cpu_slots;
  return c;
}

// Mean absolute difference of channel 0 over the common area, in sample
// units (images of the same type).
inline double MeanAbsDiff(const Image& a, const Image& b) {
  const int64_t w = std::min(a.width(), b.width());
  const int64_t h = std::min(a.height(), b.height());
  double sum = 0;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const double va = a.row(y)[x * a.channels()];
      const double vb = b.row(y)[x * b.channels()];
      sum += std::fabs(va - vb);
    }
  }
  return sum / static_cast<double>(w * h);
}

// Collects events until the terminal one (or an error / timeout).
struct Drained {
  std::vector<JobEvent> events;
  absl::Status end;  // OK when a terminal event arrived
  int Count(JobEvent::Kind kind) const {
    int n = 0;
    for (const auto& e : events) n += e.kind == kind;
    return n;
  }
  const JobEvent* Last() const {
    return events.empty() ? nullptr : &events.back();
  }
};

inline Drained Drain(EventStream* stream,
                     absl::Duration timeout = absl::Seconds(60)) {
  Drained d;
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    JobEvent ev;
    absl::Status s = stream->Next(&ev, deadline);
    if (!s.ok()) {
      d.end = s;
      return d;
    }
    const bool terminal = ev.kind == JobEvent::Kind::kCompleted ||
                          ev.kind == JobEvent::Kind::kFailed;
    d.events.push_back(std::move(ev));
    if (terminal) {
      d.end = absl::OkStatus();
      return d;
    }
  }
}

// Polls GetJob until the job is terminal.
inline JobInfo WaitTerminal(JobManager* m, const std::string& id,
                            const std::string& principal = "",
                            absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<JobInfo> info = m->GetJob(id, principal);
    if (!info.ok()) {
      ADD_FAILURE() << "GetJob: " << info.status();
      return JobInfo{};
    }
    if (IsTerminal(info->state) || absl::Now() > deadline) return *info;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

inline JobSpec ServerSideSpec(const std::string& fixed,
                              const std::string& moving,
                              TransformKind kind = TransformKind::kRigid) {
  JobSpec spec;
  spec.fixed.path = fixed;
  spec.moving.path = moving;
  spec.options.transform = kind;
  spec.options.device = DevicePreference::kCpu;
  return spec;
}

}  // namespace testing_util
}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_JOB_TEST_UTIL_H_
