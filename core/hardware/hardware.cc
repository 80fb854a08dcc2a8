// Copyright regserve authors.
#include "core/hardware/hardware.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

#if REGSERVE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace regserve {
namespace hardware_internal {

bool ParseMeminfo(const std::string& text, uint64_t* total,
                  uint64_t* available) {
  bool have_total = false, have_available = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() < 2) continue;
    uint64_t value = 0;
    if (!absl::SimpleAtoi(parts[1], &value)) continue;
    const uint64_t scale = (parts.size() >= 3 && parts[2] == "kB") ? 1024 : 1;
    if (parts[0] == "MemTotal:") {
      *total = value * scale;
      have_total = true;
    } else if (parts[0] == "MemAvailable:") {
      *available = value * scale;
      have_available = true;
    }
  }
  return have_total && have_available;
}

uint64_t ParseMemoryMax(const std::string& text) {
  absl::string_view v = absl::StripAsciiWhitespace(text);
  uint64_t value = 0;
  if (v == "max" || !absl::SimpleAtoi(v, &value)) return UINT64_MAX;
  return value;
}

double ParseCpuMax(const std::string& text) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(text), ' ', absl::SkipEmpty());
  if (parts.empty() || parts[0] == "max") return 0.0;
  double quota = 0, period = 100000;
  if (!absl::SimpleAtod(parts[0], &quota)) return 0.0;
  if (parts.size() >= 2 && !absl::SimpleAtod(parts[1], &period)) return 0.0;
  if (quota <= 0 || period <= 0) return 0.0;
  return quota / period;
}

CgroupMemory ParseCgroupMemory(const std::string& max_text,
                               const std::string& current_text,
                               const std::string& stat_text) {
  CgroupMemory mem;
  mem.limit_bytes = ParseMemoryMax(max_text);
  if (mem.limit_bytes == UINT64_MAX) return mem;  // no limit in this group
  uint64_t current = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(current_text), &current)) {
    current = 0;
  }
  uint64_t inactive_file = 0;
  for (absl::string_view line : absl::StrSplit(stat_text, '\n')) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() == 2 && parts[0] == "inactive_file") {
      if (!absl::SimpleAtoi(parts[1], &inactive_file)) inactive_file = 0;
      break;
    }
  }
  const uint64_t used = current > inactive_file ? current - inactive_file : 0;
  mem.available_bytes = mem.limit_bytes > used ? mem.limit_bytes - used : 0;
  return mem;
}

}  // namespace hardware_internal

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// The cgroup v2 directory of this process, or "" when not on cgroup v2.
std::string OwnCgroupDir() {
  std::string text;
  if (!ReadFile("/proc/self/cgroup", &text)) return "";
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) {
      std::string dir = absl::StrCat("/sys/fs/cgroup", line);
      while (!dir.empty() && dir.back() == '/') dir.pop_back();
      return dir;
    }
  }
  return "";
}

class SystemProbe final : public HardwareProbe {
 public:
  absl::StatusOr<HardwareSnapshot> Probe() override {
    HardwareSnapshot hw;
    std::string meminfo;
    if (!ReadFile("/proc/meminfo", &meminfo) ||
        !hardware_internal::ParseMeminfo(meminfo, &hw.ram_total_bytes,
                                         &hw.ram_available_bytes)) {
      return absl::InternalError(
          "cannot read MemTotal/MemAvailable from /proc/meminfo");
    }
    // cgroup v2 limits apply to this process and every ancestor group.
    const std::string cg = OwnCgroupDir();
    double cpu_limit = 0.0;
    if (!cg.empty()) {
      for (std::string dir = cg;
           dir.size() >= std::string("/sys/fs/cgroup").size();
           dir = dir.substr(0, dir.rfind('/'))) {
        std::string text;
        if (ReadFile(dir + "/memory.max", &text)) {
          // Unreadable current/stat files stay "" (see ParseCgroupMemory).
          std::string current, stat;
          ReadFile(dir + "/memory.current", &current);
          ReadFile(dir + "/memory.stat", &stat);
          const hardware_internal::CgroupMemory mem =
              hardware_internal::ParseCgroupMemory(text, current, stat);
          hw.ram_total_bytes = std::min(hw.ram_total_bytes, mem.limit_bytes);
          hw.ram_available_bytes =
              std::min(hw.ram_available_bytes, mem.available_bytes);
        }
        if (ReadFile(dir + "/cpu.max", &text)) {
          const double limit = hardware_internal::ParseCpuMax(text);
          if (limit > 0 && (cpu_limit == 0 || limit < cpu_limit))
            cpu_limit = limit;
        }
        if (dir == "/sys/fs/cgroup") break;
      }
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    int cores = 0;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      cores = CPU_COUNT(&set);
    }
    if (cores <= 0) cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    if (cpu_limit > 0) {
      cores =
          std::min(cores, std::max(1, static_cast<int>(std::ceil(cpu_limit))));
    }
    hw.cpu_cores = std::max(1, cores);
    ProbeGpus(&hw);
    return hw;
  }

 private:
  static void ProbeGpus(HardwareSnapshot* hw) {
#if REGSERVE_HAVE_CUDA
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return;
    }
    int previous = 0;
    cudaGetDevice(&previous);
    for (int i = 0; i < count; ++i) {
      GpuInfo gpu;
      gpu.index = i;
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, i) == cudaSuccess)
        gpu.name = prop.name;
      size_t free_bytes = 0, total_bytes = 0;
      if (cudaSetDevice(i) == cudaSuccess &&
          cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
        gpu.vram_total_bytes = total_bytes;
        gpu.vram_free_bytes = free_bytes;
      } else {
        cudaGetLastError();
        continue;
      }
      hw->gpus.push_back(std::move(gpu));
    }
    cudaSetDevice(previous);
#else
    (void)hw;
#endif
  }
};

}  // namespace

std::string HardwareSnapshot::DebugString() const {
  std::string s = absl::StrCat("RAM ", ram_available_bytes >> 20, "/",
                               ram_total_bytes >> 20, " MiB available, ",
                               cpu_cores, " cores");
  for (const GpuInfo& g : gpus) {
    absl::StrAppend(&s, "; GPU ", g.index, " ", g.name, " ",
                    g.vram_free_bytes >> 20, "/", g.vram_total_bytes >> 20,
                    " MiB free");
  }
  if (gpus.empty()) absl::StrAppend(&s, "; no GPU");
  return s;
}

std::unique_ptr<HardwareProbe> NewSystemProbe() {
  return std::make_unique<SystemProbe>();
}

}  // namespace regserve
