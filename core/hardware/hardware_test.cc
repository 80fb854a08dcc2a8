// Copyright regserve authors.
#include "core/hardware/hardware.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using hardware_internal::CgroupMemory;
using hardware_internal::ParseCgroupMemory;
using hardware_internal::ParseCpuMax;
using hardware_internal::ParseMeminfo;
using hardware_internal::ParseMemoryMax;

TEST(ParseMeminfo, ReadsTotalAndAvailableInBytes) {
  const std::string text =
      "MemTotal:       24590000 kB\n"
      "MemFree:         1000000 kB\n"
      "MemAvailable:   20000000 kB\n"
      "Buffers:            1234 kB\n";
  uint64_t total = 0, available = 0;
  ASSERT_TRUE(ParseMeminfo(text, &total, &available));
  EXPECT_EQ(total, 24590000ull * 1024);
  EXPECT_EQ(available, 20000000ull * 1024);
}

TEST(ParseMeminfo, MissingFieldIsAnError) {
  uint64_t total = 0, available = 0;
  EXPECT_FALSE(ParseMeminfo("MemTotal: 10 kB\n", &total, &available));
  EXPECT_FALSE(ParseMeminfo("", &total, &available));
  EXPECT_FALSE(
      ParseMeminfo("MemTotal: x kB\nMemAvailable: 1 kB\n", &total, &available));
}

TEST(ParseMemoryMax, MaxMeansUnlimited) {
  EXPECT_EQ(ParseMemoryMax("max\n"), UINT64_MAX);
  EXPECT_EQ(ParseMemoryMax("1073741824\n"), 1073741824ull);
  EXPECT_EQ(ParseMemoryMax("garbage"), UINT64_MAX);
}

TEST(ParseCpuMax, QuotaOverPeriod) {
  EXPECT_DOUBLE_EQ(ParseCpuMax("max 100000\n"), 0.0);
  EXPECT_DOUBLE_EQ(ParseCpuMax("200000 100000\n"), 2.0);
  EXPECT_DOUBLE_EQ(ParseCpuMax("50000 100000"), 0.5);
  EXPECT_DOUBLE_EQ(ParseCpuMax(""), 0.0);
  EXPECT_DOUBLE_EQ(ParseCpuMax("-1 100000"), 0.0);
}

constexpr uint64_t kGiB = 1ull << 30;

// A cgroup v2 memory.stat excerpt with the given inactive_file; the other
// *_file lines are there so that a parser matching by prefix would misread.
std::string MemoryStat(uint64_t inactive_file) {
  return absl::StrCat(
      "anon 123456789\n"
      "file 50000000000\n"
      "active_file 7000000000\n"
      "inactive_file ",
      inactive_file,
      "\n"
      "slab 4096\n");
}

TEST(ParseCgroupMemory, InactiveFileCacheCountsAsAvailable) {
  // 64 GiB limit, 63.9 GiB charged of which 40 GiB is inactive page cache.
  const uint64_t max = 64 * kGiB;
  const uint64_t current = max - max / 640;  // 63.9 GiB
  const CgroupMemory mem =
      ParseCgroupMemory(absl::StrCat(max, "\n"), absl::StrCat(current, "\n"),
                        MemoryStat(40 * kGiB));
  EXPECT_EQ(mem.limit_bytes, max);
  EXPECT_EQ(mem.available_bytes, max - (current - 40 * kGiB));
  EXPECT_GT(mem.available_bytes, 40 * kGiB);
  EXPECT_LT(mem.available_bytes, 41 * kGiB);
}

TEST(ParseCgroupMemory, MaxMeansNoLimit) {
  const CgroupMemory mem = ParseCgroupMemory(
      "max\n", absl::StrCat(63 * kGiB, "\n"), MemoryStat(1 * kGiB));
  EXPECT_EQ(mem.limit_bytes, UINT64_MAX);
  EXPECT_EQ(mem.available_bytes, UINT64_MAX);
}

TEST(ParseCgroupMemory, WithoutStatFallsBackToMaxMinusCurrent) {
  const std::string max = absl::StrCat(8 * kGiB, "\n");
  const std::string current = absl::StrCat(6 * kGiB, "\n");
  // Unreadable memory.stat (passed as ""), or one without inactive_file.
  EXPECT_EQ(ParseCgroupMemory(max, current, "").available_bytes, 2 * kGiB);
  EXPECT_EQ(ParseCgroupMemory(max, current, "anon 5\nactive_file 4096\n")
                .available_bytes,
            2 * kGiB);
  EXPECT_EQ(
      ParseCgroupMemory(max, current, "inactive_file x\n").available_bytes,
      2 * kGiB);
  // Over the limit (possible transiently) is 0, not a wrapped-around number.
  EXPECT_EQ(ParseCgroupMemory(max, absl::StrCat(9 * kGiB), "").available_bytes,
            0u);
  // Unreadable memory.current counts as nothing used.
  EXPECT_EQ(ParseCgroupMemory(max, "", "").available_bytes, 8 * kGiB);
}

TEST(ParseCgroupMemory, CacheLargerThanCurrentIsClampedToMax) {
  const uint64_t max = 4 * kGiB;
  const CgroupMemory mem = ParseCgroupMemory(
      absl::StrCat(max), absl::StrCat(1 * kGiB), MemoryStat(3 * kGiB));
  EXPECT_EQ(mem.limit_bytes, max);
  EXPECT_EQ(mem.available_bytes, max);
}

TEST(SystemProbe, ReadsThisMachine) {
  auto probe = NewSystemProbe();
  auto hw = probe->Probe();
  ASSERT_TRUE(hw.ok()) << hw.status();
  EXPECT_GT(hw->ram_total_bytes, 64ull << 20);
  EXPECT_GT(hw->ram_available_bytes, 0u);
  EXPECT_LE(hw->ram_available_bytes, hw->ram_total_bytes);
  EXPECT_GE(hw->cpu_cores, 1);
  EXPECT_LE(hw->cpu_cores, sysconf(_SC_NPROCESSORS_ONLN));
  for (const GpuInfo& g : hw->gpus) {
    EXPECT_LE(g.vram_free_bytes, g.vram_total_bytes);
    EXPECT_FALSE(g.name.empty());
  }
  EXPECT_FALSE(hw->DebugString().empty());
}

TEST(FakeProbe, ReturnsInjectedMachine) {
  HardwareSnapshot s;
  s.ram_total_bytes = 32ull << 30;
  s.ram_available_bytes = 30ull << 30;
  s.cpu_cores = 8;
  s.gpus.push_back({0, "Fake 16GB", 16ull << 30, 15ull << 30});
  FakeProbe fake(s);
  auto hw = fake.Probe();
  ASSERT_TRUE(hw.ok());
  EXPECT_EQ(hw->gpus.size(), 1u);
  EXPECT_EQ(hw->gpus[0].vram_free_bytes, 15ull << 30);
  s.gpus.clear();
  fake.Set(s);
  EXPECT_TRUE(fake.Probe()->gpus.empty());
}

}  // namespace
}  // namespace regserve
